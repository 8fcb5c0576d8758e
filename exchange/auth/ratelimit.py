"""Fixed-window attempt counters in Redis, shared by every worker and host.

Each counter is one key, `{prefix}rl:{action}:{ip|email}:{who}`, incremented and given
its expiry by one Lua script, so the count is exact however many workers share it
(Litestar's rate-limit middleware keeps its count per process). The counters of one
request travel in one pipeline or script: one round trip. Every key is bounded: the
address is a valid IP (exchange/http/forwarded.py), the email a digest.

Logins are limited so that an attacker cannot turn the limit against the account's
owner (a per-email count of every attempt let anyone keep a victim out with ten wrong
passwords a minute from anywhere). Following OWASP's authentication cheat sheet
(lockout lets attackers deny service; throttle per source, back off per account):
- per address: every attempt (LOGIN_LIMIT_PER_IP), the bound on bcrypt work;
- per (email, address): wrong passwords (LOGIN_LIMIT_PER_EMAIL_IP): one address
  guessing one account stops there;
- per email: wrong passwords from every address (LOGIN_LIMIT_PER_EMAIL), a backoff
  that holds only addresses that have themselves failed on this email: the owner,
  from an address without failures, logs in whatever others send; a distributed
  guesser gets one guess per fresh address per window.
A right password clears its address's failures for that email.

Money movements are bounded per user by a token bucket (MOVEMENT_RATE_PER_USER a
second, MOVEMENT_BURST_PER_USER at once), one script call before the movement.

If Redis cannot be reached, requests are let through (fail open) with a warning at
most every WARN_EVERY_SECONDS: logging in, registering and moving money keep working
during an outage, unthrottled, which the README says.
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

log = logging.getLogger("exchange.auth.ratelimit")

WARN_EVERY_SECONDS = 10.0
# Addresses are short already (exchange/http/forwarded.py); a key is bounded whatever comes.
ADDRESS_KEY_MAX_CHARS = 64

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


# KEYS: attempts per address, failures per (email, address), failures per email.
# ARGV: window ms, then the three limits (0: off). Counts this attempt for its address;
# returns the ms until it may be tried again (the longest wait over its limits), else 0.
_LOGIN = """
local window = tonumber(ARGV[1])
local function left(key)
    local ms = redis.call('PTTL', key)
    if ms < 0 then
        redis.call('PEXPIRE', key, window)
        ms = window
    end
    return ms
end
local wait = 0
if tonumber(ARGV[2]) > 0 then
    local attempts = redis.call('INCR', KEYS[1])
    if attempts == 1 then
        redis.call('PEXPIRE', KEYS[1], window)
    end
    if attempts > tonumber(ARGV[2]) then
        wait = math.max(wait, left(KEYS[1]))
    end
end
local failed_here = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[3]) > 0 and failed_here >= tonumber(ARGV[3]) then
    wait = math.max(wait, left(KEYS[2]))
end
if tonumber(ARGV[4]) > 0 and failed_here > 0 then
    if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[4]) then
        wait = math.max(wait, left(KEYS[3]))
    end
end
return wait
"""

# KEYS: failures per (email, address), failures per email; ARGV: window ms.
_LOGIN_FAILED = """
for _, key in ipairs(KEYS) do
    if redis.call('INCR', key) == 1 then
        redis.call('PEXPIRE', key, ARGV[1])
    end
end
return 0
"""


# A token bucket per user for money movements. KEYS[1] the bucket (a hash: tokens, at);
# ARGV[1] tokens added per second, ARGV[2] the bucket's size. Takes one token; returns
# 0, or the ms until one is there (nothing taken). Redis's own clock: one for all hosts.
_BUCKET = """
local rate = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or size
local at = tonumber(state[2]) or now_ms
tokens = math.min(size, tokens + math.max(0, now_ms - at) * rate / 1000)
local wait = 0
if tokens >= 1 then
    tokens = tokens - 1
else
    wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now_ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(size * 1000 / rate) + 1000)
