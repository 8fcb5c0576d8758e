"""Prices over HTTP: cache-aside in Redis, single flight, and Binance's faults.

Each test runs its own Binance stand-in and its own server (feed off, so every upstream
request the stand-in counts was caused by the test's reads).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from exchange.config import Settings
from exchange.ops.namespace import redis_namespace
from tests.conftest import FakeBinanceControl, fake_binance_server, running_server

SYMBOLS = ["BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"]


def price_settings(settings: Settings, fake: FakeBinanceControl, **overrides: Any) -> Settings:
    """Its own stand-in and Redis prefix, no feed, short Binance timeouts."""
    return msgspec.structs.replace(
        settings,
        binance_url=fake.url,
        redis_prefix=f"test:{secrets.token_hex(4)}:",
        price_poll_ms=0,
        **{"binance_timeout_ms": 300, "binance_max_attempts": 2, **overrides},
    )


@asynccontextmanager
async def price_service(
    settings: Settings, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeBinanceControl]]:
    async with fake_binance_server() as fake:
        configured = price_settings(settings, fake, **overrides)
        async with running_server(configured) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http, fake


def assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "price_unavailable"
    assert int(answer.headers["Retry-After"]) >= 1


async def test_a_cold_read_fetches_once_and_the_next_is_served_from_redis(settings: Settings) -> None:
    async with price_service(settings) as (http, fake):
        first = await http.get("/api/v1/prices/BTCUSDT")
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["symbol"] == "BTCUSDT" and body["stale"] is False
        assert 0 <= body["age_ms"] < 5_000
        datetime.fromisoformat(body["fetched_at"])
        assert await fake.upstream_requests() == 1

        again = await http.get("/api/v1/prices/btcusdt")
        assert again.json()["price"] == body["price"]
        assert again.json()["fetched_at"] == body["fetched_at"]
        every = await http.get("/api/v1/prices")  # the one request fetched every market
        assert [price["symbol"] for price in every.json()] == SYMBOLS
        assert await fake.upstream_requests() == 1


async def test_the_cache_lives_in_redis_with_a_ttl(settings: Settings, deployment_id: str) -> None:
    async with fake_binance_server() as fake:
        configured = price_settings(settings, fake, price_stale_max_ms=30_000)
        async with running_server(configured) as url, httpx.AsyncClient(base_url=url) as http:
            served = (await http.get("/api/v1/prices/ETHUSDT")).json()
    # The server is gone; what it cached stays in Redis, for any worker or host to read.
    redis = aioredis.from_url(settings.redis_url)
    try:
        key = f"{redis_namespace(configured.redis_prefix, deployment_id)}price:ETHUSDT"
        value = msgspec.json.decode(await redis.get(key))
        assert value["symbol"] == "ETHUSDT"
        assert Decimal(value["price"]) == Decimal(served["price"])
        assert 0 < await redis.pttl(key) <= 30_000
    finally:
        await redis.aclose()


async def test_fifty_concurrent_cold_reads_make_one_upstream_request(settings: Settings) -> None:
    async with price_service(settings) as (http, fake):
        paths = [f"/api/v1/prices/{SYMBOLS[i % 4]}" for i in range(45)] + ["/api/v1/prices"] * 5
        answers = await asyncio.gather(*(http.get(path) for path in paths))
        assert [answer.status_code for answer in answers] == [200] * 50
        assert await fake.upstream_requests() == 1
        assert len({answer.json()["fetched_at"] for answer in answers[:45]}) == 1


async def test_an_expired_entry_is_fetched_again(settings: Settings) -> None:
    async with price_service(settings, price_cache_ttl_ms=200) as (http, fake):
        first = (await http.get("/api/v1/prices/BTCUSDT")).json()
        await asyncio.sleep(0.3)
        second = (await http.get("/api/v1/prices/BTCUSDT")).json()
        assert await fake.upstream_requests() == 2
        assert second["fetched_at"] > first["fetched_at"]
        assert second["stale"] is False


async def test_unknown_symbols_answer_404(settings: Settings, client: httpx.AsyncClient) -> None:
    for symbol in ("NOPE", "ETHBTC", "BTC-USDT", "x" * 30):
        answer = await client.get(f"/api/v1/prices/{symbol}")
        assert answer.status_code == 404, symbol
        assert answer.json()["error"]["code"] == "unknown_symbol"


# mode -> upstream requests for one cold read with BINANCE_MAX_ATTEMPTS=2: transient
# failures are retried once; 429 and 418 are never retried.
FAULTS = {
    "error": ({"mode": "error"}, 2),
    "rate_limit": ({"mode": "rate_limit"}, 1),
    "ban": ({"mode": "ban"}, 1),
    "slow": ({"mode": "slow", "delay_ms": 1_000}, 2),
    "malformed": ({"mode": "malformed"}, 2),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_failing_binance_gives_price_unavailable_never_a_500(settings: Settings, fault: str) -> None:
    options, requests = FAULTS[fault]
    async with price_service(settings) as (http, fake):
        await fake.fail(**options)
        assert_unavailable(await http.get("/api/v1/prices/BTCUSDT"))
        assert await fake.upstream_requests() == requests
        assert_unavailable(await http.get("/api/v1/prices"))


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_failing_binance_leaves_the_last_price_served_stale_with_its_age(
    settings: Settings, fault: str
) -> None:
    options, _ = FAULTS[fault]
    async with price_service(settings, price_cache_ttl_ms=200) as (http, fake):
        fresh = (await http.get("/api/v1/prices/SOLUSDT")).json()
        await asyncio.sleep(0.3)
        await fake.fail(**options)
        stale = await http.get("/api/v1/prices/SOLUSDT")
        assert stale.status_code == 200, stale.text
        body = stale.json()
        assert body["stale"] is True and body["age_ms"] >= 300
        assert (body["price"], body["fetched_at"]) == (fresh["price"], fresh["fetched_at"])


async def test_a_stale_price_past_its_limit_is_not_served(settings: Settings) -> None:
    async with price_service(settings, price_cache_ttl_ms=100, price_stale_max_ms=300) as (http, fake):
        assert (await http.get("/api/v1/prices/BTCUSDT")).status_code == 200
        await asyncio.sleep(0.4)
        await fake.fail("error")
        assert_unavailable(await http.get("/api/v1/prices/BTCUSDT"))


async def test_a_transient_error_is_retried(settings: Settings) -> None:
    async with price_service(settings) as (http, fake):
        await fake.fail("error", count=1)
        answer = await http.get("/api/v1/prices/BTCUSDT")
        assert answer.status_code == 200, answer.text
        assert await fake.upstream_requests() == 2


async def test_after_a_429_nothing_is_sent_until_retry_after(settings: Settings) -> None:
    async with price_service(settings, price_cache_ttl_ms=100) as (http, fake):
        await fake.fail("rate_limit", count=1)
        assert_unavailable(await http.get("/api/v1/prices/BTCUSDT"))
        await asyncio.sleep(0.2)
        assert_unavailable(await http.get("/api/v1/prices/BTCUSDT"))
        assert await fake.upstream_requests() == 1  # the pause was respected
        await asyncio.sleep(1.0)  # Retry-After: 1
        assert (await http.get("/api/v1/prices/BTCUSDT")).status_code == 200
        assert await fake.upstream_requests() == 2


async def test_prices_come_straight_from_binance_while_redis_is_down(settings: Settings) -> None:
    async with price_service(settings, redis_url="redis://127.0.0.1:1/0") as (http, fake):
        answer = await http.get("/api/v1/prices/BTCUSDT")
        assert answer.status_code == 200, answer.text
        assert answer.json()["stale"] is False
        assert await fake.upstream_requests() == 1


async def test_while_redis_is_down_a_worker_answers_from_its_own_copy(settings: Settings) -> None:
    """Redis down must not turn every request into a Binance request (and an IP ban)."""
    async with price_service(settings, redis_url="redis://127.0.0.1:1/0") as (http, fake):
        answers = [await http.get("/api/v1/prices/BTCUSDT") for _ in range(20)]
        answers += await asyncio.gather(*(http.get("/api/v1/prices") for _ in range(20)))
        assert {answer.status_code for answer in answers} == {200}
        assert await fake.upstream_requests() == 1


async def test_an_unreadable_cached_value_is_a_miss_not_a_500(settings: Settings, deployment_id: str) -> None:
    async with fake_binance_server() as fake:
        configured = price_settings(settings, fake)
        redis = aioredis.from_url(settings.redis_url)
        key = f"{redis_namespace(configured.redis_prefix, deployment_id)}price:BTCUSDT"
        await redis.set(key, b'{"not": "a quote"}', px=60_000)
        async with running_server(configured) as url, httpx.AsyncClient(base_url=url) as http:
            answer = await http.get("/api/v1/prices/BTCUSDT")
            assert answer.status_code == 200, answer.text
            assert await fake.upstream_requests() == 1
        stored = msgspec.json.decode(await redis.get(key))
        assert stored["symbol"] == "BTCUSDT"  # overwritten with a good quote
        await redis.aclose()


async def test_binance_pause_holds_for_every_worker_of_the_deployment(settings: Settings) -> None:
    """Two workers (two servers on one Redis prefix): after one gets a 429, the other
    does not ask Binance either until Retry-After has passed."""
    async with fake_binance_server() as fake:
        configured = price_settings(settings, fake, price_cache_ttl_ms=100)
        async with (
            running_server(configured) as first_url,
            running_server(configured) as second_url,
            httpx.AsyncClient() as http,
        ):
            await fake.fail("rate_limit", count=1)
            assert_unavailable(await http.get(f"{first_url}/api/v1/prices/BTCUSDT"))
            assert await fake.upstream_requests() == 1
            answer = await http.get(f"{second_url}/api/v1/prices/BTCUSDT")
            assert_unavailable(answer)
            assert answer.json()["error"]["details"]["reason"] == "rate_limited"
            assert await fake.upstream_requests() == 1
            await asyncio.sleep(1.1)
            assert (await http.get(f"{second_url}/api/v1/prices/BTCUSDT")).status_code == 200


async def test_a_stale_price_is_answered_without_waiting_for_a_slow_binance(settings: Settings) -> None:
    async with price_service(
        settings, price_cache_ttl_ms=200, binance_timeout_ms=2_000, binance_max_attempts=1
    ) as (http, fake):
        assert (await http.get("/api/v1/prices/BTCUSDT")).status_code == 200
        await asyncio.sleep(0.3)
        await fake.fail("slow", delay_ms=2_500)
        started = time.monotonic()
        stale = await http.get("/api/v1/prices/BTCUSDT")
        waited = time.monotonic() - started
        assert stale.status_code == 200 and stale.json()["stale"] is True
        assert waited < 1.5  # the refresh itself takes 2 s to time out
