"""The PL/pgSQL trade functions called straight through asyncpg, as psql or a second
service would: many connections at once, so the row locks, not the HTTP layer's
pacing, are what keeps the books; and the rules hold for any caller."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import asyncpg
import msgspec
import pytest
from conftest import audit
from market_model import MARKETS, fill

from exchange.config import Settings
from exchange.ledger.errors import SQLSTATE_CODES
from exchange.store import repository as repo
from exchange.store.db import create_pool

CONNECTIONS = 30
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The app's own pool set-up (lock and statement timeouts included), all connections open."""
    configured = msgspec.structs.replace(settings, db_pool_min_size=CONNECTIONS, db_pool_max_size=CONNECTIONS)
    pool = await create_pool(configured)
    yield pool
    await pool.close()


async def funded_user(pool: asyncpg.Pool, usdt: str, btc: str | None = None) -> int:
    user = await repo.create_user(pool, f"sql-{secrets.token_hex(6)}@example.com", "not-a-hash")
    await repo.deposit(pool, user.id, "USDT", Decimal(usdt), secrets.token_hex(8))
    if btc is not None:
        await repo.deposit(pool, user.id, "BTC", Decimal(btc), secrets.token_hex(8))
    return user.id


async def trade(
    pool: asyncpg.Pool, user_id: int, side: Literal["buy", "sell"], quantity: str, price: str = "50000.00"
) -> str | None:
    """Fill one order; None if it filled, else the SQLSTATE it was refused with."""
    try:
        await repo.trade(
            pool,
            side,
            user_id,
            "BTCUSDT",
            Decimal(quantity),
            None,
            None,
            Decimal(price),
            NOW,
            None,
            secrets.token_hex(8),
        )
    except asyncpg.PostgresError as exc:
        return exc.sqlstate
    return None


async def test_rounds_of_forty_simultaneous_buys_never_overspend(
    pool: asyncpg.Pool, db: asyncpg.Pool
) -> None:
    for _ in range(5):
        user_id = await funded_user(pool, "100")

        outcomes = await asyncio.gather(*(trade(pool, user_id, "buy", "0.0002") for _ in range(40)))

        # 0.0002 x 50000 = 10.00 each: exactly ten fit in 100, and nothing else goes wrong.
        assert outcomes.count(None) == 10
        assert outcomes.count("EX004") == 30
        wallets = {w.asset: w.balance for w in await repo.wallets_for_user(pool, user_id)}
        assert (wallets["USDT"], wallets["BTC"]) == (0, Decimal("0.001998"))
    assert await audit(db) == []


async def test_simultaneous_buys_sells_and_deposits_of_one_user_never_deadlock(
    pool: asyncpg.Pool, db: asyncpg.Pool
) -> None:
    for _ in range(3):
        user_id = await funded_user(pool, "200", btc="0.004")
        calls = []
        for i in range(60):
            if i % 3 == 0:
                calls.append(trade(pool, user_id, "buy", "0.0002"))
            elif i % 3 == 1:
                calls.append(trade(pool, user_id, "sell", "0.0003"))
            else:
                deposit = repo.deposit(pool, user_id, "BTC", Decimal("0.0001"), secrets.token_hex(8))
                calls.append(deposit)

        outcomes = await asyncio.gather(*calls, return_exceptions=True)

        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert errors == []  # a deadlock (40P01) or lock timeout would show here
        assert {o for o in outcomes if isinstance(o, str)} <= {"EX004"}
    assert await audit(db) == []


@pytest.mark.parametrize("scale", range(19))
async def test_round_up_adds_one_unit_of_any_scale(pool: asyncpg.Pool, scale: int) -> None:
    unit = Decimal(1).scaleb(-scale)
    value = Decimal(3) + unit / 10  # a tenth of a unit above 3

    rounded = await pool.fetchval("SELECT round_up($1, $2)", value, scale)

    assert rounded == Decimal(3) + unit
    assert await pool.fetchval("SELECT round_up($1, $2)", Decimal(3), scale) == 3


async def test_a_market_step_finer_than_its_base_asset_is_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="qty_step"):
        await pool.execute("UPDATE markets SET qty_step = 0.000000005 WHERE symbol = 'BTCUSDT'")


@pytest.mark.parametrize(
    ("price", "guard", "sqlstate"),
    [("NaN", None, "EX013"), ("Infinity", None, "EX013"), ("0", None, "EX013"), ("50000", "NaN", "EX001")],
)
async def test_the_functions_refuse_a_nonsense_price_from_any_caller(
    pool: asyncpg.Pool, price: str, guard: str | None, sqlstate: str
) -> None:
    user_id = await funded_user(pool, "100")
    with pytest.raises(asyncpg.PostgresError) as refused:
        await repo.trade(
            pool, "buy", user_id, "BTCUSDT", Decimal("0.0001"), None,
            None if guard is None else Decimal(guard), Decimal(price), NOW, None, secrets.token_hex(8),
        )  # fmt: skip
    assert refused.value.sqlstate == sqlstate


