"""Money movements sent to PostgreSQL in batches: many movements, one call.

A movement alone costs PostgreSQL a transaction, a WAL flush and a round trip, and under
load those cost more than its statements. So each worker sends its movements through a
few lanes (MOVEMENT_BATCH_LANES, each one pooled connection at a time): a movement that
arrives while every lane is busy waits for the next free one, and goes with the others
that arrived meanwhile, up to MOVEMENT_BATCH_MAX, in one call of movements() (sql/
migrations/010_movement_batches.sql). There each movement runs in its own
subtransaction, so it succeeds or fails alone, and all commit together. A quiet server
finds a lane free and sends each movement in a call of its own. Even alone, a movement
in a lane waits for a lock only briefly (movements() cuts the wait), so a wallet locked
elsewhere never holds a lane, and with it the worker's other users, for long.

Nothing changes for the caller: `move` answers the movement's (transaction, replayed)
or raises the PostgresError its own call would have raised. A movement that a batch
could not lock at once (55P03: the batch waits for locks only briefly, since it holds
others') is sent again alone, with the usual lock timeout; so is every movement of a
call refused whole for a value it could not take.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

from exchange.config import Settings
from exchange.ops.metrics import MOVEMENTS_PER_CALL
from exchange.schemas import Transaction
from exchange.store import repository as repo

Answer = tuple[Transaction, bool]
LOCK_NOT_AVAILABLE = "55P03"
# The longest a movement of a batch may wait for the locks of the movements before it:
# movements() waits 100 ms for one lock, then 1 ms for each (010_movement_batches.sql).
BATCH_WAIT_SECONDS = 0.2


@dataclass(frozen=True, kw_only=True, slots=True)
class Movement:
    """One money movement, as the SQL functions take it. Built by keyword only: two
    swapped arguments of one type would move money wrongly and still type-check."""

    kind: str  # 'deposit', 'withdrawal', 'buy' or 'sell'
    user_id: int
    subject: str  # the asset (deposit, withdrawal) or the symbol (buy, sell)
    amount: Decimal | None  # the amount, or a trade's quantity
    quote_quantity: Decimal | None = None
    price_guard: Decimal | None = None
    price: Decimal | None = None
    price_at: datetime | None = None
    # time.monotonic() past which the price may not be used (None: no price).
    price_valid_until: float | None = None  # float-ok: a time, not money
    idempotency_key: str

    def price_valid_ms(self) -> int | None:
        """How much longer the price may be used, counted when the call is sent."""
        if self.price_valid_until is None:
            return None
        return math.floor((self.price_valid_until - time.monotonic()) * 1000)


# movements()'s parameters (sql/functions/movement_batches.sql), in order, and what each
# array holds of every movement: the one place the two orders meet (a test compares
# the names with the function's own, pg_proc.proargnames).
BATCH_PARAMETERS: tuple[tuple[str, Callable[[Movement], Any]], ...] = (
    ("p_kinds", lambda m: m.kind),
    ("p_user_ids", lambda m: m.user_id),
    ("p_subjects", lambda m: m.subject),
    ("p_amounts", lambda m: m.amount),
    ("p_quote_quantities", lambda m: m.quote_quantity),
    ("p_price_guards", lambda m: m.price_guard),
    ("p_prices", lambda m: m.price),
    ("p_price_ats", lambda m: m.price_at),
    ("p_price_valid_ms", lambda m: m.price_valid_ms()),
    ("p_keys", lambda m: m.idempotency_key),
)


async def move_alone(executor: repo.Executor, movement: Movement) -> Answer:
    """The movement through its own function (sql/queries/deposit.sql...)."""
    if movement.kind in ("deposit", "withdrawal"):
        move = repo.deposit if movement.kind == "deposit" else repo.withdraw
        amount = cast(Decimal, movement.amount)
        return await move(
            executor,
            user_id=movement.user_id,
            asset=movement.subject,
            amount=amount,
            idempotency_key=movement.idempotency_key,
        )
    return await repo.trade(
        executor,
        side="buy" if movement.kind == "buy" else "sell",
        user_id=movement.user_id,
        symbol=movement.subject,
        quantity=movement.amount,
        quote_quantity=movement.quote_quantity,
        price_guard=movement.price_guard,
        price=movement.price,
        price_at=movement.price_at,
        price_valid_ms=movement.price_valid_ms(),
        idempotency_key=movement.idempotency_key,
    )


def columns(movements: list[Movement]) -> list[list[Any]]:
    """movements()'s ten arrays, one element per movement."""
    return [[value(m) for m in movements] for _, value in BATCH_PARAMETERS]


