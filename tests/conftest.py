"""Fixtures: real PostgreSQL and Redis, a fresh database per run, a real uvicorn server.

Servers: DATABASE_URL / REDIS_URL if set, else the local defaults; if those do not
answer and a Docker engine is present, testcontainers starts PostgreSQL and Redis.
Each run creates its own database (dropped at the end) and its own Redis key prefix.
The app is served by uvicorn on a free port inside the test's event loop, and the tests
talk to it over real HTTP with httpx. Prices come from the local Binance stand-in
(exchange/prices/fake_binance.py), served the same way and reached by the app's own httpx client.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from litestar.types import ASGIApp

from exchange.app import create_app
from exchange.config import Settings, settings_from_env
from exchange.ops.http_limits import HttpLimits, uvicorn_options
from exchange.ops.serving import websocket_options
from exchange.ops.sockets import listening_socket
from exchange.prices.fake_binance import create_fake_binance
from exchange.schemas import Violation
from exchange.store import repository as repo
from exchange.store.db import SCHEMA, migrate, scratch_database

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TEST_PASSWORD = "correct horse battery"


async def _postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _redis_answers(url: str) -> bool:
    client = aioredis.from_url(url, socket_connect_timeout=3)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


@contextmanager
def _containers() -> Iterator[tuple[str, str]]:
    """PostgreSQL and Redis in Docker, for machines without local servers."""
    try:
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer
    except ImportError as exc:
        pytest.exit(f"no PostgreSQL/Redis answering and testcontainers unavailable: {exc}", 2)
    try:
        with PostgresContainer("postgres:16-alpine", driver=None) as pg, RedisContainer("redis:7") as rd:
            redis_url = f"redis://{rd.get_container_host_ip()}:{rd.get_exposed_port(6379)}/0"
            yield pg.get_connection_url(), redis_url
    except Exception as exc:  # noqa: BLE001 - any Docker failure ends the run clearly
        pytest.exit(
            "PostgreSQL/Redis are not answering (set DATABASE_URL and REDIS_URL) and "
            f"testcontainers could not start them: {exc}",
            2,
        )


@pytest.fixture(scope="session")
async def service_urls() -> AsyncIterator[tuple[str, str]]:
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if await _postgres_answers(database_url) and await _redis_answers(redis_url):
        yield database_url, redis_url
        return
    with _containers() as urls:
        yield urls


@asynccontextmanager
async def fresh_database(server_url: str, migrated: bool = True) -> AsyncIterator[str]:
    """A new database on the server (migrated unless told not to); dropped on exit."""
    async with scratch_database(server_url, f"exchange_test_{secrets.token_hex(6)}") as url:
        if migrated:
            await migrate(url)
        yield url


@pytest.fixture(scope="session")
async def database_url(service_urls: tuple[str, str]) -> AsyncIterator[str]:
    async with fresh_database(service_urls[0]) as url:
        yield url


@pytest.fixture(scope="session")
async def deployment_id(db: asyncpg.Pool) -> str:
    """The test database's deployment id: with a server's REDIS_PREFIX, the namespace of
    its Redis keys and channels (exchange/ops/namespace.py)."""
    return await repo.deployment_id(db)


@pytest.fixture(scope="session")
def settings(database_url: str, service_urls: tuple[str, str], fake_binance: FakeBinanceControl) -> Settings:
    return settings_from_env(
        {},
        database_url=database_url,
        redis_url=service_urls[1],
        redis_prefix=f"test:{secrets.token_hex(4)}:",
        binance_url=fake_binance.url,
        binance_timeout_ms=500,
        price_poll_ms=100,
        price_feed_lease_ms=600,
        jwt_secret=secrets.token_urlsafe(32),
        bcrypt_rounds=4,
        db_pool_max_size=20,
        log_level="warning",
        # Tests stand for a proxy on 127.0.0.1 that passes X-Forwarded-For.
        forwarded_allow_ips="127.0.0.1",
        # The suite registers hundreds of users from 127.0.0.1; test_security.py runs
        # its own servers with low limits.
        login_limit_per_ip=0,
        login_limit_per_email=0,
        login_limit_per_email_ip=0,
        # Storms and property tests send hundreds of movements a second per user; the
        # quota stays on (every movement goes through it), far above them.
        movement_rate_per_user=100_000,
        movement_burst_per_user=100_000,
        register_limit_per_ip=0,
        register_limit_per_email=0,
    )


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Direct access to the test database, for checking the ledger."""
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=4, server_settings={"search_path": SCHEMA}
    )
    yield pool
    await pool.close()


