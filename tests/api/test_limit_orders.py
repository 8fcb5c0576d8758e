"""Limit orders over HTTP: POST /api/v1/orders with type "limit", cancel, reads, and the
wallets' locked and available amounts, against a server whose prices a test sets."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import httpx
import pytest
from conftest import audit, key, move
from pinned_exchange import Exchange, exchange_server

from exchange.config import Settings


@pytest.fixture(scope="module")
async def exchange(settings: Settings) -> AsyncIterator[Exchange]:
    async with exchange_server(settings) as server:
        await server.set_prices({"BTCUSDT": "64123.45", "ETHUSDT": "2500.00"})
        yield server


def error_of(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


async def wallet(exchange: Exchange, account: object, asset: str) -> dict[str, str]:
    answer = await exchange.http.get(f"/api/v1/wallets/{asset}", headers=account.headers)  # type: ignore[attr-defined]
    assert answer.status_code == 200, answer.text
    return answer.json()


def limit(side: str, price: str, quantity: str, **extra: str) -> dict[str, str]:
    return {"type": "limit", "symbol": "ETHUSDT", "side": side, "price": price, "quantity": quantity, **extra}


async def test_a_gtc_buy_rests_with_its_funds_locked_and_a_cancel_releases_them(
    exchange: Exchange, db: asyncpg.Pool
) -> None:
    alice = await exchange.user(usdt="100")
    placed = await exchange.order(
        alice, "place-1", **limit("buy", "2000.01", "0.0333", client_order_id="a-1")
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()["order"]
    assert {k: order[k] for k in ("type", "side", "status", "time_in_force", "executed_qty")} == {
        "type": "limit",
        "side": "buy",
        "status": "NEW",
        "time_in_force": "GTC",
        "executed_qty": "0",
    }
    assert Decimal(order["price"]) == Decimal("2000.01") and Decimal(order["quantity"]) == Decimal("0.0333")
    usdt = next(w for w in placed.json()["wallets"] if w["asset"] == "USDT")
    assert (usdt["balance"], usdt["locked"], usdt["available"]) == ("100.00", "66.61", "33.39")
    assert await wallet(exchange, alice, "USDT") == usdt

    replay = await exchange.order(
        alice, "place-1", **limit("buy", "2000.01", "0.0333", client_order_id="a-1")
    )
    assert (replay.status_code, replay.headers.get("Idempotency-Replayed")) == (201, "true")
    assert replay.json()["order"]["id"] == order["id"]

    refused = await move(exchange.http, alice, "withdraw", "33.40")
    assert error_of(refused) == (409, "insufficient_funds")
    assert refused.json()["error"]["details"]["available"] == "33.39"

    by_id = await exchange.http.get(f"/api/v1/orders/{order['id']}", headers=alice.headers)
    assert by_id.json() == order
    by_client_id = await exchange.http.get("/api/v1/orders?client_order_id=a-1", headers=alice.headers)
    assert by_client_id.json() == {"orders": [order], "next_before": None}

    bob = await exchange.user()
    assert (await exchange.http.get(f"/api/v1/orders/{order['id']}", headers=bob.headers)).status_code == 404
    stranger_cancel = await exchange.http.delete(f"/api/v1/orders/{order['id']}", headers=bob.headers)
    assert error_of(stranger_cancel) == (404, "not_found")

    cancelled = await exchange.http.delete(f"/api/v1/orders/{order['id']}", headers=alice.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "CANCELED"
    again = await exchange.http.delete(f"/api/v1/orders/{order['id']}", headers=alice.headers)
    assert error_of(again) == (409, "order_not_open")
    assert (await wallet(exchange, alice, "USDT"))["available"] == "100.00"
    assert await audit(db) == []


async def test_marketable_fills_at_once_and_ioc_fok_expire(exchange: Exchange, db: asyncpg.Pool) -> None:
    alice = await exchange.user(usdt="100")
    taker = await exchange.order(alice, **limit("buy", "2600.00", "0.01"))
    assert taker.status_code == 201, taker.text
    order = taker.json()["order"]
    assert (order["status"], Decimal(order["cumulative_quote_qty"])) == ("FILLED", Decimal("25.00"))
    assert order["transaction_id"] is not None
    for tif in ("IOC", "FOK"):
        expired = await exchange.order(alice, **limit("buy", "2400.00", "0.01", time_in_force=tif))
        assert expired.json()["order"]["status"] == "EXPIRED"
    usdt = await wallet(exchange, alice, "USDT")
    assert (usdt["balance"], usdt["locked"]) == ("75.00", "0.00")
    assert await audit(db) == []


async def test_bad_limit_orders_are_refused_with_their_codes(exchange: Exchange) -> None:
    alice = await exchange.user(usdt="100")
    cases = [
        (limit("buy", "2000.001", "0.01"), (422, "price_off_tick")),
        (limit("buy", "100.00", "0.1"), (422, "price_out_of_band")),
        (limit("buy", "2000.00", "0.001"), (422, "below_min_notional")),
        ({**limit("buy", "2000.00", "0.01"), "max_price": "1"}, (422, "field_not_for_order_type")),
        (
            {k: v for k, v in limit("buy", "2000.00", "0.01").items() if k != "price"},
            (422, "field_not_for_order_type"),
        ),
        (
            {"symbol": "ETHUSDT", "side": "buy", "quantity": "0.01", "price": "2000.00"},
            (422, "field_not_for_order_type"),
        ),
        (limit("buy", "2000.00", "0.1"), (409, "insufficient_funds")),
    ]
    for body, expected in cases:
        assert error_of(await exchange.order(alice, **body)) == expected, body
    await exchange.order(alice, **limit("buy", "2000.00", "0.01", client_order_id="dup"))
    again = await exchange.order(alice, **limit("buy", "2000.00", "0.01", client_order_id="dup"))
    assert error_of(again) == (409, "duplicate_client_order_id")


async def test_fifty_concurrent_limit_buys_with_funds_for_ten(exchange: Exchange, db: asyncpg.Pool) -> None:
    alice = await exchange.user(usdt="200")  # each locks 20.00
    answers = await asyncio.gather(
        *(exchange.order(alice, key(), **limit("buy", "2000.00", "0.01")) for _ in range(50))
    )
    outcomes = Counter(a.status_code if a.status_code == 201 else error_of(a) for a in answers)
    assert outcomes == Counter({201: 10, (409, "insufficient_funds"): 40})
    listed = await exchange.http.get(
        "/api/v1/orders?status=NEW&symbol=ETHUSDT&limit=6", headers=alice.headers
    )
    first_page = listed.json()
    assert len(first_page["orders"]) == 6 and first_page["next_before"] is not None
    rest = await exchange.http.get(
        f"/api/v1/orders?status=NEW&before={first_page['next_before']}", headers=alice.headers
    )
    assert len(rest.json()["orders"]) == 4 and rest.json()["next_before"] is None
    usdt = await wallet(exchange, alice, "USDT")
    assert (usdt["locked"], usdt["available"]) == ("200.00", "0.00")
    assert await audit(db) == []
