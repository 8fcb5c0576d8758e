"""Private PostgreSQL and Redis servers that a fault test may stop, restart and kill.

The shared servers (conftest) serve every other test and must never go down, so a
fault test starts its own: a Redis on a free port, or a PostgreSQL cluster made with
initdb in a temporary directory and run as the `postgres` OS user (PostgreSQL refuses
to run as root; `runuser` drops to that user when the tests run as root, as on CI).
Each restarts on the same port, so the app under test reconnects to the same URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from exchange.ops.sockets import free_port

START_TIMEOUT_SECONDS = 30.0


async def wait_until(check: object, what: str, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
    """Await check() (a coroutine function returning bool) until it is true."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await check():  # type: ignore[operator]
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout_seconds} s")


class PrivateRedis:
    """redis-server on its own port, no persistence; stop() and start() keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_until(self._answers, f"redis-server on port {self.port} answering")

    async def stop(self) -> None:
        """Kill it (SIGKILL: connections drop at once, as when a host dies)."""
        if self._process is not None:
            self._process.kill()
            await asyncio.to_thread(self._process.wait)
            self._process = None

    async def _answers(self) -> bool:
        client = aioredis.from_url(self.url, socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _postgres_bin() -> Path:
    """The newest installed server's binaries (pg_config --bindir may name the client's)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("initdb not found: install the PostgreSQL server")
    return Path(initdb).parent


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on its own port, owned by the `postgres` OS user."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._bin = _postgres_bin()
        self._data = directory / "data"
        self._log = directory / "server.log"
        self._directory = directory
        self._frozen: list[int] = []

    def _run(self, *command: str) -> None:
        subprocess.run(_as_postgres(*command), check=True, capture_output=True, timeout=120)

    async def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self._directory, "postgres", "postgres")
        await asyncio.to_thread(
            self._run,
            str(self._bin / "initdb"),
            "-D",
            str(self._data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",  # a throw-away cluster: its files need not reach the disk first
        )

    async def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self._directory} -c max_connections=50"
        await asyncio.to_thread(
            self._run, str(self._bin / "pg_ctl"), "-D", str(self._data), "-l", str(self._log), "-o", options,
            "-w", "start",
        )  # fmt: skip

    async def restart(self, mode: str = "fast") -> None:
        """pg_ctl restart -m fast|immediate: sessions end at once, then it comes back."""
        await asyncio.to_thread(
            self._run, str(self._bin / "pg_ctl"), "-D", str(self._data), "-l", str(self._log), "-m", mode,
            "-w", "restart",
        )  # fmt: skip

    def freeze(self) -> None:
        """SIGSTOP the whole cluster: connections stay open and nothing answers, as
        with a frozen host or a network partition."""
        self._frozen = self._pids()
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def _pids(self) -> list[int]:
        postmaster = int((self._data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    async def stop(self) -> None:
        self.thaw()
        with contextlib.suppress(subprocess.CalledProcessError):
            await asyncio.to_thread(
                self._run, str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "-w", "stop"
            )

    def log(self) -> str:
        return self._log.read_text() if self._log.exists() else ""


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="exchange-pg-"))
    server = PrivatePostgres(directory)
    try:
        await server.init()
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def postgres_answers(url: str) -> bool:
    conn = await asyncpg.connect(url, timeout=2)
    await conn.close()
    return True


@contextlib.contextmanager
def process_group_killed_on_exit(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(timeout=10)
