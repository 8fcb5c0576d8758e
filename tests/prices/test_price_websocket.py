"""WS /api/v1/ws/prices: live pushes through Redis pub/sub, refusals, limits, slow clients."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from exchange.app import create_app
from exchange.bench.ws import OPCODE_CLOSE, OPCODE_TEXT, parse_frames
from exchange.config import Settings
from exchange.ops.namespace import seal
from exchange.ops.serving import websocket_options
from exchange.prices.binance import Quote
from exchange.prices.feed import channel_name, encode_quotes
from exchange.prices.stream import PriceStream, message_text
from tests.conftest import FakeBinanceControl, fake_binance_server, serving


@asynccontextmanager
async def price_servers(
    settings: Settings, workers: int, send_buffer_bytes: int | None = None, **overrides: Any
) -> AsyncIterator[tuple[list[str], FakeBinanceControl, list[Litestar]]]:
    """Its own stand-in (prices frozen) and `workers` apps with the same settings (the
    workers of one server, each on a port of its own); yields their WebSocket URLs."""
    async with fake_binance_server() as fake, AsyncExitStack() as stack:
        await fake.set_prices({"BTCUSDT": "70000.00"}, frozen=True)
        configured = msgspec.structs.replace(
            settings,
            binance_url=fake.url,
            redis_prefix=f"test:{secrets.token_hex(4)}:",
            **{"price_poll_ms": 100, **overrides},
        )
        apps = [create_app(configured) for _ in range(workers)]
        urls = []
        for app in apps:
            url = await stack.enter_async_context(
                serving(app, send_buffer_bytes, **websocket_options(configured))
            )
            await asyncio.wait_for(app.state.services.price_stream.subscribed.wait(), 5)
            urls.append(url.replace("http://", "ws://") + "/api/v1/ws/prices")
        yield urls, fake, apps


@asynccontextmanager
async def price_server(
    settings: Settings, send_buffer_bytes: int | None = None, **overrides: Any
) -> AsyncIterator[tuple[str, FakeBinanceControl, Litestar]]:
    """Its own stand-in (prices frozen) and server; yields the WebSocket URL."""
    async with price_servers(settings, 1, send_buffer_bytes, **overrides) as (urls, fake, apps):
        yield urls[0], fake, apps[0]


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


async def test_connections_per_server_are_bounded(settings: Settings) -> None:
    async with price_server(settings, ws_max_connections=1) as (url, _, app), connect(url) as first:
        assert (await receive(first))["type"] == "price"
        error, code, _ = await refused(url)
        assert error["error"]["code"] == "too_many_connections" and code == 1013
        assert app.state.services.price_stream.client_count == 1


async def _silent_client(url: str) -> tuple[socket.socket, bytes]:
    """A WebSocket client that completes the handshake, then does not read; returns its
    socket and what it read past the handshake's answer."""
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
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), answer
    return sock, rest


async def _read_until_closed(sock: socket.socket, already: bytes) -> tuple[list[str], int, str]:
    """Read a raw client's frames to the end: (texts, close code, close reason)."""
    loop = asyncio.get_running_loop()
    data, texts = already, []
    while True:
        frames, data = parse_frames(data)
        for opcode, payload in frames:
            if opcode == OPCODE_CLOSE:
                return texts, int.from_bytes(payload[:2]), payload[2:].decode()
            if opcode == OPCODE_TEXT:
                texts.append(payload.decode())
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65_536), 5)
        assert chunk, "the connection ended without a close frame"
        data += chunk


async def test_a_client_too_slow_to_read_is_dropped_without_slowing_the_others(settings: Settings) -> None:
    messages = 3_000  # ~400 kB: well past what a 4 kB send buffer and asyncio's 64 kB hold
    async with price_server(
        settings,
        send_buffer_bytes=4096,
        price_poll_ms=0,
        ws_max_unsent_bytes=16_000_000,
        ws_send_timeout_ms=300,
        ws_ping_interval_ms=200,
    ) as (
        url,
        _,
        app,
    ):
        stream: PriceStream = app.state.services.price_stream
        async with connect(f"{url}?symbols=BTCUSDT", max_queue=None) as fast:
            slow, _ = await _silent_client(url)
            try:
                started = time.monotonic()
                while stream.client_count < 2:
                    assert time.monotonic() - started < 5
                    await asyncio.sleep(0.01)
                # A burst on the real channel, as the feed publishes it.
                redis = aioredis.from_url(settings.redis_url)
                channel = channel_name(app.state.services.redis_namespace)
                fetched_at_ms = int(time.time() * 1000)
                async with redis.pipeline(transaction=False) as pipe:
                    for n in range(1, messages + 1):
                        quotes = encode_quotes([Quote("BTCUSDT", Decimal(n), fetched_at_ms)])
                        pipe.publish(channel, seal(app.state.services.deployment_id, quotes))
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


