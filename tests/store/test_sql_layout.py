"""The SQL a DBA owns: each function's current text in one file, drift found and never
silently undone, upgrades that lose nothing, and the DBA's own tools (plpgsql_check,
pgTAP, squawk) clean.

Tests that need an extension or program the machine lacks are skipped with the reason
on a developer machine, and fail under CI=true (.ci/run installs them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from conftest import fresh_database

from exchange.store.db import SCHEMA, connect, migrate, migration_files
from exchange.store.function_files import (
    FUNCTIONS_DIR,
    FunctionDrift,
    function_plan,
    read_function_files,
)
from exchange.store.queries import SQL_DIR

REPO = Path(__file__).resolve().parents[2]
# The migration that moved every function into sql/functions/; none after it defines one.
MOVED_AT = "011"
CREATES_CODE = re.compile(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|VIEW|TRIGGER)\b", re.M | re.I)


def require(present: bool, reason: str) -> None:
    """Skip on a developer machine without the tool; fail under CI, which installs it."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


async def available_extensions(url: str, *names: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT name FROM pg_available_extensions WHERE name = ANY($1)", list(names))
    finally:
        await conn.close()
    return {row["name"] for row in rows}


def exchange_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "exchange", *args], env=env, capture_output=True, text=True, timeout=60
    )


def psql(database_url: str, sql: str) -> None:
    require(shutil.which("psql") is not None, "psql is not installed")
    subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", database_url, "-c", sql], check=True, timeout=30
    )


async def prosrc(database_url: str, name: str) -> str:
    conn = await connect(database_url)
    try:
        return await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = $1", name)
    finally:
        await conn.close()


# ---- one current definition, in one file ----------------------------------------------


async def test_every_function_view_and_trigger_is_defined_in_exactly_one_file(database_url: str) -> None:
    files = read_function_files()  # raises if an object is defined in two files
    conn = await connect(database_url)
    try:
        plan = await function_plan(conn, files)
        current = {
            row["identity"] for row in await conn.fetch("SELECT identity FROM schema_function_objects")
        }
    finally:
        await conn.close()
    assert (plan.changed_by_hand, plan.missing, plan.not_in_any_file, plan.to_apply) == ([], [], [], [])
    assert {"deposit(bigint,text,numeric,text)", "house_balances", "markets_scale ON markets"} <= current


def test_an_object_defined_in_two_files_is_refused(tmp_path: Path) -> None:
    for name in ("a.sql", "b.sql"):
        (tmp_path / name).write_text(
            "CREATE OR REPLACE FUNCTION twice() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n"
        )
    with pytest.raises(RuntimeError, match=r"function twice is defined in both a\.sql and b\.sql"):
        read_function_files(tmp_path)


def test_no_migration_after_the_move_defines_a_function_view_or_trigger() -> None:
    later = [path for path in migration_files() if path.stem[:3] >= MOVED_AT]
    assert later, "the move's migration is missing"
    offenders = [path.name for path in later if CREATES_CODE.search(path.read_text())]
    assert offenders == [], f"define these in sql/functions/ instead: {offenders}"
    # The pattern does catch a definition (so the check above can fail).
    assert CREATES_CODE.search("-- x\nCREATE OR REPLACE FUNCTION f() RETURNS int")


def test_query_headers_point_to_the_file_that_defines_what_they_call() -> None:
    owner = {
        name: f.name for f in read_function_files() for (kind, name, _) in f.objects if kind != "trigger"
    }
    problems: list[str] = []
    for path in sorted((SQL_DIR / "queries").glob("*.sql")):
        lines = path.read_text().splitlines()
        header = "\n".join(line for line in lines if line.startswith("--"))
        statement = "\n".join(line for line in lines if not line.startswith("--"))
        for called in sorted({m[1] for m in re.finditer(r"\b(\w+)\s*\(", statement)} & owner.keys()):
            if f"sql/functions/{owner[called]}" not in header:
                problems.append(
                    f"{path.name} calls {called}() but its header does not name sql/functions/{owner[called]}"
                )
        for named in re.findall(r"[\w/]+\.sql\b", header):
            if not any((base / named).exists() for base in (REPO, SQL_DIR, SQL_DIR / "queries")):
                problems.append(f"{path.name} names {named}, which does not exist")
        if re.search(r"\b\d{3}_\w+\.sql\b", header):
            problems.append(f"{path.name} points to a migration; name the function's file instead")
    assert problems == []


# ---- drift --------------------------------------------------------------------------------


