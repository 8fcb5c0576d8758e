"""Cache-aside for prices in Redis: `{prefix}price:{symbol}` holds the latest Quote.

A read answers from Redis while the price is younger than PRICE_CACHE_TTL_MS. Past
that (or on a miss) it refreshes every market in one Binance request, stores the
answers and returns. However many requests miss at once, one refresh runs per process
(an asyncio future) and one per deployment (a short Redis lock: other workers wait for
its answer to land in Redis instead of asking Binance themselves).

While Binance fails, a price up to PRICE_STALE_MAX_MS old is still answered, marked
`stale` with its age (a request holding one waits at most STALE_WAIT_SECONDS for the
refresh); older or absent -> 503 price_unavailable. Redis keeps each key that long (its
TTL), so a DBA's `redis-cli GET` shows what clients are served.

When Binance answers 429 or 418, the pause it asks for is written to Redis
(`{prefix}price:paused`), so no worker of the deployment asks again before it ends.

If Redis is down, each worker answers from its own copy of the last prices and asks
Binance only when that copy is too old (one refresh at a time).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exchange.money import Money
from exchange.prices.binance import BinanceClient, PriceUnavailable, Quote
from exchange.schemas import Price

log = logging.getLogger("exchange.prices.cache")

# After a failed refresh, answer from what is cached (or 503) for this long instead of
# asking Binance again on every request.
FAILURE_HOLD_SECONDS = 1.0
# How often a worker that lost the refresh race looks for the winner's answer.
WAIT_POLL_SECONDS = 0.02
# A request that could answer with a stale price waits this long for a fresh one.
STALE_WAIT_SECONDS = 0.2

# Delete a lock or lease only if we still hold it (it may have expired and been taken).
RELEASE_IF_HOLDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Quote).decode


def now_ms() -> int:
    return int(time.time() * 1000)


def as_price(quote: Quote, fresh_ms: int, at_ms: int | None = None) -> Price:
    """The API's view of a quote: its price, when it was fetched and how old it is now."""
    age_ms = max(0, (now_ms() if at_ms is None else at_ms) - quote.fetched_at_ms)
    return Price(
        symbol=quote.symbol,
        price=Money(quote.price),
        fetched_at=datetime.fromtimestamp(quote.fetched_at_ms / 1000, UTC),
        age_ms=age_ms,
        stale=age_ms > fresh_ms,
    )


