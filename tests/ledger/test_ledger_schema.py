"""The ledger's schema as a DBA meets it: its rules hold for any writer, trade_markets
follows every change to markets and assets, and migration 008 (CHECKs moved to domains)
keeps every row without rewriting a table."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from conftest import fresh_database

from exchange.store import repository as repo
from exchange.store.db import connect, migrate, migration_files
from exchange.store.queries import Q

LEDGER_TABLES = ("accounts", "transactions", "entries")
TRADE_MARKETS = "SELECT (trade_market(symbol)).* FROM markets ORDER BY symbol"


@pytest.fixture
async def rolled_back(db: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One connection in a transaction that is rolled back at the end: what a test
    changes (markets, assets, rows) never reaches the other tests' shared database."""
    async with db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            yield conn
        finally:
            await transaction.rollback()


async def _user_with_usdt(conn: asyncpg.Connection, email: str) -> tuple[int, int]:
    """(user id, USDT wallet id) of a new user holding 1,000 USDT."""
    user = await repo.create_user(conn, email, "not-a-hash")
    await conn.fetchrow("SELECT * FROM deposit($1, 'USDT', 1000, 'schema-seed')", user.id)
    wallet_id = await conn.fetchval("SELECT id FROM accounts WHERE user_id = $1 AND asset = 'USDT'", user.id)
    return user.id, wallet_id


NEW_TRANSACTION = (
    "INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount, balance_after)"
)
FORBIDDEN = {
    "a negative balance": ("UPDATE accounts SET balance = -0.01 WHERE id = {wallet}", "non_negative_amount"),
    "a negative reserve": ("UPDATE accounts SET locked = -1 WHERE id = {wallet}", "non_negative_amount"),
    "an unknown account kind": ("INSERT INTO accounts (asset, kind) VALUES ('BTC', 'vault')", "account_kind"),
    "a wallet without a balance": (
        "INSERT INTO accounts (user_id, asset, kind) VALUES ({user}, 'SOL', 'wallet')",
        "accounts_wallet_shape",
    ),
    "a house account with a balance": (
        "INSERT INTO accounts (asset, kind, balance) VALUES ('SOL', 'external', 0)",
        "accounts_wallet_shape",
    ),
    "an unknown transaction kind": (
        NEW_TRANSACTION + " VALUES ({user}, 'gift', 'k', '\\x00', 'USDT', 1, 1)",
        "transaction_kind",
    ),
    "a movement of nothing": (
        NEW_TRANSACTION + " VALUES ({user}, 'deposit', 'k', '\\x00', 'USDT', 0, 1)",
        "positive_amount",
    ),
    "an empty idempotency key": (
        NEW_TRANSACTION + " VALUES ({user}, 'deposit', '', '\\x00', 'USDT', 1, 1)",
        "idempotency_key",
    ),
    "an idempotency key of 101 characters": (
        NEW_TRANSACTION + " VALUES ({user}, 'deposit', repeat('k', 101), '\\x00', 'USDT', 1, 1)",
        "idempotency_key",
    ),
    "an infinite balance": (
        "UPDATE accounts SET balance = 'Infinity' WHERE id = {wallet}",
        "non_negative_amount",
    ),
    "a balance that is not a number": (
        "UPDATE accounts SET balance = 'NaN' WHERE id = {wallet}",
        "non_negative_amount",
    ),
    "an infinite movement": (
        NEW_TRANSACTION + " VALUES ({user}, 'deposit', 'k', '\\x00', 'USDT', 'Infinity', 1)",
        "positive_amount",
    ),
    "an entry of minus infinity": (
        "INSERT INTO entries (transaction_id, account_id, asset, amount)"
        " SELECT id, {wallet}, 'USDT', '-Infinity' FROM transactions WHERE user_id = {user}",
        "nonzero_amount",
    ),
    "no limit written as an infinite max_amount": (
        "UPDATE assets SET max_amount = 'Infinity' WHERE code = 'BTC'",
        "assets_max_amount_finite",
    ),
    "a scale below a market's step": ("UPDATE assets SET scale = 4 WHERE code = 'BTC'", "market BTCUSDT"),
    "a scale below an amount in the ledger": (
        "INSERT INTO assets (code, scale, max_amount) VALUES ('FINE', 8, 1000);"
        " SELECT * FROM deposit({user}, 'FINE', 0.00000001, 'fine');"
        " UPDATE assets SET scale = 2 WHERE code = 'FINE'",
        "ledger holds",
    ),
    "an entry of zero": (
        "INSERT INTO entries (transaction_id, account_id, asset, amount)"
        " SELECT id, {wallet}, 'USDT', 0 FROM transactions WHERE user_id = {user}",
        "nonzero_amount",
    ),
}


