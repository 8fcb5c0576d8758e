"""create_app(settings) -> Litestar. The lifespan opens the pool, Redis, the Binance
client and the price feed, and closes them in reverse order."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import redis.asyncio as aioredis
import redis.exceptions
from litestar import Litestar, Router
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, SecurityScheme
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from exchange import __version__, repo
from exchange.bodies import ExchangeRequest
from exchange.config import Settings, settings_from_env
from exchange.db import create_pool
from exchange.denylist import Denylist
from exchange.errors import exception_handlers
from exchange.logs import configure_logging, skip_unused_record_fields
from exchange.metrics import metrics_endpoint, worker_stopped
from exchange.money import Money
from exchange.movement_batches import MovementBatches
from exchange.namespace import redis_namespace
from exchange.observability import observe
from exchange.openapi import schema_plugins
from exchange.prices.binance import BinanceClient, create_http_client
from exchange.prices.cache import PriceCache
from exchange.prices.feed import PriceFeed
from exchange.prices.slots import Slots
from exchange.prices.stream import PriceStream
from exchange.ratelimit import RateLimiter, limits_from
from exchange.responses import ExchangeResponse
from exchange.routes import auth, health, orders, prices, transactions, users, wallets
from exchange.routes.admin import admin_router
from exchange.schemas import DecimalText, decimal_text
from exchange.security import BearerAuthMiddleware, VerifiedTokens, hash_password
from exchange.user_turns import UserTurns

API_PREFIX = "/api/v1"
REDIS_TIMEOUT_SECONDS = 2.0
# After Redis restarts, every pooled connection is dead but handed out as if alive
# (redis-py 8 skips its check on checkout): a command whose connection turns out closed
# is sent once more, on a new one. A timeout (a hung Redis) is not retried: no doubled wait.
REDIS_RETRY = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or settings_from_env()
    if not logging.getLogger().handlers:  # `exchange serve` has configured logging already
        configure_logging(settings.log_level, settings.log_format)
    skip_unused_record_fields()
    # httpx logs every request at INFO: one line per price poll is noise.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state = app.state
        state.settings = settings
        state.pool = await create_pool(settings)
        # A blocking pool: under a burst, requests wait (up to the timeout) for a free
        # connection instead of failing as if Redis were down.
        state.redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                timeout=REDIS_TIMEOUT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                retry=REDIS_RETRY,
            )
        )
        # Every Redis key and channel of this deployment starts with this.
        state.deployment_id = await repo.deployment_id(state.pool)
        namespace = state.redis_namespace = redis_namespace(settings.redis_prefix, state.deployment_id)
        state.rate_limiter = RateLimiter(state.redis, namespace, limits_from(settings))
        state.verified_tokens = VerifiedTokens(settings)
        state.user_turns = UserTurns(max_wait_ms=settings.db_lock_timeout_ms)
        state.movements = MovementBatches.from_settings(state.pool, settings)
        state.denylist = Denylist(
            state.pool,
            state.redis,
            prefix=namespace,
            deployment_id=state.deployment_id,
            reload_ms=settings.auth_reload_ms,
            legacy_prefix=settings.redis_prefix,
        )
        await state.denylist.start()
        # Logins for unknown emails check against this, so they take as long as real ones.
        state.dummy_password_hash = await hash_password("not-a-real-password", settings.bcrypt_rounds)
        state.http = create_http_client(settings)
        symbols = await repo.market_symbols(state.pool)
        state.prices = price_cache(settings, state.redis, state.http, symbols, namespace)
        state.price_stream = PriceStream(
            state.redis,
            prefix=namespace,
            deployment_id=state.deployment_id,
            fresh_ms=settings.price_cache_ttl_ms,
            max_unsent_bytes=settings.ws_max_unsent_bytes,
            send_timeout_ms=settings.ws_send_timeout_ms,
            current=state.prices.read_all,
        )
        state.ws_slots = Slots(
            state.redis,
            prefix=namespace,
            port=settings.port,
            max_connections=settings.ws_max_connections,
            max_per_address=settings.ws_max_connections_per_address,
        )
        await state.ws_slots.start()
        state.price_feed = price_feed(settings, state.redis, state.prices, namespace, state.deployment_id)
        state.price_stream.start()
        if settings.price_poll_ms:
            state.price_feed.start()
        try:
            yield
        finally:
            await state.price_feed.stop()
            await state.price_stream.stop()
            await state.ws_slots.stop()
            await state.denylist.stop()
            await state.http.aclose()
            await state.redis.aclose()
            await state.pool.close()
            worker_stopped()

    public = Router(
        path=API_PREFIX,
        route_handlers=[auth.register, auth.token, prices.list_prices, prices.get_price, prices.price_stream],
    )
    private = Router(
        path=API_PREFIX,
        route_handlers=[
            auth.logout,
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
    app = Litestar(
        route_handlers=[health.health, health.ready, metrics_endpoint, public, private],
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        request_max_body_size=settings.max_body_bytes,
        request_class=ExchangeRequest,
        response_class=ExchangeResponse,
        openapi_config=_openapi_config(),
        plugins=schema_plugins(),
        type_encoders={Money: str},
        type_decoders=[(lambda type_: type_ is DecimalText, lambda _, value: decimal_text(value))],
        # Litestar's default would put its own handler and format on the root logger.
        logging_config=None,
        debug=False,
    )
    return observe(app)  # request ids, the per-request log line and metrics


def price_cache(
    settings: Settings, redis: aioredis.Redis, http: httpx.AsyncClient, symbols: list[str], namespace: str
) -> PriceCache:
    attempts = settings.binance_max_attempts
    return PriceCache(
        redis,
        BinanceClient(http, attempts, attempt_timeout_ms=settings.binance_timeout_ms),
        prefix=namespace,
        symbols=symbols,
        fresh_ms=settings.price_cache_ttl_ms,
        stale_max_ms=settings.price_stale_max_ms,
        # Every attempt timing out, plus its backoff (binance.py).
        refresh_budget_ms=attempts * (settings.binance_timeout_ms + 1_000),
    )


def price_feed(
    settings: Settings, redis: aioredis.Redis, cache: PriceCache, namespace: str, deployment_id: str
) -> PriceFeed:
    return PriceFeed(
        redis,
        cache,
        prefix=namespace,
        deployment_id=deployment_id,
        poll_ms=settings.price_poll_ms,
        lease_ms=settings.price_feed_lease_ms,
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