@asynccontextmanager
async def serving(
    app: ASGIApp,
    send_buffer_bytes: int | None = None,
    http_limits: HttpLimits | None = None,
    **extra_options: Any,
) -> AsyncIterator[str]:
    """An ASGI app under uvicorn on a free local port, in this event loop; yields its URL.
    uvicorn_options: for the exchange, websocket_options(settings), as `exchange serve`.

    send_buffer_bytes caps each connection's kernel send buffer (accepted sockets inherit
    it), as a slow network would: writes to a client that stops reading block sooner.
    """
    sock = listening_socket("127.0.0.1", 0)
    if send_buffer_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    port = sock.getsockname()[1]
    # As exchange/ops/serving.py: header bounds, limit_concurrency, no proxy headers, and
    # any WebSocket options (websocket_options) the test gives.
    options = {**uvicorn_options(http_limits or HttpLimits()), **extra_options}
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, **options)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def running_server(settings: Settings) -> AbstractAsyncContextManager[str]:
    """The exchange under uvicorn (see serving), served as `exchange serve` serves it."""
    return serving(create_app(settings), **websocket_options(settings))


class FakeBinanceControl:
    """The local Binance stand-in (exchange/prices/fake_binance.py) and its control endpoints."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self._http = http

    async def stats(self) -> dict[str, Any]:
        return (await self._http.get(f"{self.url}/_fake/stats")).raise_for_status().json()

    async def upstream_requests(self) -> int:
        """Requests the stand-in received on Binance's API (control calls excluded)."""
        return (await self.stats())["requests"]

    async def fail(self, mode: str, *, delay_ms: int = 0, count: int | None = None) -> None:
        body = {"mode": mode, "delay_ms": delay_ms, "count": count}
        (await self._http.post(f"{self.url}/_fake/faults", json=body)).raise_for_status()

    async def heal(self) -> None:
        (await self._http.delete(f"{self.url}/_fake/faults")).raise_for_status()

    async def set_prices(self, prices: dict[str, str], frozen: bool | None = None) -> None:
        body = {"prices": prices, "frozen": frozen}
        (await self._http.post(f"{self.url}/_fake/prices", json=body)).raise_for_status()


@asynccontextmanager
async def fake_binance_server(seed: int = 1) -> AsyncIterator[FakeBinanceControl]:
    async with serving(create_fake_binance(seed, control=True)) as url, httpx.AsyncClient(timeout=10) as http:
        yield FakeBinanceControl(url, http)


@pytest.fixture(scope="session")
async def fake_binance() -> AsyncIterator[FakeBinanceControl]:
    """The stand-in the session's server takes its prices from."""
    async with fake_binance_server() as fake:
        yield fake


@pytest.fixture(scope="session")
async def base_url(settings: Settings) -> AsyncIterator[str]:
    async with running_server(settings) as url:
        yield url


@pytest.fixture(scope="session")
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
        yield http


@dataclass
class Account:
    id: int
    email: str
    headers: dict[str, str]


async def register_and_login(client: httpx.AsyncClient, email: str | None = None) -> Account:
    email = email or f"user-{secrets.token_hex(6)}@example.com"
    created = await client.post("/api/v1/auth/register", json={"email": email, "password": TEST_PASSWORD})
    assert created.status_code == 201, created.text
    return Account(id=created.json()["id"], email=email, headers=await login(client, email))


async def login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    """Headers with a fresh token, carrying the account's role as it is now."""
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": TEST_PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


@pytest.fixture
def new_user(client: httpx.AsyncClient) -> Callable[[], Awaitable[Account]]:
    return lambda: register_and_login(client)


def key() -> str:
    return secrets.token_hex(16)


async def move(
    client: httpx.AsyncClient,
    account: Account,
    kind: str,
    amount: object,
    asset: str = "USDT",
    idempotency_key: str | None = None,
) -> httpx.Response:
    """POST a deposit or withdrawal ("deposit" / "withdraw") with a fresh key by default."""
    headers = {**account.headers, "Idempotency-Key": idempotency_key or key()}
    return await client.post(f"/api/v1/wallets/{asset}/{kind}", json={"amount": amount}, headers=headers)


async def balance(client: httpx.AsyncClient, account: Account, asset: str = "USDT") -> str:
    answer = await client.get(f"/api/v1/wallets/{asset}", headers=account.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["balance"]


async def audit(db: asyncpg.Pool) -> list[Violation]:
    return await repo.audit(db)


async def ledger_counts(db: asyncpg.Pool) -> tuple[int, int]:
    """(transactions, entries): both unchanged after a refused request."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM transactions) AS transactions,"
        " (SELECT count(*) FROM entries) AS entries"
    )
    return row["transactions"], row["entries"]