@pytest.mark.parametrize("case", FORBIDDEN.keys())
async def test_the_ledger_tables_refuse_what_their_rules_forbid(
    rolled_back: asyncpg.Connection, case: str
) -> None:
    statement, rule = FORBIDDEN[case]
    user_id, wallet_id = await _user_with_usdt(rolled_back, "rules@example.com")

    with pytest.raises(asyncpg.CheckViolationError, match=rule):
        async with rolled_back.transaction():  # a savepoint: the outer transaction goes on
            await rolled_back.execute(statement.format(user=user_id, wallet=wallet_id))
    # Refused whole: the wallet is as it was.
    assert await rolled_back.fetchval("SELECT balance FROM accounts WHERE id = $1", wallet_id) == 1000


async def test_a_scale_may_shrink_to_what_the_ledger_holds(rolled_back: asyncpg.Connection) -> None:
    user_id, _ = await _user_with_usdt(rolled_back, "coarse@example.com")
    await rolled_back.execute("INSERT INTO assets (code, scale, max_amount) VALUES ('COARSE', 8, 1000)")
    await rolled_back.fetchrow("SELECT * FROM deposit($1, 'COARSE', 1.5, 'coarse')", user_id)
    await rolled_back.execute("UPDATE assets SET scale = 1 WHERE code = 'COARSE'")
    [wallet] = await repo.wallets_for_user(rolled_back, user_id, "COARSE")
    assert str(wallet.balance) == "1.5"


async def test_a_dba_change_to_a_market_or_an_asset_reaches_the_next_trade(
    rolled_back: asyncpg.Connection,
) -> None:
    conn = rolled_back
    user_id, _ = await _user_with_usdt(conn, "dba-change@example.com")

    # A new asset and market, as a DBA adds them: the market is tradable at once.
    await conn.execute("INSERT INTO assets (code, scale, max_amount) VALUES ('DOGE', 8, 1000000000)")
    await conn.execute(
        "INSERT INTO markets (symbol, base, quote, qty_step, min_qty, max_qty, tick_size, min_notional,"
        " fee_rate) VALUES ('DOGEUSDT', 'DOGE', 'USDT', 1, 1, 1000000, 0.00001, 1, 0.001)"
    )
    market = await conn.fetchrow("SELECT * FROM trade_market('DOGEUSDT')")
    assert (market["base"], market["base_scale"], market["quote"], market["quote_scale"]) == (
        "DOGE",
        8,
        "USDT",
        2,
    )
    house = await conn.fetchrow(
        "SELECT house_account('market', 'DOGE') AS bm, house_account('market', 'USDT') AS qm,"
        " house_account('fees', 'DOGE') AS bf, house_account('fees', 'USDT') AS qf"
    )
    assert (
        market["base_market_account_id"],
        market["quote_market_account_id"],
        market["base_fees_account_id"],
        market["quote_fees_account_id"],
    ) == tuple(house)
    bought = await conn.fetchrow(
        "SELECT * FROM buy($1, 'DOGEUSDT', 100, NULL, NULL, 0.1, now(), NULL, 'doge-1')", user_id
    )
    assert (bought["amount"], bought["fee"]) == (100, Decimal("0.1"))  # 0.1% of 100 DOGE

    # A new fee rate and scale: the next trade uses both.
    await conn.execute("UPDATE markets SET fee_rate = 0.005 WHERE symbol = 'DOGEUSDT'")
    await conn.execute("UPDATE assets SET scale = 6 WHERE code = 'DOGE'")
    assert (await conn.fetchrow("SELECT * FROM trade_market('DOGEUSDT')"))["base_scale"] == 6
    bought = await conn.fetchrow(
        "SELECT * FROM buy($1, 'DOGEUSDT', 100, NULL, NULL, 0.1, now(), NULL, 'doge-2')", user_id
    )
    assert bought["fee"] == Decimal("0.5")

    # Halted: refused as not trading. Deleted: refused (halt it instead), as before 008.
    await conn.execute("UPDATE markets SET active = false WHERE symbol = 'DOGEUSDT'")
    with pytest.raises(asyncpg.PostgresError) as halted:
        async with conn.transaction():
            await conn.fetchrow(
                "SELECT * FROM buy($1, 'DOGEUSDT', 100, NULL, NULL, 0.1, now(), NULL, 'doge-3')", user_id
            )
    assert halted.value.sqlstate == "EX007"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="trade_markets"):
        async with conn.transaction():
            await conn.execute("DELETE FROM markets WHERE symbol = 'DOGEUSDT'")
    with pytest.raises(asyncpg.PostgresError) as unknown:
        async with conn.transaction():
            await conn.fetchrow("SELECT * FROM trade_market('NOPEUSDT')")
    assert unknown.value.sqlstate == "EX006"


