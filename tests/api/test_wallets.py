"""Deposits, withdrawals and wallets: answers, refusals, and the ledger behind them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg
import httpx
import pytest
from conftest import Account, audit, balance, key, ledger_counts, move


async def test_deposit_then_withdraw_moves_the_balance_and_balances_the_ledger(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    alice = await new_user()
    assert await balance(client, alice) == "0.00"

    deposited = await move(client, alice, "deposit", "100.50")
    assert deposited.status_code == 201
    body = deposited.json()
    assert body["kind"] == "deposit" and body["asset"] == "USDT"
    assert body["amount"] == "100.50" and body["balance_after"] == "100.50"
    assert "idempotency-replayed" not in deposited.headers

    withdrawn = await move(client, alice, "withdraw", "0.5")
    assert withdrawn.status_code == 201
    assert withdrawn.json()["kind"] == "withdrawal"
    assert withdrawn.json()["balance_after"] == "100.00"
    assert await balance(client, alice) == "100.00"

    # Double entry: each transaction's entries sum to zero, the counterparty is `external`.
    entries = await db.fetch(
        """
        SELECT e.transaction_id, e.amount, a.kind
        FROM entries e JOIN accounts a ON a.id = e.account_id
        WHERE e.transaction_id = ANY($1::bigint[])
        ORDER BY e.transaction_id, e.amount
        """,
        [body["id"], withdrawn.json()["id"]],
    )
    assert [(row["kind"], row["amount"]) for row in entries] == [
        ("external", Decimal("-100.50")),
        ("wallet", Decimal("100.50")),
        ("wallet", Decimal("-0.50")),
        ("external", Decimal("0.50")),
    ]
    assert await audit(db) == []


async def test_a_json_number_amount_is_exact(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    bob = await new_user()
    # 0.1 + 0.2 in float is 0.30000000000000004; here it must be exactly 0.30.
    assert (await move(client, bob, "deposit", 0.1)).status_code == 201
    assert (await move(client, bob, "deposit", 0.2)).status_code == 201
    assert await balance(client, bob) == "0.30"
    satoshi = await move(client, bob, "deposit", "0.00000001", asset="btc")
    assert satoshi.status_code == 201
    # Fixed-point in every answer, never Decimal's "1E-8".
    assert satoshi.json()["amount"] == satoshi.json()["balance_after"] == "0.00000001"
    assert await balance(client, bob, "BTC") == "0.00000001"
    history = (await client.get("/api/v1/transactions", params={"asset": "BTC"}, headers=bob.headers)).json()
    amounts = [(t["amount"], t["balance_after"]) for t in history["transactions"]]
    assert amounts == [("0.00000001", "0.00000001")]


async def test_wallets_list_every_asset_and_me_nests_them(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    carol = await new_user()
    await move(client, carol, "deposit", "0.25", asset="ETH")
    wallets = (await client.get("/api/v1/wallets", headers=carol.headers)).json()
    by_asset = {w["asset"]: w["balance"] for w in wallets}
    assert by_asset["ETH"] == "0.25000000"
    assert by_asset["USDT"] == "0.00"
    assert {"BTC", "ETH", "SOL", "BNB", "USDT"} <= set(by_asset)

    me = (await client.get("/api/v1/users/me", headers=carol.headers)).json()
    assert me["user"]["email"] == carol.email
    assert {w["asset"]: w["balance"] for w in me["wallets"]} == by_asset
    assert [t["kind"] for t in me["recent_transactions"]] == ["deposit"]

    unknown = await client.get("/api/v1/wallets/DOGE", headers=carol.headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_asset"


BAD_AMOUNTS = [
    pytest.param("0", 422, "invalid_amount", id="zero"),
    pytest.param("-5", 422, "invalid_amount", id="negative"),
    pytest.param(0, 422, "invalid_amount", id="zero-number"),
    pytest.param("abc", 400, "validation_error", id="not-a-number"),
    pytest.param("", 400, "validation_error", id="empty"),
    pytest.param("NaN", 422, "invalid_amount", id="nan"),
    pytest.param("Infinity", 422, "invalid_amount", id="infinity"),
    pytest.param("-Infinity", 422, "invalid_amount", id="minus-infinity"),
    pytest.param("sNaN", 422, "invalid_amount", id="signalling-nan"),
    pytest.param("1.001", 422, "too_many_decimals", id="three-decimals-for-usdt"),
    pytest.param(1.001, 422, "too_many_decimals", id="three-decimals-number"),
    pytest.param("1e-30", 422, "too_many_decimals", id="tiny"),
    pytest.param("1000000000.01", 422, "invalid_amount", id="above-asset-max"),
    pytest.param("1e400", 422, "invalid_amount", id="absurd-exponent"),
    pytest.param("9" * 500, 422, "invalid_amount", id="absurd-digits"),
    pytest.param(True, 400, "validation_error", id="boolean"),
    pytest.param(None, 400, "validation_error", id="null"),
    pytest.param(["1"], 400, "validation_error", id="list"),
]


@pytest.mark.parametrize("kind", ["deposit", "withdraw"])
@pytest.mark.parametrize(("amount", "status", "code"), BAD_AMOUNTS)
async def test_bad_amounts_are_refused_and_the_ledger_is_unchanged(
    client: httpx.AsyncClient,
    db: asyncpg.Pool,
    new_user: Callable[[], Awaitable[Account]],
    kind: str,
    amount: object,
    status: int,
    code: str,
) -> None:
    dave = await new_user()
    assert (await move(client, dave, "deposit", "50")).status_code == 201
    before = await ledger_counts(db)

    answer = await move(client, dave, kind, amount)

    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "amount" in str(error.get("details")), error
    assert await ledger_counts(db) == before
    assert await balance(client, dave) == "50.00"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        pytest.param(
            b'{"amount": "1", "extra": 1}', "application/json", 400, "validation_error", id="unknown-field"
        ),
        pytest.param(b"{}", "application/json", 400, "validation_error", id="missing-amount"),
        pytest.param(b'{"amount": "1"', "application/json", 400, "validation_error", id="malformed-json"),
        pytest.param(b"[]", "application/json", 400, "validation_error", id="not-an-object"),
        pytest.param(
            b"amount=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type", id="form"
        ),
        pytest.param(
            b'{"amount": "1"}' + b" " * 70_000, "application/json", 413, "payload_too_large", id="too-big"
        ),
    ],
)
async def test_malformed_bodies_are_refused(
    client: httpx.AsyncClient,
    db: asyncpg.Pool,
    new_user: Callable[[], Awaitable[Account]],
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    erin = await new_user()
    before = await ledger_counts(db)
    headers = {**erin.headers, "Idempotency-Key": key(), "Content-Type": content_type}
    answer = await client.post("/api/v1/wallets/USDT/deposit", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert await ledger_counts(db) == before


async def test_unknown_asset_missing_or_bad_key_and_overdraft(
    client: httpx.AsyncClient, db: asyncpg.Pool, new_user: Callable[[], Awaitable[Account]]
) -> None:
    frank = await new_user()
    assert (await move(client, frank, "deposit", "10")).status_code == 201
    before = await ledger_counts(db)

    unknown = await move(client, frank, "deposit", "1", asset="DOGE")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_asset")
    bad_code = await move(client, frank, "deposit", "1", asset="../x")
    assert bad_code.status_code == 404

    no_key = await client.post("/api/v1/wallets/USDT/deposit", json={"amount": "1"}, headers=frank.headers)
    assert (no_key.status_code, no_key.json()["error"]["code"]) == (400, "validation_error")
    assert "Idempotency-Key" in no_key.text
    long_key = await move(client, frank, "deposit", "1", idempotency_key="k" * 101)
    assert (long_key.status_code, long_key.json()["error"]["code"]) == (400, "validation_error")

    overdraft = await move(client, frank, "withdraw", "10.01")
    assert overdraft.status_code == 409
    error = overdraft.json()["error"]
    assert error["code"] == "insufficient_funds"
    assert error["details"] == {"asset": "USDT", "available": "10.00", "requested": "10.01"}
    never_funded = await move(client, frank, "withdraw", "1", asset="BTC")
    assert never_funded.json()["error"]["code"] == "insufficient_funds"

    assert await ledger_counts(db) == before
    assert await balance(client, frank) == "10.00"
    assert await audit(db) == []


async def test_values_the_database_cannot_hold_are_400_not_500(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    walter = await new_user()
    too_big = "99999999999999999999"
    for path in (f"/api/v1/transactions/{too_big}", f"/api/v1/transactions?before={too_big}"):
        answer = await client.get(path, headers=walter.headers)
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "validation_error"), path
    nul_email = await client.post(
        "/api/v1/auth/register", json={"email": "a\u0000b@c.de", "password": "x" * 12}
    )
    assert (nul_email.status_code, nul_email.json()["error"]["code"]) == (400, "validation_error")
    nul_login = await client.post(
        "/api/v1/auth/token", data={"username": "a\u0000b@c.de", "password": "x" * 12}
    )
    assert (nul_login.status_code, nul_login.json()["error"]["code"]) == (400, "validation_error")