def error_of(row: asyncpg.Record) -> asyncpg.PostgresError:
    """The exception the movement's own call would have raised."""
    fields = {"S": "ERROR", "C": row["error_sqlstate"], "M": row["error_message"]}
    if row["error_detail"]:
        fields["D"] = row["error_detail"]
    if row["error_constraint"]:
        fields["n"] = row["error_constraint"]
    return asyncpg.PostgresError.new(fields)  # type: ignore[no-any-return]


class MovementBatches:
    def __init__(self, pool: repo.Pool, *, lanes: int, batch_max: int) -> None:
        self._pool = pool
        self._lanes = lanes
        self._batch_max = batch_max
        self._busy = 0
        self._waiting: deque[tuple[Movement, asyncio.Future[Answer | None]]] = deque()
        self._send_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, pool: repo.Pool, settings: Settings) -> MovementBatches:
        # A lane holds a connection while it sends; leave at least one for reads.
        lanes = max(1, min(settings.movement_batch_lanes, settings.db_pool_max_size - 1))
        return cls(pool, lanes=lanes, batch_max=settings.movement_batch_max)

    async def move(self, movement: Movement) -> Answer:
        valid_until = movement.price_valid_until
        if valid_until is not None and valid_until - time.monotonic() < BATCH_WAIT_SECONDS:
            # A batch may wait this long for earlier movements' locks before this one's
            # turn: a price about to expire is used at once, alone, or refused there.
            return await self._alone(movement)
        future: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((movement, future))
        if not self._send_scheduled:
            # At the end of this turn of the event loop, so that the movements that
            # arrived together (one read from many sockets) leave together.
            self._send_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_waiting)
        answer = await future
        if answer is None:  # a batch could not lock its wallets at once
            return await self._alone(movement)
        return answer

    async def _alone(self, movement: Movement) -> Answer:
        """Outside the lanes, with the usual lock timeout (DB_LOCK_TIMEOUT_MS)."""
        async with self._pool.acquire() as connection:
            return await move_alone(connection, movement)

    def _send_waiting(self) -> None:
        self._send_scheduled = False
        while self._waiting and self._busy < self._lanes:
            batch = []
            while self._waiting and len(batch) < self._batch_max:
                movement, future = self._waiting.popleft()
                if not future.done():  # its request was cancelled: never sent
                    batch.append((movement, future))
            if batch:
                self._busy += 1
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._tasks.add(task)  # the loop keeps only a weak reference
                task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Movement, asyncio.Future[Answer | None]]]) -> None:
        try:
            async with self._pool.acquire() as connection:
                # Built once the connection is there: a price's validity counts the wait.
                movements = [movement for movement, _ in batch]
                MOVEMENTS_PER_CALL.observe(len(batch))
                try:
                    rows = await repo.movements(connection, columns(movements))
                except (asyncpg.DataError, ClientDataError):
                    # A value PostgreSQL or the driver cannot take (the routes' checks
                    # should let none through) refuses the whole call: send each
                    # movement alone, so that only the one at fault fails.
                    for _, future in batch:
                        _settle(future, None)
                    return
            for row in rows:
                future = batch[row["ordinal"] - 1][1]
                sqlstate = row["error_sqlstate"]
                if sqlstate is None:
                    _settle(future, repo.movement(row))
                elif sqlstate == LOCK_NOT_AVAILABLE:
                    _settle(future, None)
                else:
                    _fail(future, error_of(row))
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - the call as a whole failed, so each movement did
            for _, future in batch:
                _fail(future, exc)
        finally:
            for _, future in batch:  # never leave a request waiting forever
                _fail(future, RuntimeError("movements() answered no row for this movement"))
            self._busy -= 1
            if self._waiting:
                self._send_waiting()


def _settle(future: asyncio.Future[Answer | None], answer: Answer | None) -> None:
    if not future.done():
        future.set_result(answer)


def _fail(future: asyncio.Future[Answer | None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
