"""Who may no longer use their token, known to every worker without asking anyone.

The per-request check (`check`) is two set lookups in this process: no database query
and no Redis round trip on the hot path. Each worker keeps
- the ids of disabled and deleted users (from PostgreSQL `users.disabled` and
  `users_deleted`, which a trigger fills when a DBA deletes a user), and
- the `jti` of revoked tokens until they expire (from the Redis sorted set
  `{prefix}auth:revoked`, scored by the token's `exp`).

Both are loaded at start and kept current three ways:
1. the worker that makes a change applies it at once;
2. it announces it on the Redis channel `{prefix}auth`, which every worker follows;
3. every AUTH_RELOAD_MS each worker rereads both in full, so a lost message or a DBA's
   `UPDATE users SET disabled = true` in psql takes effect within that bound.
If Redis is down, the last known sets stay enforced and disabled users still reload
from PostgreSQL; a logout, which must reach every worker, answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exchange.auth.security import AuthUser, unauthorized
from exchange.ops.namespace import seal
from exchange.ops.redis_loops import Loops, follow_channel
from exchange.store import repository as repo

log = logging.getLogger("exchange.auth.denylist")

# A reload that takes longer (PostgreSQL or Redis hanging) gives up until the next one.
RELOAD_TIMEOUT_SECONDS = 5.0
# How often the listener looks up from the channel to see whether it should stop.
LISTEN_POLL_SECONDS = 0.25


class Revoked(msgspec.Struct, tag="revoke", tag_field="op"):
    jti: str
    exp: int


class Disabled(msgspec.Struct, tag="user", tag_field="op"):
    """A user was disabled (disabled=true) or enabled again."""

    user_id: int
    disabled: bool


Change = Revoked | Disabled
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Change).decode


class Denylist:
    def __init__(
        self,
        pool: repo.Pool,
        redis: aioredis.Redis,
        *,
        prefix: str,
        deployment_id: str,
        reload_ms: int,
        legacy_prefix: str | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._deployment_id = deployment_id
        self._revoked_key = f"{prefix}auth:revoked"
        # Before migration 014 the set was `{REDIS_PREFIX}auth:revoked`: logouts made
        # then stay enforced from it until their tokens expire (JWT_TTL_SECONDS).
        self._legacy_revoked_key = f"{legacy_prefix}auth:revoked" if legacy_prefix is not None else None
        self._channel = f"{prefix}auth"
        self._reload_seconds = reload_ms / 1000
        self._loops = Loops()
        self._reload_lock = asyncio.Lock()
        self._reload_now = asyncio.Event()
        # Changes heard while a reload reads the database: replayed on what it read,
        # so a reload that started before a change cannot undo it.
        self._heard_during_reload: list[Disabled] | None = None
        self.disabled_ids: frozenset[int] = frozenset()
        self.revoked: dict[str, int] = {}
        self.subscribed = asyncio.Event()

    def check(self, user: AuthUser) -> None:
        """401 unauthorized if the token's user is disabled or the token revoked."""
        if user.id in self.disabled_ids:
            raise unauthorized("this account is disabled or deleted")
        if user.jti in self.revoked:
            raise unauthorized("the access token has been revoked")

    async def start(self) -> None:
        await self.reload()
        self._loops.start(self._reload_forever(), "auth-reload")
        self._loops.start(self._listen(), "auth-listen")

    async def stop(self) -> None:
        self._reload_now.set()
        await self._loops.stop()

    async def revoke(self, jti: str, exp: int) -> None:
        """Revoke a token everywhere until it expires. Raises if Redis is unreachable:
        a revocation that only this worker knew of would not be one."""
        now = int(time.time())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self._revoked_key, {jti: exp})
            pipe.zremrangebyscore(self._revoked_key, "-inf", now)
            # The set lives until its last token expires (NX: first expiry; GT: later).
            pipe.expireat(self._revoked_key, exp, nx=True)
            pipe.expireat(self._revoked_key, exp, gt=True)
            pipe.publish(self._channel, seal(self._deployment_id, _encode(Revoked(jti=jti, exp=exp))))
            await pipe.execute()
        self._apply(Revoked(jti=jti, exp=exp))

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        """After the database says so: apply here, then tell the other workers. If Redis
        is down they learn it from their next reload (within AUTH_RELOAD_MS)."""
        change = Disabled(user_id=user_id, disabled=disabled)
        self._apply(change)
        try:
            await self._redis.publish(self._channel, seal(self._deployment_id, _encode(change)))
        except (RedisError, OSError) as exc:
            log.warning(
                "could not announce a disabled/enabled user (%s); other workers apply it within %.1f s",
                type(exc).__name__,
                self._reload_seconds,
            )

    async def reload(self) -> None:
        """Reread both sets; either source failing keeps its last known set."""
        async with self._reload_lock:
            await self._reload_disabled()
            await self._reload_revoked()

    def _apply(self, change: Change) -> None:
        if isinstance(change, Revoked):
            if change.exp > time.time():
                self.revoked[change.jti] = change.exp
            return
        if self._heard_during_reload is not None:
            self._heard_during_reload.append(change)
        self.disabled_ids = _with(self.disabled_ids, change)

    async def _reload_disabled(self) -> None:
        self._heard_during_reload = []
        try:
            ids = await asyncio.wait_for(repo.disabled_user_ids(self._pool), RELOAD_TIMEOUT_SECONDS)
            loaded = frozenset(ids)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("could not reload disabled users (%s); keeping the last set", type(exc).__name__)
            return
        finally:
            heard, self._heard_during_reload = self._heard_during_reload, None
        for change in heard:
            loaded = _with(loaded, change)
        self.disabled_ids = loaded

    async def _reload_revoked(self) -> None:
        now = int(time.time())
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(self._revoked_key, "-inf", now)
                pipe.zrangebyscore(self._revoked_key, now + 1, "+inf", withscores=True)
                if self._legacy_revoked_key is not None:
                    pipe.zrangebyscore(self._legacy_revoked_key, now + 1, "+inf", withscores=True)
                _, *found = await asyncio.wait_for(pipe.execute(), RELOAD_TIMEOUT_SECONDS)
            rows = [row for rows_of_one_key in found for row in rows_of_one_key]
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not reload revoked tokens (%s); keeping the last set", type(exc).__name__)
            rows = []
        # Union: a revocation is never undone, and one made here while Redis was being
        # read must not be lost. Expired ones are dropped (their tokens fail anyway).
        merged = {jti: exp for jti, exp in self.revoked.items() if exp > now}
        merged.update((jti.decode(), int(exp)) for jti, exp in rows)
        self.revoked = merged

    async def _reload_forever(self) -> None:
        while not self._loops.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_now.wait(), self._reload_seconds)
            self._reload_now.clear()
            if self._loops.stopping.is_set():
                return
            try:
                await self.reload()
            except Exception:  # this loop must outlive any one failure
                log.exception("reloading disabled users and revoked tokens failed")

    async def _listen(self) -> None:
        await follow_channel(
            self._redis,
            self._channel,
            self._loops,
            deployment_id=self._deployment_id,
            subscribed=self.subscribed,
            on_subscribed=self._catch_up,
            on_message=self._apply_raw,
            log=log,
            poll_seconds=LISTEN_POLL_SECONDS,
        )

    async def _catch_up(self) -> None:
        # Whatever was announced while we were not listening: reread (in the reload loop).
        self._reload_now.set()

    def _apply_raw(self, data: bytes) -> None:
        try:
            change = _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring a malformed message on the auth channel")
            return
        self._apply(change)


def _with(disabled_ids: frozenset[int], change: Disabled) -> frozenset[int]:
    if change.disabled:
        return disabled_ids | {change.user_id}
    return disabled_ids - {change.user_id}
