"""Fixed-window attempt counters in Redis, shared by every worker and host.

Each counter is one key, `{prefix}rl:{action}:{ip|email}:{who}`, incremented and given
its expiry by one Lua script, so the count is exact however many workers share it
(Litestar's rate-limit middleware keeps its count per process). The counters of one
request travel in one pipeline: one round trip.

If Redis cannot be reached, requests are let through (fail open) with a warning at
most every WARN_EVERY_SECONDS: logging in and registering keep working during an outage,
unthrottled, which the README says.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exchange.config import Settings
from exchange.errors import ExchangeError

log = logging.getLogger("exchange.ratelimit")

WARN_EVERY_SECONDS = 10.0

# KEYS[1] the counter; ARGV[1] the window in ms, ARGV[2] the limit.
# Returns the ms left in the window if this attempt is over the limit, else 0.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if count <= tonumber(ARGV[2]) then
    return 0
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    left = tonumber(ARGV[1])
end
return left
"""


class Limit(msgspec.Struct, frozen=True):
    """At most `count` attempts per `window_seconds` (count 0: no limit)."""

    count: int
    window_seconds: int


class Limits(msgspec.Struct, frozen=True):
    per_ip: Limit
    per_email: Limit


def limits_from(settings: Settings) -> dict[str, Limits]:
    """The limits of each action, as configured."""
    login_window, register_window = settings.login_window_seconds, settings.register_window_seconds
    return {
        "login": Limits(
            per_ip=Limit(settings.login_limit_per_ip, login_window),
            per_email=Limit(settings.login_limit_per_email, login_window),
        ),
        "register": Limits(
            per_ip=Limit(settings.register_limit_per_ip, register_window),
            per_email=Limit(settings.register_limit_per_email, register_window),
        ),
    }


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str, limits: dict[str, Limits]) -> None:
        self._redis = redis
        self._prefix = f"{prefix}rl:"
        self._limits = limits
        self._hit = redis.register_script(_HIT)
        self._warned_at = -math.inf

    async def check(self, action: str, ip: str, email: str) -> None:
        """Count one attempt at `action` by this IP and for this email; 429 rate_limited
        if either is over its limit, with Retry-After the seconds left in that window."""
        limits = self._limits[action]
        # The email is hashed: Redis keys should not list who tried to log in.
        email_digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        counters = [
            (f"{self._prefix}{action}:ip:{ip}", limits.per_ip),
            (f"{self._prefix}{action}:email:{email_digest}", limits.per_email),
        ]
        counters = [(key, limit) for key, limit in counters if limit.count > 0]
        if not counters:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, limit in counters:
                    await self._hit(keys=[key], args=[limit.window_seconds * 1000, limit.count], client=pipe)
                waits_ms = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._warn(exc)
            return
        wait_ms = max(int(w) for w in waits_ms)
        if wait_ms > 0:
            retry_after = max(1, math.ceil(wait_ms / 1000))
            raise ExchangeError(
                "rate_limited",
                f"too many attempts; retry in {retry_after} s",
                429,
                {"retry_after": retry_after},
                headers={"Retry-After": str(retry_after)},
            )

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("rate limits not enforced: Redis unavailable (%s)", type(exc).__name__)
