"""Who the caller is, for the routes behind /api/v1 that need it: the bearer-token
middleware and the admin guard (tokens and roles themselves: exchange/auth/security.py)."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from exchange.auth.security import forbidden, unauthorized
from exchange.http.services import services_of
from exchange.store import repository as repo


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    """Sets request.user from `Authorization: Bearer <JWT>`; 401 without a valid one,
    or for a revoked token or a disabled user (checked in memory: exchange/auth/denylist.py)."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("an access token is required (Authorization: Bearer <token>)")
        services = services_of(connection.app.state)
        user = services.verified_tokens.user(token.strip())
        services.denylist.check(user)
        return AuthenticationResult(user=user, auth=token)


async def admin_only(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard: the caller must be an admin, by their token and by the database now.

    The token's role may be as old as the token (JWT_TTL_SECONDS), and a demotion is a
    DBA's `UPDATE users SET role = 'user'`: it must stop the admin at once, so the role
    is read again (one primary-key look-up; admin calls are rare)."""
    if connection.scope["method"] == "OPTIONS":
        # Litestar's OPTIONS answer runs no handler (only `Allow`), and authentication
        # skips it, so there is no user to check: without this it was a 500.
        return
    if connection.user.role != "admin":
        raise forbidden()
    user = await repo.user_by_id(services_of(connection.app.state).pool, connection.user.id)
    if user is None or user.role != "admin":
        raise forbidden()
