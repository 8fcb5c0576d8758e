"""Background loops that stop when asked, even if a library swallows a cancellation,
and the Redis channel follower that the price stream and the auth denylist share.

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

import redis.asyncio as aioredis
from redis.exceptions import RedisError

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
    subscribed: asyncio.Event,
    on_subscribed: Callable[[], Awaitable[None]],
    on_message: Callable[[bytes], None],
    log: logging.Logger,
    poll_seconds: float = 1.0,  # float-ok
) -> None:
    """Hand every message of a Redis pub/sub channel to on_message until the loops stop.
    If Redis goes away, resubscribe with backoff; on_subscribed runs after every
    (re)subscription, to catch up on what was published while nobody listened. Every
    poll_seconds the follower looks up to see whether it should stop."""
    backoff = RECONNECT_FIRST_SECONDS
    while not loops.stopping.is_set():
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                subscribed.set()
                backoff = RECONNECT_FIRST_SECONDS
                await on_subscribed()
                while not loops.stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_seconds)
                    if message is not None:
                        on_message(message["data"])
        except (RedisError, OSError) as exc:
            subscribed.clear()
            log.warning("channel %s lost (%s); retrying in %.1f s", channel, type(exc).__name__, backoff)
            await loops.pause(backoff)
            backoff = min(RECONNECT_MAX_SECONDS, backoff * 2)
