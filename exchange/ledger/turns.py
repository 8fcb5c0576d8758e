"""One money movement at a time per user, in each worker.

The database already serialises a user's movements (each locks the user's wallets FOR
UPDATE), so this changes no result. It changes where the queue forms: without it, a
client firing many requests at one account has every one of them take a pooled
connection and wait in PostgreSQL's lock queue, which starves the worker's other users
of connections and costs PostgreSQL CPU per waiter. With it, the extra requests wait
here, holding nothing, and at most one connection per worker waits on the row lock.

A request waits for its turn at most DB_LOCK_TIMEOUT_MS, as it would have waited for
the row lock in PostgreSQL; past it, it is refused with 503 service_unavailable, before
doing anything (safe to retry with the same Idempotency-Key).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from exchange.errors import ExchangeError


class UserTurns:
    def __init__(self, max_wait_ms: int) -> None:
        self._max_wait = max_wait_ms / 1000
        # user id -> (lock, how many requests hold or wait for it); dropped at zero.
        self._turns: dict[int, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def turn(self, user_id: int) -> AsyncIterator[None]:
        entry = self._turns.get(user_id)
        if entry is None:
            entry = self._turns[user_id] = (asyncio.Lock(), [0])
        lock, count = entry
        count[0] += 1
        try:
            if count[0] == 1:
                await lock.acquire()  # nobody else holds or waits: at once, no timer
            else:
                try:
                    async with asyncio.timeout(self._max_wait):
                        await lock.acquire()
                except TimeoutError:
                    raise busy() from None
            try:
                yield
            finally:
                lock.release()
        finally:
            count[0] -= 1
            if not count[0]:
                del self._turns[user_id]


def busy() -> ExchangeError:
    return ExchangeError(
        "service_unavailable",
        "this account is busy with earlier requests; retry shortly with the same Idempotency-Key",
    )