class PriceCache:
    def __init__(
        self,
        redis: aioredis.Redis,
        binance: BinanceClient,
        *,
        prefix: str,
        symbols: Sequence[str],
        fresh_ms: int,
        stale_max_ms: int,
        refresh_budget_ms: int,
    ) -> None:
        self.symbols = tuple(symbols)
        self.fresh_ms = fresh_ms
        self._redis = redis
        self._binance = binance
        self._stale_max_ms = stale_max_ms
        self._refresh_budget_ms = refresh_budget_ms
        self._keys = {symbol: f"{prefix}price:{symbol}" for symbol in self.symbols}
        self._lock_key = f"{prefix}price:refresh-lock"
        self._pause_key = f"{prefix}price:paused"
        # The last quotes this worker saw, for when Redis cannot be read.
        self._local: dict[str, Quote] = {}
        self._release_lock = redis.register_script(RELEASE_IF_HOLDER)
        self._inflight: asyncio.Future[dict[str, Quote]] | None = None
        self._failed_until = 0.0

    async def price(self, symbol: str) -> Price:
        return (await self.prices([symbol]))[0]

    async def prices(self, symbols: Sequence[str] | None = None) -> list[Price]:
        """Each symbol's price (all markets by default), refreshed first if too old."""
        symbols = self.symbols if symbols is None else symbols
        cached = await self.read(symbols)
        now = now_ms()
        if all(s in cached and now - cached[s].fetched_at_ms <= self.fresh_ms for s in symbols):
            return [as_price(cached[s], self.fresh_ms, now) for s in symbols]
        usable = {s: q for s, q in cached.items() if now - q.fetched_at_ms <= self._stale_max_ms}
        has_fallback = all(s in usable for s in symbols)
        try:
            refresh = self.refresh()
            if has_fallback:
                quotes = await asyncio.wait_for(refresh, STALE_WAIT_SECONDS)
            else:
                quotes = await refresh
        except (PriceUnavailable, TimeoutError):
            if not has_fallback:
                raise
            now = now_ms()
            if any(now - usable[s].fetched_at_ms > self._stale_max_ms for s in symbols):
                raise PriceUnavailable("upstream_error") from None
            return [as_price(usable[s], self.fresh_ms, now) for s in symbols]
        return [as_price(quotes[s], self.fresh_ms) for s in symbols]

    async def read(self, symbols: Iterable[str]) -> dict[str, Quote]:
        """What Redis holds for these symbols; if Redis is down, this worker's own copy."""
        symbols = list(symbols)
        try:
            values = await self._redis.mget([self._keys[s] for s in symbols])
        except RedisError as exc:
            log.warning("price cache unreadable (%s): using this worker's copy", type(exc).__name__)
            return {s: self._local[s] for s in symbols if s in self._local}
        found: dict[str, Quote] = {}
        for symbol, value in zip(symbols, values, strict=True):
            if value is None:
                continue
            try:
                found[symbol] = _decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("ignoring an unreadable cached price for %s", symbol)  # a miss: refetched
        self._local.update(found)
        return found

    async def read_all(self) -> dict[str, Quote]:
        return await self.read(self.symbols)

    async def store(self, quotes: Iterable[Quote]) -> None:
        quotes = list(quotes)
        self._local.update((quote.symbol, quote) for quote in quotes)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for quote in quotes:
                    pipe.set(self._keys[quote.symbol], _encode(quote), px=self._stale_max_ms)
                await pipe.execute()
        except RedisError as exc:
            log.warning("price cache not written (%s)", type(exc).__name__)

    def refresh(self) -> asyncio.Future[dict[str, Quote]]:
        """Fetch every market from Binance and store it; concurrent callers share one fetch.

        Awaiting the result with a timeout gives up waiting, never the fetch itself.
        """
        if self._inflight is None:
            if time.monotonic() < self._failed_until:
                raise PriceUnavailable("upstream_error")
            self._inflight = asyncio.ensure_future(self._refresh())
            self._inflight.add_done_callback(self._refresh_done)
        return asyncio.shield(self._inflight)

    def _refresh_done(self, future: asyncio.Future[dict[str, Quote]]) -> None:
        self._inflight = None
        if future.cancelled() or future.exception() is not None:
            self._failed_until = time.monotonic() + FAILURE_HOLD_SECONDS

    async def _refresh(self) -> dict[str, Quote]:
        token = secrets.token_hex(8)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.pttl(self._pause_key)
                pipe.set(self._lock_key, token, nx=True, px=self._refresh_budget_ms)
                paused_ms, locked = await pipe.execute()
        except RedisError:
            paused_ms, locked = -2, True  # no Redis, no other worker to share with: fetch here
        if paused_ms > 0:
            if locked:
                await self._release(token)
            raise PriceUnavailable("rate_limited", paused_ms // 1000 + 1)
        if not locked:
            return await self._wait_for_other_worker()
        try:
            quotes = await self._binance.ticker_prices(self.symbols)
            await self.store(quotes)
        except PriceUnavailable as exc:
            if exc.reason == "rate_limited":
                await self._pause_deployment(exc.retry_after_seconds)
            raise
        finally:
            await self._release(token)
        return {quote.symbol: quote for quote in quotes}

    async def _release(self, token: str) -> None:
        try:
            await self._release_lock(keys=[self._lock_key], args=[token])
        except RedisError:
            pass  # the lock expires on its own

    async def _pause_deployment(self, seconds: int) -> None:
        """Binance asked for a pause: no worker of this deployment asks before it ends."""
        try:
            await self._redis.set(self._pause_key, "1", px=seconds * 1000)
        except RedisError:
            pass  # this worker's client pauses on its own (binance.py)

    async def _wait_for_other_worker(self) -> dict[str, Quote]:
        """Another worker holds the refresh lock: wait for its prices to land in Redis.

        If it gives up (the lock goes without fresh prices), so does this worker: asking
        Binance again at once would multiply the load of an outage by the workers.
        """
        deadline = time.monotonic() + self._refresh_budget_ms / 1000
        while time.monotonic() < deadline:
            await asyncio.sleep(WAIT_POLL_SECONDS)
            cached = await self.read(self.symbols)
            now = now_ms()
            if len(cached) == len(self.symbols) and all(
                now - q.fetched_at_ms <= self.fresh_ms for q in cached.values()
            ):
                return cached
            try:
                if not await self._redis.exists(self._lock_key):
                    break
            except RedisError:
                break
        raise PriceUnavailable("upstream_error")
