"""Concurrent storms on one wallet never overdraw it, and the books still balance."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg
import httpx
from conftest import Account, audit, balance, move


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

    expected = Decimal("100")
    for (kind, amount), answer in zip(plan, answers, strict=True):
        if answer.status_code == 201:
            expected += amount if kind == "deposit" else -amount
        else:
            assert kind == "withdraw"
            assert (answer.status_code, answer.json()["error"]["code"]) == (409, "insufficient_funds")
    assert Decimal(await balance(client, peggy)) == expected >= 0
    # Every balance_after the server answered is a real point on the wallet's path.
    assert min(Decimal(a.json()["balance_after"]) for a in answers if a.status_code == 201) >= 0
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