def expected_fill(
    side: Literal["buy", "sell"], quantity: Decimal | None, quote_quantity: Decimal | None, price: Decimal
) -> dict:
    """BTCUSDT's rules, computed independently in Decimal (tests/market_model.py)."""
    filled = fill(MARKETS["BTCUSDT"], side, quantity, quote_quantity, price)
    if isinstance(filled, str):
        return {"refused": filled}
    return {"amount": filled.quantity, "quote_qty": filled.quote_qty, "fee": filled.fee}


async def test_random_orders_fill_exactly_as_a_decimal_model_computes(
    pool: asyncpg.Pool, db: asyncpg.Pool
) -> None:
    wallets = {"USDT": Decimal("100000000"), "BTC": Decimal("1000")}
    user_id = await funded_user(pool, str(wallets["USDT"]), btc=str(wallets["BTC"]))
    rng = random.Random(5)
    outcomes: Counter[str] = Counter()
    for _ in range(300):
        side = rng.choice(["buy", "sell"])
        price = Decimal(rng.randint(1, 10**8)).scaleb(-rng.choice([2, 4, 8]))  # 0.00000001 .. 1,000,000
        if rng.random() < 0.5:
            quantity, quote_quantity = Decimal(rng.randint(1, 10**7)).scaleb(-5), None  # up to 100 BTC
        else:
            quantity, quote_quantity = (
                None,
                Decimal(rng.randint(1, 10**9)).scaleb(-2),
            )  # up to 10,000,000 USDT
        expected = expected_fill(side, quantity, quote_quantity, price)
        if "refused" not in expected:
            paid, needed = ("USDT", expected["quote_qty"]) if side == "buy" else ("BTC", expected["amount"])
            if wallets[paid] < needed:
                expected = {"refused": "insufficient_funds"}
        try:
            filled, _ = await repo.trade(
                pool,
                side,
                user_id,
                "BTCUSDT",
                quantity,
                quote_quantity,
                None,
                price,
                NOW,
                None,
                secrets.token_hex(8),
            )
        except asyncpg.PostgresError as exc:
            refused = {"refused": SQLSTATE_CODES[exc.sqlstate]}
            assert refused == expected, (side, quantity, quote_quantity, price)
            outcomes[exc.sqlstate] += 1
            continue
        outcomes[side] += 1
        got = {"amount": filled.amount, "quote_qty": filled.quote_qty, "fee": filled.fee}
        assert got == expected, (side, quantity, quote_quantity, price)
        if side == "buy":
            wallets["USDT"] -= filled.quote_qty
            wallets["BTC"] += filled.amount - filled.fee
        else:
            wallets["BTC"] -= filled.amount
            wallets["USDT"] += filled.quote_qty - filled.fee
    assert set(outcomes) == {"buy", "sell", "EX004", "EX010", "EX011"}  # every path was taken
    assert {w.asset: w.balance for w in await repo.wallets_for_user(pool, user_id) if w.balance} == wallets
    assert await audit(db) == []


async def test_a_trade_replays_even_when_its_checks_would_now_fail(pool: asyncpg.Pool) -> None:
    """A used key is answered with the first trade whatever the order's checks say now
    (007 runs them first, and looks the key up when one fails); another request with the
    same key is still refused as such, not with the check's error."""
    user_id = await funded_user(pool, usdt="5.00")
    key = secrets.token_hex(8)

    async def buy(quote: str, price: str | None, price_valid_ms: int | None = None) -> tuple[dict, bool]:
        trade, replayed = await repo.trade(
            pool, "buy", user_id, "BTCUSDT", None, Decimal(quote), None,
            None if price is None else Decimal(price), NOW, price_valid_ms, key,
        )  # fmt: skip
        return msgspec.to_builtins(trade, enc_hook=str), replayed

    first, replayed = await buy("5.00", "50000.00")
    assert not replayed and first["quote_qty"] == "5.00"
    # The USDT is spent, no price is given, then the price given has expired: each of
    # these alone refuses a new order (insufficient_funds, price_unavailable).
    for price, valid_ms in [("50000.00", None), (None, None), ("50000.00", 0)]:
        again, replayed = await buy("5.00", price, valid_ms)
        assert replayed and again == first, (price, valid_ms)
    with pytest.raises(asyncpg.PostgresError) as refused:
        await buy("4.00", None)  # another request: the key's reuse is the error, not the price
    assert SQLSTATE_CODES[refused.value.sqlstate] == "idempotency_key_reused"
    assert await audit(pool) == []
