"""Admin operations (role admin only; a plain user gets 403)."""

from __future__ import annotations

from litestar import Router, get
from litestar.datastructures import State

from exchange import repo
from exchange.errors import documented
from exchange.schemas import AuditReport
from exchange.security import admin_only


@get("/audit", summary="Check every ledger invariant", responses=documented(401, 403, 503))
async def audit(state: State) -> AuditReport:
    violations = await repo.audit(state.pool)
    return AuditReport(ok=not violations, violations=violations)


admin_router = Router(path="/admin", route_handlers=[audit], guards=[admin_only], tags=["admin"])
