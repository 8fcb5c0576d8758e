"""Binance's spot REST API over one shared httpx.AsyncClient.

Every failure (Binance's error JSON, 429/418, 5xx, timeouts, a broken connection, a
body that is not the expected JSON) becomes PriceUnavailable, answered as 503
`price_unavailable`; never a 500. Transient failures are retried a bounded number of
times with exponential backoff and jitter. A 429 or 418 is never retried: Binance asks
for a pause (Retry-After) and bans IPs that keep asking, so no request is sent until the
pause is over.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TypeVar

import httpx
import msgspec

from exchange import __version__
from exchange.config import Settings
from exchange.errors import ExchangeError

log = logging.getLogger("exchange.prices.binance")

BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 1.0
# Binance allows 6000 request weight per minute; warn well before it starts refusing.
USED_WEIGHT_WARNING = 4800
RETRY_AFTER_MAX_SECONDS = 3 * 86_400

T = TypeVar("T")


class Quote(msgspec.Struct, frozen=True):
    """One price as Binance gave it, and when (Unix ms, our clock) we received it."""

    symbol: str
    price: Decimal
    fetched_at_ms: int


class _TickerPrice(msgspec.Struct):
    symbol: str
    price: Decimal


class PriceUnavailable(ExchangeError):
    def __init__(self, reason: str, retry_after_seconds: int = 1) -> None:
        super().__init__(
            "price_unavailable",
            "no current price: the price source is not answering; retry shortly",
            {"reason": reason},
            retry_after_seconds=max(1, retry_after_seconds),
        )
        self.reason = reason
        self.retry_after_seconds = max(1, retry_after_seconds)


class _Retryable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one client for the process (created in the app's lifespan)."""
    return httpx.AsyncClient(
        base_url=settings.binance_url,
        timeout=httpx.Timeout(settings.binance_timeout_ms / 1000),
        limits=httpx.Limits(
            max_connections=settings.binance_max_connections,
            max_keepalive_connections=settings.binance_max_connections,
        ),
        headers={"User-Agent": f"exchange/{__version__}"},
        follow_redirects=False,
    )


class BinanceClient:
    def __init__(self, http: httpx.AsyncClient, max_attempts: int, attempt_timeout_ms: int) -> None:
        self._http = http
        self._max_attempts = max_attempts
        # httpx times each phase (connect, write, read...) separately; this bounds the whole.
        self._attempt_timeout_seconds = attempt_timeout_ms / 1000
        self._paused_until = 0.0  # time.monotonic() before which Binance asked us to wait
        self.used_weight_1m = 0

    async def ticker_prices(self, symbols: Sequence[str]) -> list[Quote]:
        """The current price of each symbol, in one request (`?symbols=[...]`)."""
        params = {"symbols": msgspec.json.encode(list(symbols)).decode()}
        answers = await self._get("/api/v3/ticker/price", params, list[_TickerPrice])
        fetched_at_ms = int(time.time() * 1000)
        quotes = [
            Quote(a.symbol, a.price, fetched_at_ms) for a in answers if a.price.is_finite() and a.price > 0
        ]
        if {q.symbol for q in quotes} != set(symbols):
            raise PriceUnavailable("bad_response")
        return quotes

    async def _get(self, path: str, params: dict[str, str], shape: type[T]) -> T:
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            raise PriceUnavailable("rate_limited", int(pause) + 1)
        reason = "unreachable"
        for attempt in range(self._max_attempts):
            if attempt:
                backoff = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1))
                await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 - jitter
            try:
                return await self._get_once(path, params, shape)
            except _Retryable as exc:
                reason = exc.reason
        log.warning("Binance %s failed %d times (%s)", path, self._max_attempts, reason)
        raise PriceUnavailable(reason)

    async def _get_once(self, path: str, params: dict[str, str], shape: type[T]) -> T:
        try:
            async with asyncio.timeout(self._attempt_timeout_seconds):
                response = await self._http.get(path, params=params)
        except (httpx.TimeoutException, TimeoutError):
            raise _Retryable("timeout") from None
        except httpx.HTTPError:
            raise _Retryable("unreachable") from None
        self._note_weight(response)
        status = response.status_code
        if status in (418, 429):
            retry_after = _seconds(response.headers.get("Retry-After"))
            self._paused_until = time.monotonic() + retry_after
            log.warning("Binance answered %d: pausing requests for %d s", status, retry_after)
            raise PriceUnavailable("rate_limited", retry_after)
        if status >= 500:
            raise _Retryable("upstream_error")
        if status != 200:
            # Binance refused the request itself ({"code": -1121, "msg": "Invalid symbol."}):
            # retrying cannot help.
            log.warning("Binance refused %s: %d %s", path, status, response.text[:200])
            raise PriceUnavailable("upstream_refused")
        try:
            return msgspec.json.decode(response.content, type=shape)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise _Retryable("bad_response") from None

    def _note_weight(self, response: httpx.Response) -> None:
        weight = response.headers.get("X-MBX-USED-WEIGHT-1M")
        if weight and weight.isdigit():
            self.used_weight_1m = int(weight)
            if self.used_weight_1m >= USED_WEIGHT_WARNING:
                log.warning("Binance request weight used this minute: %d of 6000", self.used_weight_1m)


def _seconds(header: str | None) -> int:
    """Retry-After in whole seconds (Binance sends seconds; an IP ban can last 3 days)."""
    if header and header.strip().isdigit():
        return min(RETRY_AFTER_MAX_SECONDS, max(1, int(header)))
    return 5
