"""Two deployments on one Redis never hear each other (exchange/ops/namespace.py).

Each runs with the default REDIS_PREFIX on its own database number of the same Redis,
as an operator would set up a staging server beside production. Pub/sub ignores the
database number; the deployment id in every channel and message keeps them apart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from websockets.asyncio.client import ClientConnection, connect

from exchange.app import create_app
from exchange.config import settings_from_env
from exchange.ops.namespace import seal
from exchange.ops.serving import websocket_options
from exchange.prices.binance import Quote
from exchange.prices.feed import channel_name, encode_quotes
from tests.conftest import (
    FakeBinanceControl,
    fake_binance_server,
    fresh_database,
    register_and_login,
    serving,
)


def with_redis_database(url: str, number: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))


class Deployment:
    def __init__(self, apps: list[Litestar], urls: list[str], fake: FakeBinanceControl) -> None:
        self.apps, self.urls, self.fake = apps, urls, fake

    @property
    def ws_url(self) -> str:
        return self.urls[0].replace("http://", "ws://") + "/api/v1/ws/prices?symbols=BTCUSDT"


@asynccontextmanager
async def deployment(
    service_urls: tuple[str, str], redis_database: int, btc_price: str, workers: int = 1
) -> AsyncIterator[Deployment]:
    """A deployment with default settings (REDIS_PREFIX included): its own database,
    REDIS_URL on the given database number, its own Binance stand-in, `workers` servers."""
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(fake_binance_server())
        await fake.set_prices({"BTCUSDT": btc_price}, frozen=True)
        database_url = await stack.enter_async_context(fresh_database(service_urls[0]))
        settings = settings_from_env(
            {},
            database_url=database_url,
            redis_url=with_redis_database(service_urls[1], redis_database),
            binance_url=fake.url,
            jwt_secret=secrets.token_urlsafe(32),
            bcrypt_rounds=4,
            price_poll_ms=100,
            auth_reload_ms=600_000,  # changes arrive by pub/sub only, within this test
            log_level="warning",
        )
        assert settings.redis_prefix == "exchange:"  # the default, on both
        apps = [create_app(settings) for _ in range(workers)]
        urls = [await stack.enter_async_context(serving(app, **websocket_options(settings))) for app in apps]
        for app in apps:
            await asyncio.wait_for(app.state.services.price_stream.subscribed.wait(), 5)
            await asyncio.wait_for(app.state.services.denylist.subscribed.wait(), 5)
        yield Deployment(apps, urls, fake)


async def prices_heard(ws: ClientConnection, seconds: float) -> set[Decimal]:
    heard: set[Decimal] = set()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = msgspec.json.decode(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        heard.add(Decimal(message["price"]))
    return heard


async def test_two_deployments_on_one_redis_never_hear_each_others_prices_or_revocations(
    service_urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        deployment(service_urls, 9, "70000.00", workers=2) as production,
        deployment(service_urls, 12, "70250.00") as staging,
    ):
        assert production.apps[0].state.services.deployment_id != staging.apps[0].state.services.deployment_id

        # Prices: each deployment's clients get its own series only, while both feeds publish.
        async with connect(production.ws_url) as at_production, connect(staging.ws_url) as at_staging:
            for step in range(1, 4):
                await production.fake.set_prices({"BTCUSDT": f"{70000 + step}.00"})
                await staging.fake.set_prices({"BTCUSDT": f"{70250 + step}.00"})
                await asyncio.sleep(0.3)
            heard_production, heard_staging = await asyncio.gather(
                prices_heard(at_production, 0.5), prices_heard(at_staging, 0.5)
            )
        assert heard_production and all(70000 <= price <= 70003 for price in heard_production)
        assert heard_staging and all(70250 <= price <= 70253 for price in heard_staging)

        redis = aioredis.from_url(service_urls[1])
        try:
            for each, workers in ((production, 2), (staging, 1)):
                channel = channel_name(each.apps[0].state.services.redis_namespace)
                assert dict(await redis.pubsub_numsub(channel)) == {channel.encode(): workers}

            # Revocations and disabled users: the other worker of the same deployment hears
            # them, the other deployment does not.
            async with (
                httpx.AsyncClient(base_url=production.urls[0]) as at_production_http,
                httpx.AsyncClient(base_url=staging.urls[0]) as at_staging_http,
            ):
                production_user = await register_and_login(at_production_http)
                staging_user = await register_and_login(at_staging_http)
                logout = await at_production_http.post("/api/v1/auth/logout", headers=production_user.headers)
                assert logout.status_code == 204
                await production.apps[0].state.services.denylist.set_disabled(staging_user.id, True)
            other_worker, staging_worker = (
                production.apps[1].state.services.denylist,
                staging.apps[0].state.services.denylist,
            )
            deadline = time.monotonic() + 2
            while not (other_worker.revoked and staging_user.id in other_worker.disabled_ids):
                assert time.monotonic() < deadline, "the deployment's other worker did not hear it"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # what would cross over has had the same time to arrive
            assert staging_worker.revoked == {} and staging_worker.disabled_ids == frozenset()

            # A message from another deployment on our own channel (the same namespace
            # twice: a restored backup, say) is dropped and logged once.
            logging.getLogger().addHandler(caplog.handler)
            caplog.set_level(logging.ERROR, "exchange.prices.stream")
            stream = staging.apps[0].state.services.price_stream
            before = stream.latest["BTCUSDT"]
            foreign = seal(
                production.apps[0].state.services.deployment_id,
                encode_quotes([Quote("BTCUSDT", Decimal("1.00"), int(time.time() * 1000))]),
            )
            channel = channel_name(staging.apps[0].state.services.redis_namespace)
            for _ in range(3):
                assert await redis.publish(channel, foreign) == 1
            await asyncio.sleep(0.3)
            assert stream.latest["BTCUSDT"].price >= before.price  # not 1.00
            foreign_logs = [r for r in caplog.records if "another deployment" in r.getMessage()]
            assert len(foreign_logs) == 1
        finally:
            logging.getLogger().removeHandler(caplog.handler)
            await redis.aclose()
