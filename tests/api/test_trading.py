"""POST /api/v1/orders: market buys and sells at the cached price, exact to the last unit,
refused cleanly, idempotent, and never double-spent under concurrency."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import audit, key, ledger_counts, login, move
from pinned_exchange import Exchange, exchange_server

from exchange.config import Settings
from exchange.ops.namespace import seal
from exchange.prices.binance import Quote
from exchange.prices.cache import now_ms
from exchange.prices.feed import channel_name, encode_quotes
from exchange.store import repository as repo

FEE_RATE = Decimal("0.001")  # every seeded market's fee_rate (001_schema.sql)
CENT = Decimal("0.01")  # USDT's scale
SATOSHI = Decimal("0.00000001")  # BTC's and ETH's scale


@pytest.fixture(scope="module")
async def exchange(settings: Settings) -> AsyncIterator[Exchange]:
    async with exchange_server(settings) as server:
        yield server


def error_of(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


async def test_buy_then_sell_round_trip_is_exact_to_the_last_unit(
    exchange: Exchange, db: asyncpg.Pool
) -> None:
    alice = await exchange.user(usdt="1000")
    await exchange.set_prices({"BTCUSDT": "64123.45"})

    bought = await exchange.order(alice, symbol="BTCUSDT", side="buy", quantity="0.01")

    assert bought.status_code == 201, bought.text
    # The buyer pays the notional rounded up to the cent and receives the quantity less
    # the fee, taken in BTC and rounded up to the satoshi.
    buy_price = Decimal("64123.45")
    cost = (Decimal("0.01") * buy_price).quantize(CENT, ROUND_UP)  # 641.2345 -> 641.24
    buy_fee = (Decimal("0.01") * FEE_RATE).quantize(SATOSHI, ROUND_UP)
    btc = Decimal("0.01") - buy_fee
    usdt = Decimal("1000") - cost
    trade = bought.json()["trade"]
    assert trade["kind"] == "buy" and trade["symbol"] == "BTCUSDT"
    assert Decimal(trade["price"]) == buy_price
    assert (Decimal(trade["amount"]), Decimal(trade["quote_qty"])) == (Decimal("0.01"), cost)
    assert (Decimal(trade["fee"]), trade["fee_asset"]) == (buy_fee, "BTC")
    assert (Decimal(trade["balance_after"]), Decimal(trade["quote_balance_after"])) == (btc, usdt)
    assert bought.json()["wallets"] == [
        {"asset": "BTC", "balance": "0.00999000"},
        {"asset": "USDT", "balance": "358.76"},
    ]

    await exchange.set_prices({"BTCUSDT": "65000.07"})
    sold = await exchange.order(alice, symbol="BTCUSDT", side="sell", quantity=str(btc))

    assert sold.status_code == 201, sold.text
    # The seller receives the notional rounded down to the cent, less the fee in USDT
    # rounded up to the cent.
    proceeds = (btc * Decimal("65000.07")).quantize(CENT, ROUND_DOWN)  # 649.3506993 -> 649.35
    sell_fee = (proceeds * FEE_RATE).quantize(CENT, ROUND_UP)  # 0.64935 -> 0.65
    usdt += proceeds - sell_fee
    trade = sold.json()["trade"]
    assert (Decimal(trade["quote_qty"]), Decimal(trade["fee"]), trade["fee_asset"]) == (
        proceeds,
        sell_fee,
        "USDT",
    )
    assert (Decimal(trade["balance_after"]), Decimal(trade["quote_balance_after"])) == (0, usdt)
    assert usdt == Decimal("1007.46")
    assert await exchange.balances(alice) == {"USDT": usdt}
    assert await audit(db) == []


async def test_quote_quantity_trades_the_most_steps_its_notional_allows(exchange: Exchange) -> None:
    bob = await exchange.user(usdt="100")
    await exchange.set_prices({"BTCUSDT": "64123.45"})

    bought = await exchange.order(bob, symbol="BTCUSDT", side="buy", quote_quantity="100")

    assert bought.status_code == 201, bought.text
    # 100 / (64123.45 x 0.00001) = 155.9... steps -> 0.00155 BTC, costing 99.3913475 -> 99.40.
    trade = bought.json()["trade"]
    assert (Decimal(trade["amount"]), Decimal(trade["quote_qty"])) == (Decimal("0.00155"), Decimal("99.40"))
    assert Decimal(trade["quote_balance_after"]) == Decimal("0.60")

    sold = await exchange.order(bob, symbol="BTCUSDT", side="sell", quote_quantity="50")

    assert sold.status_code == 201, sold.text
    # 50 / 0.6412345 = 77.9... steps -> 0.00077 BTC, for 49.3750565 -> 49.37, fee 0.05.
    trade = sold.json()["trade"]
    assert (Decimal(trade["amount"]), Decimal(trade["quote_qty"])) == (Decimal("0.00077"), Decimal("49.37"))
    assert Decimal(trade["fee"]) == Decimal("0.05")
    assert Decimal(trade["quote_balance_after"]) == Decimal("0.60") + Decimal("49.32")


async def test_the_trade_uses_the_cached_price_and_stores_it_with_its_time(exchange: Exchange) -> None:
    carol = await exchange.user(usdt="500")
    await exchange.set_prices({"BTCUSDT": "61000.50"})
    cached = await exchange.app.state.services.prices.read(["BTCUSDT"])
    # Binance has moved on, but the cached price is still young enough to trade on.
    await exchange.fake.set_prices({"BTCUSDT": "69999.99"}, frozen=True)
    upstream_before = await exchange.fake.upstream_requests()

    answer = await exchange.order(carol, symbol="BTCUSDT", side="buy", quantity="0.001")

    assert answer.status_code == 201, answer.text
    assert await exchange.fake.upstream_requests() == upstream_before  # no network call for the trade
    trade_id = answer.json()["trade"]["id"]
    stored = (await exchange.http.get(f"/api/v1/transactions/{trade_id}", headers=carol.headers)).json()
    assert Decimal(stored["price"]) == Decimal("61000.50") == cached["BTCUSDT"].price
    fetched_at = datetime.fromtimestamp(cached["BTCUSDT"].fetched_at_ms / 1000, UTC)
    assert datetime.fromisoformat(stored["price_at"]) == fetched_at


async def test_the_trade_uses_the_published_price_this_worker_holds_while_it_is_fresh(
    settings: Settings,
) -> None:
    # Its own server: a published quote stays in the worker's copy for the cache's TTL.
    async with exchange_server(settings, price_cache_ttl_ms=2_000, trade_price_max_age_ms=5_000) as exchange:
        dave = await exchange.user(usdt="500")
        await exchange.set_prices({"BTCUSDT": "60000.00"})  # what Redis holds
        stream = exchange.app.state.services.price_stream
        await asyncio.wait_for(stream.subscribed.wait(), 5)

        async def publish(price: str, age_ms: int) -> None:
            quote = Quote("BTCUSDT", Decimal(price), now_ms() - age_ms)
            services = exchange.app.state.services
            message = seal(services.deployment_id, encode_quotes([quote]))
            await services.redis.publish(channel_name(services.redis_namespace), message)
            for _ in range(100):
                if stream.latest.get("BTCUSDT") == quote:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError("the worker never received the published quote")

        # A fresh publication is what the trade uses, without reading Redis.
        await publish("60100.00", age_ms=0)
        fresh = await exchange.order(dave, symbol="BTCUSDT", side="buy", quantity="0.001")
        assert fresh.status_code == 201, fresh.text
        assert Decimal(fresh.json()["trade"]["price"]) == Decimal("60100.00")

        # One older than the cache's TTL is passed over for the cache's own price.
        await exchange.set_prices({"BTCUSDT": "60000.00"})
        await publish("60200.00", age_ms=2_500)
        older = await exchange.order(dave, symbol="BTCUSDT", side="buy", quantity="0.001")
        assert older.status_code == 201, older.text
        assert Decimal(older.json()["trade"]["price"]) == Decimal("60000.00")


async def test_a_retried_order_answers_the_first_fill_even_after_the_price_moved(exchange: Exchange) -> None:
    dave = await exchange.user(usdt="200")
    await exchange.set_prices({"ETHUSDT": "2500.00"})
    order_key = key()

    first = await exchange.order(dave, order_key, symbol="ETHUSDT", side="buy", quantity="0.01")
    await exchange.set_prices({"ETHUSDT": "2600.00"})
    again = await exchange.order(dave, order_key, symbol="ETHUSDT", side="buy", quantity="0.010")

    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotency-Replayed"] == "true"
    assert "Idempotency-Replayed" not in first.headers
    assert again.json() == first.json()
    assert await exchange.balances(dave) == {"ETH": Decimal("0.00999"), "USDT": Decimal("175.00")}

    other = await exchange.order(dave, order_key, symbol="ETHUSDT", side="buy", quantity="0.02")
    assert error_of(other) == (422, "idempotency_key_reused")


BAD_ORDERS = [
    ({"symbol": "DOGEUSDT", "side": "buy", "quantity": "1"}, (404, "unknown_symbol")),
    ({"symbol": "BTCUSDT", "side": "buy"}, (422, "exactly_one_quantity")),
    (
        {"symbol": "BTCUSDT", "side": "buy", "quantity": "0.01", "quote_quantity": "10"},
        (422, "exactly_one_quantity"),
    ),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "0.000015"}, (422, "quantity_off_step")),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "0.000000001"}, (422, "too_many_decimals")),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "9000.1"}, (422, "quantity_out_of_range")),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "0.00007"}, (422, "below_min_notional")),
    ({"symbol": "BTCUSDT", "side": "buy", "quote_quantity": "4.99"}, (422, "below_min_notional")),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "-0.01"}, (422, "invalid_amount")),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "NaN"}, (422, "invalid_amount")),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "0.01"}, (409, "insufficient_funds")),
    ({"symbol": "BTCUSDT", "side": "sell", "quantity": "0.01"}, (409, "insufficient_funds")),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "0.0001", "max_price": "64000"}, (409, "price_moved")),
    ({"symbol": "BTCUSDT", "side": "sell", "quantity": "0.0001", "min_price": "65000"}, (409, "price_moved")),
    (
        {"symbol": "BTCUSDT", "side": "buy", "quantity": "0.0001", "min_price": "1"},
        (422, "invalid_price_guard"),
    ),
    (
        {"symbol": "BTCUSDT", "side": "sell", "quantity": "0.0001", "max_price": "1"},
        (422, "invalid_price_guard"),
    ),
    ({"symbol": "BTCUSDT", "side": "hold", "quantity": "0.0001"}, (400, "validation_error")),
    ({"symbol": "BTC/USDT", "side": "buy", "quantity": "0.0001"}, (400, "validation_error")),
    ({"symbol": "BTCUSDT", "side": "buy", "quantity": "0.0001", "leverage": 100}, (400, "validation_error")),
]


@pytest.mark.parametrize(("body", "expected"), BAD_ORDERS, ids=[e[1] for _, e in BAD_ORDERS])
async def test_a_bad_order_is_refused_with_its_code_and_the_ledger_untouched(
    exchange: Exchange, db: asyncpg.Pool, body: dict[str, Any], expected: tuple[int, str]
) -> None:
    erin = await exchange.user(usdt="100")  # enough for 0.0001 BTC, not for 0.01
    await exchange.set_prices({"BTCUSDT": "64123.45"})
    before = await ledger_counts(db), await exchange.balances(erin)

    answer = await exchange.order(erin, **body)

    assert error_of(answer) == expected, answer.text
    assert (await ledger_counts(db), await exchange.balances(erin)) == before


async def test_an_inactive_market_refuses_orders(exchange: Exchange, db: asyncpg.Pool) -> None:
    frank = await exchange.user(usdt="100")
    before = await ledger_counts(db)
    await db.execute("UPDATE markets SET active = false WHERE symbol = 'BNBUSDT'")  # as a DBA would
    try:
        answer = await exchange.order(frank, symbol="BNBUSDT", side="buy", quote_quantity="10")
    finally:
        await db.execute("UPDATE markets SET active = true WHERE symbol = 'BNBUSDT'")

    assert error_of(answer) == (409, "market_inactive")
    assert await ledger_counts(db) == before


async def test_no_trade_on_a_price_older_than_the_limit_or_on_none(
    settings: Settings, db: asyncpg.Pool
) -> None:
    limits = {"price_cache_ttl_ms": 100, "price_stale_max_ms": 60_000, "trade_price_max_age_ms": 300}
    async with exchange_server(settings, binance_timeout_ms=300, binance_max_attempts=1, **limits) as server:
        grace = await server.user(usdt="100")
        await server.fake.fail("error")  # Binance answers 500 from now on, and the cache is cold
        before = await ledger_counts(db)

        cold = await server.order(grace, symbol="BTCUSDT", side="buy", quote_quantity="10")

        assert error_of(cold) == (503, "price_unavailable")
        assert int(cold.headers["Retry-After"]) >= 1
        await server.fake.heal()
        await asyncio.sleep(1.1)  # the cache's hold after a failed refresh (cache.py)
        await server.set_prices({"BTCUSDT": "64123.45"})
        await server.fake.fail("error")
        await asyncio.sleep(0.4)
        # The price is still served to readers, marked stale, but it is too old to trade on.
        shown = (await server.http.get("/api/v1/prices/BTCUSDT")).json()
        assert shown["stale"] is True and shown["age_ms"] > 300
        stale = await server.order(grace, symbol="BTCUSDT", side="buy", quote_quantity="10")
        assert error_of(stale) == (503, "price_unavailable")
        assert await ledger_counts(db) == before

        await server.fake.heal()
        await asyncio.sleep(1.1)  # the cache's hold after a failed refresh (cache.py)
        healed = await server.order(grace, symbol="BTCUSDT", side="buy", quote_quantity="10")
        assert healed.status_code == 201, healed.text


async def test_a_price_that_grows_too_old_while_the_order_waits_for_a_lock_is_refused(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with exchange_server(settings, price_cache_ttl_ms=100, trade_price_max_age_ms=500) as server:
        mallory = await server.user(usdt="100")
        before = await ledger_counts(db)
        async with db.acquire() as psql, psql.transaction():
            # A DBA's session holds the wallet for longer than the price stays young.
            await psql.execute(
                "SELECT balance FROM accounts WHERE user_id = $1 AND asset = 'USDT' FOR UPDATE", mallory.id
            )
            waiting = asyncio.create_task(
                server.order(mallory, symbol="BTCUSDT", side="buy", quote_quantity="10")
            )
            await asyncio.sleep(0.8)
        answer = await waiting

        assert error_of(answer) == (503, "price_unavailable")
        assert answer.json()["error"]["details"]["reason"] == "expired_while_waiting"
        assert await ledger_counts(db) == before
        again = await server.order(mallory, symbol="BTCUSDT", side="buy", quote_quantity="10")
        assert again.status_code == 201, again.text


async def test_a_replay_needs_no_price(settings: Settings) -> None:
    async with exchange_server(settings, price_cache_ttl_ms=100, trade_price_max_age_ms=100) as server:
        heidi = await server.user(usdt="100")
        order_key = key()
        first = await server.order(heidi, order_key, symbol="BTCUSDT", side="buy", quote_quantity="10")
        await server.fake.fail("error")
        await asyncio.sleep(0.2)

        again = await server.order(heidi, order_key, symbol="BTCUSDT", side="buy", quote_quantity="10")

        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()


async def test_forty_concurrent_buys_never_spend_more_than_the_balance(
    exchange: Exchange, db: asyncpg.Pool
) -> None:
    ivan = await exchange.user(usdt="100")
    await exchange.set_prices({"BTCUSDT": "50000.00"})

    answers = await asyncio.gather(
        *(exchange.order(ivan, symbol="BTCUSDT", side="buy", quantity="0.0002") for _ in range(40))
    )

    filled = [a.json()["trade"] for a in answers if a.status_code == 201]
    refused = [error_of(a) for a in answers if a.status_code != 201]
    assert sum(Decimal(t["quote_qty"]) for t in filled) <= Decimal("100")
    assert len(filled) == 10  # 0.0002 x 50000 = 10.00 each
    assert refused == [(409, "insufficient_funds")] * 30
    assert await exchange.balances(ivan) == {"BTC": Decimal("0.0019980")}
    assert await audit(db) == []


def wallet_deltas(transaction: dict[str, Any]) -> dict[str, Decimal]:
    """How one answered transaction changed each of the user's wallets."""
    amount = Decimal(transaction["amount"])
    kind, asset = transaction["kind"], transaction["asset"]
    if kind in ("deposit", "withdrawal"):
        return {asset: amount if kind == "deposit" else -amount}
    quote, quote_qty, fee = (
        transaction["quote_asset"],
        Decimal(transaction["quote_qty"]),
        Decimal(transaction["fee"]),
    )
    if kind == "buy":
        return {asset: amount - fee, quote: -quote_qty}
    return {asset: -amount, quote: quote_qty - fee}


