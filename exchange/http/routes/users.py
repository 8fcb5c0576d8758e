"""GET /api/v1/users/me: the caller, their wallets and latest transactions."""

from __future__ import annotations

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from exchange.auth.security import AuthUser
from exchange.http.errors import HTTPError, documented
from exchange.http.services import Services
from exchange.schemas import Me
from exchange.store import repository as repo

RECENT_TRANSACTIONS = 10


@get(
    "/users/me",
    tags=["users"],
    summary="The caller, with wallets and recent transactions",
    responses=documented(401, 503),
)
async def me(request: Request[AuthUser, str, State], services: NamedDependency[Services]) -> Me:
    user_id = request.user.id
    user = await repo.user_by_id(services.pool, user_id)
    if user is None:
        raise HTTPError("unauthorized", "the access token names no user", 401)
    wallets = await repo.wallets_for_user(services.pool, user_id)
    recent = await repo.transactions_for_user(
        services.pool, user_id, before=None, kind=None, asset=None, limit=RECENT_TRANSACTIONS
    )
    return Me(user=user, wallets=wallets, recent_transactions=recent)
