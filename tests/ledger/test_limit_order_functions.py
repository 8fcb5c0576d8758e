"""Limit orders in SQL (sql/functions/orders.sql) called straight through asyncpg: placing
with locked funds, marketable / IOC / FOK, cancel, the fill sweep, and available funds
for withdrawals and market orders. Each test checks the answer and the audit."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import msgspec
import pytest
from conftest import audit, fresh_database

from exchange.config import Settings
from exchange.schemas import Order
from exchange.store import repository as repo
from exchange.store.db import create_pool

CONNECTIONS = 20
NOW = datetime.now(UTC)
LIVE = Decimal("65000.00")
# The test's own market: no other test's orders rest on it, so a sweep fills only ours.
SYMBOL = "BNBUSDT"
BNB_LIVE = Decimal("600.00")


@pytest.fixture(scope="module")
async def pool(settings: Settings, service_urls: tuple[str, str]) -> AsyncIterator[asyncpg.Pool]:
    # A database of its own: the session server's elected feed sweeps every market of the
    # session database at the stand-in's moving prices, and would fill these orders first.
    async with fresh_database(service_urls[0]) as url:
        configured = msgspec.structs.replace(
            settings, database_url=url, db_pool_min_size=4, db_pool_max_size=CONNECTIONS
        )
        pool = await create_pool(configured)
        yield pool
        await pool.close()


async def funded_user(pool: asyncpg.Pool, usdt: str = "0", bnb: str = "0") -> int:
    user = await repo.create_user(pool, f"limit-{secrets.token_hex(6)}@example.com", "not-a-hash")
    for asset, amount in (("USDT", usdt), ("BNB", bnb)):
        if Decimal(amount) > 0:
            await repo.deposit(pool, user.id, asset, Decimal(amount), secrets.token_hex(8))
    return user.id


async def place(
    pool: asyncpg.Pool,
    user_id: int,
    side: str,
    price: str,
    quantity: str,
    tif: str = "GTC",
    live: Decimal = BNB_LIVE,
    key: str | None = None,
    client_order_id: str | None = None,
) -> Order:
    order, _ = await repo.place_limit_order(
        pool,
        user_id,
        SYMBOL,
        side,  # type: ignore[arg-type]
        Decimal(price),
        Decimal(quantity),
        tif,  # type: ignore[arg-type]
        client_order_id,
        live,
        NOW,
        None,
        key or secrets.token_hex(8),
    )
    return order


async def wallet(pool: asyncpg.Pool, user_id: int, asset: str) -> tuple[Decimal, Decimal]:
    row = await pool.fetchrow(
        "SELECT balance, locked FROM exchange.accounts WHERE user_id = $1 AND asset = $2", user_id, asset
    )
    return (row["balance"], row["locked"]) if row else (Decimal(0), Decimal(0))


async def sweep(pool: asyncpg.Pool, price: str, batch: int = 500) -> int:
    total = 0
    while True:
        filled = await repo.fill_crossed_orders(pool, SYMBOL, Decimal(price), NOW, batch)
        total += filled
        if filled < batch:
            return total


async def sqlstate_of(call: object) -> str | None:
    try:
        await call  # type: ignore[misc]
    except asyncpg.PostgresError as exc:
        return exc.sqlstate
    return None


async def test_a_resting_gtc_buy_locks_quote_rounded_up_and_a_replay_answers_the_same_order(pool) -> None:
    user = await funded_user(pool, usdt="100")
    first, replayed = await repo.place_limit_order(
        pool, user, SYMBOL, "buy", Decimal("550.01"), Decimal("0.013"), "GTC", "mine-1",
        BNB_LIVE, NOW, None, "k-1",
    )  # fmt: skip
    assert (first.status, first.locked_asset, replayed) == ("NEW", "USDT", False)
    assert first.locked_amount == Decimal("7.16")  # 0.013 x 550.01 = 7.15013, rounded up
    again, replayed = await repo.place_limit_order(
        pool, user, SYMBOL, "buy", Decimal("550.010"), Decimal("0.0130"), "GTC", "mine-1",
        BNB_LIVE, NOW, None, "k-1",
    )  # fmt: skip
    assert (again.id, replayed) == (first.id, True)
    assert await wallet(pool, user, "USDT") == (Decimal("100"), Decimal("7.16"))
    other_request = repo.place_limit_order(
        pool, user, SYMBOL, "buy", Decimal("550.02"), Decimal("0.013"), "GTC", None,
        BNB_LIVE, NOW, None, "k-1",
    )  # fmt: skip
    assert await sqlstate_of(other_request) == "EX005"
    same_client_id = place(pool, user, "buy", "550.00", "0.013", client_order_id="mine-1")
    assert await sqlstate_of(same_client_id) == "23505"
    assert await audit(pool) == []


async def test_marketable_fills_at_once_as_taker_and_ioc_fok_expire_with_nothing_locked(pool) -> None:
    user = await funded_user(pool, usdt="100", bnb="1")
    taker = await place(pool, user, "buy", "610.00", "0.02")  # live 600 <= 610: marketable
    assert (taker.status, taker.executed_qty, taker.locked_amount) == ("FILLED", Decimal("0.02"), 0)
    assert taker.cumulative_quote_qty == Decimal("12.00")  # at the live price, not the limit
    assert taker.transaction_id is not None
    sell_taker = await place(pool, user, "sell", "590.00", "0.02")
    assert sell_taker.status == "FILLED"
    for tif in ("IOC", "FOK"):
        expired = await place(pool, user, "buy", "500.00", "0.02", tif=tif)
        assert (expired.status, expired.locked_amount, expired.transaction_id) == ("EXPIRED", 0, None)
    assert (await wallet(pool, user, "USDT"))[1] == 0
    assert (await wallet(pool, user, "BNB"))[1] == 0
    assert await audit(pool) == []


async def test_price_rules_tick_band_and_minimum_notional(pool) -> None:
    user = await funded_user(pool, usdt="100")
    assert await sqlstate_of(place(pool, user, "buy", "500.005", "0.02")) == "EX015"
    assert await sqlstate_of(place(pool, user, "buy", "100.00", "0.1")) == "EX016"
    assert await sqlstate_of(place(pool, user, "buy", "500.00", "0.001")) == "EX011"  # 0.50 < 5
    assert await sqlstate_of(place(pool, user, "buy", "500.00", "0.0001")) == "EX009"
    assert await sqlstate_of(place(pool, user, "buy", "500.00", "0.02", live=None)) == "EX013"  # type: ignore[arg-type]
    assert await wallet(pool, user, "USDT") == (Decimal("100"), Decimal(0))


async def test_locked_funds_are_not_available_to_withdrawals_market_orders_or_new_orders(pool) -> None:
    user = await funded_user(pool, usdt="100", bnb="1")
    await place(pool, user, "buy", "500.00", "0.15")  # locks 75.00 USDT
    await place(pool, user, "sell", "700.00", "0.9")  # locks 0.9 BNB
    refused = repo.withdraw(pool, user, "USDT", Decimal("25.01"), secrets.token_hex(8))
    with pytest.raises(asyncpg.PostgresError) as caught:
        await refused
    assert caught.value.sqlstate == "EX004"
    assert '"available" : "25.00"' in (caught.value.detail or "")
    assert await sqlstate_of(place(pool, user, "buy", "500.00", "0.051")) == "EX004"
    market_sell = repo.trade(
        pool, "sell", user, SYMBOL, Decimal("0.101"), None, None, BNB_LIVE, NOW, None, secrets.token_hex(8)
    )
    assert await sqlstate_of(market_sell) == "EX004"
    await repo.withdraw(pool, user, "USDT", Decimal("25.00"), secrets.token_hex(8))
    assert await wallet(pool, user, "USDT") == (Decimal("75.00"), Decimal("75.00"))
    assert await audit(pool) == []


async def test_cancel_releases_the_lock_once_and_another_users_order_is_not_found(pool) -> None:
    user = await funded_user(pool, usdt="100")
    stranger = await funded_user(pool)
    order = await place(pool, user, "buy", "500.00", "0.1")
    assert await sqlstate_of(repo.cancel_order(pool, stranger, order.id)) == "EX017"
    cancelled = await repo.cancel_order(pool, user, order.id)
    assert (cancelled.status, cancelled.locked_amount) == ("CANCELED", 0)
    assert await sqlstate_of(repo.cancel_order(pool, user, order.id)) == "EX018"
    assert await wallet(pool, user, "USDT") == (Decimal("100"), Decimal(0))
    # A final status never changes, whoever writes it.
    changed = pool.execute("UPDATE exchange.orders SET status = 'NEW' WHERE id = $1", order.id)
    assert await sqlstate_of(changed) == "23514"
    assert await audit(pool) == []


async def test_a_crossing_price_fills_each_resting_order_once_at_its_own_price_as_maker(pool) -> None:
    await sweep(pool, "600.00")  # fills whatever earlier tests left crossed at the live price
    buyer = await funded_user(pool, usdt="100")
    seller = await funded_user(pool, bnb="1")
    buys = [await place(pool, buyer, "buy", price, "0.02") for price in ("590.00", "580.00", "570.00")]
    sell = await place(pool, seller, "sell", "620.00", "0.5")
    assert await sweep(pool, "585.00") == 1  # crosses only the 590 buy
    assert await sweep(pool, "585.00") == 0  # a replayed tick fills nothing more
    assert await sweep(pool, "560.00", batch=1) == 2  # two batches of one: 580, then 570
    assert await sweep(pool, "620.00") == 1
    statuses = {o.id: o.status for o in await orders_of(pool, buyer, seller)}
    assert set(statuses.values()) == {"FILLED"} and len(statuses) == 4
    fills = await pool.fetch(
        "SELECT order_id, price, quote_qty, fee, fee_asset FROM exchange.transactions"
        " WHERE order_id = ANY($1::bigint[]) ORDER BY order_id",
        [o.id for o in [*buys, sell]],
    )
    assert [(f["price"], f["quote_qty"], f["fee"]) for f in fills] == [
        (Decimal("590.00"), Decimal("11.80"), Decimal("0.00002")),  # maker fee 0.1 % of 0.02 BNB
        (Decimal("580.00"), Decimal("11.60"), Decimal("0.00002")),
        (Decimal("570.00"), Decimal("11.40"), Decimal("0.00002")),
        (Decimal("620.00"), Decimal("310.00"), Decimal("0.31")),
    ]
    assert await wallet(pool, buyer, "USDT") == (Decimal("65.20"), Decimal(0))
    assert await wallet(pool, buyer, "BNB") == (Decimal("0.05994"), Decimal(0))
    assert await wallet(pool, seller, "USDT") == (Decimal("309.69"), Decimal(0))
    assert await wallet(pool, seller, "BNB") == (Decimal("0.5"), Decimal(0))
    assert await audit(pool) == []


async def orders_of(pool: asyncpg.Pool, *users: int) -> list[Order]:
    rows = await pool.fetch(
        "SELECT (exchange.order_answer(id, false)).* FROM exchange.orders WHERE user_id = ANY($1::bigint[])",
        list(users),
    )
    return [repo.order(row)[0] for row in rows]


async def test_fifty_concurrent_limit_buys_with_funds_for_ten_rest_ten(pool) -> None:
    user = await funded_user(pool, usdt="60")  # each locks 6.00
    results = await asyncio.gather(
        *(sqlstate_of(place(pool, user, "buy", "300.00", "0.02")) for _ in range(50))
    )
    assert Counter(results) == {None: 10, "EX004": 40}
    assert await wallet(pool, user, "USDT") == (Decimal("60"), Decimal("60.00"))
    assert await audit(pool) == []


async def test_cancels_racing_sweeps_end_each_order_exactly_once_and_conserve_funds(pool) -> None:
    await sweep(pool, "600.00")
    users = [await funded_user(pool, usdt="70") for _ in range(10)]  # six orders of 11.20 each
    orders = [await place(pool, users[i % 10], "buy", "560.00", "0.02") for i in range(60)]
    total_before = await total_usdt(pool, users)

    async def cancel(order_id: int, user_id: int) -> str | None:
        return await sqlstate_of(repo.cancel_order(pool, user_id, order_id))

    # The sweeps start first and fill the oldest; the cancels take the newest first.
    sweeps = [sweep(pool, "555.00", batch=7) for _ in range(4)]
    cancels = [cancel(o.id, users[i % 10]) for i, o in reversed(list(enumerate(orders)))]
    outcomes = await asyncio.gather(*sweeps, *cancels)
    refused_cancels = sum(1 for r in outcomes[4:] if r == "EX018")
    assert set(outcomes[4:]) <= {None, "EX018"}
    final = Counter(o.status for o in await orders_of(pool, *users))
    assert final == Counter({"FILLED": refused_cancels, "CANCELED": 60 - refused_cancels})
    assert 0 < refused_cancels < 60  # the race happened both ways
    assert sum(outcomes[:4]) == refused_cancels  # every fill counted once across sweeps
    fill_count = await pool.fetchval(
        "SELECT count(*) FROM exchange.transactions WHERE order_id = ANY($1::bigint[])",
        [o.id for o in orders],
    )
    assert fill_count == refused_cancels
    assert await total_usdt(pool, users) == total_before - refused_cancels * Decimal("11.20")
    assert await audit(pool) == []


async def total_usdt(pool: asyncpg.Pool, users: list[int]) -> Decimal:
    return await pool.fetchval(
        "SELECT sum(balance) FROM exchange.accounts WHERE user_id = ANY($1::bigint[]) AND asset = 'USDT'",
        users,
    )