async def test_a_function_changed_in_psql_is_named_by_check_and_not_overwritten_by_migrate(
    service_urls: tuple[str, str],
) -> None:
    async with fresh_database(service_urls[0]) as url:
        original = await prosrc(url, "round_up")
        psql(
            url,
            "CREATE OR REPLACE FUNCTION exchange.round_up(p_value numeric, p_scale integer) "
            "RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT ceil(p_value) $$",
        )
        check = exchange_cli(url, "sql", "check")
        assert check.returncode == 1
        assert "changed by hand: round_up(numeric,integer) (file sql/functions/ledger.sql)" in check.stdout

        refused = exchange_cli(url, "migrate")
        assert refused.returncode == 1
        assert "refusing to overwrite" in refused.stderr and "round_up(numeric,integer)" in refused.stderr
        assert "\\sf exchange.NAME" in refused.stderr  # and says how to bring it into its file
        assert "ceil" in await prosrc(url, "round_up")

        dry = exchange_cli(url, "migrate", "--dry-run", "--force")
        assert dry.returncode == 0 and "would apply 1 function file(s): ledger.sql" in dry.stdout
        assert "ceil" in await prosrc(url, "round_up")

        forced = exchange_cli(url, "migrate", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "applied 1 function file(s): ledger.sql" in forced.stdout
        assert await prosrc(url, "round_up") == original
        assert exchange_cli(url, "sql", "check").returncode == 0


async def test_check_names_missing_functions_and_functions_in_no_file_and_migrate_restores_the_missing(
    service_urls: tuple[str, str],
) -> None:
    async with fresh_database(service_urls[0]) as url:
        psql(url, "DROP FUNCTION exchange.check_funds(text, numeric, numeric)")
        psql(
            url, "CREATE FUNCTION exchange.my_tweak(p integer) RETURNS integer LANGUAGE sql AS $$ SELECT p $$"
        )
        psql(url, "DROP VIEW exchange.house_balances")
        check = exchange_cli(url, "sql", "check")
        assert check.returncode == 1
        assert "missing: function check_funds (file sql/functions/ledger.sql)" in check.stdout
        assert "missing: view house_balances (file sql/functions/house_balances.sql)" in check.stdout
        assert "not in any file: my_tweak(integer)" in check.stdout

        restored = exchange_cli(url, "migrate")
        assert restored.returncode == 0, restored.stderr
        assert "applied 2 function file(s): house_balances.sql, ledger.sql" in restored.stdout
        again = exchange_cli(url, "sql", "check")
        assert again.stdout.splitlines()[:-1] == ["not in any file: my_tweak(integer)"]


async def test_server_start_keeps_a_hand_change_but_refuses_to_overwrite_it_with_a_changed_file(
    service_urls: tuple[str, str], tmp_path: Path
) -> None:
    async with fresh_database(service_urls[0]) as url:
        psql(
            url,
            "CREATE OR REPLACE FUNCTION exchange.round_up(p_value numeric, p_scale integer) "
            "RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT ceil(p_value) $$",
        )
        assert await migrate(url) == []  # as `exchange serve` starts: the file is unchanged
        assert "ceil" in await prosrc(url, "round_up")

        changed = tmp_path / "functions"
        shutil.copytree(FUNCTIONS_DIR, changed)
        ledger = changed / "ledger.sql"
        ledger.write_text(ledger.read_text() + "\n-- a new comment changes the checksum\n")
        with pytest.raises(FunctionDrift, match=r"round_up\(numeric,integer\)"):
            await migrate(url, functions_directory=changed)
        assert "ceil" in await prosrc(url, "round_up")
        assert await migrate(url, functions_directory=changed, force=True) == []
        assert "ceil" not in await prosrc(url, "round_up")


# ---- the upgrade from the flat layout -------------------------------------------------------

LEDGER_SNAPSHOT = [
    "SELECT id, email, role, disabled FROM users ORDER BY id",
    "SELECT id, user_id, asset, kind, balance, locked FROM accounts ORDER BY id",
    "SELECT id, user_id, kind, idempotency_key, asset, amount, balance_after, symbol, price, quote_qty, fee,"
    " quote_balance_after FROM transactions ORDER BY id",
    "SELECT id, transaction_id, account_id, asset, amount FROM entries ORDER BY id",
    "SELECT * FROM trade_markets ORDER BY symbol",
]


async def ledger_snapshot(url: str) -> list[list[tuple[object, ...]]]:
    conn = await connect(url)
    try:
        return [[tuple(row) for row in await conn.fetch(query)] for query in LEDGER_SNAPSHOT]
    finally:
        await conn.close()


def schema_dump(url: str) -> list[str]:
    require(shutil.which("pg_dump") is not None, "pg_dump is not installed")
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--schema", SCHEMA, url],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    # Comments, blank lines and pg_dump's per-run \restrict token are not the schema.
    return [
        line
        for line in out.splitlines()
        if line and not line.startswith(("--", "\\restrict", "\\unrestrict"))
    ]


async def test_a_database_migrated_through_010_upgrades_without_loss_to_a_fresh_installs_schema(
    service_urls: tuple[str, str], tmp_path: Path
) -> None:
    legacy = tmp_path / "migrations"
    legacy.mkdir()
    for path in migration_files():
        if path.stem[:3] < MOVED_AT:
            shutil.copy(path, legacy)
    async with fresh_database(service_urls[0], migrated=False) as old, fresh_database(service_urls[0]) as new:
        assert len(await migrate(old, legacy)) == 10  # as main migrated it before the move
        conn = await connect(old)
        try:
            for n in range(3):
                user = await conn.fetchval(
                    "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
                    f"u{n}@upgrade.test",
                )
                await conn.execute("SELECT id FROM deposit($1, 'USDT', 1000, $2)", user, f"d{n}")
                await conn.execute(
                    "SELECT id FROM buy($1, 'BTCUSDT', 0.01, NULL, NULL, 60000, now(), NULL, $2)",
                    user,
                    f"b{n}",
                )
                await conn.execute(
                    "SELECT id FROM sell($1, 'BTCUSDT', 0.005, NULL, NULL, 61000, now(), NULL, $2)",
                    user,
                    f"s{n}",
                )
                await conn.execute("SELECT id FROM withdraw($1, 'USDT', 10, $2)", user, f"w{n}")
        finally:
            await conn.close()
        before = await ledger_snapshot(old)

        assert await migrate(old) == [path.stem for path in migration_files() if path.stem[:3] >= MOVED_AT]
        assert await ledger_snapshot(old) == before
        conn = await connect(old)
        try:
            assert await conn.fetch((SQL_DIR / "queries" / "audit.sql").read_text()) == []
            replay = await conn.fetchrow("SELECT id, replayed FROM deposit(1, 'USDT', 1000, 'd0')")
            assert replay["replayed"] is True  # a retry from before the upgrade still replays
        finally:
            await conn.close()
        assert schema_dump(old) == schema_dump(new)


# ---- the DBA's tools -----------------------------------------------------------------------

# plpgsql_check's performance warning 42804 for a value of one of the ledger's domains
# read into a variable of the domain's base type: deliberate. The domains (migration
# 008) hold the tables' CHECKs, and a domain's value is its base type's: the cast is free.
DOMAIN_CASTS = re.compile(
    r'cast "(positive_amount|non_negative_amount|nonzero_amount|transaction_kind|account_kind'
    r'|idempotency_key)" value to "(numeric|text)" type'
)
PLPGSQL_CHECK = """
SELECT p.oid::regprocedure::text AS function, c.level, c.sqlstate, c.message, c.detail, c.lineno
FROM pg_proc AS p
LEFT JOIN LATERAL (SELECT t.tgrelid FROM pg_trigger AS t WHERE t.tgfoid = p.oid LIMIT 1) AS tr ON true
CROSS JOIN LATERAL plpgsql_check_function_tb(
    p.oid, coalesce(tr.tgrelid, 0),
    extra_warnings => true, performance_warnings => true, security_warnings => true
) AS c
WHERE p.pronamespace = 'exchange'::regnamespace
  AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')
"""


async def test_every_plpgsql_function_passes_plpgsql_check(service_urls: tuple[str, str]) -> None:
    async with fresh_database(service_urls[0]) as url:
        require(
            "plpgsql_check" in await available_extensions(url, "plpgsql_check"),
            "the plpgsql_check extension is not installed (Debian: postgresql-15-plpgsql-check)",
        )
        conn = await connect(url)
        try:
            await conn.execute("CREATE EXTENSION plpgsql_check SCHEMA public")
            await conn.execute("SET search_path = exchange, public")
            checked = await conn.fetchval(
                "SELECT count(*) FROM pg_proc WHERE pronamespace = 'exchange'::regnamespace"
                " AND prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')"
            )
            findings = [dict(row) for row in await conn.fetch(PLPGSQL_CHECK)]
        finally:
            await conn.close()
    assert checked >= 20
    assert [
        f for f in findings if not (f["sqlstate"] == "42804" and DOMAIN_CASTS.fullmatch(f["detail"] or ""))
    ] == []


async def test_pgtap_tests_of_the_money_rules_pass(service_urls: tuple[str, str]) -> None:
    tests = sorted((SQL_DIR / "tests").glob("*.sql"))
    assert {path.name for path in tests} >= {"money_rules.sql", "lock_order.sql"}
    async with fresh_database(service_urls[0]) as url:
        require(
            await available_extensions(url, "pgtap", "dblink") == {"pgtap", "dblink"},
            "the pgtap and dblink extensions are not installed (Debian: postgresql-15-pgtap)",
        )
        require(shutil.which("psql") is not None, "psql is not installed")
        psql(url, "CREATE EXTENSION pgtap SCHEMA public; CREATE EXTENSION dblink SCHEMA public")
        for path in tests:
            run = subprocess.run(
                ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-f", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            lines = run.stdout.splitlines()
            planned = next(int(line[3:]) for line in lines if re.fullmatch(r"1\.\.\d+", line))
            results = [line for line in lines if re.match(r"(not )?ok \d+", line)]
            assert run.returncode == 0, run.stderr
            assert [line for line in results if line.startswith("not ok")] == [], path.name
            assert len(results) == planned, f"{path.name}: planned {planned}, ran {len(results)}"


def test_new_migrations_pass_squawk() -> None:
    squawk = shutil.which("squawk") or shutil.which("squawk", path=str(Path(sys.executable).parent))
    require(squawk is not None, "squawk is not installed (PyPI: squawk-cli, in the test extra)")
    assert squawk is not None
    new = [str(path) for path in migration_files() if path.stem[:3] >= MOVED_AT]
    # Each migration runs in its own transaction (exchange migrate, or psql -1 -f).
    run = subprocess.run(
        [squawk, "--assume-in-transaction", *new], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
