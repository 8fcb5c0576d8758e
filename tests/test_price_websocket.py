"""WS /api/v1/ws/prices: live pushes through Redis pub/sub, refusals, limits, slow clients."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from exchange.app import create_app
from exchange.config import Settings
from exchange.namespace import seal
from exchange.prices.binance import Quote
from exchange.prices.feed import channel_name, encode_quotes
from exchange.prices.stream import PriceStream
from tests.conftest import FakeBinanceControl, fake_binance_server, serving


@asynccontextmanager
async def price_server(
    settings: Settings, send_buffer_bytes: int | None = None, **overrides: Any
) -> AsyncIterator[tuple[str, FakeBinanceControl, Litestar]]:
    """Its own stand-in (prices frozen) and server; yields the WebSocket URL."""
    async with fake_binance_server() as fake:
        await fake.set_prices({"BTCUSDT": "70000.00"}, frozen=True)
        configured = msgspec.structs.replace(
            settings,
            binance_url=fake.url,
            redis_prefix=f"test:{secrets.token_hex(4)}:",
            **{"price_poll_ms": 100, **overrides},
        )
        app = create_app(configured)
        async with serving(app, send_buffer_bytes) as url:
            await asyncio.wait_for(app.state.price_stream.subscribed.wait(), 5)
            yield url.replace("http://", "ws://") + "/api/v1/ws/prices", fake, app


async def receive(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    return msgspec.json.decode(await asyncio.wait_for(ws.recv(), timeout))


async def test_a_client_receives_the_next_published_price(settings: Settings) -> None:
    async with price_server(settings) as (url, fake, _), connect(f"{url}?symbols=BTCUSDT") as ws:
        first = await receive(ws)
        assert first["type"] == "price" and first["symbol"] == "BTCUSDT"
        assert first["price"] == "70000.00000000"

        await fake.set_prices({"BTCUSDT": "70100.50", "ETHUSDT": "3100.00"})
        update = await receive(ws)
        while update["price"] == first["price"]:  # a snapshot and a first publication may both come
            update = await receive(ws)
        assert update["type"] == "price" and update["symbol"] == "BTCUSDT"  # not ETHUSDT
        assert update["price"] == "70100.50000000"
        assert update["fetched_at"] > first["fetched_at"] and update["stale"] is False
        assert 0 <= update["age_ms"] < 1_000


async def test_every_market_is_followed_when_no_symbols_are_named(settings: Settings) -> None:
    async with price_server(settings) as (url, _, _), connect(url) as ws:
        symbols = {(await receive(ws))["symbol"] for _ in range(4)}
        assert symbols == {"BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"}


async def refused(url: str) -> tuple[dict[str, Any], int, str]:
    """(error message, close code, close reason) of a connection the server refuses."""
    async with connect(url) as ws:
        error = await receive(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return error, closed.value.rcvd.code, closed.value.rcvd.reason


async def test_unknown_symbols_are_refused_with_the_documented_error(settings: Settings) -> None:
    async with price_server(settings) as (url, _, _):
        error, code, reason = await refused(f"{url}?symbols=BTCUSDT,NOPE,ETHBTC")
        assert error == {
            "type": "error",
            "error": {
                "code": "unknown_symbol",
                "message": "unknown symbol NOPE, ETHBTC",
                "details": {"symbols": ["NOPE", "ETHBTC"]},
            },
        }
        assert (code, reason) == (1008, "unknown_symbol")


async def test_symbols_per_connection_are_bounded(settings: Settings) -> None:
    async with price_server(settings, ws_max_symbols=2) as (url, _, _):
        error, code, _ = await refused(f"{url}?symbols=BTCUSDT,ETHUSDT,SOLUSDT")
        assert error["error"]["code"] == "too_many_symbols" and code == 1008
        error, code, _ = await refused(f"{url}?symbols=" + "B" * 1001)  # was a bare 403 handshake
        assert error["error"]["details"] == {"field": "symbols", "max_length": 1000} and code == 1008
        async with connect(f"{url}?symbols=btcusdt,ETHUSDT,BTCUSDT") as ws:  # 2 once deduplicated
            assert (await receive(ws))["type"] == "price"


async def test_connections_per_worker_are_bounded(settings: Settings) -> None:
    async with price_server(settings, ws_max_connections=1) as (url, _, app), connect(url) as first:
        assert (await receive(first))["type"] == "price"
        error, code, _ = await refused(url)
        assert error["error"]["code"] == "too_many_connections" and code == 1013
        assert app.state.price_stream.client_count == 1


async def _silent_client(url: str) -> socket.socket:
    """A WebSocket client that completes the handshake, then never reads again."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    handshake = (
        f"GET /api/v1/ws/prices?symbols=BTCUSDT HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, handshake.encode())
    answer = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


