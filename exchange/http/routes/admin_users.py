"""Admin user management: list users, disable and enable them (mounted under /admin).

Disabling takes effect at once on every worker (exchange/auth/denylist.py): the user's
tokens answer 401 and logging in answers 403 user_disabled. An admin cannot disable
their own account, and the last active admin cannot be disabled or demoted by anyone
(checked in SQL under a lock, trigger users_keep_an_active_admin: two admins disabling
each other at once cannot both succeed).
"""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from exchange.auth.security import AuthUser
from exchange.http.errors import HTTPError, documented
from exchange.http.services import Services
from exchange.schemas import ID_MAX, User, UserPage
from exchange.store import repository as repo

PAGE_SIZE_MAX = 100

UserId = Annotated[int, PathParameter(ge=1, le=ID_MAX)]


@get("/users", summary="Every user, newest first", responses=documented(400, 401, 403, 503))
async def list_users(
    services: NamedDependency[Services],
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_SIZE_MAX, description="page size")] = 50,
    before: Annotated[
        int | None, QueryParameter(ge=1, le=ID_MAX, description="`next_before` of the previous page")
    ] = None,
) -> UserPage:
    """Keyset pages of `{id, email, role, disabled, created_at}` (never a password hash)."""
    page = await repo.users_page(services.pool, before, limit)
    return UserPage(users=page, next_before=page[-1].id if len(page) == limit else None)


@post(
    "/users/{user_id:int}/disable",
    status_code=200,
    summary="Disable a user: their tokens stop working, they cannot log in",
    responses=documented(400, 401, 403, 404, 409, 503),
)
async def disable_user(
    user_id: UserId, request: Request[AuthUser, str, State], services: NamedDependency[Services]
) -> User:
    """Idempotent. 409 `cannot_disable_self` for the caller's own account, 409
    `last_admin` if no other active admin would remain."""
    if user_id == request.user.id:
        raise HTTPError("cannot_disable_self", "an admin cannot disable their own account", 409)
    return await _set_disabled(services, user_id, True)


@post(
    "/users/{user_id:int}/enable",
    status_code=200,
    summary="Enable a disabled user again",
    responses=documented(400, 401, 403, 404, 503),
)
async def enable_user(user_id: UserId, services: NamedDependency[Services]) -> User:
    """Idempotent. Tokens issued before the user was disabled work again if unexpired."""
    return await _set_disabled(services, user_id, False)


async def _set_disabled(services: NamedDependency[Services], user_id: int, disabled: bool) -> User:
    user = await repo.set_disabled(services.pool, user_id, disabled)
    if user is None:
        raise HTTPError("not_found", "no such user", 404)
    await services.denylist.set_disabled(user_id, disabled)
    return user


route_handlers = [list_users, disable_user, enable_user]
