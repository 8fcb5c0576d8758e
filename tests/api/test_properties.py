"""Random sequences of deposits, withdrawals, buys, sells and retries for several users,
over HTTP, each answer checked against an in-memory Decimal model (tests/market_model.py):
status, code, amounts, fees and balances to the last unit; the audit after each sequence.

Bounded for the suite (profile `bounded`: 40 sequences, a few seconds, no shrinking);
`HYPOTHESIS_PROFILE=thorough pytest tests/api/test_properties.py` runs 1,000 and shrinks."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal

import asyncpg
import httpx
import msgspec
import pytest
from conftest import Account, audit, key
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from market_model import ASSETS, MARKETS, Fill, amount_refusal, fill, paid, received
from pinned_exchange import Exchange, exchange_server

from exchange.config import Settings
from exchange.http.errors import http_status
from exchange.ledger.errors import SQLSTATE_CODES

settings.register_profile(
    "bounded",
    max_examples=40,
    deadline=None,  # a sequence is many HTTP calls; time is bounded by the example count
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No shrinking: with many HTTP calls per example it can take minutes. A failure
    # prints its @reproduce_failure blob; the thorough profile shrinks it.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.register_profile(
    "thorough", parent=settings.get_profile("bounded"), max_examples=1_000, phases=list(Phase)
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "bounded"))

USERS = 3
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
WALLET_ASSETS = ["USDT", "BTC", "ETH"]
STATUS = {code: http_status(code) for code in SQLSTATE_CODES.values()}
# Amounts go out as JSON strings or, as clients may send them, as JSON numbers.
AS_STRINGS, AS_NUMBERS = msgspec.json.Encoder(), msgspec.json.Encoder(decimal_format="number")


def scaled(digits: int, places: list[int]) -> st.SearchStrategy[Decimal]:
    """k x 10^-p for p drawn from places: some finer than the asset or the step allows."""
    return st.builds(lambda k, p: Decimal(k).scaleb(-p), st.integers(1, 10**digits), st.sampled_from(places))


# Sizes are absolute, or a percentage (up to 120) of what the user holds, resolved when
# the step runs: absolute ones are mostly refused, relative ones mostly fill.
percents = st.sampled_from([1, 10, 33, 50, 90, 99, 100, 101, 120]).map(lambda pct: ("%", pct))
amounts = st.one_of(
    *[scaled(7, [0, 1, 2, 2, 4, 8, 9])] * 4, *[percents] * 4, st.sampled_from([Decimal(0), Decimal(-1)])
)
movements = st.tuples(
    st.sampled_from(["deposit", "withdraw"]),
    st.integers(0, USERS - 1),
    st.sampled_from(WALLET_ASSETS),
    amounts,
    st.booleans(),
)
orders = st.tuples(
    st.just("order"),
    st.integers(0, USERS - 1),
    st.sampled_from(SYMBOLS),
    st.sampled_from(["buy", "sell"]),
    st.sampled_from(["quantity"] * 4 + ["quote_quantity"] * 4 + ["both", "neither"]),
    # Base quantity: on the step, off it, finer than the asset, or a share of the base held.
    st.one_of(scaled(6, [3, 4, 5, 5, 5, 6, 9]), percents, percents),
    # Quote quantity: up to 10,000,000 USDT, sometimes finer than a cent, or a share held.
    st.one_of(scaled(7, [0, 1, 2, 2, 3]), percents, percents),
    st.booleans(),
)


# Every user starts with some of each asset (these deposits are checked like any other).
def between(low: int, high: int, places: int) -> st.SearchStrategy[Decimal]:
    return st.integers(low, high).map(lambda k: Decimal(k).scaleb(-places))


# 10,000 to 10,000,000 USDT, 0.1 to 100 BTC and ETH.
fundings = st.tuples(between(10**6, 10**9, 2), between(10**7, 10**10, 8), between(10**7, 10**10, 8))
# Send a successful request again with its key: as it was, or changed.
retries = st.tuples(st.just("retry"), st.integers(0, 10_000), st.booleans())
steps = st.lists(st.one_of(movements, movements, orders, orders, orders, retries), min_size=5, max_size=30)
# Prices with 2 to 8 decimals: mostly 1 to 1,000,000, sometimes down to 0.00000001.
prices = st.one_of(*[between(10**4, 10**8, 2)] * 3, *[between(10**4, 10**8, 4)] * 2, between(1, 10**8, 8))


@dataclass
class Sent:
    """A request that moved money, to send again."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    answer: dict[str, Any]
    bump: str  # the numeric field a changed retry alters


