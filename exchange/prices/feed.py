"""The price feed: one poller for the whole deployment, elected through Redis.

Every worker runs a PriceFeed. They compete for a lease, `{prefix}price:feed-leader`
(SET NX with a TTL of PRICE_FEED_LEASE_MS), which its holder renews three times per
lease. Only the holder polls: every PRICE_POLL_MS it refreshes all markets in one
Binance request (through the cache, which stores them) and publishes the prices that
changed on the `{prefix}prices` channel ({prefix} being the deployment's namespace,
exchange/ops/namespace.py), sealed with the deployment's id. If the holder's worker dies, its lease runs out
and another worker takes over within one lease; a worker that stops cleanly hands the
lease back at once.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exchange.ops.namespace import seal
from exchange.ops.redis_loops import Loops
from exchange.prices.binance import PriceUnavailable, Quote
from exchange.prices.cache import RELEASE_IF_HOLDER, PriceCache

log = logging.getLogger("exchange.prices.feed")

# Take the lease if it is free, or renew it if it is ours; 1 if we hold it afterwards.
_ACQUIRE_OR_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""

encode_quotes = msgspec.json.Encoder().encode
decode_quotes = msgspec.json.Decoder(list[Quote]).decode


def channel_name(prefix: str) -> str:
    return f"{prefix}prices"


class PriceFeed:
    def __init__(
        self,
        redis: aioredis.Redis,
        cache: PriceCache,
        *,
        prefix: str,
        deployment_id: str,
        poll_ms: int,
        lease_ms: int,
        on_leadership: Callable[[bool], None] = lambda leading: None,
        after_poll: Callable[[list[Quote]], Awaitable[object]] | None = None,
    ) -> None:
        self._redis = redis
        self._deployment_id = deployment_id
        self._cache = cache
        self._poll_seconds = poll_ms / 1000
        self._lease_ms = lease_ms
        self._lease_key = f"{prefix}price:feed-leader"
        self._channel = channel_name(prefix)
        self._acquire = redis.register_script(_ACQUIRE_OR_RENEW)
        self._release = redis.register_script(RELEASE_IF_HOLDER)
        self.worker_id = secrets.token_hex(8)
        self._is_leader = False
        self._on_leadership = on_leadership  # told when this worker takes or loses the lease
        # Given every price after each poll, once it is published (exchange/prices/order_fills.py).
        self._after_poll = after_poll
        self.polls = 0
        self._published: dict[str, Decimal] = {}
        self._loops = Loops()

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    @is_leader.setter
    def is_leader(self, value: bool) -> None:
        if value != self._is_leader:
            self._on_leadership(value)
        self._is_leader = value

    def start(self) -> None:
        self._loops.start(self._keep_lease(), "price-feed-lease")
        self._loops.start(self._poll(), "price-feed-poll")

    async def stop(self) -> None:
        await self._loops.stop()
        if self.is_leader:
            self.is_leader = False
            with contextlib.suppress(RedisError):
                await self._release(keys=[self._lease_key], args=[self.worker_id])

    async def _keep_lease(self) -> None:
        while not self._loops.stopping.is_set():
            try:
                held = await self._acquire(keys=[self._lease_key], args=[self.worker_id, self._lease_ms])
            except RedisError as exc:
                held = 0  # cannot prove we hold it: stop polling until Redis answers
                log.warning("price feed lease unreachable (%s)", type(exc).__name__)
            if bool(held) != self.is_leader:
                log.info("price feed: this worker %s the poller", "is now" if held else "is no longer")
                self._published.clear()  # a new leader publishes every price once
            self.is_leader = bool(held) and not self._loops.stopping.is_set()
            await self._loops.pause(self._lease_ms / 3000)

    async def _poll(self) -> None:
        while not self._loops.stopping.is_set():
            started = time.monotonic()
            if self.is_leader:
                try:
                    await self.poll_once()
                except Exception:
                    # Never let the poll loop die: its worker would keep the lease, and
                    # no other worker would take over.
                    log.exception("price feed: poll failed")
            await self._loops.pause(max(0.0, self._poll_seconds - (time.monotonic() - started)))

    async def poll_once(self) -> None:
        """Refresh every market and publish what changed since the last publication."""
        self.polls += 1
        try:
            quotes = await self._cache.refresh()
        except PriceUnavailable as exc:
            log.warning("price feed: Binance unavailable (%s)", exc.reason)
            return
        changed = [q for q in quotes.values() if self._published.get(q.symbol) != q.price]
        if changed:
            try:
                await self._redis.publish(self._channel, seal(self._deployment_id, encode_quotes(changed)))
            except RedisError as exc:
                log.warning("price feed: not published (%s)", type(exc).__name__)
                return
            self._published.update((q.symbol, q.price) for q in changed)
        if self._after_poll is not None:
            await self._after_poll(list(quotes.values()))
