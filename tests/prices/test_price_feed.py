"""The price feed: one poller elected through Redis, publishing only what changed."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal

import httpx
import msgspec
import redis.asyncio as aioredis

from exchange.app import price_cache, price_feed
from exchange.config import Settings
from exchange.ops.namespace import opened, redis_namespace
from exchange.prices.binance import Quote, create_http_client
from exchange.prices.feed import PriceFeed, channel_name, decode_quotes
from tests.conftest import FakeBinanceControl, fake_binance_server

SYMBOLS = ["BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"]
LEASE_MS = 600
# These feeds run without a database: a made-up deployment id stands for its own.
DEPLOYMENT_ID = "feed-test"


def feed_settings(settings: Settings, fake: FakeBinanceControl) -> Settings:
    return msgspec.structs.replace(
        settings,
        binance_url=fake.url,
        redis_prefix=f"test:{secrets.token_hex(4)}:",
        price_poll_ms=100,
        price_feed_lease_ms=LEASE_MS,
    )


@asynccontextmanager
async def feed_worker(settings: Settings) -> AsyncIterator[PriceFeed]:
    """A worker's feed, wired as the app wires it, with its own Redis and HTTP clients."""
    redis = aioredis.from_url(settings.redis_url)
    http = create_http_client(settings)
    namespace = redis_namespace(settings.redis_prefix, DEPLOYMENT_ID)
    cache = price_cache(settings, redis, http, SYMBOLS, namespace)
    feed = price_feed(settings, redis, cache, namespace, DEPLOYMENT_ID)
    feed.start()
    try:
        yield feed
    finally:
        await feed.stop()
        await http.aclose()
        await redis.aclose()


async def wait_until(condition: Callable[[], bool], seconds: float) -> float:
    """Seconds it took for condition() to hold; fails after `seconds`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_two_feeds_elect_one_poller_and_another_takes_over_when_it_dies(settings: Settings) -> None:
    async with fake_binance_server() as fake:
        configured = feed_settings(settings, fake)
        redis = aioredis.from_url(settings.redis_url, decode_responses=True)
        async with feed_worker(configured) as first, feed_worker(configured) as second:
            await wait_until(lambda: first.is_leader or second.is_leader, 3)
            for _ in range(15):  # exactly one leader, all along
                assert first.is_leader != second.is_leader
                await asyncio.sleep(0.05)
            leader, follower = (first, second) if first.is_leader else (second, first)
            namespace = redis_namespace(configured.redis_prefix, DEPLOYMENT_ID)
            assert await redis.get(f"{namespace}price:feed-leader") == leader.worker_id
            assert leader.polls >= 5 and follower.polls == 0  # only the leader asks Binance

            # The leader's worker dies: its loops end, and nobody hands the lease over.
            await leader._loops.stop()
            leader.is_leader = False
            took = await wait_until(lambda: follower.is_leader, 3)
            assert took <= LEASE_MS / 1000 + 0.5
            polls = follower.polls
            await asyncio.sleep(0.3)
            assert follower.polls > polls
        await redis.aclose()


async def test_a_feed_that_stops_cleanly_hands_over_at_once(settings: Settings) -> None:
    async with fake_binance_server() as fake:
        configured = feed_settings(settings, fake)
        async with feed_worker(configured) as first:
            await wait_until(lambda: first.is_leader, 3)
            async with feed_worker(configured) as second:
                await asyncio.sleep(0.3)
                assert not second.is_leader
                await first.stop()
                took = await wait_until(lambda: second.is_leader, 3)
                # One renewal interval (lease / 3), not a whole lease.
                assert took < LEASE_MS / 1000


async def test_the_feed_publishes_only_prices_that_changed(settings: Settings) -> None:
    async with fake_binance_server() as fake:
        await fake.set_prices({"BTCUSDT": "60000.00", "ETHUSDT": "3000.00"}, frozen=True)
        configured = feed_settings(settings, fake)
        redis = aioredis.from_url(settings.redis_url)
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe(channel_name(redis_namespace(configured.redis_prefix, DEPLOYMENT_ID)))

            async def next_message(timeout: float) -> list[Quote] | None:
                # get_message also answers None for the (ignored) subscribe confirmation.
                deadline = time.monotonic() + timeout
                while (left := deadline - time.monotonic()) > 0:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                    if message is not None:
                        envelope = opened(message["data"])
                        assert envelope.deployment == DEPLOYMENT_ID
                        return decode_quotes(envelope.body)
                return None

            async with feed_worker(configured) as feed:
                first = await next_message(3)
                assert first is not None
                assert sorted(q.symbol for q in first) == SYMBOLS  # a new leader publishes all
                assert {q.symbol: q.price for q in first}["BTCUSDT"] == Decimal("60000.00")
                polls = feed.polls
                assert await next_message(0.5) is None  # frozen: nothing changed, nothing sent
                assert feed.polls >= polls + 3

                await fake.set_prices({"BTCUSDT": "60100.50"})
                changed = await next_message(3)
                assert changed is not None
                assert [(q.symbol, q.price) for q in changed] == [("BTCUSDT", Decimal("60100.50"))]

                # The cache holds what was published, for every worker to read.
                async with httpx.AsyncClient() as http:
                    namespace = redis_namespace(configured.redis_prefix, DEPLOYMENT_ID)
                    cache = price_cache(configured, redis, http, SYMBOLS, namespace)
                    cached = await cache.read(["BTCUSDT"])
                assert cached["BTCUSDT"].price == Decimal("60100.50")
        await redis.aclose()