@dataclass
class Ledger:
    """What every wallet should hold, by (user, asset)."""

    balances: defaultdict[tuple[int, str], Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def size(self, user: int, asset: str, size: Decimal | tuple[str, int], unit: Decimal) -> Decimal:
        """An absolute size as it is, or a percentage of the user's balance, down to unit."""
        if isinstance(size, Decimal):
            return size
        return (self.balances[user, asset] * size[1] / 100).quantize(unit, ROUND_FLOOR)

    def movement(self, kind: str, user: int, asset: str, amount: Decimal) -> Decimal | str:
        """The wallet's balance after the movement, or the code it is refused with."""
        if refusal := amount_refusal(ASSETS[asset], amount):
            return refusal
        if kind == "withdraw" and self.balances[user, asset] < amount:
            return "insufficient_funds"
        self.balances[user, asset] += amount if kind == "deposit" else -amount
        return self.balances[user, asset]

    def trade(
        self, user: int, symbol: str, side: Literal["buy", "sell"], quantity: Any, quote: Any, price: Decimal
    ) -> Fill | str:
        market = MARKETS[symbol]
        filled = fill(market, side, quantity, quote, price)
        if isinstance(filled, str):
            return filled
        paid_asset, paid_amount = paid(market, side, filled)
        if self.balances[user, paid_asset] < paid_amount:
            return "insufficient_funds"
        received_asset, received_amount = received(market, side, filled)
        self.balances[user, paid_asset] -= paid_amount
        self.balances[user, received_asset] += received_amount
        return filled


@pytest.fixture(scope="module")
async def exchange(settings: Settings) -> AsyncIterator[Exchange]:
    async with exchange_server(settings) as server:
        yield server


async def test_the_model_knows_the_markets_the_database_has(db: asyncpg.Pool) -> None:
    assets = {r["code"]: (r["scale"], r["max_amount"]) for r in await db.fetch("SELECT * FROM assets")}
    assert assets == {a.code: (a.scale, a.max_amount) for a in ASSETS.values()}
    rows = await db.fetch("SELECT * FROM markets WHERE active")
    assert {
        r["symbol"]: (
            r["base"],
            r["quote"],
            r["qty_step"],
            r["min_qty"],
            r["max_qty"],
            r["min_notional"],
            r["fee_rate"],
        )
        for r in rows
    } == {
        m.symbol: (m.base.code, m.quote.code, m.qty_step, m.min_qty, m.max_qty, m.min_notional, m.fee_rate)
        for m in MARKETS.values()
    }


def refused(answer: httpx.Response, code: str) -> None:
    event(f"refused {code}")  # pytest --hypothesis-show-statistics shows how often each path ran
    assert (answer.status_code, answer.json()["error"]["code"]) == (STATUS.get(code, 422), code), answer.text


async def post(exchange: Exchange, path: str, body: dict[str, Any], headers: dict[str, str], numbers: bool):
    content = (AS_NUMBERS if numbers else AS_STRINGS).encode(body)
    return await exchange.http.post(
        path, content=content, headers={**headers, "Content-Type": "application/json"}
    )


async def run_movement(
    exchange: Exchange, ledger: Ledger, users: list[Account], step: tuple, sent: list[Sent]
):
    kind, user, asset, size, numbers = step
    amount = ledger.size(user, asset, size, ASSETS[asset].unit)
    path, body = f"/api/v1/wallets/{asset}/{kind}", {"amount": amount}
    headers = {**users[user].headers, "Idempotency-Key": key()}
    expected = ledger.movement(kind, user, asset, amount)
    answer = await post(exchange, path, body, headers, numbers)
    if isinstance(expected, str):
        refused(answer, expected)
        return
    assert answer.status_code == 201, answer.text
    transaction = answer.json()
    assert transaction["kind"] == ("deposit" if kind == "deposit" else "withdrawal")
    assert (transaction["asset"], Decimal(transaction["amount"])) == (asset, amount)
    assert Decimal(transaction["balance_after"]) == expected
    sent.append(Sent(path, body, headers, transaction, "amount"))
    event(f"{kind} filled")


async def run_order(
    exchange: Exchange, ledger: Ledger, users: list[Account], step: tuple, sent: list[Sent], price: dict
):
    _, user, symbol, side, given, quantity, quote, numbers = step
    market = MARKETS[symbol]
    body: dict[str, Any] = {"symbol": symbol, "side": side}
    if given in ("quantity", "both"):
        body["quantity"] = ledger.size(user, market.base.code, quantity, market.qty_step)
    if given in ("quote_quantity", "both"):
        body["quote_quantity"] = ledger.size(user, market.quote.code, quote, market.quote.unit)
    headers = {**users[user].headers, "Idempotency-Key": key()}
    expected = ledger.trade(
        user, symbol, side, body.get("quantity"), body.get("quote_quantity"), price[symbol]
    )
    answer = await post(exchange, "/api/v1/orders", body, headers, numbers)
    if isinstance(expected, str):
        refused(answer, expected)
        return
    assert answer.status_code == 201, answer.text
    result = answer.json()
    trade = result["trade"]
    assert (trade["kind"], trade["symbol"], trade["asset"], trade["quote_asset"]) == (
        side, symbol, market.base.code, market.quote.code
    )  # fmt: skip
    assert Decimal(trade["price"]) == price[symbol]
    assert (Decimal(trade["amount"]), Decimal(trade["quote_qty"]), Decimal(trade["fee"])) == (
        expected.quantity, expected.quote_qty, expected.fee
    )  # fmt: skip
    assert trade["fee_asset"] == (market.base.code if side == "buy" else market.quote.code)
    after = [(market.base.code, ledger.balances[user, market.base.code])]
    after.append((market.quote.code, ledger.balances[user, market.quote.code]))
    assert [(w["asset"], Decimal(w["balance"])) for w in result["wallets"]] == after
    assert (Decimal(trade["balance_after"]), Decimal(trade["quote_balance_after"])) == (
        after[0][1],
        after[1][1],
    )
    event(f"{side} filled")
    sent.append(
        Sent("/api/v1/orders", body, headers, result, "quantity" if "quantity" in body else "quote_quantity")
    )


async def run_retry(exchange: Exchange, step: tuple, sent: list[Sent]) -> None:
    """A retry with the same key and body answers the first result and moves nothing;
    with the same key and another body it is refused (the model is unchanged either way)."""
    _, index, changed = step
    if not sent:
        return
    first = sent[index % len(sent)]
    body = {**first.body, first.bump: first.body[first.bump] + 1} if changed else first.body
    answer = await post(exchange, first.path, body, first.headers, numbers=False)
    if changed:
        refused(answer, "idempotency_key_reused")
    else:
        assert answer.status_code == 201, answer.text
        assert answer.headers["idempotency-replayed"] == "true"
        assert answer.json() == first.answer


@PROFILE
@given(fundings=st.lists(fundings, min_size=USERS, max_size=USERS), steps=steps, btc=prices, eth=prices)
async def test_random_sequences_of_movements_match_the_decimal_model(
    exchange: Exchange,
    db: asyncpg.Pool,
    fundings: list[tuple],
    steps: list[tuple],
    btc: Decimal,
    eth: Decimal,
) -> None:
    price = {"BTCUSDT": btc, "ETHUSDT": eth}
    await exchange.set_prices({symbol: str(value) for symbol, value in price.items()})
    users = [await exchange.user() for _ in range(USERS)]
    ledger, sent = Ledger(), []
    for user, funding in enumerate(fundings):
        for asset, amount in zip(WALLET_ASSETS, funding, strict=True):
            await run_movement(exchange, ledger, users, ("deposit", user, asset, amount, False), sent)

    for step in steps:
        if step[0] == "order":
            await run_order(exchange, ledger, users, step, sent, price)
        elif step[0] == "retry":
            await run_retry(exchange, step, sent)
        else:
            await run_movement(exchange, ledger, users, step, sent)

    for index, user in enumerate(users):
        held = {
            asset: balance
            for (owner, asset), balance in ledger.balances.items()
            if owner == index and balance
        }
        assert await exchange.balances(user) == held
    assert await audit(db) == []
