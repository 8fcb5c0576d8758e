"""Admin operations (role admin only; a plain user gets 403)."""

from __future__ import annotations

from litestar import Router, get
from litestar.di import NamedDependency

from exchange.http.authentication import admin_only
from exchange.http.errors import documented
from exchange.http.routes import admin_users
from exchange.http.services import Services
from exchange.schemas import AuditReport, HouseBalance
from exchange.store import repository as repo


@get("/audit", summary="Check every ledger invariant", responses=documented(401, 403, 503))
async def audit(services: NamedDependency[Services]) -> AuditReport:
    violations = await repo.audit(services.pool)
    return AuditReport(ok=not violations, violations=violations)


@get("/house", summary="The house accounts' balances per asset", responses=documented(401, 403, 503))
async def house(services: NamedDependency[Services]) -> list[HouseBalance]:
    """`external` is minus what users deposited net of withdrawals, `market` the house's
    position from trades, `fees` what fees brought in. Every asset sums to zero with the
    users' wallets (the audit checks it)."""
    return await repo.house_balances(services.pool)


admin_router = Router(
    path="/admin",
    route_handlers=[audit, house, *admin_users.route_handlers],
    guards=[admin_only],
    tags=["admin"],
)
