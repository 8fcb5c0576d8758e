"""Concurrent storms on one wallet never overdraw it, and the books still balance."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg
import httpx
import msgspec
from conftest import Account, audit, balance, key, ledger_counts, move, register_and_login, running_server

from exchange.config import Settings


async def test_fifty_concurrent_withdrawals_never_overdraw(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    olivia = await new_user()
    assert (await move(client, olivia, "deposit", "100")).status_code == 201

    answers = await asyncio.gather(*(move(client, olivia, "withdraw", "10") for _ in range(50)))

    codes = [a.status_code for a in answers]
    assert codes.count(201) == 10
    assert codes.count(409) == 40
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {"insufficient_funds"}
    assert await balance(client, olivia) == "0.00"
    assert await audit(db) == []


async def test_interleaved_deposits_and_withdrawals_keep_the_books(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    peggy = await new_user()
    assert (await move(client, peggy, "deposit", "100")).status_code == 201
    rng = random.Random(7)
    plan = [
        ("deposit" if rng.random() < 0.4 else "withdraw", Decimal(rng.choice(["5", "10", "12.34"])))
        for _ in range(80)
    ]

    answers = await asyncio.gather(*(move(client, peggy, kind, str(amount)) for kind, amount in plan))

    succeeded = []
    for (kind, _amount), answer in zip(plan, answers, strict=True):
        if answer.status_code == 201:
            succeeded.append(answer.json())
        else:
            assert kind == "withdraw"
            assert (answer.status_code, answer.json()["error"]["code"]) == (409, "insufficient_funds")
    assert {t["kind"] for t in succeeded} == {"deposit", "withdrawal"}
    # The wallet lock serialises the movements, in transaction-id order: replaying them in
    # that order from 100 must meet every balance_after the server answered, never below 0.
    running = Decimal("100")
    for transaction in sorted(succeeded, key=lambda t: t["id"]):
        amount = Decimal(transaction["amount"])
        running += amount if transaction["kind"] == "deposit" else -amount
        assert running >= 0
        assert Decimal(transaction["balance_after"]) == running, transaction
    assert Decimal(await balance(client, peggy)) == running
    assert await audit(db) == []


async def test_storms_on_many_users_at_once_keep_the_books(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    users = [await new_user() for _ in range(5)]
    for user in users:
        await move(client, user, "deposit", "30")

    answers = await asyncio.gather(
        *(move(client, user, "withdraw", "4") for user in users for _ in range(10))
    )

    assert sum(a.status_code == 201 for a in answers) == 5 * 7  # 7 x 4 <= 30 < 8 x 4
    for user in users:
        assert await balance(client, user) == "2.00"
    assert await audit(db) == []


async def test_a_wallet_locked_too_long_answers_503_and_the_retry_succeeds(
    settings: Settings, db: asyncpg.Pool
) -> None:
    """A wait for a row lock is bounded (DB_LOCK_TIMEOUT_MS): the request is rolled back
    whole, answers 503, and the retry with the same Idempotency-Key goes through."""
    impatient = msgspec.structs.replace(settings, db_lock_timeout_ms=200)
    async with running_server(impatient) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        quentin = await register_and_login(http)
        assert (await move(http, quentin, "deposit", "10")).status_code == 201
        before = await ledger_counts(db)
        k = key()
        async with db.acquire() as dba, dba.transaction():
            # A DBA (or a stuck session) holds the wallet's row lock.
            await dba.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", quentin.id)
            blocked = await move(http, quentin, "withdraw", "4", idempotency_key=k)
            assert blocked.status_code == 503
            assert blocked.json()["error"]["code"] == "service_unavailable"
            assert blocked.headers["retry-after"] == "1"
        assert await ledger_counts(db) == before
        retried = await move(http, quentin, "withdraw", "4", idempotency_key=k)
        assert retried.status_code == 201
        assert await balance(http, quentin) == "6.00"
    assert await audit(db) == []


async def test_one_user_flooding_their_wallet_does_not_starve_other_users(
    settings: Settings, db: asyncpg.Pool
) -> None:
    """A user's requests queue in the worker (exchange/ledger/turns.py), not on pooled
    connections: with the user's wallet locked and ten of their deposits waiting, a
    worker of three connections still serves another user at once."""
    small = msgspec.structs.replace(
        settings, db_pool_min_size=1, db_pool_max_size=3, db_lock_timeout_ms=5_000
    )
    async with running_server(small) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        flooder, bystander = await register_and_login(http), await register_and_login(http)
        assert (await move(http, flooder, "deposit", "1")).status_code == 201
        async with db.acquire() as dba:
            tx = dba.transaction()
            await tx.start()
            await dba.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", flooder.id)
            flood = [asyncio.create_task(move(http, flooder, "deposit", "1")) for _ in range(10)]
            await asyncio.sleep(0.3)  # every one of them has reached the server
            started = asyncio.get_running_loop().time()
            answer = await move(http, bystander, "deposit", "5")
            waited = asyncio.get_running_loop().time() - started
            assert not any(task.done() for task in flood)  # still held by the row lock
            await tx.rollback()
        assert answer.status_code == 201 and waited < 2, (answer.status_code, waited)
        assert [a.status_code for a in await asyncio.gather(*flood)] == [201] * 10
        assert await balance(http, flooder) == "11.00"
    assert await audit(db) == []


async def test_requests_queued_behind_a_locked_wallet_give_up_after_the_lock_timeout(
    settings: Settings, db: asyncpg.Pool
) -> None:
    """The wait for the user's turn is bounded like the wait for the row lock: 503, safe
    to retry, nothing written."""
    impatient = msgspec.structs.replace(settings, db_lock_timeout_ms=300)
    async with running_server(impatient) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        rupert = await register_and_login(http)
        assert (await move(http, rupert, "deposit", "1")).status_code == 201
        before = await ledger_counts(db)
        async with db.acquire() as dba, dba.transaction():
            await dba.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", rupert.id)
            started = asyncio.get_running_loop().time()
            answers = await asyncio.gather(*(move(http, rupert, "deposit", "1") for _ in range(4)))
            waited = asyncio.get_running_loop().time() - started
        assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [
            (503, "service_unavailable")
        ] * 4
        assert all(a.headers["retry-after"] == "1" for a in answers)
        assert waited < 3  # each gave up after ~0.3 s, not after the ones before it
        assert await ledger_counts(db) == before
        assert await balance(http, rupert) == "1.00"