return wait
"""


class Limits(msgspec.Struct, frozen=True):
    per_ip: Limit
    per_email: Limit


class LoginLimits(msgspec.Struct, frozen=True):
    """Attempts per address; wrong passwords per (email, address) and per email."""

    attempts_per_ip: int
    failures_per_email_ip: int
    failures_per_email: int
    window_seconds: int


def limits_from(settings: Settings) -> dict[str, Limits]:
    """The limits of each action counted per address and per email, as configured."""
    register_window = settings.register_window_seconds
    return {
        "register": Limits(
            per_ip=Limit(settings.register_limit_per_ip, register_window),
            per_email=Limit(settings.register_limit_per_email, register_window),
        ),
    }


class MovementQuota(msgspec.Struct, frozen=True):
    """Money movements per user: `per_second` on average (0: no quota), `burst` at once."""

    per_second: int
    burst: int


def movement_quota_from(settings: Settings) -> MovementQuota:
    return MovementQuota(settings.movement_rate_per_user, settings.movement_burst_per_user)


def login_limits_from(settings: Settings) -> LoginLimits:
    return LoginLimits(
        attempts_per_ip=settings.login_limit_per_ip,
        failures_per_email_ip=settings.login_limit_per_email_ip,
        failures_per_email=settings.login_limit_per_email,
        window_seconds=settings.login_window_seconds,
    )


def email_digest(email: str) -> str:
    # Hashed: Redis keys should not list who tried to log in.
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        limits: dict[str, Limits],
        login: LoginLimits,
        movement_quota: MovementQuota,
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}rl:"
        self._limits = limits
        self._login = login
        self._hit = redis.register_script(_HIT)
        self._login_check = redis.register_script(_LOGIN)
        self._login_failed = redis.register_script(_LOGIN_FAILED)
        self._bucket = redis.register_script(_BUCKET)
        self._movement_quota = movement_quota
        self._warned_at = -math.inf

    def _login_keys(self, ip: str, email: str) -> list[str]:
        digest = email_digest(email)
        ip = ip[:ADDRESS_KEY_MAX_CHARS]
        return [
            f"{self._prefix}login:ip:{ip}",
            f"{self._prefix}login:failed:{digest}:{ip}",
            f"{self._prefix}login:failed:{digest}",
        ]

    async def check_login(self, ip: str, email: str) -> None:
        """Before the password is checked: count the attempt for its address; 429
        rate_limited if the address, or this email from this address, is over a limit."""
        limits = self._login
        args = [
            limits.window_seconds * 1000,
            limits.attempts_per_ip,
            limits.failures_per_email_ip,
            limits.failures_per_email,
        ]
        try:
            wait_ms = await self._login_check(keys=self._login_keys(ip, email), args=args)
        except (RedisError, OSError) as exc:
            self._warn(exc)
            return
        _refuse_if_waiting([wait_ms])

    async def login_failed(self, ip: str, email: str) -> None:
        """A wrong password: one more failure for this email, here and everywhere."""
        keys = self._login_keys(ip, email)[1:]
        try:
            await self._login_failed(keys=keys, args=[self._login.window_seconds * 1000])
        except (RedisError, OSError) as exc:
            self._warn(exc)

    async def login_succeeded(self, ip: str, email: str) -> None:
        """The right password: this address's failures on this email are forgotten."""
        try:
            await self._redis.delete(self._login_keys(ip, email)[1])
        except (RedisError, OSError) as exc:
            self._warn(exc)

    async def check(self, action: str, ip: str, email: str) -> None:
        """Count one attempt at `action` by this IP and for this email; 429 rate_limited
        if either is over its limit, with Retry-After the seconds left in that window."""
        limits = self._limits[action]
        counters = [
            (f"{self._prefix}{action}:ip:{ip[:ADDRESS_KEY_MAX_CHARS]}", limits.per_ip),
            (f"{self._prefix}{action}:email:{email_digest(email)}", limits.per_email),
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
        _refuse_if_waiting(waits_ms)

    async def take_movement(self, user_id: int) -> None:
        """One money movement of this user's quota; 429 rate_limited (Retry-After) if
        its bucket is empty. Called before the movement, never under a row lock."""
        quota = self._movement_quota
        if not quota.per_second:
            return
        key = f"{self._prefix}move:{user_id}"
        try:
            wait_ms = await self._bucket(keys=[key], args=[quota.per_second, quota.burst])
        except (RedisError, OSError) as exc:
            self._warn(exc)
            return
        if int(wait_ms) > 0:
            raise rate_limited(int(wait_ms), "money movements")

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("rate limits not enforced: Redis unavailable (%s)", type(exc).__name__)


def rate_limited(wait_ms: int, what: str = "attempts") -> ExchangeError:
    """429 rate_limited, with Retry-After the whole seconds to wait."""
    retry_after = max(1, math.ceil(wait_ms / 1000))
    return ExchangeError(
        "rate_limited",
        f"too many {what}; retry in {retry_after} s",
        {"retry_after": retry_after},
        retry_after_seconds=retry_after,
    )


def _refuse_if_waiting(waits_ms: list[int]) -> None:
    wait_ms = max(int(w) for w in waits_ms)
    if wait_ms > 0:
        raise rate_limited(wait_ms)
