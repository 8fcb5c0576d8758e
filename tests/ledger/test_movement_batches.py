"""Money movements sent in batches (exchange/ledger/batches.py, movements() of
010_movement_batches.sql), against the real database: movements that arrive together
commit in one call, yet each answers, fails and replays exactly as it would alone."""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import msgspec
import pytest
from conftest import audit
from prometheus_client import REGISTRY

from exchange.config import Settings
from exchange.ledger.batches import BATCH_PARAMETERS, Movement, MovementBatches
from exchange.ledger.errors import SQLSTATE_CODES
from exchange.store import repository as repo
from exchange.store.db import FairPool, create_pool

PRICE = Decimal("50000.00")


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[FairPool]:
    configured = msgspec.structs.replace(settings, db_pool_min_size=4, db_pool_max_size=4)
    pool = await create_pool(configured)
    yield pool
    await pool.close()


async def new_users(pool: FairPool, count: int, usdt: str | None = None) -> list[int]:
    ids = []
    for _ in range(count):
        user = await repo.create_user(pool, f"batch-{secrets.token_hex(6)}@example.com", "not-a-hash")
        if usdt is not None:
            await repo.deposit(pool, user.id, "USDT", Decimal(usdt), secrets.token_hex(8))
        ids.append(user.id)
    return ids


def deposit(user_id: int, amount: str, key: str | None = None, asset: str = "USDT") -> Movement:
    return Movement(
        kind="deposit",
        user_id=user_id,
        subject=asset,
        amount=Decimal(amount),
        idempotency_key=key or secrets.token_hex(8),
    )


def buy(user_id: int, quantity: str, valid_for_s: float = 10.0) -> Movement:
    return Movement(
        kind="buy",
        user_id=user_id,
        subject="BTCUSDT",
        amount=Decimal(quantity),
        idempotency_key=secrets.token_hex(8),
        price=PRICE,
        price_at=datetime.now(UTC),
        price_valid_until=time.monotonic() + valid_for_s,
    )


def calls_so_far() -> tuple[float, float]:
    """(calls, movements) sent so far by every MovementBatches of this process."""
    count = REGISTRY.get_sample_value("exchange_movements_per_call_count") or 0.0
    total = REGISTRY.get_sample_value("exchange_movements_per_call_sum") or 0.0
    return count, total


async def outcome(batches: MovementBatches, movement: Movement) -> tuple[repo.Transaction, bool] | str:
    """The movement's answer, or the SQLSTATE it was refused with."""
    try:
        return await batches.move(movement)
    except asyncpg.PostgresError as exc:
        return exc.sqlstate


async def test_movements_that_arrive_together_commit_in_one_call(pool: FairPool, db: asyncpg.Pool) -> None:
    batches = MovementBatches(pool, lanes=1, batch_max=32)
    users = await new_users(pool, 12)
    calls, movements = calls_so_far()

    answers = await asyncio.gather(*(batches.move(deposit(user, "10.5")) for user in users))

    assert calls_so_far() == (calls + 1, movements + 12)
    assert [(t.kind, t.asset, t.amount, t.balance_after, replayed) for t, replayed in answers] == [
        ("deposit", "USDT", Decimal("10.50"), Decimal("10.50"), False)
    ] * 12
    assert len({t.created_at for t, _ in answers}) == 1  # one transaction
    for user, (transaction, _) in zip(users, answers, strict=True):
        stored = await repo.transaction_for_user(pool, transaction.id, user)
        assert stored == transaction
    assert await audit(db) == []


async def test_a_batch_holds_at_most_batch_max_and_uses_every_lane(pool: FairPool) -> None:
    batches = MovementBatches(pool, lanes=2, batch_max=4)
    users = await new_users(pool, 10)
    calls, movements = calls_so_far()

    answers = await asyncio.gather(*(batches.move(deposit(user, "1")) for user in users))

    # The first two calls leave at once (4 + 4), the last two movements when one ends.
    assert calls_so_far() == (calls + 3, movements + 10)
    assert len({t.created_at for t, _ in answers}) == 3
    assert all(t.balance_after == Decimal("1.00") for t, _ in answers)


