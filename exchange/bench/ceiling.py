"""`exchange bench --ceiling`: what this machine allows, measured in the same run.

- pgbench's built-in tpcb-like transaction, with the benchmark's client count (scale 10);
- one hot row: sql/bench/hot_row.sql's lock-update-insert function called by every
  pgbench client on the same row (the yardstick for the `hot` scenario);
- a bare Litestar + asyncpg app (exchange/bench/bare.py) served like the product and
  driven by the same generator: `SELECT 1` (the HTTP + driver ceiling) and a bare call
  of the product's deposit() (the ceiling of a money movement through the same stack).

pgbench runs in a scratch database that is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from statistics import median_low
from typing import Any

import asyncpg

from exchange.bench.load import Window, open_connections, run_load
from exchange.bench.scenarios import Operation, User
from exchange.bench.spawn import process, server_env
from exchange.ops.sockets import free_port
from exchange.store.db import connect, migrate, scratch_database
from exchange.store.queries import SQL_DIR

PGBENCH_SCALE = 10
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


async def pgbench_rates(
    server_url: str,
    clients: int,
    seconds: float,  # float-ok
    rounds: int = 1,
) -> dict[str, Any] | str:
    """{"tpcb_like": tps, "hot_row": tps}, each the median of `rounds` runs (all of them in
    "rounds"), or why they could not be measured."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return "pgbench is not installed"
    threads = str(min(clients, os.cpu_count() or 1))
    run = ["-n", "-M", "prepared", "-c", str(clients), "-j", threads, "-T", str(max(1, round(seconds)))]
    async with scratch_database(server_url, f"exchange_bench_pgbench_{secrets.token_hex(4)}") as url:
        await _pgbench(pgbench, "-i", "-q", "-s", str(PGBENCH_SCALE), url)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute((SQL_DIR / "bench" / "hot_row.sql").read_text())
        finally:
            await conn.close()
        tps: dict[str, list[float]] = {"tpcb_like": [], "hot_row": []}  # float-ok: rates
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write("SELECT hot_move(1, 1);\n")
            script.flush()
            for _ in range(rounds):
                tps["tpcb_like"].append(_tps(await _pgbench(pgbench, *run, url)))
                tps["hot_row"].append(_tps(await _pgbench(pgbench, *run, "-f", script.name, url)))
    return {**{name: median_low(each) for name, each in tps.items()}, "rounds": tps}


async def _pgbench(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"pgbench failed ({' '.join(args[1:-1])}):\n{text[-2000:]}")
    return text


def _tps(output: str) -> float:  # float-ok: time or rate, not money
    match = _TPS.search(output)
    if match is None:
        raise SystemExit(f"no tps in pgbench's output:\n{output[-2000:]}")
    return float(match.group(1))  # float-ok: time or rate, not money


SELECT1 = Operation(
    "select1", lambda _user, host, _run: f"GET /select1 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
)
BARE_DEPOSIT = Operation(
    "deposit",
    lambda user, host, _run: (
        f"POST /deposit/{user.id} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()
    ),
)


async def bare_endpoints(
    server_url: str,
    workers: int,
    connections: int,
    warmup: float,  # float-ok
    seconds: float,  # float-ok
    log_dir: Path,  # float-ok: time or rate, not money
    rounds: int = 1,
) -> dict[str, list[Window]]:
    """The bare app's two routes, one after the other, `rounds` times, on a scratch
    database migrated like the product's, with one user per connection for the deposits."""
    async with scratch_database(server_url, f"exchange_bench_bare_{secrets.token_hex(4)}") as database_url:
        await migrate(database_url)
        conn = await connect(database_url)
        try:
            user_ids = await conn.fetch(
                "INSERT INTO users (email, password_hash) "
                "SELECT 'bare-' || n || '@example.com', 'not a hash' FROM generate_series(1, $1) AS n "
                "RETURNING id",
                connections,
            )
        finally:
            await conn.close()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "exchange.bench.bare", "--port", str(port), "--workers", str(workers)]
        env = server_env(DATABASE_URL=database_url)
        async with process(args, env, log_dir / "bare.log", f"{url}/select1") as server_pid:
            users = [[User("", "", id=row["id"])] for row in user_ids]
            windows: dict[str, list[Window]] = {op.name: [] for op in (SELECT1, BARE_DEPOSIT)}
            for _ in range(rounds):
                conns = await open_connections("127.0.0.1", port, connections)  # as run.py
                try:
                    for op in (SELECT1, BARE_DEPOSIT):
                        window = await run_load(
                            conns,
                            users,
                            [op],
                            host=f"127.0.0.1:{port}",
                            run_id="",
                            warmup=warmup,
                            duration=seconds,
                            server_pid=server_pid,
                        )
                        windows[op.name].append(window)
                finally:
                    for conn in conns:
                        conn.close()
            return windows
