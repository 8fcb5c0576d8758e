"""The asyncpg pool and the migration runner (migrations, then the function files)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from exchange.config import Settings
from exchange.money import Money
from exchange.store.function_files import (
    FUNCTIONS_DIR,
    FunctionPlan,
    apply_function_files,
    check_conflicts,
    function_plan,
    read_function_files,
)
from exchange.store.queries import SQL_DIR

log = logging.getLogger("exchange.store.db")

# Every table, view and function lives in this schema.
SCHEMA = "exchange"
MIGRATIONS_DIR = SQL_DIR / "migrations"
# pg_advisory_lock key: two processes starting together apply migrations one at a time.
MIGRATION_LOCK_KEY = 0x65786368  # "exch"
# If PostgreSQL stops answering without closing the connection (a frozen host, a network
# partition), its statement_timeout cannot fire: the client gives up this much later,
# and the request answers 503 instead of waiting forever. Connecting is bounded too.
CLIENT_TIMEOUT_MARGIN_MS = 1_000
CONNECT_TIMEOUT_SECONDS = 5.0


async def _init_connection(conn: asyncpg.Connection) -> None:
    # numeric arrives as PostgreSQL's text (never exponent notation) and becomes Money.
    await conn.set_type_codec("numeric", schema="pg_catalog", encoder=str, decoder=Money, format="text")


async def _keep_session(_: asyncpg.Connection) -> None:
    """What the pool does to a connection it takes back, after asyncpg has rolled back
    any open transaction: nothing more. asyncpg's default runs a reset query (advisory
    unlock, CLOSE ALL, UNLISTEN, RESET ALL): one more round trip per request, undoing
    session state this app never sets (it uses no SET, LISTEN, cursors or advisory locks
    on pooled connections)."""


class FairPool:
    """asyncpg's pool, with waiting requests served first come, first served.

    asyncpg hands a freed connection to whichever request asks next, one that has just
    arrived included, so under load a request can lose its turn many times: with 64
    clients on a pool of 10, deposits' p99 was ~6x their p50 under `exchange bench`.
    A fair semaphore in front (asyncio's lets no newcomer past a waiter) keeps the queue
    in arrival order.
    """

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self.pool = pool
        self._turns = asyncio.Semaphore(size)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._turns, self.pool.acquire() as connection:
            yield connection

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as connection:
            return await connection.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as connection:
            return await connection.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as connection:
            return await connection.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as connection:
            return await connection.execute(query, *args)

    async def close(self) -> None:
        await self.pool.close()


async def create_pool(settings: Settings) -> FairPool:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        server_settings={
            "search_path": SCHEMA,
            "application_name": "exchange",
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "lock_timeout": str(settings.db_lock_timeout_ms),
        },
        init=_init_connection,
        reset=_keep_session,
        command_timeout=(settings.db_statement_timeout_ms + CLIENT_TIMEOUT_MARGIN_MS) / 1000,
        timeout=CONNECT_TIMEOUT_SECONDS,
    )
    return FairPool(pool, settings.db_pool_max_size)


async def connect(database_url: str) -> asyncpg.Connection:
    """One connection set up like the pool's, for the command line."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    await _init_connection(conn)
    return conn


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """NNN_name.sql files, in order."""
    files = sorted(directory.glob("[0-9][0-9][0-9]_*.sql"))
    versions = [path.stem[:3] for path in files]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number in {directory}")
    return files


@dataclass
class MigrationReport:
    """What one `exchange migrate` did (or, dry, would do)."""

    migrations: list[str] = field(default_factory=list)
    function_files: list[str] = field(default_factory=list)
    functions: FunctionPlan = field(default_factory=FunctionPlan)


_USE_FUNCTIONS_DIR = Path()


async def migrate(
    database_url: str,
    directory: Path = MIGRATIONS_DIR,
    *,
    force: bool = False,
    functions_directory: Path | None = _USE_FUNCTIONS_DIR,
) -> list[str]:
    """Apply pending migrations, then changed function files; return the migrations' names."""
    report = await migrate_report(
        database_url, directory, force=force, functions_directory=functions_directory
    )
    return report.migrations


async def migrate_report(
    database_url: str,
    directory: Path = MIGRATIONS_DIR,
    *,
    force: bool = False,
    strict: bool = False,
    dry_run: bool = False,
    functions_directory: Path | None = _USE_FUNCTIONS_DIR,
) -> MigrationReport:
    """Apply pending migrations, each once and in its own transaction, then the function
    files whose checksum is new or changed (sql_functions.py), in one more transaction.

    Holds an advisory lock for the whole run, so concurrent starters wait, then find
    nothing left to do. A folder of migrations other than sql/migrations (a test
    replaying history) runs without function files unless given `functions_directory`.
    Raises FunctionDrift before applying anything if a changed function file would
    overwrite a function changed by hand, or with `strict` (the `exchange migrate`
    command) if any was changed by hand, unless `force`. `dry_run` changes nothing.
    """
    if functions_directory is _USE_FUNCTIONS_DIR:
        functions_directory = FUNCTIONS_DIR if directory == MIGRATIONS_DIR else None
    files = read_function_files(functions_directory) if functions_directory is not None else []
    report = MigrationReport()
    conn = await asyncpg.connect(database_url, server_settings={"application_name": "exchange-migrate"})
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            if not dry_run:
                await conn.execute(
                    f"""
                    CREATE SCHEMA IF NOT EXISTS {SCHEMA};
                    SET search_path = {SCHEMA};
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version     text PRIMARY KEY,
                        applied_at  timestamptz NOT NULL DEFAULT now()
                    );
                    """
                )
            else:
                await conn.execute(f"SET search_path = {SCHEMA}")
            applied: set[str] = set()
            if await conn.fetchval(f"SELECT to_regclass('{SCHEMA}.schema_migrations')") is not None:
                applied = {
                    row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")
                }
            pending = [path for path in migration_files(directory) if path.stem not in applied]
            if files:
                # Refuse before any change: after the migrations would be too late to say no.
                report.functions = await function_plan(conn, files, force=force)
                check_conflicts(report.functions, force=force, strict=strict)
            if dry_run:
                report.migrations = [path.stem for path in pending]
                report.function_files = report.functions.to_apply
                return report
            for path in pending:
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
                log.info("applied migration %s", path.stem)
                report.migrations.append(path.stem)
            if files:
                report.function_files, report.functions = await apply_function_files(
                    conn, files, force=force, strict=strict
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return report


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@asynccontextmanager
async def scratch_database(server_url: str, name: str) -> AsyncIterator[str]:
    """A new database on the server of `server_url`, dropped afterwards."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
