"""`exchange bench --scenario ws`: price fan-out to N WebSocket subscribers.

N clients follow BTCUSDT on WS /api/v1/ws/prices while the feed publishes one update a
second; every message's delivery delay is its arrival time minus its `fetched_at` (when
the stand-in gave the price: the poll, the cache write, the publication, the fan-out
and the network). Meanwhile, and before any subscriber connects, a paced reader sends
GET /api/v1/prices/BTCUSDT READS_PER_SECOND times a second: its p99 with the
subscribers against its p99 without them is what the fan-out costs the REST API.

The subscribers are raw non-blocking sockets (a handshake, a frame parser, pongs), not
a WebSocket library: 2,000 library clients would spend more of the shared CPU than the
server does. Even so, one process reads 2,000 arrivals one after another, so each
arrival is timed by the kernel (SO_TIMESTAMPNS: when the packet reached the socket), not
by when this process got round to it. The paced reader runs in a process of its own,
for the same reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import os
import secrets
import socket
import struct
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import msgspec

from exchange.bench import cpu
from exchange.bench.client import host_port
from exchange.bench.report import percentile

READS_PER_SECOND = 20
CONNECT_BATCH = 100  # handshakes in flight at once
CONNECT_TIMEOUT_SECONDS = 60
OPCODE_TEXT, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x1, 0x8, 0x9, 0xA
SO_TIMESTAMPNS = 35  # asm-generic/socket.h; Python's socket module does not name it
RECEIVE_BYTES = 65_536


def kernel_arrival_ns(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """When the bytes just read reached the socket, from recvmsg's SCM_TIMESTAMPNS."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return seconds * 1_000_000_000 + nanoseconds
    return None


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole (unmasked, server-sent) frames at the start of `data`, and the rest."""
    frames = []
    while len(data) >= 2:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4]), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10]), 10
        if len(data) < start + length:
            break
        frames.append((data[0] & 0x0F, data[start : start + length]))
        data = data[start + length :]
    return frames, data


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask; payloads here are short control payloads)."""
    mask = secrets.token_bytes(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class ErrorHeard(msgspec.Struct):
    code: str


class PriceHeard(msgspec.Struct):
    type: str
    fetched_at: datetime | None = None
    price: str | None = None
    error: ErrorHeard | None = None


_decode = msgspec.json.Decoder(PriceHeard).decode


class Subscriber:
    """One subscriber on a raw socket, read by the event loop's reader callback."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._buffer = b""
        self._upgraded = False
        self.first_price: asyncio.Future[None] = self._loop.create_future()
        self.delays_ns: list[int] = []
        self.fetched: list[datetime] = []
        self.closed: str | None = None
        self.measuring = False

    @classmethod
    async def connect(cls, host: str, port: int, path: str) -> Subscriber:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await loop.sock_connect(sock, (host, port))
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        subscriber = cls(sock)
        loop.add_reader(sock.fileno(), subscriber._readable)
        return subscriber

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self._sock.recvmsg(RECEIVE_BYTES, 256)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(type(exc).__name__)
            self.close()
            return
        if not data:
            self._fail("connection closed")
            self.close()
            return
        arrived = kernel_arrival_ns(ancillary) or time.time_ns()
        self._buffer += data
        if not self._upgraded:
            head, found, rest = self._buffer.partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(head[:80].decode(errors="replace"))
                return
            self._upgraded, self._buffer = True, rest
        frames, self._buffer = parse_frames(self._buffer)
        for opcode, payload in frames:
            if opcode == OPCODE_PING:
                with contextlib.suppress(OSError):  # 10 bytes: the socket takes them
                    self._sock.send(masked_frame(OPCODE_PONG, payload))
            elif opcode == OPCODE_CLOSE:
                self._fail(f"closed {int.from_bytes(payload[:2])} {payload[2:].decode(errors='replace')}")
            elif opcode == OPCODE_TEXT:
                self._heard(_decode(payload), arrived)

    def _heard(self, message: PriceHeard, arrived: int) -> None:
        if message.type != "price" or message.fetched_at is None:
            self._fail(message.error.code if message.error else f"got {message.type}")
            return
        if not self.first_price.done():
            self.first_price.set_result(None)
        if self.measuring:
            self.delays_ns.append(arrived - int(message.fetched_at.timestamp() * 1e9))
            self.fetched.append(message.fetched_at)

    def _fail(self, why: str) -> None:
        self.closed = self.closed or why
        if not self.first_price.done():
            self.first_price.set_exception(ConnectionError(why))

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


async def subscribe(url: str, count: int) -> list[Subscriber]:
    host, port = host_port(url)
    gate = asyncio.Semaphore(CONNECT_BATCH)

    async def one() -> Subscriber:
        async with gate:
            subscriber = await Subscriber.connect(host, port, "/api/v1/ws/prices?symbols=BTCUSDT")
            try:
                await asyncio.wait_for(subscriber.first_price, CONNECT_TIMEOUT_SECONDS)
            except ConnectionError as exc:
                raise SystemExit(
                    f"a subscriber was refused ({exc}): the server must allow --subscribers"
                    " connections from this address (WS_MAX_CONNECTIONS, WS_MAX_CONNECTIONS_PER_ADDRESS)"
                ) from None
            return subscriber

    return await asyncio.gather(*(one() for _ in range(count)))


def paced_reads_apart(url: str, seconds: float) -> list[int]:  # float-ok: a duration
    """paced_reads in a process of its own (run through ProcessPoolExecutor)."""

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            (await http.get("/api/v1/prices/BTCUSDT")).raise_for_status()  # connected, cached
            return await paced_reads(http, seconds)

    return asyncio.run(run())


async def paced_reads(http: httpx.AsyncClient, seconds: float) -> list[int]:  # float-ok: time
    """GET /prices/BTCUSDT every 1/READS_PER_SECOND s; each one's latency in ns."""
    latencies: list[int] = []
    started = time.perf_counter()
    for n in range(int(seconds * READS_PER_SECOND)):
        await asyncio.sleep(max(0.0, started + n / READS_PER_SECOND - time.perf_counter()))
        sent = time.perf_counter_ns()
        answer = await http.get("/api/v1/prices/BTCUSDT")
        latencies.append(time.perf_counter_ns() - sent)
        answer.raise_for_status()
    return latencies


async def run_ws(
    url: str,
    subscribers: int,
    seconds: float,  # float-ok: a duration
    server_pid: int | None,
) -> dict[str, Any]:
    """Paced reads alone, then with `subscribers` connected while prices are pushed.
    The CPU the server spent without subscribers (feed, reads) is subtracted from what
    it spent with them: the rest, per delivered message, is the fan-out's cost."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as reader:
        await loop.run_in_executor(reader, paced_reads_apart, url, 0.5)  # started, imports done
        start = cpu.snapshot(server_pid)
        alone = await loop.run_in_executor(reader, paced_reads_apart, url, seconds)
        baseline = cpu.snapshot(server_pid)
        connecting = time.perf_counter()
        clients = await subscribe(url, subscribers)
        connect_s = time.perf_counter() - connecting
        try:
            await asyncio.sleep(2)  # let the connect burst settle
            for client in clients:
                client.measuring = True
            before = cpu.snapshot(server_pid)
            busy = await loop.run_in_executor(reader, paced_reads_apart, url, seconds)
            after = cpu.snapshot(server_pid)
            for client in clients:
                client.measuring = False
            dropped = [client.closed for client in clients if client.closed]
        finally:
            for client in clients:
                client.close()
    delays = [delay for client in clients for delay in client.delays_ns]
    counts = sorted(len(client.delays_ns) for client in clients)
    in_order = all(client.fetched == sorted(client.fetched) for client in clients)
    cpu_used = cpu.per_request(before, after, len(delays), seconds)
    if before and baseline:
        fan_out_s = (after["server"] - before["server"]) - (baseline["server"] - start["server"])
        cpu_used["server_fan_out_us"] = round(fan_out_s / max(1, len(delays)) * 1e6, 1)
    return {
        "subscribers": subscribers,
        "seconds": seconds,
        "connect_s": round(connect_s, 2),
        "messages": len(delays),
        "messages_per_subscriber": {"min": counts[0], "max": counts[-1]} if counts else {},
        "in_order": in_order,
        "dropped": dropped[:5],
        "delivery_delay_ms": summary_ms(delays),
        "rest_read_ms_alone": summary_ms(alone),
        "rest_read_ms_with_subscribers": summary_ms(busy),
        # µs of CPU per delivered message (client-message), per process group; and the
        # server's beyond what it spent without subscribers.
        "cpu_per_message": cpu_used,
        "cores": os.cpu_count(),
    }


def summary_ms(values_ns: list[int]) -> dict[str, float]:
    ordered = sorted(values_ns)
    out = {f"p{p}": round(percentile(ordered, p / 100), 1) for p in (50, 95, 99)}
    out["max"] = round(ordered[-1] / 1e6, 1) if ordered else 0.0
    return out


def table(results: dict[str, Any]) -> str:
    ws = results["ws"]
    delay, alone, busy = (
        ws["delivery_delay_ms"],
        ws["rest_read_ms_alone"],
        ws["rest_read_ms_with_subscribers"],
    )
    cpu_used = ws["cpu_per_message"]
    lines = [
        f"ws: {ws['subscribers']} subscribers of BTCUSDT, one update a second, {ws['seconds']} s measured"
        f" ({ws['messages']} messages; per subscriber {ws['messages_per_subscriber']};"
        f" in order: {ws['in_order']}; dropped: {len(ws['dropped'])}; connected in {ws['connect_s']} s)",
        "delivery delay (arrival - fetched_at), ms: "
        + ", ".join(f"{name} {value}" for name, value in delay.items()),
        f"GET /prices/BTCUSDT at {READS_PER_SECOND}/s, ms: alone p50 {alone['p50']} p99 {alone['p99']};"
        f" with the subscribers p50 {busy['p50']} p99 {busy['p99']}",
        "CPU per delivered message, µs: "
        + ", ".join(
            f"{name.removesuffix('_us')} {value}" for name, value in cpu_used.items() if name.endswith("_us")
        )
        + f"; machine busy {cpu_used.get('machine_busy')}",
    ]
    return "\n".join(lines)