async def test_a_client_too_slow_to_read_is_dropped_without_slowing_the_others(settings: Settings) -> None:
    messages = 3_000  # ~400 kB: well past what a 4 kB send buffer and asyncio's 64 kB hold
    async with price_server(
        settings, send_buffer_bytes=4096, price_poll_ms=0, ws_queue_size=10_000, ws_send_timeout_ms=300
    ) as (
        url,
        _,
        app,
    ):
        stream: PriceStream = app.state.price_stream
        async with connect(f"{url}?symbols=BTCUSDT", max_queue=None) as fast:
            slow = await _silent_client(url)
            try:
                started = time.monotonic()
                while stream.client_count < 2:
                    assert time.monotonic() - started < 5
                    await asyncio.sleep(0.01)
                # A burst on the real channel, as the feed publishes it.
                redis = aioredis.from_url(settings.redis_url)
                channel = channel_name(app.state.redis_namespace)
                fetched_at_ms = int(time.time() * 1000)
                async with redis.pipeline(transaction=False) as pipe:
                    for n in range(1, messages + 1):
                        quotes = encode_quotes([Quote("BTCUSDT", Decimal(n), fetched_at_ms)])
                        pipe.publish(channel, seal(app.state.deployment_id, quotes))
                    await pipe.execute()
                await redis.aclose()

                received = []
                while len(received) < messages:
                    received.append((await receive(fast))["price"])
                assert received == [str(n) for n in range(1, messages + 1)]  # nothing lost, in order

                started = time.monotonic()
                while stream.client_count > 1:
                    assert time.monotonic() - started < 5, "the silent client was not dropped"
                    await asyncio.sleep(0.05)
            finally:
                slow.close()


async def test_a_client_that_falls_queue_size_behind_is_dropped_and_the_others_keep_theirs(
    settings: Settings,
) -> None:
    redis = aioredis.from_url(settings.redis_url)
    stream = PriceStream(
        redis, prefix="unused:", deployment_id="unused", fresh_ms=5_000, max_clients=10, queue_size=2
    )
    reader = stream.subscribe(["BTCUSDT"])
    laggard = stream.subscribe(["BTCUSDT"])
    other_symbol = stream.subscribe(["ETHUSDT"])
    for n in range(1, 6):
        stream.deliver([Quote("BTCUSDT", Decimal(n), int(time.time() * 1000))])
        if n >= 2:
            msgspec.json.decode(reader.queue.get_nowait())  # this one keeps up
    assert laggard.dropped.is_set() and not reader.dropped.is_set() and not other_symbol.dropped.is_set()
    assert stream.client_count == 2
    assert msgspec.json.decode(reader.queue.get_nowait())["price"] == "5"
    assert other_symbol.queue.empty()
    assert stream.latest["BTCUSDT"].price == Decimal(5)
    await redis.aclose()


async def test_a_first_price_never_follows_a_newer_push(settings: Settings) -> None:
    """The snapshot is read after subscribing; a push that lands meanwhile is newer and wins."""
    redis = aioredis.from_url(settings.redis_url)
    stream = PriceStream(
        redis, prefix="unused:", deployment_id="unused", fresh_ms=5_000, max_clients=10, queue_size=10
    )
    client = stream.subscribe(["BTCUSDT", "ETHUSDT"])
    stream.deliver([Quote("BTCUSDT", Decimal("70100"), 2_000)])  # the push
    stream.offer(
        client, [Quote("BTCUSDT", Decimal("70000"), 1_000), Quote("ETHUSDT", Decimal("3000"), 1_000)]
    )
    sent = [msgspec.json.decode(client.queue.get_nowait()) for _ in range(client.queue.qsize())]
    assert [(m["symbol"], m["price"]) for m in sent] == [("BTCUSDT", "70100"), ("ETHUSDT", "3000")]
    await redis.aclose()
