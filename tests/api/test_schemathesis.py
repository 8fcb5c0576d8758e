"""schemathesis against the server's own OpenAPI document (/schema/openapi.json), over
real HTTP, as an admin (so every route is reached): every check it has, bounded in
examples and seconds. No 500, no status the document does not declare, no body that
breaks the declared Structs, nothing schema-valid refused as malformed; and the books
balance afterwards."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
from conftest import fake_binance_server, fresh_database, login, register_and_login, running_server

from exchange.config import Settings
from exchange.store import repository as repo
from exchange.store.db import SCHEMA

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES_PER_OPERATION = 10
# Fuzzing and stateful testing go on until this is spent (the phases before are bounded
# by the examples).
FUZZING_SECONDS = 30
SEED = 1


@pytest.fixture
async def server(service_urls: tuple[str, str], settings: Settings) -> AsyncIterator[tuple[str, str, str]]:
    """A server with a database of its own (the fuzzer's users and movements stay out of
    the other tests' way): (url, admin Authorization header, database url)."""
    async with fresh_database(service_urls[0]) as database_url, fake_binance_server() as fake:
        configured = msgspec.structs.replace(
            settings,
            database_url=database_url,
            binance_url=fake.url,
            redis_prefix=f"test:{secrets.token_hex(4)}:",
        )
        async with running_server(configured) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            admin = await register_and_login(http)
            conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
            try:
                await repo.set_role(conn, admin.email, "admin")
            finally:
                await conn.close()
            headers = await login(http, admin.email)
            yield url, headers["Authorization"], database_url


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    server: tuple[str, str, str], tmp_path: Path
) -> None:
    url, authorization, database_url = server
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
        "run", f"{url}/schema/openapi.json",
        "--header", f"Authorization: {authorization}",
        # Logging out would revoke the one token every other case uses (logout has its
        # own tests in test_security.py).
        "--exclude-path", "/api/v1/auth/logout",
        "--checks", "all",
        # Litestar 2.25 answers OPTIONS on a path with the methods of the first handler
        # registered there only (GET and POST /orders: "OPTIONS, POST"), see schemathesis.toml.
        "--exclude-checks", "allow_header_conformance",
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--max-time", str(FUZZING_SECONDS),
        "--seed", str(SEED),
        "--workers", "2",
        "--no-color",
    ]  # fmt: skip
    # In a temporary folder: schemathesis keeps a cache where it runs.
    process = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=FUZZING_SECONDS + 90)
    report = output.decode(errors="replace")

    assert process.returncode == 0, report[-30_000:]
    # Every operation was tested and every case passed (not, say, none generated).
    # (All but logout, excluded above.)
    operations = re.search(r"Selected: (\d+)/(\d+)\s+Tested: \1\b", report)
    cases = re.search(r"(\d+) generated, \1 passed", report)
    assert (
        operations and int(operations[1]) == int(operations[2]) - 1 >= 16 and cases and int(cases[1]) > 500
    ), report[-3_000:]
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        assert await repo.audit(conn) == []
        movements = await conn.fetchval("SELECT count(*) FROM transactions")
    finally:
        await conn.close()
    assert movements > 0  # the fuzzer got past validation and moved money
