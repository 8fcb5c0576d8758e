"""Bounds on what a client sends before the application sees a request.

uvicorn's httptools protocol takes headers of any size and number (an 8 MB header was
parsed whole) and waits forever for a request's headers to end (a slowloris client
holds its connection with a byte now and then). BoundedHttpToolsProtocol adds:

- MAX_HEADER_BYTES: the request line and headers together; past it 431 and close;
- MAX_HEADERS: how many header fields; past it 431 and close;
- HEADER_TIMEOUT_MS: from the connection's start, or a request's first byte, to the
  end of its headers; past it the connection is closed.

Bodies are bounded by the application (MAX_BODY_BYTES), connections and requests per
worker by uvicorn's `limit_concurrency` (LIMIT_CONCURRENCY: past it, 503).
"""

from __future__ import annotations

import asyncio

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from exchange.config import Settings

_TOO_LARGE_BODY = (
    b'{"error":{"code":"headers_too_large","message":"the request line and headers are over this '
    b"server's limits (MAX_HEADER_BYTES, MAX_HEADERS)\"}}"
)
TOO_LARGE = b"".join(
    [
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(_TOO_LARGE_BODY)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        _TOO_LARGE_BODY,
    ]
)


class HttpLimits(msgspec.Struct, frozen=True):
    """The defaults are the settings' (exchange/config.py)."""

    max_header_bytes: int = 16_384
    max_headers: int = 100
    header_timeout_ms: int = 10_000
    limit_concurrency: int = 2_048


class _OverLimit(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of `limits` (see the module)."""

    limits = HttpLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_bytes = 0
        self._header_count = 0
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # As uvicorn's, with an over-limit request answered 431 instead of 400.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__cause__, _OverLimit) or isinstance(exc.__context__, _OverLimit):
                self.transport.write(TOO_LARGE)
                self.transport.close()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._header_count = 0
        self._await_headers()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._headers_done()
        super().on_headers_complete()

    def _count(self, size: int, fields: int) -> None:
        self._header_bytes += size
        self._header_count += fields
        if self._header_bytes > self.limits.max_header_bytes or self._header_count > self.limits.max_headers:
            raise _OverLimit

    def _await_headers(self) -> None:
        if self._header_deadline is None:
            seconds = self.limits.header_timeout_ms / 1000
            self._header_deadline = self.loop.call_later(seconds, self._headers_too_slow)

    def _headers_done(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def bounded_protocol(limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class uvicorn is given (`http=`), with these limits."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


def uvicorn_options(limits: HttpLimits) -> dict[str, object]:
    """What every server of the product gives uvicorn (exchange serve, the tests'):
    these bounds, and no proxy headers (the app reads them: exchange/http/forwarded.py).
    Built in the process that serves: the class is made here, not pickled."""
    return {
        "http": bounded_protocol(limits),
        "limit_concurrency": limits.limit_concurrency,
        "proxy_headers": False,
    }


def http_limits_from(settings: Settings) -> HttpLimits:
    return HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_ms=settings.header_timeout_ms,
        limit_concurrency=settings.limit_concurrency,
    )