async def test_a_movement_that_fails_fails_alone_with_its_own_error(pool: FairPool, db: asyncpg.Pool) -> None:
    batches = MovementBatches(pool, lanes=1, batch_max=32)
    ok, poor, unknown, reused, late = await new_users(pool, 5, usdt="100")
    used_key = secrets.token_hex(8)
    await batches.move(deposit(reused, "5", used_key))
    counts_before = await db.fetchval("SELECT count(*) FROM transactions")

    results = await asyncio.gather(
        outcome(batches, deposit(ok, "1")),
        outcome(
            batches,
            Movement(
                kind="withdrawal",
                user_id=poor,
                subject="USDT",
                amount=Decimal("100.01"),
                idempotency_key=secrets.token_hex(8),
            ),
        ),
        outcome(batches, deposit(unknown, "1", asset="NOPE")),
        outcome(batches, deposit(reused, "6", used_key)),
        outcome(batches, buy(late, "0.0002", valid_for_s=-0.001)),
        outcome(batches, buy(ok, "0.0002")),
    )

    assert [r if isinstance(r, str) else r[0].kind for r in results] == [
        "deposit",
        "EX004",  # insufficient_funds
        "EX003",  # unknown_asset
        "EX005",  # idempotency_key_reused
        "EX013",  # price_unavailable: the price grew too old before the call
        "buy",
    ]
    assert all(isinstance(r, str) and r in SQLSTATE_CODES for r in results[1:5])
    assert await db.fetchval("SELECT count(*) FROM transactions") == counts_before + 2
    balances = {w.asset: w.balance for w in await repo.wallets_for_user(pool, ok)}
    # 100 + 1 - 0.0002 x 50,000; 0.0002 BTC less the 0.1% fee.
    assert (balances["USDT"], balances["BTC"]) == (Decimal("91.00"), Decimal("0.0001998"))
    assert await audit(db) == []


async def test_an_error_is_the_one_the_movement_alone_raises(pool: FairPool) -> None:
    batches = MovementBatches(pool, lanes=1, batch_max=32)
    in_batch, alone, other = await new_users(pool, 3, usdt="3")
    reused_key = secrets.token_hex(8)
    first_ids = {}
    for user in (in_batch, alone):
        first_ids[user] = (await repo.deposit(pool, user, "USDT", Decimal("1"), reused_key))[0].id

    def fields(exc: asyncpg.PostgresError, user: int) -> tuple[object, ...]:
        details = msgspec.json.decode(exc.detail)
        # A reused key names the user's own transaction; the rest is the same.
        assert details.pop("transaction_id", first_ids[user]) == first_ids[user]
        return type(exc), exc.sqlstate, exc.message, details, exc.constraint_name

    for amount, key in ((Decimal("5"), secrets.token_hex(8)), (Decimal("2"), reused_key)):
        batched, made = await asyncio.gather(
            refusal(
                batches.move(
                    Movement(
                        kind="withdrawal",
                        user_id=in_batch,
                        subject="USDT",
                        amount=amount,
                        idempotency_key=key,
                    )
                )
            ),
            batches.move(deposit(other, "1")),
        )
        expected = await refusal(repo.withdraw(pool, alone, "USDT", amount, key))
        assert fields(batched, in_batch) == fields(expected, alone)
        assert made[0].kind == "deposit"


async def refusal(call: Awaitable[object]) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as refused:
        await call
    return refused.value


async def test_replays_answer_the_first_call_in_later_batches(pool: FairPool) -> None:
    batches = MovementBatches(pool, lanes=1, batch_max=32)
    alice, bob = await new_users(pool, 2)
    first_key = secrets.token_hex(8)
    (first, _), _ = await asyncio.gather(
        batches.move(deposit(alice, "7", first_key)), batches.move(deposit(bob, "1"))
    )

    (again, replayed), (_, bob_replayed) = await asyncio.gather(
        batches.move(deposit(alice, "7", first_key)), batches.move(deposit(bob, "1"))
    )

    assert replayed and not bob_replayed
    assert again == first
    assert (await repo.wallets_for_user(pool, alice, "USDT"))[0].balance == Decimal("7.00")


