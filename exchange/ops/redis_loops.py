"""Background loops that stop when asked, even if a library swallows a cancellation,
and the Redis channel follower that the price stream and the auth denylist share.

A follower hands on only messages sealed by its own deployment (exchange/ops/namespace.py):
another deployment's message on our channel means a misconfiguration (the same
REDIS_PREFIX and deployment id twice, e.g. a restored backup), and is dropped and
logged once.

redis-py can absorb a CancelledError that lands inside one of its calls (seen here: the
feed's lease task went on looping after cancel(), and shutdown waited forever). So loops
watch a stop event and sleep on it; cancel() is only the fallback after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exchange.ops.namespace import opened

STOP_GRACE_SECONDS = 3.0
RECONNECT_FIRST_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0


class Loops:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coroutine, name=name))

    async def pause(self, seconds: float) -> None:  # float-ok
        """Sleep, waking at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def stop(self) -> None:
        self.stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
        self._tasks = []


async def follow_channel(
    redis: aioredis.Redis,
    channel: str,
    loops: Loops,
    *,
    deployment_id: str,
    subscribed: asyncio.Event,
    on_subscribed: Callable[[], Awaitable[None]],
    on_message: Callable[[bytes], Awaitable[None] | None],
    log: logging.Logger,
    poll_seconds: float = 1.0,  # float-ok
) -> None:
    """Hand every message of a Redis pub/sub channel to on_message until the loops stop.
    If Redis goes away, resubscribe with backoff; on_subscribed runs after every
    (re)subscription, to catch up on what was published while nobody listened. Every
    poll_seconds the follower looks up to see whether it should stop. on_message gets
    the body of each message this deployment sealed; others are dropped."""
    backoff = RECONNECT_FIRST_SECONDS
    foreign_seen = False
    while not loops.stopping.is_set():
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                subscribed.set()
                backoff = RECONNECT_FIRST_SECONDS
                await on_subscribed()
                while not loops.stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_seconds)
                    if message is None:
                        continue
                    try:
                        envelope = opened(message["data"])
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        log.warning("ignoring a malformed message on channel %s", channel)
                        continue
                    if envelope.deployment == deployment_id:
                        handled = on_message(bytes(envelope.body))
                        if handled is not None:
                            await handled
                    elif not foreign_seen:
                        foreign_seen = True
                        log.error(
                            "ignoring messages from another deployment (%s) on channel %s: give"
                            " each deployment its own REDIS_PREFIX or deployment id (README)",
                            envelope.deployment[:64],
                            channel,
                        )
        except (RedisError, OSError) as exc:
            subscribed.clear()
            log.warning("channel %s lost (%s); retrying in %.1f s", channel, type(exc).__name__, backoff)
            await loops.pause(backoff)
            backoff = min(RECONNECT_MAX_SECONDS, backoff * 2)
