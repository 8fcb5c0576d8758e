"""Background loops that stop when asked, even if a library swallows a cancellation.

redis-py can absorb a CancelledError that lands inside one of its calls (seen here: the
feed's lease task went on looping after cancel(), and shutdown waited forever). So loops
watch a stop event and sleep on it; cancel() is only the fallback after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

STOP_GRACE_SECONDS = 3.0


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