async def test_a_market_is_never_stored_without_its_house_accounts(rolled_back: asyncpg.Connection) -> None:
    # An asset and its market added in one statement, the market first: its row names
    # the asset's house accounts all the same.
    await rolled_back.execute(
        "WITH market AS (INSERT INTO markets (symbol, base, quote, qty_step, min_qty, max_qty, tick_size,"
        " min_notional, fee_rate) VALUES ('ADAUSDT', 'ADA', 'USDT', 1, 1, 1000, 0.0001, 1, 0.001))"
        " INSERT INTO assets (code, scale, max_amount) VALUES ('ADA', 6, 1000000)"
    )
    market = await rolled_back.fetchrow("SELECT * FROM trade_market('ADAUSDT')")
    assert market["base_market_account_id"] == await rolled_back.fetchval(
        "SELECT house_account('market', 'ADA')"
    )
    # And a row without them is refused, whoever writes it.
    with pytest.raises(asyncpg.NotNullViolationError, match="base_market_account_id"):
        await rolled_back.execute(
            "UPDATE trade_markets SET base_market_account_id = NULL WHERE symbol = 'ADAUSDT'"
        )


async def test_concurrent_changes_to_a_market_and_its_asset_both_reach_trade_markets(
    service_urls: tuple[str, str],
) -> None:
    async with fresh_database(service_urls[0]) as url:
        setup, first, second = await connect(url), await connect(url), await connect(url)
        try:
            await setup.execute("INSERT INTO assets (code, scale, max_amount) VALUES ('XRP', 6, 1000000000)")

            async def both(first_change: str, scale: int) -> asyncpg.Record:
                """first_change, left uncommitted while another session sets XRP's scale;
                then the first commits, and the second finishes."""
                transaction = first.transaction()
                await transaction.start()
                await first.execute(first_change)
                scale_change = asyncio.create_task(
                    second.execute("UPDATE assets SET scale = $1 WHERE code = 'XRP'", scale)
                )
                await asyncio.sleep(0.3)
                assert not scale_change.done()  # its refresh waits for the first's turn
                await transaction.commit()
                await scale_change
                return await setup.fetchrow("SELECT * FROM trade_market('XRPUSDT')")

            # A market added while its asset's scale changes: the row has the new scale.
            market = await both(
                "INSERT INTO markets (symbol, base, quote, qty_step, min_qty, max_qty, tick_size,"
                " min_notional, fee_rate) VALUES ('XRPUSDT', 'XRP', 'USDT', 1, 1, 1000000, 0.0001, 1, 0.001)",
                scale=4,
            )
            assert (market["base_scale"], market["fee_rate"]) == (4, Decimal("0.001"))
            # A market's fee and its asset's scale changed at once: the row has both.
            market = await both("UPDATE markets SET fee_rate = 0.002 WHERE symbol = 'XRPUSDT'", scale=3)
            assert (market["base_scale"], market["fee_rate"]) == (3, Decimal("0.002"))
        finally:
            for conn in (setup, first, second):
                await conn.close()


