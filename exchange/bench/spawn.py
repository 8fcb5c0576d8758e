"""`exchange bench --spawn`: a fresh database, the Binance stand-in and `exchange serve`,
each in its own process (so none of them shares the generator's CPU), and an admin
account for the audit. Everything is removed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from exchange.auth.security import hash_password
from exchange.config import Settings
from exchange.ops.sockets import free_port
from exchange.store import repository as repo
from exchange.store.db import connect, migrate, scratch_database

ADMIN_EMAIL = "bench-admin@example.com"
START_TIMEOUT_SECONDS = 60


@dataclass
class Spawned:
    url: str
    database_url: str
    admin_email: str
    admin_password: str
    server_pid: int


@asynccontextmanager
async def process(args: list[str], env: dict[str, str], log: Path, ready_url: str) -> AsyncIterator[int]:
    """Start a process (its output to `log`), wait until `ready_url` answers 200, and stop
    it at the end."""
    with log.open("ab") as out:
        # Our own interpreter and module, with arguments built here.
        proc = subprocess.Popen(  # noqa: S603, ASYNC220
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        await _wait_ready(proc, ready_url, log)
        yield proc.pid
    finally:
        # The whole group: uvicorn's workers too, if the parent has to be killed.
        _signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


async def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_SECONDS
    async with httpx.AsyncClient(timeout=2) as client:
        while loop.time() < deadline:
            if proc.poll() is not None:
                break
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:]  # noqa: ASYNC240 - on the way out
    raise SystemExit(f"{' '.join(proc.args)} did not become ready at {url}:\n{tail}")  # type: ignore[arg-type]


def server_env(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(values)
    return env


@asynccontextmanager
async def spawn(
    settings: Settings, workers: int, bcrypt_rounds: int, log_dir: Path, **extra_env: str
) -> AsyncIterator[Spawned]:
    run = secrets.token_hex(4)
    async with scratch_database(settings.database_url, f"exchange_bench_{run}") as database_url:
        await migrate(database_url)
        admin_password = secrets.token_urlsafe(16)
        await _create_admin(database_url, admin_password, bcrypt_rounds)
        binance_port, api_port = free_port(), free_port()
        binance_url = f"http://127.0.0.1:{binance_port}"
        env = server_env(
            DATABASE_URL=database_url,
            BINANCE_URL=binance_url,
            FAKE_BINANCE="false",
            REDIS_PREFIX=f"bench:{run}:",
            JWT_SECRET=secrets.token_hex(32),
            BCRYPT_ROUNDS=str(bcrypt_rounds),
            # Every simulated user registers and logs in from this one address.
            REGISTER_LIMIT_PER_IP="0",
            LOGIN_LIMIT_PER_IP="0",
            # The benchmark measures the ledger: the contention scenario drives hundreds
            # of movements a second into a few users, far past a bot's quota.
            MOVEMENT_RATE_PER_USER="0",
            **extra_env,
        )
        stand_in = [sys.executable, "-m", "exchange", "fake-binance", "--port", str(binance_port)]
        server = [
            sys.executable,
            "-m",
            "exchange",
            "serve",
            "--port",
            str(api_port),
            "--workers",
            str(workers),
        ]
        url = f"http://127.0.0.1:{api_port}"
        async with (
            process(stand_in, env, log_dir / "fake-binance.log", f"{binance_url}/api/v3/ping"),
            process(server, env, log_dir / "server.log", f"{url}/ready") as server_pid,
        ):
            yield Spawned(url, database_url, ADMIN_EMAIL, admin_password, server_pid)


async def _create_admin(database_url: str, password: str, bcrypt_rounds: int) -> None:
    conn = await connect(database_url)
    try:
        password_hash = await hash_password(password, bcrypt_rounds)
        await repo.create_user(conn, ADMIN_EMAIL, password_hash, role="admin")
    finally:
        await conn.close()


def log_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="exchange-bench-"))