async def test_a_client_holding_ws_max_unsent_bytes_is_dropped_and_the_others_keep_theirs(
    settings: Settings,
) -> None:
    redis = aioredis.from_url(settings.redis_url)
    one_message = len(message_text(Quote("BTCUSDT", Decimal(1), int(time.time() * 1000)), 5_000))
    stream = PriceStream(
        redis,
        prefix="unused:",
        deployment_id="unused",
        fresh_ms=5_000,
        max_unsent_bytes=2 * one_message + one_message // 2,  # two messages fit, not three
        send_timeout_ms=5_000,
    )
    reader = stream.subscribe(["BTCUSDT"])
    laggard = stream.subscribe(["BTCUSDT"])
    other_symbol = stream.subscribe(["ETHUSDT"])
    for n in range(1, 6):
        stream.deliver([Quote("BTCUSDT", Decimal(n), int(time.time() * 1000))])
        if n >= 2:  # this one keeps up
            reader.taken(reader.queue.get_nowait())
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
        redis,
        prefix="unused:",
        deployment_id="unused",
        fresh_ms=5_000,
        max_unsent_bytes=10_000,
        send_timeout_ms=5_000,
    )
    client = stream.subscribe(["BTCUSDT", "ETHUSDT"])
    stream.deliver([Quote("BTCUSDT", Decimal("70100"), 2_000)])  # the push
    stream.offer(
        client, [Quote("BTCUSDT", Decimal("70000"), 1_000), Quote("ETHUSDT", Decimal("3000"), 1_000)]
    )
    sent = [msgspec.json.decode(client.queue.get_nowait()) for _ in range(client.queue.qsize())]
    assert [(m["symbol"], m["price"]) for m in sent] == [("BTCUSDT", "70100"), ("ETHUSDT", "3000")]
    await redis.aclose()


async def _connected(url: str) -> ClientConnection | dict[str, Any]:
    """An accepted connection (its first price read), or the error of a refused one."""
    ws = await connect(url)
    first = await receive(ws)
    if first["type"] == "price":
        return ws
    await ws.close()
    return first


async def test_the_connection_limit_holds_for_the_whole_server_when_a_burst_lands_unevenly(
    settings: Settings,
) -> None:
    limit = 30
    async with price_servers(settings, 2, ws_max_connections=limit, ws_max_connections_per_address=100) as (
        (busy, quiet),
        _,
        apps,
    ):
        # 28 on one worker and 12 on the other, all at once: a limit per worker (or the
        # limit halved) would let 40 in, or refuse some while the server had room.
        outcomes = await asyncio.gather(
            *[_connected(busy) for _ in range(28)], *[_connected(quiet) for _ in range(12)]
        )
        accepted = [ws for ws in outcomes if isinstance(ws, ClientConnection)]
        refused = [error for error in outcomes if isinstance(error, dict)]
        try:
            assert len(accepted) == limit
            assert {error["error"]["code"] for error in refused} == {"too_many_connections"}
            assert sum(app.state.services.price_stream.client_count for app in apps) == limit
            # A slot given back is free again, on either worker.
            for ws in accepted[:3]:
                await ws.close()
            deadline = time.monotonic() + 5
            while sum(app.state.services.price_stream.client_count for app in apps) > limit - 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            again = await asyncio.gather(*[_connected(quiet) for _ in range(3)], _connected(busy))
            assert [isinstance(ws, ClientConnection) for ws in again] == [True, True, True, False]
            accepted += [ws for ws in again if isinstance(ws, ClientConnection)]
        finally:
            await asyncio.gather(*[ws.close() for ws in accepted])


async def test_one_address_cannot_take_every_slot(settings: Settings) -> None:
    async with price_server(settings, ws_max_connections_per_address=2) as (url, _, app):
        async with connect(url) as first, connect(url) as second:
            assert (await receive(first))["type"] == (await receive(second))["type"] == "price"
            error, code, _ = await refused(url)
            assert error["error"] == {
                "code": "too_many_connections_from_address",
                "message": "too many WebSocket connections from this address",
                "details": {"max": 2},
            }
            assert code == 1008
        async with connect(url) as third:  # the address's slots were given back
            assert (await receive(third))["type"] == "price"
        deadline = time.monotonic() + 5
        while app.state.services.ws_slots.address_count:  # nothing kept for an address gone
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)