async def test_a_wallet_locked_elsewhere_delays_only_its_own_movement(
    pool: FairPool, db: asyncpg.Pool
) -> None:
    batches = MovementBatches(pool, lanes=1, batch_max=32)
    locked, free_1, free_2 = sorted(await new_users(pool, 3, usdt="10"))
    async with db.acquire() as dba:  # a DBA's psql session holding the first user's wallet
        transaction = dba.transaction()
        await transaction.start()
        await dba.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", locked)
        try:
            tasks = [asyncio.create_task(batches.move(deposit(u, "1"))) for u in (locked, free_1, free_2)]
            # The batch gives up on the locked wallet after 100 ms and commits the others,
            # while the lock is still held; the locked one is sent again alone and waits.
            done, _ = await asyncio.wait(tasks[1:], timeout=3)
            assert done == set(tasks[1:]) and not tasks[0].done()
            assert all(task.result()[0].balance_after == Decimal("11.00") for task in done)
            await asyncio.sleep(0.2)
            assert not tasks[0].done()
        finally:
            await transaction.rollback()
        transaction_made, replayed = await asyncio.wait_for(tasks[0], 5)
    assert transaction_made.balance_after == Decimal("11.00") and not replayed
    assert await audit(db) == []


async def test_a_value_postgresql_refuses_fails_only_its_own_movement(
    pool: FairPool, db: asyncpg.Pool
) -> None:
    batches = MovementBatches(pool, lanes=1, batch_max=32)
    good, bad = await new_users(pool, 2)

    results = await asyncio.gather(
        outcome(batches, deposit(good, "2")),
        outcome(batches, deposit(bad, "2", key="nul\x00byte")),  # the routes refuse such a key
    )

    assert results[1] == "22021"  # character_not_in_repertoire: the whole call was refused
    assert not isinstance(results[0], str) and results[0][0].balance_after == Decimal("2.00")
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", bad) == 0
    assert await audit(db) == []


async def test_a_movement_sent_alone_on_a_locked_wallet_does_not_hold_its_lane(
    pool: FairPool, db: asyncpg.Pool
) -> None:
    batches = MovementBatches(pool, lanes=1, batch_max=32)
    locked, other = await new_users(pool, 2, usdt="10")
    async with db.acquire() as dba:
        transaction = dba.transaction()
        await transaction.start()
        await dba.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", locked)
        try:
            waiting = asyncio.create_task(batches.move(deposit(locked, "1")))  # alone in the lane
            await asyncio.sleep(0.05)
            # The lane gives up on the lock within ~100 ms and sends it again outside.
            made, _ = await asyncio.wait_for(batches.move(deposit(other, "1")), 2)
            assert made.balance_after == Decimal("11.00") and not waiting.done()
        finally:
            await transaction.rollback()
        assert (await asyncio.wait_for(waiting, 5))[0].balance_after == Decimal("11.00")


async def test_a_movement_is_built_by_keyword_and_its_fields_reach_the_sql_parameters_of_their_name(
    db: asyncpg.Pool,
) -> None:
    with pytest.raises(TypeError):
        Movement("deposit", 1, "USDT", Decimal(1), "key")  # type: ignore[misc]
    names = await db.fetchval("SELECT proargnames FROM pg_proc WHERE proname = 'movements'")
    assert names == [name for name, _ in BATCH_PARAMETERS]
    # A movement alone goes through buy()/sell(): repository.trade's parameters, by name.
    trade_names = await db.fetchval("SELECT proargnames FROM pg_proc WHERE proname = 'buy'")
    python_names = list(inspect.signature(repo.trade).parameters)[2:]  # after pool and side
    assert [n.removeprefix("p_").replace("max_price", "price_guard") for n in trade_names] == python_names