async def test_a_mixed_storm_on_one_user_never_deadlocks_and_keeps_the_books(
    exchange: Exchange, db: asyncpg.Pool
) -> None:
    judy = await exchange.user(usdt="300")
    await exchange.set_prices({"BTCUSDT": "50000.00", "ETHUSDT": "2500.00"})
    rng = random.Random(11)
    choices = [
        lambda: move(exchange.http, judy, "deposit", "40"),
        lambda: move(exchange.http, judy, "withdraw", "35"),
        lambda: move(exchange.http, judy, "deposit", "0.0003", asset="BTC"),
        lambda: move(exchange.http, judy, "withdraw", "0.0004", asset="BTC"),
        lambda: exchange.order(judy, symbol="BTCUSDT", side="buy", quantity="0.0002"),
        lambda: exchange.order(judy, symbol="BTCUSDT", side="sell", quantity="0.0003"),
        lambda: exchange.order(judy, symbol="ETHUSDT", side="buy", quote_quantity="20"),
        lambda: exchange.order(judy, symbol="ETHUSDT", side="sell", quantity="0.004"),
    ]

    answers = await asyncio.gather(*(rng.choice(choices)() for _ in range(160)))

    assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers if a.status_code >= 500]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} <= {"insufficient_funds"}
    done = sorted(
        (a.json()["trade"] if "trade" in a.json() else a.json() for a in answers if a.status_code == 201),
        key=lambda t: t["id"],
    )
    assert {t["kind"] for t in done} == {"deposit", "withdrawal", "buy", "sell"}
    # Each wallet's lock orders its movements by transaction id: replaying them in that
    # order meets every balance the server answered, and never goes below zero.
    running: dict[str, Decimal] = defaultdict(Decimal, {"USDT": Decimal("300")})
    for transaction in done:
        for asset, delta in wallet_deltas(transaction).items():
            running[asset] += delta
            assert running[asset] >= 0
            side = "quote_balance_after" if asset == transaction.get("quote_asset") else "balance_after"
            assert Decimal(transaction[side]) == running[asset], transaction
    assert await exchange.balances(judy) == {a: balance for a, balance in running.items() if balance}
    assert await audit(db) == []