async def test_the_price_socket_refuses_a_client_message_over_4_kib(settings: Settings) -> None:
    async with price_server(settings) as (url, _, _), connect(url, max_size=None) as ws:
        assert (await receive(ws))["type"] == "price"
        await ws.send("x" * 4_096)  # the limit itself is fine (and ignored)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send("x" * 15_000_000)  # refused from the frame's header on
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
        async with connect(url) as other:  # the server serves on
            assert (await receive(other))["type"] == "price"


def _server_side_send_buffers(port: int) -> list[tuple[int, int]]:
    """(Send-Q bytes, send buffer size `tb`) of each connection the server holds, from ss."""
    lines = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    found = []
    for line, memory in zip(lines[0::2], lines[1::2], strict=False):
        send_queue = int(line.split()[1])
        send_buffer = int(re.search(r"\btb(\d+)", memory).group(1))  # type: ignore[union-attr]
        found.append((send_queue, send_buffer))
    return found


@pytest.mark.skipif(
    shutil.which("ss") is None and os.environ.get("CI") != "true", reason="needs ss (iproute2)"
)
async def test_two_hundred_reader_less_clients_are_closed_too_slow_in_time_with_bounded_memory(
    settings: Settings,
) -> None:
    clients = 200
    ping_interval_ms, send_timeout_ms = 500, 1_000
    # The documented bound: WS_PING_INTERVAL_MS + WS_SEND_TIMEOUT_MS, plus the 0.25 s the
    # stream takes to look at every client; 1 s more for a busy machine.
    drop_within = (ping_interval_ms + send_timeout_ms) / 1000 + 0.25 + 1.0
    async with price_server(
        settings,
        ws_ping_interval_ms=ping_interval_ms,
        ws_send_timeout_ms=send_timeout_ms,
        ws_max_connections_per_address=clients + 1,
    ) as (url, fake, app):
        stream: PriceStream = app.state.services.price_stream
        rss_before = _rss_bytes()
        silent = await asyncio.gather(*[_silent_client(f"{url}?symbols=BTCUSDT") for _ in range(clients)])
        started = time.monotonic()

        async def ten_prices_a_second() -> None:
            for step in itertools.count(1):
                await fake.set_prices({"BTCUSDT": f"{70000 + step}.00"})
                await asyncio.sleep(0.1)

        moving = asyncio.create_task(ten_prices_a_second())
        try:
            async with connect(f"{url}?symbols=BTCUSDT") as reader:
                await asyncio.sleep(0.8)  # before the first can be dropped (1.5 s in)
                port = int(url.split(":")[2].split("/")[0])
                buffers = _server_side_send_buffers(port)
                assert len(buffers) >= clients
                # Each connection's kernel buffer is capped (SO_SNDBUF 16 KiB, counted
                # twice by Linux): not the up to 4 MiB that autotuning allowed.
                assert max(size for _, size in buffers) <= 2 * 16_384
                assert sum(queued for queued, _ in buffers) <= clients * 2 * 16_384
                while stream.client_count > 1:
                    assert time.monotonic() - started < drop_within, (
                        "reader-less clients were not dropped in time"
                    )
                    await asyncio.sleep(0.05)
                took = time.monotonic() - started
                assert (await receive(reader))["type"] == "price"  # the reading client stays
            rss_growth = _rss_bytes() - rss_before
            # 200 clients, each held to WS_MAX_UNSENT_BYTES (16 KiB) at most: a few MB.
            assert rss_growth < 40_000_000, rss_growth
            for sock, already in silent[:: clients // 10]:  # each is told why, once it reads
                texts, code, reason = await _read_until_closed(sock, already)
                assert (code, reason) == (1008, "too_slow")
                assert msgspec.json.decode(texts[-1])["error"]["code"] == "too_slow"
                assert all(msgspec.json.decode(text)["type"] == "price" for text in texts[:-1])
        finally:
            moving.cancel()
            for sock, _ in silent:
                sock.close()
    print(
        f"{clients} reader-less clients dropped {took:.2f} s after connecting; RSS +{rss_growth / 1e6:.1f} MB"
    )


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
