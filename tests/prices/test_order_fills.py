"""Resting limit orders fill when the elected feed's price crosses them: a server whose
feed polls the stand-in, a price moved there, and the order FILLED with its ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from conftest import audit
from pinned_exchange import Exchange, exchange_server

from exchange.config import Settings


@pytest.fixture(scope="module")
async def exchange(settings: Settings) -> AsyncIterator[Exchange]:
    # The feed polls every 100 ms; prices are cached for less than that.
    async with exchange_server(settings, price_poll_ms=100, price_cache_ttl_ms=50) as server:
        await server.set_prices({"SOLUSDT": "150.00"})
        yield server


async def order_status(exchange: Exchange, account: object, order_id: int) -> str:
    answer = await exchange.http.get(f"/api/v1/orders/{order_id}", headers=account.headers)  # type: ignore[attr-defined]
    return answer.json()["status"]


async def test_a_published_price_that_crosses_a_resting_order_fills_it_at_its_own_price(
    exchange: Exchange, db: asyncpg.Pool
) -> None:
    alice = await exchange.user(usdt="100")
    placed = await exchange.order(
        alice, type="limit", symbol="SOLUSDT", side="buy", price="140.00", quantity="0.5"
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()["order"]
    assert order["status"] == "NEW"
    await asyncio.sleep(0.3)  # a few polls at 150: nothing crosses
    assert await order_status(exchange, alice, order["id"]) == "NEW"

    await exchange.fake.set_prices({"SOLUSDT": "139.50"}, frozen=True)
    deadline = time.monotonic() + 5
    while await order_status(exchange, alice, order["id"]) != "FILLED":
        assert time.monotonic() < deadline, "the crossed order was not filled within 5 s"
        await asyncio.sleep(0.05)
    filled = (await exchange.http.get(f"/api/v1/orders/{order['id']}", headers=alice.headers)).json()
    fill = await db.fetchrow(
        "SELECT price, quote_qty, order_id FROM exchange.transactions WHERE id = $1", filled["transaction_id"]
    )
    assert (str(fill["price"]), str(fill["quote_qty"]), fill["order_id"]) == ("140.00", "70.00", order["id"])
    usdt = (await exchange.http.get("/api/v1/wallets/USDT", headers=alice.headers)).json()
    assert (usdt["balance"], usdt["locked"]) == ("30.00", "0.00")
    assert await audit(db) == []