async def _filenodes(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT c.relname, pg_relation_filenode(c.oid) AS filenode FROM pg_class AS c"
        " WHERE c.relnamespace = 'exchange'::regnamespace AND c.relname = ANY ($1::text[])",
        list(LEDGER_TABLES),
    )
    return {row["relname"]: row["filenode"] for row in rows}


async def audit_before_orders(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The audit's ledger invariants without those of orders (migration 015), for a
    database migrated only part of the way."""
    ledger_part = Q.audit.split("\nUNION ALL\n\nSELECT 'wallet_locked_mismatch'")[0]
    assert ledger_part != Q.audit
    return await conn.fetch(ledger_part + "\nORDER BY 1, 2")


async def test_008_moves_the_checks_to_domains_without_rewriting_a_table(
    service_urls: tuple[str, str], tmp_path: Path
) -> None:
    before_008 = [path for path in migration_files() if path.stem < "008"]
    for path in before_008:
        shutil.copy(path, tmp_path / path.name)

    async with fresh_database(service_urls[0], migrated=False) as url:
        await migrate(url, tmp_path)
        conn = await connect(url)
        try:
            user_id, _ = await _user_with_usdt(conn, "before-008@example.com")
            await conn.fetchrow(
                "SELECT * FROM buy($1, 'BTCUSDT', 0.001, NULL, NULL, 50000, now(), NULL, 'k-buy')", user_id
            )
            wallets_before = await conn.fetch("SELECT id, asset, balance FROM accounts ORDER BY id")
            markets_before = await conn.fetch(TRADE_MARKETS)
            files_before = await _filenodes(conn)

            shutil.copy(next(p for p in migration_files() if p.stem.startswith("008")), tmp_path)
            assert await migrate(url, tmp_path) == ["008_statement_costs"]

            assert await _filenodes(conn) == files_before  # no table rewritten
            assert await conn.fetch("SELECT id, asset, balance FROM accounts ORDER BY id") == wallets_before
            assert await conn.fetch(TRADE_MARKETS) == markets_before
            assert await audit_before_orders(conn) == []
            # Each domain's rule is in force and was checked against the existing rows.
            rules = await conn.fetch(
                "SELECT t.typname, c.convalidated FROM pg_constraint AS c"
                " JOIN pg_type AS t ON t.oid = c.contypid"
                " WHERE t.typnamespace = 'exchange'::regnamespace ORDER BY t.typname"
            )
            assert [(r["typname"], r["convalidated"]) for r in rules] == [
                ("account_kind", True),
                ("idempotency_key", True),
                ("non_negative_amount", True),
                ("nonzero_amount", True),
                ("positive_amount", True),
                ("transaction_kind", True),
            ]
            # And the ledger goes on: a sell after the migration.
            sold = await conn.fetchrow(
                "SELECT * FROM sell($1, 'BTCUSDT', 0.0009, NULL, NULL, 50000, now(), NULL, 'k-sell')", user_id
            )
            # 1,000 - 50 for the buy + 45 - a fee of 0.05 (0.045 rounded up) for the sell
            assert sold["quote_balance_after"] == Decimal("994.95")
            assert await audit_before_orders(conn) == []

            # 009 on top: the new rules are checked against these rows, and the seed
            # deposit made before it replays.
            shutil.copy(next(p for p in migration_files() if p.stem.startswith("009")), tmp_path)
            assert await migrate(url, tmp_path) == ["009_replays_and_limits"]
            finite = await conn.fetchval(
                "SELECT count(*) FROM pg_constraint WHERE conname LIKE '%finite' AND convalidated"
            )
            assert finite == 4
            replayed = await conn.fetchrow("SELECT * FROM deposit($1, 'USDT', 1000, 'schema-seed')", user_id)
            assert replayed["replayed"] and replayed["balance_after"] == Decimal("1000.00")
            assert await audit_before_orders(conn) == []
        finally:
            await conn.close()
