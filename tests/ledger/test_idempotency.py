"""Idempotency keys make retries safe: one key, one movement, one answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg
import httpx
from conftest import Account, audit, balance, fresh_database, key, move

from exchange.store import repository as repo
from exchange.store.db import connect


async def _transactions_with_key(db: asyncpg.Pool, account: Account, idempotency_key: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM transactions WHERE user_id = $1 AND idempotency_key = $2",
        account.id,
        idempotency_key,
    )


async def test_same_request_twice_makes_one_transaction_and_the_same_answer(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    grace = await new_user()
    k = key()
    first = await move(client, grace, "deposit", "25.00", idempotency_key=k)
    again = await move(client, grace, "deposit", "25", idempotency_key=k)  # same amount, other spelling

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotency-replayed"] == "true"
    assert "idempotency-replayed" not in first.headers
    assert await _transactions_with_key(db, grace, k) == 1
    assert await balance(client, grace) == "25.00"

    k2 = key()
    out = await move(client, grace, "withdraw", "5", idempotency_key=k2)
    out_again = await move(client, grace, "withdraw", "5", idempotency_key=k2)
    assert out_again.json() == out.json()
    assert await balance(client, grace) == "20.00"


async def test_same_key_with_another_request_is_422(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    heidi = await new_user()
    k = key()
    assert (await move(client, heidi, "deposit", "10", idempotency_key=k)).status_code == 201
    for kind, amount, asset in [
        ("deposit", "11", "USDT"),  # other amount
        ("withdraw", "10", "USDT"),  # other kind
        ("deposit", "10", "BTC"),  # other asset, so another wallet
    ]:
        answer = await move(client, heidi, kind, amount, asset=asset, idempotency_key=k)
        assert answer.status_code == 422, (kind, amount, asset, answer.text)
        assert answer.json()["error"]["code"] == "idempotency_key_reused"
    assert await _transactions_with_key(db, heidi, k) == 1
    assert await balance(client, heidi) == "10.00"
    assert await balance(client, heidi, "BTC") == "0.00000000"


async def test_keys_belong_to_one_user(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    ivan, judy = await new_user(), await new_user()
    k = key()
    a = await move(client, ivan, "deposit", "1", idempotency_key=k)
    b = await move(client, judy, "deposit", "2", idempotency_key=k)
    assert a.status_code == b.status_code == 201
    assert "idempotency-replayed" not in b.headers
    assert await balance(client, judy) == "2.00"


async def test_a_refused_request_does_not_use_up_its_key(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    mallory = await new_user()
    k = key()
    refused = await move(client, mallory, "withdraw", "5", idempotency_key=k)
    assert refused.json()["error"]["code"] == "insufficient_funds"
    await move(client, mallory, "deposit", "5")
    retried = await move(client, mallory, "withdraw", "5", idempotency_key=k)
    assert retried.status_code == 201
    assert "idempotency-replayed" not in retried.headers


async def test_a_replay_answers_as_before_even_after_the_balance_has_moved(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    """The key is checked before the funds: a retried withdrawal that emptied the wallet
    is replayed, not refused as an overdraft."""
    peggy = await new_user()
    await move(client, peggy, "deposit", "10")
    k = key()
    first = await move(client, peggy, "withdraw", "10", idempotency_key=k)
    again = await move(client, peggy, "withdraw", "10", idempotency_key=k)

    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["idempotency-replayed"] == "true"
    assert await balance(client, peggy) == "0.00"


async def test_a_retry_replays_after_a_dba_changed_the_assets_rules(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    """A movement that passed the rules of its day is a replay whatever the rules say
    now: a lower max_amount, or a larger scale (250.50 is 250.5000000000)."""
    rules = await db.fetchrow("SELECT scale, max_amount FROM assets WHERE code = 'SOL'")
    victor = await new_user()
    k_in, k_out = key(), key()
    try:
        deposited = await move(client, victor, "deposit", "250.50", asset="SOL", idempotency_key=k_in)
        withdrawn = await move(client, victor, "withdraw", "200", asset="SOL", idempotency_key=k_out)
        assert deposited.status_code == withdrawn.status_code == 201, withdrawn.text

        await db.execute("UPDATE assets SET max_amount = 100 WHERE code = 'SOL'")
        for first, kind, amount, k in (
            (deposited, "deposit", "250.50", k_in),
            (withdrawn, "withdraw", "200", k_out),
        ):
            again = await move(client, victor, kind, amount, asset="SOL", idempotency_key=k)
            assert again.status_code == 201, again.text
            assert again.json() == first.json() and again.headers["idempotency-replayed"] == "true"
        # A new request is held to the new rules; another amount under a used key is refused.
        fresh = await move(client, victor, "deposit", "250.50", asset="SOL")
        assert fresh.json()["error"]["code"] == "invalid_amount"
        other = await move(client, victor, "deposit", "250.51", asset="SOL", idempotency_key=k_in)
        assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")

        await db.execute(
            "UPDATE assets SET scale = 10, max_amount = $1 WHERE code = 'SOL'", rules["max_amount"]
        )
        again = await move(client, victor, "deposit", "250.5", asset="SOL", idempotency_key=k_in)
        assert again.status_code == 201, again.text
        assert again.json() == deposited.json() and again.headers["idempotency-replayed"] == "true"
        assert await balance(client, victor, "SOL") == "50.5000000000"
    finally:  # the other tests share this database
        await db.execute(
            "UPDATE assets SET scale = $1, max_amount = $2 WHERE code = 'SOL'",
            rules["scale"],
            rules["max_amount"],
        )
    assert await _transactions_with_key(db, victor, k_in) == 1
    assert await audit(db) == []


async def test_a_new_database_finds_keys_through_the_unique_index(
    service_urls: tuple[str, str],
) -> None:
    """Before `transactions` has statistics, a look-up by (user_id, key) may be planned on
    transactions_user_id_idx, scanning the user's whole history. deposit() and withdraw()
    (006), buy() and sell() (007) find a replay through ON CONFLICT on the unique
    constraint instead, whatever the statistics. auto_explain shows the plans of the
    functions' own statements."""
    async with fresh_database(service_urls[0]) as url:
        conn = await connect(url)
        try:
            await conn.execute("ALTER TABLE transactions SET (autovacuum_enabled = off)")
            user = await repo.create_user(conn, "plans@example.com", "not-a-hash")
            plans: list[str] = []
            conn.add_log_listener(lambda _, message: plans.append(message.message))
            await conn.execute(
                "LOAD 'auto_explain';"
                " SET auto_explain.log_min_duration = 0;"
                " SET auto_explain.log_nested_statements = on;"
                " SET auto_explain.log_level = 'notice'"
            )
            for amount in (100, 1, 1):
                await conn.fetchrow("SELECT * FROM deposit($1, 'USDT', $2, $3)", user.id, amount, key())
            await conn.fetchrow("SELECT * FROM withdraw($1, 'USDT', 1, $2)", user.id, key())
            for side, quantity in (("buy", "0.0004"), ("sell", "0.0002")):
                await conn.fetchrow(
                    f"SELECT * FROM {side}($1, 'BTCUSDT', $2, NULL, NULL, 50000.00, now(), NULL, $3)",
                    user.id,
                    Decimal(quantity),
                    key(),
                )
        finally:
            await conn.close()
    by_key = [plan for plan in plans if "idempotency_key" in plan]  # statements using the key
    assert len(by_key) == 6, plans
    assert all("Conflict Arbiter Indexes: transactions_user_key" in plan for plan in by_key)
    assert not any("transactions_user_id_idx" in plan for plan in plans)


