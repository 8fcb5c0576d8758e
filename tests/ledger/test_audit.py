"""The audit can fail: corrupt a ledger on purpose and it says so."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import asyncpg
from conftest import fresh_database

from exchange.store import repository as repo
from exchange.store.db import SCHEMA


def _audit_command(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exchange", "audit"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_audit_reports_each_kind_of_corruption(service_urls: tuple[str, str]) -> None:
    async with fresh_database(service_urls[0]) as url:
        conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
        try:
            user_id = await conn.fetchval(
                "INSERT INTO users (email, password_hash) VALUES ('x@y.z', 'x') RETURNING id"
            )
            await conn.fetch("SELECT * FROM deposit($1, 'USDT', 100, 'k1')", user_id)
            await conn.fetch("SELECT * FROM withdraw($1, 'USDT', 40, 'k2')", user_id)
            assert await repo.audit(conn) == []
            clean = _audit_command(url)
            assert clean.returncode == 0, clean.stderr
            assert "0 violation(s)" in clean.stdout

            # A balance changed behind the ledger's back: mismatch, and the asset no longer sums to zero.
            await conn.execute("UPDATE accounts SET balance = balance + 0.01 WHERE user_id = $1", user_id)
            found = {v.invariant for v in await repo.audit(conn)}
            assert found == {"wallet_balance_mismatch", "asset_not_balanced"}

            # An entry without its counterpart: the transaction is unbalanced.
            await conn.execute(
                "INSERT INTO entries (transaction_id, account_id, asset, amount) "
                "SELECT id, (SELECT id FROM accounts WHERE user_id = $1), 'USDT', 1 "
                "FROM transactions LIMIT 1",
                user_id,
            )
            # A negative wallet (the balance's domain normally forbids it).
            await conn.execute("ALTER DOMAIN non_negative_amount DROP CONSTRAINT non_negative_amount_check")
            await conn.execute("UPDATE accounts SET balance = -1 WHERE user_id = $1", user_id)
            # An entry whose asset is not its account's asset.
            await conn.execute(
                "INSERT INTO entries (transaction_id, account_id, asset, amount) "
                "SELECT id, (SELECT id FROM accounts WHERE user_id = $1), 'BTC', 0.1 "
                "FROM transactions LIMIT 1",
                user_id,
            )
            # A transaction with no entries, and an entry naming no account.
            await conn.execute(
                "INSERT INTO transactions "
                "(user_id, kind, idempotency_key, request_hash, asset, amount, balance_after) "
                "VALUES ($1, 'deposit', 'k3', '\\x00', 'USDT', 1, 1)",
                user_id,
            )
            await conn.execute(
                "INSERT INTO entries (transaction_id, account_id, asset, amount) "
                "SELECT id, 999999, 'USDT', 0.5 FROM transactions LIMIT 1"
            )
            violations = await repo.audit(conn)
            assert {v.invariant for v in violations} == {
                "wallet_balance_mismatch",
                "asset_not_balanced",
                "transaction_unbalanced",
                "wallet_negative",
                "transaction_without_entries",
                "entry_account_mismatch",
            }
            assert all(v.subject for v in violations)
            mismatched = {v.subject for v in violations if v.invariant == "entry_account_mismatch"}
            assert any("BTC" in subject for subject in mismatched)
            assert any("account 999999" in subject for subject in mismatched)
        finally:
            await conn.close()

        failed = _audit_command(url)
        assert failed.returncode == 1
        assert "wallet_negative" in failed.stdout


async def test_an_asset_added_by_a_dba_gets_its_house_accounts(service_urls: tuple[str, str]) -> None:
    async with fresh_database(service_urls[0]) as url:
        conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
        try:
            await conn.execute("INSERT INTO assets (code, scale, max_amount) VALUES ('DOGE', 8, 1000000000)")
            kinds = await conn.fetch("SELECT kind FROM accounts WHERE asset = 'DOGE' ORDER BY kind")
            assert [row["kind"] for row in kinds] == ["external", "fees", "market"]
            user_id = await conn.fetchval(
                "INSERT INTO users (email, password_hash) VALUES ('d@o.ge', 'x') RETURNING id"
            )
            moved = await conn.fetchrow("SELECT * FROM deposit($1, 'DOGE', 42, 'k1')", user_id)
            assert moved["balance_after"] == 42
            assert await repo.audit(conn) == []
        finally:
            await conn.close()


async def test_a_market_added_by_a_dba_trades_against_its_own_house_accounts(
    service_urls: tuple[str, str],
) -> None:
    async with fresh_database(service_urls[0]) as url:
        conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
        try:
            await conn.execute("INSERT INTO assets (code, scale, max_amount) VALUES ('DOGE', 8, 1000000000)")
            await conn.execute(
                "INSERT INTO markets (symbol, base, quote, qty_step, min_qty, max_qty, tick_size,"
                " min_notional, fee_rate)"
                " VALUES ('DOGEUSDT', 'DOGE', 'USDT', 1, 1, 1000000, 0.00001, 5, 0.001)"
            )
            user_id = await conn.fetchval(
                "INSERT INTO users (email, password_hash) VALUES ('d@o.ge', 'x') RETURNING id"
            )
            await conn.execute("SELECT deposit($1, 'USDT', 100, 'k1')", user_id)
            bought = await conn.fetchrow(
                "SELECT * FROM buy($1, 'DOGEUSDT', 100, NULL, NULL, 0.25, now(), NULL, 'k2')", user_id
            )
            assert (bought["amount"], bought["quote_qty"], bought["fee"]) == (100, 25, Decimal("0.1"))

            # The DOGE legs went to DOGE's own market and fees accounts, USDT's to USDT's.
            house = await conn.fetch(
                "SELECT a.kind, a.asset, e.amount FROM entries AS e JOIN accounts AS a ON a.id = e.account_id"
                " WHERE e.transaction_id = $1 AND a.user_id IS NULL ORDER BY a.asset, a.kind",
                bought["id"],
            )
            assert [(row["kind"], row["asset"], row["amount"]) for row in house] == [
                ("fees", "DOGE", Decimal("0.1")),
                ("market", "DOGE", -100),
                ("market", "USDT", 25),
            ]
            assert await repo.audit(conn) == []
        finally:
            await conn.close()
