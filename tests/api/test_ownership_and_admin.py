"""Users see only their own resources; admin routes are for admins only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import httpx
from conftest import TEST_PASSWORD, Account, move

from exchange.config import Settings


async def test_another_users_transaction_is_404_like_a_missing_one(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    alice, bob = await new_user(), await new_user()
    tx = (await move(client, alice, "deposit", "3")).json()

    mine = await client.get(f"/api/v1/transactions/{tx['id']}", headers=alice.headers)
    assert mine.status_code == 200 and mine.json() == tx

    theirs = await client.get(f"/api/v1/transactions/{tx['id']}", headers=bob.headers)
    missing = await client.get("/api/v1/transactions/999999999", headers=bob.headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert theirs.json()["error"]["code"] == "not_found"

    assert (await client.get("/api/v1/transactions", headers=bob.headers)).json()["transactions"] == []
    assert (await client.get("/api/v1/wallets/USDT", headers=bob.headers)).json()["balance"] == "0.00"


async def test_history_pages_and_filters(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    trent = await new_user()
    ids = [(await move(client, trent, "deposit", str(n))).json()["id"] for n in range(1, 6)]
    ids.append((await move(client, trent, "withdraw", "1")).json()["id"])
    ids.append((await move(client, trent, "deposit", "1", asset="BTC")).json()["id"])

    seen, before = [], None
    while True:
        params = {"limit": 3} | ({"before": before} if before else {})
        page = (await client.get("/api/v1/transactions", params=params, headers=trent.headers)).json()
        seen += [t["id"] for t in page["transactions"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == sorted(ids, reverse=True)

    # A withdrawal's kind is `withdrawal`; `withdraw` (its route's and metrics' word) finds it too.
    for kind in ("withdrawal", "withdraw"):
        withdrawals = await client.get("/api/v1/transactions", params={"kind": kind}, headers=trent.headers)
        assert [t["id"] for t in withdrawals.json()["transactions"]] == [ids[5]]
    btc = await client.get("/api/v1/transactions", params={"asset": "btc"}, headers=trent.headers)
    assert [t["id"] for t in btc.json()["transactions"]] == [ids[6]]

    for params in ({"limit": 0}, {"limit": 101}, {"kind": "theft"}, {"before": -1}):
        bad = await client.get("/api/v1/transactions", params=params, headers=trent.headers)
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "validation_error"), params


async def test_a_user_cannot_reach_admin_routes(
    client: httpx.AsyncClient, new_user: Callable[[], Awaitable[Account]]
) -> None:
    user = await new_user()
    answer = await client.get("/api/v1/admin/audit", headers=user.headers)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "forbidden"
    anonymous = await client.get("/api/v1/admin/audit")
    assert anonymous.status_code == 401


async def test_create_admin_command_makes_an_admin_who_can_audit(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    email = "root-admin@example.com"
    env = {**os.environ, "DATABASE_URL": settings.database_url, "BCRYPT_ROUNDS": "4"}
    made = subprocess.run(
        [sys.executable, "-m", "exchange", "create-admin", email, "--password-stdin"],
        input=TEST_PASSWORD + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert "created admin" in made.stdout

    token = await client.post("/api/v1/auth/token", data={"username": email, "password": TEST_PASSWORD})
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    report = await client.get("/api/v1/admin/audit", headers=headers)
    assert report.status_code == 200
    assert report.json() == {"ok": True, "violations": []}

    # Running it again for an existing account promotes it, without a password.
    again = subprocess.run(
        [sys.executable, "-m", "exchange", "create-admin", email.upper()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert again.returncode == 0, again.stderr
    assert "is now an admin" in again.stdout