async def test_twenty_concurrent_requests_with_one_key_make_one_transaction(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    niaj = await new_user()
    k = key()
    answers = await asyncio.gather(
        *(move(client, niaj, "deposit", "7.77", idempotency_key=k) for _ in range(20))
    )

    assert {a.status_code for a in answers} == {201}
    assert len({a.text for a in answers}) == 1  # the very same body
    assert sum("idempotency-replayed" not in a.headers for a in answers) == 1
    assert await _transactions_with_key(db, niaj, k) == 1
    assert await balance(client, niaj) == "7.77"
    assert await audit(db) == []


async def test_one_key_sent_at_once_for_different_assets_moves_only_one(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    """Different assets lock different wallets, so these calls do not queue on one lock:
    the UNIQUE (user_id, idempotency_key) constraint is what refuses all but one."""
    assets = ["USDT", "BTC", "ETH", "SOL", "BNB"]
    for _ in range(5):
        oscar = await new_user()
        k = key()
        answers = await asyncio.gather(
            *(move(client, oscar, "deposit", "1", asset, idempotency_key=k) for asset in assets)
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201, 422, 422, 422, 422], [a.text for a in answers]
        assert {a.json()["error"]["code"] for a in answers if a.status_code == 422} == {
            "idempotency_key_reused"
        }
        assert await _transactions_with_key(db, oscar, k) == 1
    assert await audit(db) == []
