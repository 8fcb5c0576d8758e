"""create_app(settings) -> Litestar. The lifespan opens the pool, Redis, the Binance
client and the price feed, and closes them in reverse order."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import redis.asyncio as aioredis
import redis.exceptions
from litestar import Litestar, Router
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, SecurityScheme
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from exchange import __version__
from exchange.auth.denylist import Denylist
from exchange.auth.ratelimit import RateLimiter, limits_from, login_limits_from, movement_quota_from
from exchange.auth.security import VerifiedTokens, hash_password
from exchange.config import Settings, settings_from_env, trusted_networks
from exchange.http.api_docs import SwaggerPage
from exchange.http.authentication import BearerAuthMiddleware
from exchange.http.bodies import ExchangeRequest
from exchange.http.errors import exception_handlers
from exchange.http.forwarded import ForwardedClient
from exchange.http.middleware import observe
from exchange.http.openapi import schema_plugins
from exchange.http.responses import ExchangeResponse
from exchange.http.routes import auth, health, orders, prices, transactions, users, wallets
from exchange.http.routes.admin import admin_router
from exchange.http.routes.metrics import metrics_endpoint
from exchange.http.security_headers import SecurityHeaders
from exchange.http.services import Services, services_of
from exchange.ledger.batches import MovementBatches
from exchange.ledger.turns import UserTurns
from exchange.money import Money
from exchange.ops.logs import configure_logging, skip_unused_record_fields
from exchange.ops.metrics import feed_leadership_changed, worker_stopped
from exchange.ops.namespace import redis_namespace
from exchange.prices.binance import BinanceClient, create_http_client
from exchange.prices.cache import PriceCache
from exchange.prices.feed import PriceFeed
from exchange.prices.order_fills import fill_crossed
from exchange.prices.slots import Slots
from exchange.prices.stream import PriceStream
from exchange.schemas import DecimalText, decimal_text
from exchange.store import repository as repo
from exchange.store.db import FairPool, create_pool

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
        pool = await create_pool(settings)
        # A blocking pool: under a burst, requests wait (up to the timeout) for a free
        # connection instead of failing as if Redis were down.
        redis = aioredis.Redis(
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
        deployment_id = await repo.deployment_id(pool)
        namespace = redis_namespace(settings.redis_prefix, deployment_id)
        denylist = Denylist(
            pool,
            redis,
            prefix=namespace,
            deployment_id=deployment_id,
            reload_ms=settings.auth_reload_ms,
            legacy_prefix=settings.redis_prefix,
        )
        await denylist.start()
        http = create_http_client(settings)
        prices = price_cache(settings, redis, http, await repo.market_symbols(pool), namespace)
        services = Services(
            settings=settings,
            pool=pool,
            redis=redis,
            deployment_id=deployment_id,
            redis_namespace=namespace,
            rate_limiter=RateLimiter(
                redis,
                namespace,
                limits_from(settings),
                login_limits_from(settings),
                movement_quota_from(settings),
            ),
            verified_tokens=VerifiedTokens(settings),
            denylist=denylist,
            # Logins for unknown emails check against this, so they take as long as real ones.
            dummy_password_hash=await hash_password("not-a-real-password", settings.bcrypt_rounds),
            user_turns=UserTurns(max_wait_ms=settings.db_lock_timeout_ms),
            movements=MovementBatches.from_settings(pool, settings),
            http=http,
            prices=prices,
            price_stream=PriceStream(
                redis,
                prefix=namespace,
                deployment_id=deployment_id,
                fresh_ms=settings.price_cache_ttl_ms,
                max_unsent_bytes=settings.ws_max_unsent_bytes,
                send_timeout_ms=settings.ws_send_timeout_ms,
                current=prices.read_all,
            ),
            ws_slots=Slots(
                redis,
                prefix=namespace,
                port=settings.port,
                max_connections=settings.ws_max_connections,
                max_per_address=settings.ws_max_connections_per_address,
            ),
            price_feed=price_feed(settings, redis, prices, namespace, deployment_id, pool),
        )
        app.state.services = services
        await services.ws_slots.start()
        services.price_stream.start()
        if settings.price_poll_ms:
            services.price_feed.start()
        try:
            yield
        finally:
            await services.price_feed.stop()
            await services.price_stream.stop()
            await services.ws_slots.stop()
            await services.denylist.stop()
            await services.http.aclose()
            await services.redis.aclose()
            await services.pool.close()
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
        dependencies={"services": Provide(services_of, sync_to_thread=False)},
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
    observe(app)  # request ids, the per-request log line and metrics
    app.asgi_handler = SecurityHeaders(app.asgi_handler)
    # Outermost: the log line and the rate limits see the client behind trusted proxies.
    app.asgi_handler = ForwardedClient(app.asgi_handler, trusted_networks(settings.forwarded_allow_ips))
    return app


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
    settings: Settings,
    redis: aioredis.Redis,
    cache: PriceCache,
    namespace: str,
    deployment_id: str,
    pool: FairPool | None = None,
) -> PriceFeed:
    return PriceFeed(
        redis,
        cache,
        prefix=namespace,
        deployment_id=deployment_id,
        poll_ms=settings.price_poll_ms,
        lease_ms=settings.price_feed_lease_ms,
        on_leadership=feed_leadership_changed,
        # Resting limit orders fill when the leader's prices cross them.
        after_poll=None if pool is None else functools.partial(fill_crossed, pool),
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
        # Served whole from the package (exchange/http/api_docs): the page works offline.
        render_plugins=[SwaggerPage()],
        components=Components(security_schemes={"OAuth2PasswordBearer": oauth2}),
    )
