"""A lean HTTP/1.1 keep-alive client for the benchmark: one request in flight per
connection, requests written as prepared bytes, answers parsed only as far as the
status line, Content-Length and body.

A general client (httpx) spends ~10x more CPU per request than this; on a machine where
the generator shares two cores with the server, PostgreSQL and Redis, that difference is
the server's throughput. The benchmark reports the generator's CPU share to show it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class ConnectionLost(Exception):
    """The server closed the connection or sent something that is not HTTP/1.1."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionLost(str(exc or "closed by the server")))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buffer[:head_end])
        length = _content_length(head)
        if length is None:
            self.waiter.set_exception(ConnectionLost("an answer without Content-Length"))
            return
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return
        body = bytes(self.buffer[head_end + 4 : end])
        del self.buffer[:end]
        try:
            status = int(head[9:12])
        except ValueError:
            self.waiter.set_exception(ConnectionLost("not an HTTP/1.1 status line"))
            return
        self.waiter.set_result((status, head, body))


def _content_length(head: bytes) -> int | None:
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        return None
    line_end = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : line_end if line_end > 0 else None])


class Connection:
    """One keep-alive connection; `send` writes a request and waits for its answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._protocol: _Protocol | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, self._protocol = await loop.create_connection(_Protocol, self.host, self.port)

    async def send(self, request: bytes) -> tuple[int, bytes, bytes]:
        """(status, head, body). Reconnects first if the server closed the connection."""
        if self._protocol is None or self._protocol.closed:
            await self.open()
        protocol = self._protocol
        assert protocol is not None and protocol.transport is not None
        protocol.waiter = asyncio.get_running_loop().create_future()
        protocol.transport.write(request)
        return await protocol.waiter

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"the benchmark speaks plain HTTP: {url!r} is not an http:// URL")
    return parts.hostname, parts.port or 80