async def test_trades_show_in_the_history_and_in_users_me(exchange: Exchange) -> None:
    kim = await exchange.user(usdt="100")
    await exchange.set_prices({"BTCUSDT": "64123.45"})
    trade = (await exchange.order(kim, symbol="BTCUSDT", side="buy", quote_quantity="50")).json()["trade"]

    history = (await exchange.http.get("/api/v1/transactions", headers=kim.headers)).json()
    by_quote = await exchange.http.get("/api/v1/transactions?asset=USDT&kind=buy", headers=kim.headers)
    me = (await exchange.http.get("/api/v1/users/me", headers=kim.headers)).json()

    assert history["transactions"][0] == trade
    assert by_quote.json()["transactions"] == [trade]
    assert me["recent_transactions"][0] == trade
    assert {w["asset"] for w in me["wallets"] if Decimal(w["balance"])} == {"BTC", "USDT"}


async def test_admins_see_the_house_take_the_other_side_and_the_fees(
    exchange: Exchange, db: asyncpg.Pool
) -> None:
    leo = await exchange.user(usdt="1000")
    assert error_of(await exchange.http.get("/api/v1/admin/house", headers=leo.headers)) == (403, "forbidden")
    boss = await exchange.user()
    await repo.set_role(db, boss.email, "admin")
    boss.headers = await login(exchange.http, boss.email)
    await exchange.set_prices({"BTCUSDT": "64123.45"})

    async def house() -> dict[tuple[str, str], Decimal]:
        answer = await exchange.http.get("/api/v1/admin/house", headers=boss.headers)
        assert answer.status_code == 200, answer.text
        return {(h["asset"], h["kind"]): Decimal(h["balance"]) for h in answer.json()}

    before = await house()
    trade = (await exchange.order(leo, symbol="BTCUSDT", side="buy", quantity="0.01")).json()["trade"]
    after = await house()

    changed = {
        k: after[k] - before.get(k, Decimal(0)) for k in after if after[k] != before.get(k, Decimal(0))
    }
    assert changed == {
        ("BTC", "market"): Decimal("-0.01"),
        ("BTC", "fees"): Decimal(trade["fee"]),
        ("USDT", "market"): Decimal(trade["quote_qty"]),
    }
