"""create_app(settings) -> Litestar. The lifespan opens the pool and Redis, closes them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from litestar import Litestar, Router
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, SecurityScheme

from exchange import __version__
from exchange.config import Settings, settings_from_env
from exchange.db import create_pool
from exchange.errors import exception_handlers
from exchange.money import Money
from exchange.routes import auth, health, orders, transactions, users, wallets
from exchange.routes.admin import admin_router
from exchange.security import BearerAuthMiddleware, hash_password

API_PREFIX = "/api/v1"
REDIS_TIMEOUT_SECONDS = 2.0


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or settings_from_env()
    logging.basicConfig(level=settings.log_level.upper())

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state = app.state
        state.settings = settings
        state.pool = await create_pool(settings)
        state.redis = aioredis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        # Logins for unknown emails check against this, so they take as long as real ones.
        state.dummy_password_hash = await hash_password("not-a-real-password", settings.bcrypt_rounds)
        try:
            yield
        finally:
            await state.redis.aclose()
            await state.pool.close()

    public = Router(path=API_PREFIX, route_handlers=[auth.register, auth.token])
    private = Router(
        path=API_PREFIX,
        route_handlers=[
            users.me,
            wallets.list_wallets,
            wallets.get_wallet,
            wallets.deposit,
            wallets.withdraw,
            transactions.list_transactions,
            transactions.get_transaction,
            *orders.route_handlers,
            admin_router,
        ],
        middleware=[DefineMiddleware(BearerAuthMiddleware)],
        security=[{"OAuth2PasswordBearer": []}],
    )
    return Litestar(
        route_handlers=[health.health, health.ready, public, private],
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=_openapi_config(),
        type_encoders={Money: str},
        debug=False,
    )


def _openapi_config() -> OpenAPIConfig:
    oauth2 = SecurityScheme(
        type="oauth2",
        description="Log in with your email as username; the token goes in `Authorization: Bearer`.",
        flows=OAuthFlows(password=OAuthFlow(token_url=f"{API_PREFIX}/auth/token", scopes={})),
    )
    return OpenAPIConfig(
        title="exchange",
        version=__version__,
        description="A self-hostable crypto exchange backend on a double-entry ledger.",
        path="/schema",
        render_plugins=[SwaggerRenderPlugin(), ScalarRenderPlugin(path="/scalar")],
        components=Components(security_schemes={"OAuth2PasswordBearer": oauth2}),
    )
