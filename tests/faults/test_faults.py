"""Faults survived, nothing lost: Redis down, Binance failing, PostgreSQL restarted or
frozen and the server killed in the middle of a storm of money movements.

Every fault hits a server of the test's own (tests/private_servers.py), never the shared
ones. After each storm the ledger is checked against what the clients were told: every
movement answered 201 is there exactly once, nothing else is, every balance is what the
answers add up to, and the audit is clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import redis.asyncio as aioredis
from conftest import (
    TEST_PASSWORD,
    Account,
    FakeBinanceControl,
    fake_binance_server,
    key,
    login,
    move,
    register_and_login,
    serving,
)
from private_servers import PrivatePostgres, private_postgres, private_redis
from test_trading import error_of, exchange_server, wallet_deltas
from websockets.asyncio.client import ClientConnection, connect

from exchange.app import create_app
from exchange.config import Settings
from exchange.ops.sockets import free_port
from exchange.store import repository as repo
from exchange.store.db import SCHEMA

# A request that takes longer than this has hung: the test fails.
REQUEST_TIMEOUT_SECONDS = 15.0
SERVER_START_SECONDS = 30.0
PRICES = {"BTCUSDT": "50000.00", "ETHUSDT": "2500.00"}
STORM_USERS = 6
STORM_CLIENTS = 4  # httpx clients, each with its own connection pool
STORM_TASKS_PER_CLIENT = 3


# ---------------------------------------------------------------------------------------
# The server as an operator runs it: `exchange serve`, in a process the test can kill.


class ServerProcess:
    """`python -m exchange serve` (uvicorn, uvloop) in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = env
        self._log_path = log_path
        self._workers = workers
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "exchange",
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self._workers),
                ],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill reaches every worker
            )
        process = self._process
        deadline = time.monotonic() + SERVER_START_SECONDS
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            while True:
                assert process.poll() is None, f"exchange serve exited:\n{self.log()}"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/ready")).status_code == 200:
                        return
                assert time.monotonic() < deadline, f"exchange serve not ready:\n{self.log()}"
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL to the server and its workers: nothing gets to finish or clean up."""
        if self._process is not None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._process.wait(timeout=10)
            self._process = None

    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""


@asynccontextmanager
async def server_process(env: dict[str, str], tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(env, tmp_path / "server.log")
    try:
        await server.start()
        yield server
    except BaseException:
        print(f"exchange serve's log:\n{server.log()[-10_000:]}")  # shown with the failure
        raise
    finally:
        server.kill()


def server_env(database_url: str, redis_url: str, binance_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"test:{secrets.token_hex(4)}:",
        "BINANCE_URL": binance_url,
        "JWT_SECRET": secrets.token_urlsafe(32),
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "warning",
        "PRICE_CACHE_TTL_MS": "60000",
        "PRICE_STALE_MAX_MS": "120000",
        "TRADE_PRICE_MAX_AGE_MS": "60000",
        # A storm drives hundreds of movements a second into a few users.
        "MOVEMENT_RATE_PER_USER": "0",
    }


# ---------------------------------------------------------------------------------------
# A storm: several httpx clients moving money for a few users, each request with its
# own idempotency key, every answer (or the lack of one) written down.


@dataclass
class Attempt:
    account: Account
    path: str
    body: dict[str, str]
    idempotency_key: str
    status: int | None = None  # None: no answer (the connection broke)
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    failure: str = ""

    @property
    def code(self) -> str | None:
        if self.status is None or self.status < 400:
            return None
        return msgspec.json.decode(self.content)["error"]["code"]

    def transaction(self) -> dict[str, Any]:
        """The movement a 201 answered (an order's trade)."""
        body = msgspec.json.decode(self.content)
        return body["trade"] if "trade" in body else body


OPERATIONS = [
    ("/api/v1/wallets/USDT/deposit", {"amount": "25"}),
    ("/api/v1/wallets/USDT/withdraw", {"amount": "30"}),
    ("/api/v1/wallets/BTC/deposit", {"amount": "0.0004"}),
    ("/api/v1/wallets/BTC/withdraw", {"amount": "0.0005"}),
    ("/api/v1/orders", {"symbol": "BTCUSDT", "side": "buy", "quote_quantity": "20"}),
    ("/api/v1/orders", {"symbol": "BTCUSDT", "side": "sell", "quantity": "0.0003"}),
    ("/api/v1/orders", {"symbol": "ETHUSDT", "side": "buy", "quantity": "0.004"}),
]


async def send(http: httpx.AsyncClient, attempt: Attempt) -> Attempt:
    """Send the attempt's request (again, if it was sent before) and record the answer."""
    headers = {**attempt.account.headers, "Idempotency-Key": attempt.idempotency_key}
    started = time.monotonic()
    try:
        answer = await http.post(attempt.path, json=attempt.body, headers=headers)
    except httpx.TransportError as exc:
        attempt.status, attempt.content, attempt.failure = None, b"", type(exc).__name__
    else:
        attempt.status, attempt.content = answer.status_code, answer.content
        attempt.headers = dict(answer.headers)
    attempt.seconds = time.monotonic() - started
    return attempt


class Storm:
    def __init__(self, url: str, accounts: list[Account], seed: int) -> None:
        self.url = url
        self.accounts = accounts
        self.attempts: list[Attempt] = []
        self._rng = random.Random(seed)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Storm:
        for _ in range(STORM_CLIENTS):
            http = await self._stack.enter_async_context(
                httpx.AsyncClient(base_url=self.url, timeout=REQUEST_TIMEOUT_SECONDS)
            )
            self._tasks += [asyncio.create_task(self._run(http)) for _ in range(STORM_TASKS_PER_CLIENT)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._stack.aclose()

    async def _run(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            path, body = self._rng.choice(OPERATIONS)
            attempt = Attempt(self._rng.choice(self.accounts), path, body, key())
            self.attempts.append(attempt)
            await send(http, attempt)
            if attempt.status in (None, 503):
                await asyncio.sleep(0.05)  # as a client would, briefly: no busy loop

    def answered(self, status: int) -> list[Attempt]:
        return [a for a in self.attempts if a.status == status]


async def storm_accounts(url: str) -> list[Attempt]:
    """STORM_USERS users, each funded with 1000 USDT and 0.01 BTC; the funding attempts."""
    funding: list[Attempt] = []
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as http:
        for _ in range(STORM_USERS):
            account = await register_and_login(http)
            for asset, amount in (("USDT", "1000"), ("BTC", "0.01")):
                attempt = await send(
                    http, Attempt(account, f"/api/v1/wallets/{asset}/deposit", {"amount": amount}, key())
                )
                assert attempt.status == 201, attempt.content
                funding.append(attempt)
    return funding


def assert_no_server_error(attempts: list[Attempt], *, answered: bool) -> None:
    """201, 409 insufficient_funds or a 503 with Retry-After: never a 500 or a hang."""
    for attempt in attempts:
        assert attempt.seconds < REQUEST_TIMEOUT_SECONDS - 1, attempt
        if attempt.status is None:
            assert not answered, f"no answer from a live server: {attempt.failure}"
            continue
        assert attempt.status in (201, 409, 503), (attempt.status, attempt.content)
        if attempt.status == 409:
            assert attempt.code == "insufficient_funds", attempt.content
        if attempt.status == 503:
            assert attempt.code in ("service_unavailable", "price_unavailable"), attempt.content
            assert int(attempt.headers["retry-after"]) >= 1


async def retry(url: str, attempts: list[Attempt], ledger: dict[tuple[int, str], int]) -> None:
    """Send each attempt again with its own key, as a client that wants to know its outcome.

    An attempt answered 201 gets its first answer again, byte for byte, marked replayed.
    One that got a 503 or no answer may have committed (the answer was lost after the
    COMMIT) or not: the ledger (read before the retries) says which, and the retry must
    agree with it, replaying the movement or applying it now, once.
    """
    limit = asyncio.Semaphore(8)

    async def one(http: httpx.AsyncClient, attempt: Attempt) -> None:
        first_status, first_content = attempt.status, attempt.content
        committed = ledger.get((attempt.account.id, attempt.idempotency_key))
        async with limit:
            await send(http, attempt)
        assert attempt.status in (201, 409), (attempt.status, attempt.content)
        if committed is not None:
            assert attempt.status == 201 and attempt.headers.get("idempotency-replayed") == "true"
            assert attempt.transaction()["id"] == committed
            if first_status == 201:
                assert attempt.content == first_content
        else:
            assert first_status != 201, "a movement answered 201 is missing from the ledger"
            assert "idempotency-replayed" not in attempt.headers, attempt

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as http:
        await asyncio.gather(*(one(http, attempt) for attempt in attempts))


async def ledger_by_key(database_url: str, accounts: list[Account]) -> dict[tuple[int, str], int]:
    """(user id, idempotency key) -> transaction id, for every movement of these users."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        rows = await conn.fetch(
            "SELECT id, user_id, idempotency_key FROM transactions WHERE user_id = ANY($1::bigint[])",
            [a.id for a in accounts],
        )
    finally:
        await conn.close()
    found = {(row["user_id"], row["idempotency_key"]): row["id"] for row in rows}
    assert len(found) == len(rows)  # one transaction per key, never two
    return found


async def assert_books_match_the_answers(database_url: str, attempts: list[Attempt]) -> None:
    """Every 201 in the ledger once, nothing else, balances as answered, audit clean."""
    accounts = list({a.account.id: a.account for a in attempts}.values())
    ledger = await ledger_by_key(database_url, accounts)
    succeeded = {(a.account.id, a.idempotency_key): a for a in attempts if a.status == 201}
    assert set(ledger) == set(succeeded), "the ledger and the 201 answers disagree"
    expected: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    for (user_id, _), attempt in succeeded.items():
        transaction = attempt.transaction()
        assert ledger[(user_id, attempt.idempotency_key)] == transaction["id"]
        for asset, delta in wallet_deltas(transaction).items():
            expected[(user_id, asset)] += delta
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        rows = await conn.fetch(
            "SELECT user_id, asset, balance FROM accounts WHERE user_id = ANY($1::bigint[])",
            [a.id for a in accounts],
        )
        assert {(r["user_id"], r["asset"]): r["balance"] for r in rows if r["balance"]} == {
            k: v for k, v in expected.items() if v
        }
        assert await repo.audit(conn) == []
    finally:
        await conn.close()


@asynccontextmanager
async def frozen_binance() -> AsyncIterator[FakeBinanceControl]:
    async with fake_binance_server() as fake:
        await fake.set_prices(PRICES, frozen=True)
        yield fake


# ---------------------------------------------------------------------------------------
# Redis down, then back.

PATH_VALUES = {"asset": "USDT", "symbol": "BTCUSDT"}


async def get_routes(http: httpx.AsyncClient, ids: dict[str, int]) -> list[str]:
    """Every GET route of the OpenAPI document, path parameters filled in."""
    schema = (await http.get("/schema/openapi.json")).json()
    paths = []
    for path, operations in schema["paths"].items():
        if "get" in operations:
            for name, value in {**PATH_VALUES, **ids}.items():
                path = path.replace(f"{{{name}}}", str(value))
            assert "{" not in path, f"no value for a parameter of {path}: add one to PATH_VALUES"
            paths.append(path)
    return paths


def code_of(answer: httpx.Response) -> str:
    return answer.json()["error"]["code"]


async def test_redis_down_money_moves_prices_fall_back_nothing_fails_and_pushes_resume(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with private_redis() as redis_server, frozen_binance() as fake:
        configured = msgspec.structs.replace(
            settings,
            redis_url=redis_server.url,
            binance_url=fake.url,
            price_poll_ms=100,
            price_cache_ttl_ms=200,
            price_stale_max_ms=60_000,
            trade_price_max_age_ms=1_000,
            binance_timeout_ms=300,
            binance_max_attempts=1,
        )
        app = create_app(configured)
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            ws_url = url.replace("http://", "ws://") + "/api/v1/ws/prices?symbols=BTCUSDT"
            alice = await register_and_login(http)
            assert (await move(http, alice, "deposit", "500")).status_code == 201
            boss = await register_and_login(http)
            await repo.set_role(db, boss.email, "admin")
            boss.headers = await login(http, boss.email)
            async with connect(ws_url) as before_outage:
                assert (await receive(before_outage))["price"] == "50000.00000000"
                # Several pooled Redis connections, all dead once Redis goes away.
                before = await asyncio.gather(*(http.get("/ready") for _ in range(10)))
                assert {answer.status_code for answer in before} == {200}
                await redis_server.stop()

                ready = await http.get("/ready")
                assert ready.status_code == 503, ready.text
                assert ready.json()["postgres"] == "ok" and ready.json()["redis"].startswith("down")
                # Money moves: nothing on that path needs Redis.
                deposit = await move(http, boss, "deposit", "10")
                assert deposit.status_code == 201, deposit.text
                assert (await move(http, boss, "withdraw", "5")).status_code == 201
                # Every read answers; prices come from this worker's copy or from Binance.
                # An order of boss's (an IOC below the price: EXPIRED, nothing locked), made
                # straight in SQL: its read needs no Redis either.
                order, _ = await repo.place_limit_order(
                    db, boss.id, "BTCUSDT", "buy", Decimal("60000"), Decimal("0.001"), "IOC", None,
                    Decimal("64000"), datetime.now(UTC), None, f"order-{secrets.token_hex(4)}",
                )  # fmt: skip
                ids = {"transaction_id": deposit.json()["id"], "order_id": order.id}
                for path in await get_routes(http, ids):
                    answer = await http.get(path, headers=boss.headers)
                    if path == "/ready":
                        continue
                    if "/prices" in path and answer.status_code == 503:
                        assert code_of(answer) == "price_unavailable", answer.text
                    else:
                        assert answer.status_code == 200, (path, answer.text)
                # Registering and logging in may be refused while Redis cannot count
                # attempts (rate limits), but never with a 500.
                email = f"redis-down-{secrets.token_hex(4)}@example.com"
                for answer in (
                    await http.post(
                        "/api/v1/auth/register", json={"email": email, "password": TEST_PASSWORD}
                    ),
                    await http.post(
                        "/api/v1/auth/token", data={"username": email, "password": TEST_PASSWORD}
                    ),
                ):
                    assert answer.status_code in (200, 201) or code_of(answer) == "service_unavailable"
                # Orders trade on a price straight from Binance...
                order = {"symbol": "BTCUSDT", "side": "buy", "quote_quantity": "20"}
                headers = {**alice.headers, "Idempotency-Key": key()}
                filled = await http.post("/api/v1/orders", json=order, headers=headers)
                assert filled.status_code == 201, filled.text
                # ...and without Binance either, refuse with price_unavailable.
                await fake.fail("error")
                await asyncio.sleep(1.2)  # older than TRADE_PRICE_MAX_AGE_MS
                headers = {**alice.headers, "Idempotency-Key": key()}
                refused = await http.post("/api/v1/orders", json=order, headers=headers)
                assert (refused.status_code, code_of(refused)) == (503, "price_unavailable")
                await fake.heal()
                # A new WebSocket client gets this worker's last price.
                async with connect(ws_url) as during_outage:
                    assert (await receive(during_outage))["symbol"] == "BTCUSDT"

                await redis_server.start()  # empty: nothing was persisted
                # The first requests after it came back find it, on dead connections too.
                again = await asyncio.gather(*(http.get("/ready") for _ in range(10)))
                assert {answer.status_code for answer in again} == {200}, [a.text for a in again]
                # The feed takes the lease again and pushes reach the client connected
                # before the outage, without a restart.
                await fake.set_prices({"BTCUSDT": "51234.50"})
                deadline = time.monotonic() + 10
                while (await receive(before_outage, 10))["price"] != "51234.50000000":
                    assert time.monotonic() < deadline, "no push after Redis came back"
                assert app.state.services.price_feed.is_leader
                cached = aioredis.from_url(redis_server.url)
                try:
                    assert await cached.get(f"{app.state.services.redis_namespace}price:BTCUSDT")
                finally:
                    await cached.aclose()


async def receive(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    return msgspec.json.decode(await asyncio.wait_for(ws.recv(), timeout))


# ---------------------------------------------------------------------------------------
# Binance failing or slow: orders refuse with price_unavailable, and never fill on a
# price older than TRADE_PRICE_MAX_AGE_MS. (test_trading.py covers a cold cache, a
# stale price and a wait for a wallet lock.)


# The server budgets a price's age and the waits it sees, in whole milliseconds; the trip
# from its last clock reading to PostgreSQL's statement_timestamp() (a loaded machine may
# take a few milliseconds) is not seen. A fill on an old price is off by far more.
UNSEEN_TRANSIT_MS = 25


async def assert_no_fill_on_an_old_price(db: asyncpg.Pool, accounts: list[Account], max_age_ms: int) -> int:
    """Every trade of these users used a price at most max_age_ms old when it began (as
    PostgreSQL's clock saw it, give or take the unseen transit)."""
    rows = await db.fetch(
        "SELECT id, created_at - price_at AS price_age FROM transactions"
        " WHERE user_id = ANY($1::bigint[]) AND kind IN ('buy', 'sell')",
        [a.id for a in accounts],
    )
    for row in rows:
        assert row["price_age"].total_seconds() * 1000 <= max_age_ms + UNSEEN_TRANSIT_MS, dict(row)
    return len(rows)


async def test_an_order_that_waits_for_a_database_connection_past_the_price_age_is_refused(
    settings: Settings, db: asyncpg.Pool
) -> None:
    limits = {"price_cache_ttl_ms": 100, "trade_price_max_age_ms": 300}
    async with exchange_server(settings, db_pool_min_size=1, db_pool_max_size=1, **limits) as server:
        nina = await server.user(usdt="100")
        async with server.app.state.services.pool.acquire():
            # Every connection is busy (a burst, or PostgreSQL coming back) for longer
            # than the price may be used: the order has its price, then waits.
            waiting = asyncio.create_task(
                server.order(nina, symbol="BTCUSDT", side="buy", quote_quantity="10")
            )
            await asyncio.sleep(0.6)
        answer = await waiting

        assert error_of(answer) == (503, "price_unavailable"), answer.text
        assert answer.json()["error"]["details"]["reason"] == "expired_while_waiting"
        again = await server.order(nina, symbol="BTCUSDT", side="buy", quote_quantity="10")
        assert again.status_code == 201, again.text
        assert await assert_no_fill_on_an_old_price(db, [nina], 300) == 1


# Binance's faults in turn, each for a while, with healthy spells between them.
BINANCE_FAULTS = [("error", 0), None, ("slow", 700), None, ("malformed", 0), None, ("rate_limit", 0), None]


async def test_orders_while_binance_fails_or_stalls_refuse_or_fill_on_a_young_price(
    settings: Settings, db: asyncpg.Pool
) -> None:
    max_age_ms = 400
    limits = {
        "price_poll_ms": 100,
        "price_cache_ttl_ms": 150,
        "price_stale_max_ms": 60_000,
        "trade_price_max_age_ms": max_age_ms,
        "binance_timeout_ms": 250,
        "binance_max_attempts": 1,
    }
    async with exchange_server(settings, **limits) as server:
        traders = [await server.user(usdt="5000") for _ in range(4)]
        answers: list[httpx.Response] = []
        stop = asyncio.Event()

        async def trade(account: Account) -> None:
            while not stop.is_set():
                answers.append(await server.order(account, symbol="BTCUSDT", side="buy", quote_quantity="10"))
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(trade(account)) for account in traders]
        for fault in BINANCE_FAULTS:
            if fault is None:
                await server.fake.heal()
            else:
                await server.fake.fail(fault[0], delay_ms=fault[1])
            await asyncio.sleep(0.7)
        stop.set()
        await asyncio.gather(*tasks)

        refused = [a for a in answers if a.status_code != 201]
        for answer in refused:
            assert error_of(answer) == (503, "price_unavailable"), answer.text
            assert int(answer.headers["Retry-After"]) >= 1
        assert refused and len(refused) < len(answers), "each phase must show: refusals and fills"
        filled = await assert_no_fill_on_an_old_price(db, traders, max_age_ms)
        assert filled == len(answers) - len(refused)
        assert await repo.audit(db) == []


# ---------------------------------------------------------------------------------------
# PostgreSQL restarted or frozen during a storm.


@asynccontextmanager
async def served_on_private_postgres(
    redis_url: str, tmp_path: Path, **env: str
) -> AsyncIterator[tuple[PrivatePostgres, ServerProcess, list[Attempt]]]:
    """`exchange serve` on a private PostgreSQL cluster; STORM_USERS users funded."""
    async with private_postgres() as postgres, frozen_binance() as fake:
        environment = server_env(postgres.url, redis_url, fake.url) | env
        async with server_process(environment, tmp_path) as server:
            yield postgres, server, await storm_accounts(server.url)


def funded_accounts(funding: list[Attempt]) -> list[Account]:
    return list({a.account.id: a.account for a in funding}.values())


async def assert_recovered_with_nothing_lost(
    url: str, database_url: str, funding: list[Attempt], storm: Storm
) -> None:
    """The pools reconnect on their own: new requests succeed, first time. Then every
    503 is retried with its key, and the books match the answers."""
    after = await storm_accounts(url)
    uncertain = [a for a in storm.attempts if a.status == 503]
    await retry(url, uncertain, await ledger_by_key(database_url, storm.accounts))
    await assert_books_match_the_answers(database_url, funding + storm.attempts + after)


async def test_postgres_restarts_mid_storm_answer_503_then_recover_and_lose_nothing(
    service_urls: tuple[str, str], tmp_path: Path
) -> None:
    async with served_on_private_postgres(service_urls[1], tmp_path) as (postgres, server, funding):
        async with Storm(server.url, funded_accounts(funding), seed=7) as storm:
            await asyncio.sleep(0.8)
            await postgres.restart("fast")  # every session ends, the server comes back
            await asyncio.sleep(0.8)
            await postgres.restart("immediate")  # as a crash: no checkpoint, WAL replayed
            await asyncio.sleep(0.8)
            await postgres.stop()  # down for a second: new connections are refused
            await asyncio.sleep(1.0)
            await postgres.start()
            await asyncio.sleep(0.8)

        assert_no_server_error(storm.attempts, answered=True)
        assert storm.answered(503), "the restarts were not felt: the test proves nothing"
        await assert_recovered_with_nothing_lost(server.url, postgres.url, funding, storm)


async def test_a_frozen_postgres_gets_503s_in_bounded_time_not_hung_requests(
    service_urls: tuple[str, str], tmp_path: Path
) -> None:
    """PostgreSQL stops answering but keeps its connections open: its statement_timeout
    cannot fire, so the client's own bound must (statement + 1 s, connect 5 s; db.py)."""
    freeze_seconds = 10.0
    timeouts = {"DB_STATEMENT_TIMEOUT_MS": "200", "DB_LOCK_TIMEOUT_MS": "100"}
    async with served_on_private_postgres(service_urls[1], tmp_path, **timeouts) as served:
        postgres, server, funding = served
        async with Storm(server.url, funded_accounts(funding), seed=5) as storm:
            await asyncio.sleep(0.5)
            postgres.freeze()
            await asyncio.sleep(freeze_seconds)
            postgres.thaw()
            await asyncio.sleep(0.5)

        assert_no_server_error(storm.attempts, answered=True)
        assert storm.answered(503), "the freeze was not felt: the test proves nothing"
        slowest = max(a.seconds for a in storm.attempts)
        assert slowest < freeze_seconds - 1.5, f"a request waited {slowest:.1f} s: as long as the freeze"
        await assert_recovered_with_nothing_lost(server.url, postgres.url, funding, storm)


# ---------------------------------------------------------------------------------------
# The server killed (SIGKILL) during a storm.


async def test_a_server_killed_mid_storm_keeps_every_acknowledged_movement_and_replays_it(
    service_urls: tuple[str, str], tmp_path: Path
) -> None:
    async with served_on_private_postgres(service_urls[1], tmp_path) as (postgres, server, funding):
        accounts = funded_accounts(funding)
        async with Storm(server.url, accounts, seed=11) as storm:
            await asyncio.sleep(1.5)
            server.kill()  # requests in flight lose their answers, committed or not
            await server.start()  # same port, same database: nothing else to do
            await asyncio.sleep(1.0)

        assert_no_server_error(storm.attempts, answered=False)
        assert [a for a in storm.attempts if a.status is None], (
            "the kill was not felt: the test proves nothing"
        )
        # Every client retries every request with its key, answered or not.
        await retry(server.url, storm.attempts, await ledger_by_key(postgres.url, accounts))
        await assert_books_match_the_answers(postgres.url, funding + storm.attempts)
        audit = subprocess.run(
            [sys.executable, "-m", "exchange", "audit"],
            env={**os.environ, "DATABASE_URL": postgres.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (audit.returncode, audit.stdout.strip()) == (0, "audit: 0 violation(s)"), audit.stderr
