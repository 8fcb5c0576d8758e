"""Operations: one JSON log line per request with its request id, and Prometheus metrics
at /metrics that add up every worker of `exchange serve`."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from conftest import TEST_PASSWORD, Account, key, move, running_server
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from exchange.config import Settings
from exchange.ops.logs import BLOCK_BYTES, FLUSH_SECONDS, REQUEST_ID, BlockStreamHandler, JsonFormatter
from exchange.ops.metrics_dir import VARIABLE, metrics_directory
from exchange.ops.sockets import free_port

LogLines = Callable[[], list[dict[str, Any]]]
Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Every log record of the process during the test, as the JSON lines it becomes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("exchange.access")
    level = access.level
    access.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    try:
        yield lambda: [msgspec.json.decode(line) for line in stream.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)
        access.setLevel(level)


async def access_lines(lines: LogLines, request_id: str) -> list[dict[str, Any]]:
    """The access lines of one request; the line is written just after the answer."""
    for _ in range(100):
        found = [
            line
            for line in lines()
            if line["logger"] == "exchange.access" and line["request_id"] == request_id
        ]
        if found:
            await asyncio.sleep(0.05)  # a second line would have come by now
            return [
                line
                for line in lines()
                if line["logger"] == "exchange.access" and line["request_id"] == request_id
            ]
        await asyncio.sleep(0.01)
    return []


def parse_metrics(text: str) -> Metrics:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(http: httpx.AsyncClient, **kwargs: Any) -> Metrics:
    answer = await http.get("/metrics", **kwargs)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(answer.text)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def test_a_request_writes_one_json_line_with_the_request_id_of_its_answer(
    client: httpx.AsyncClient, new_user: Callable[[], Any], log_lines: LogLines
) -> None:
    account: Account = await new_user()
    answer = await client.get("/api/v1/wallets/USDT", headers=account.headers)
    assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]
    [line] = await access_lines(log_lines, request_id)
    assert line["level"] == "info" and line["pid"] == os.getpid()
    assert line["method"] == "GET" and line["status"] == 200
    assert line["path"] == "/api/v1/wallets/USDT" and line["route"] == "/api/v1/wallets/{asset}"
    assert line["user_id"] == account.id and line["client_ip"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < 5_000
    assert "error" not in line

    anonymous = await client.get("/health?probe=1")
    [line] = await access_lines(log_lines, anonymous.headers["x-request-id"])
    assert (line["path"], line["route"], line["user_id"]) == ("/health", "/health", None)  # no query string

    # Generated ids differ per request; a sane client id is kept, anything else replaced.
    assert anonymous.headers["x-request-id"] != request_id
    kept = await client.get("/health", headers={"X-Request-ID": "lb-7f3a:9.1_x"})
    assert kept.headers["x-request-id"] == "lb-7f3a:9.1_x"
    assert len(await access_lines(log_lines, "lb-7f3a:9.1_x")) == 1
    for insane in ("a" * 129, "two words", "{json}", ""):
        replaced = await client.get("/health", headers={"X-Request-ID": insane})
        assert replaced.headers["x-request-id"] not in (insane, "")
        assert len(await access_lines(log_lines, replaced.headers["x-request-id"])) == 1


async def test_an_error_is_logged_with_its_status_and_code_and_nothing_secret(
    client: httpx.AsyncClient, log_lines: LogLines
) -> None:
    email = f"logged-{secrets.token_hex(4)}@example.com"
    created = await client.post("/api/v1/auth/register", json={"email": email, "password": TEST_PASSWORD})
    token = (
        await client.post("/api/v1/auth/token", data={"username": email, "password": TEST_PASSWORD})
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key()}
    refused = await client.post("/api/v1/wallets/USDT/withdraw", json={"amount": "5"}, headers=headers)
    assert refused.status_code == 409
    [line] = await access_lines(log_lines, refused.headers["x-request-id"])
    assert (line["status"], line["error"], line["user_id"]) == (
        409,
        "insufficient_funds",
        created.json()["id"],
    )
    assert line["route"] == "/api/v1/wallets/{asset}/withdraw"

    missing = await client.get("/api/v1/no/such/route", headers={"X-Request-ID": "probe-404"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "probe-404"
    [line] = await access_lines(log_lines, "probe-404")
    assert (line["status"], line["error"], line["route"]) == (404, "not_found", "unmatched")

    bad_token = await client.get("/api/v1/wallets", headers={"Authorization": "Bearer not-a-token"})
    [line] = await access_lines(log_lines, bad_token.headers["x-request-id"])
    assert (line["status"], line["error"], line["user_id"]) == (401, "unauthorized", None)

    everything = "\n".join(msgspec.json.encode(line).decode() for line in log_lines())
    for secret in (TEST_PASSWORD, token, "not-a-token", '"amount"'):
        assert secret not in everything


async def test_a_websocket_session_writes_one_line_when_it_ends(base_url: str, log_lines: LogLines) -> None:
    url = f"{base_url.replace('http', 'ws', 1)}/api/v1/ws/prices?symbols=BTCUSDT"
    async with connect(url, additional_headers={"X-Request-ID": "ws-session-1"}) as ws:
        assert ws.response.headers["x-request-id"] == "ws-session-1"
        assert msgspec.json.decode(await ws.recv())["symbol"] == "BTCUSDT"
        assert await access_lines(log_lines, "ws-session-1") == []  # not before it ends
    [line] = await access_lines(log_lines, "ws-session-1")
    assert (line["status"], line["websocket"], line["route"]) == (101, True, "/api/v1/ws/prices")
    assert line["path"] == "/api/v1/ws/prices" and line["duration_ms"] > 0


def test_every_record_written_during_a_request_carries_its_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("exchange.test-observability")
    log.addHandler(handler)
    log.propagate = False
    context = REQUEST_ID.set("req-42")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed %s", "here")
    finally:
        REQUEST_ID.reset(context)
        log.removeHandler(handler)
    log.warning("outside a request")
    [line] = [msgspec.json.decode(text) for text in stream.getvalue().splitlines()]
    assert line["request_id"] == "req-42" and line["message"] == "failed here" and line["level"] == "error"
    assert "ValueError: boom" in line["exc"] and line["logger"] == "exchange.test-observability"
    assert line["ts"].endswith("Z") and len(line["ts"]) == len("2026-11-24T23:10:29.064Z")


class RecordedWrites(io.StringIO):
    """A stream that keeps each write apart, as a pipe would receive them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_log_lines_are_written_in_blocks_of_whole_lines_at_once_for_a_warning() -> None:
    stream = RecordedWrites()
    handler = BlockStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("exchange.test-blocks")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for n in range(3):
            log.info("line %d", n)
        assert stream.writes == []  # gathered
        log.warning("trouble")  # written at once, after the lines before it
        assert [msgspec.json.decode(line)["message"] for line in stream.getvalue().splitlines()] == [
            "line 0",
            "line 1",
            "line 2",
            "trouble",
        ]
        for n in range(200):
            log.info("busy %03d %s", n, "€" * n)  # 3 bytes each in UTF-8, as msgspec writes it
        log.info("last")
        deadline = time.monotonic() + 5
        while "last" not in stream.getvalue():  # the flusher thread, within FLUSH_SECONDS
            assert time.monotonic() < deadline, "an idle line was never written"
            time.sleep(FLUSH_SECONDS / 4)
        # Every write is whole lines, at most BLOCK_BYTES unless one line is longer: lines
        # of workers sharing a pipe never interleave.
        for text in stream.writes:
            assert text.endswith("\n")
            assert len(text.encode()) <= BLOCK_BYTES or text.count("\n") == 1
        assert len(stream.writes) < 200  # blocks, not a write per line
        assert len(stream.getvalue().splitlines()) == 205
        log.info("at exit")
        handler.close()  # as logging.shutdown() does at a normal exit: nothing is lost
        assert '"message":"at exit"' in stream.getvalue()
    finally:
        log.removeHandler(handler)
        handler.close()


async def test_metrics_count_requests_and_money_movements_exactly(
    client: httpx.AsyncClient, new_user: Callable[[], Any]
) -> None:
    account: Account = await new_user()
    before = await scrape(client)
    first_key = key()
    assert (await move(client, account, "deposit", "600", idempotency_key=first_key)).status_code == 201
    assert (await move(client, account, "deposit", "400")).status_code == 201
    replay = await move(client, account, "deposit", "600", idempotency_key=first_key)
    assert replay.status_code == 201 and replay.headers["idempotency-replayed"] == "true"
    assert (await move(client, account, "withdraw", "5000")).status_code == 409
    order = {"symbol": "BTCUSDT", "side": "buy", "quote_quantity": "100"}
    bought = await client.post(
        "/api/v1/orders", json=order, headers={**account.headers, "Idempotency-Key": key()}
    )
    assert bought.status_code == 201, bought.text
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    movements = "exchange_money_movements_total"
    assert delta(movements, kind="deposit", outcome="ok") == 2
    assert delta(movements, kind="deposit", outcome="replayed") == 1
    assert delta(movements, kind="withdraw", outcome="insufficient_funds") == 1
    assert delta(movements, kind="buy", outcome="ok") == 1
    assert delta(movements, kind="withdraw", outcome="ok") == 0

    deposit_route = "/api/v1/wallets/{asset}/deposit"
    requests = "exchange_http_requests_total"
    assert delta(requests, route=deposit_route, method="POST", status="201") == 3
    assert delta(requests, route="/api/v1/wallets/{asset}/withdraw", method="POST", status="409") == 1
    assert delta(requests, route="/api/v1/orders", method="POST", status="201") == 1
    assert delta(requests, route="/metrics", method="GET", status="200") == 1  # the first scrape
    seconds = "exchange_http_request_duration_seconds"
    assert delta(f"{seconds}_count", route=deposit_route, method="POST", status_class="2xx") == 3
    assert delta(f"{seconds}_bucket", route=deposit_route, method="POST", status_class="2xx", le="+Inf") == 3
    assert 0 < delta(f"{seconds}_sum", route=deposit_route, method="POST", status_class="2xx") < 30


async def test_metrics_show_price_ages_and_the_feed_leader(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/prices")).status_code == 200
    metrics = await scrape(client)
    ages = {
        dict(labels)["symbol"]: age
        for (name, labels), age in metrics.items()
        if name == "exchange_price_age_seconds"
    }
    assert set(ages) == {"BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert all(0 <= age < 5 for age in ages.values()), ages  # the feed polls every 100 ms
    # This process serves one deployment (one Redis prefix): exactly one feed leads it.
    for _ in range(50):
        if value(metrics, "exchange_price_feed_leader") == 1:
            break
        await asyncio.sleep(0.1)
        metrics = await scrape(client)
    assert value(metrics, "exchange_price_feed_leader") == 1


async def test_metrics_token_protects_the_endpoint(settings: Settings) -> None:
    token = secrets.token_urlsafe(24)
    protected = msgspec.structs.replace(settings, metrics_token=token, price_poll_ms=0)
    refused_count = {"route": "/metrics", "method": "GET", "status": "401"}
    async with running_server(protected) as url, httpx.AsyncClient(base_url=url) as http:
        before = await scrape(http, headers={"Authorization": f"Bearer {token}"})
        wrong: list[dict[str, Any]] = [{}, {"Authorization": "Bearer no"}, {"Authorization": b"Bearer \xe9"}]
        for headers in wrong:
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        after = await scrape(http, headers={"Authorization": f"Bearer {token}"})
        requests = "exchange_http_requests_total"
        assert value(after, requests, **refused_count) - value(before, requests, **refused_count) == 3


def test_serve_empties_a_given_metrics_directory_and_removes_its_own(tmp_path: Path) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"an earlier run")
    (given / "notes.txt").write_text("not ours")
    saved = os.environ.pop(VARIABLE, None)
    try:
        os.environ[VARIABLE] = str(given)
        with metrics_directory() as directory:
            assert directory == str(given)
            assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
        del os.environ[VARIABLE]
        with metrics_directory() as directory:
            assert os.environ[VARIABLE] == directory and os.path.isdir(directory)
        assert VARIABLE not in os.environ and not os.path.exists(directory)
    finally:
        os.environ.pop(VARIABLE, None)
        if saved is not None:
            os.environ[VARIABLE] = saved


class ServerProcess:
    """`exchange serve` as a real process; its stderr read line by line as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def records(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for line in list(self.lines) if line]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)


@asynccontextmanager
async def exchange_serve(
    database_url: str, redis_url: str, workers: int
) -> AsyncIterator[tuple[str, ServerProcess]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (VARIABLE, "LOG_FORMAT")}  # the defaults
    env |= {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"test:{secrets.token_hex(4)}:",
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "info",
        "PRICE_POLL_MS": "200",
        "PRICE_FEED_LEASE_MS": "600",
    }
    command = [sys.executable, "-m", "exchange", "serve", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(
        [*command, "--fake-binance"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = ServerProcess(process)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for _ in range(300):
                assert process.poll() is None, "\n".join(server.lines)
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield url, server
    finally:
        server.stop()


async def eventually(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def test_serve_with_two_workers_logs_json_and_metrics_add_up_every_worker(
    database_url: str, service_urls: tuple[str, str]
) -> None:
    async with exchange_serve(database_url, service_urls[1], workers=2) as (url, server):
        # Fresh connections, some at once, until both workers have answered some.
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=fresh) as http:
            request_ids: list[str] = []
            while len(request_ids) < 400:
                answers = await asyncio.gather(*(http.get("/health") for _ in range(10)))
                assert all(answer.status_code == 200 for answer in answers)
                request_ids += [answer.headers["x-request-id"] for answer in answers]
                # A generated id is the worker's random prefix and its counter.
                if len(request_ids) >= 40 and len({rid.rsplit("-", 1)[0] for rid in request_ids}) == 2:
                    break
            assert len({rid.rsplit("-", 1)[0] for rid in request_ids}) == 2, "one worker served everything"

            metrics = await scrape(http)
            sent = len(request_ids)
            assert (
                value(metrics, "exchange_http_requests_total", route="/health", method="GET", status="200")
                == sent
            )
            count = "exchange_http_request_duration_seconds_count"
            assert value(metrics, count, route="/health", method="GET", status_class="2xx") == sent

            async def one_leader() -> bool:
                return value(await scrape(http), "exchange_price_feed_leader") == 1

            async def priced() -> bool:
                metrics = await scrape(http)
                ages = [age for (name, _), age in metrics.items() if name == "exchange_price_age_seconds"]
                return len(ages) == 4 and all(0 <= age < 5 for age in ages)

            assert await eventually(one_leader)
            assert await eventually(priced)

            # Every line on stderr is JSON, uvicorn's own included; one access line per request.
            def health_lines() -> list[dict[str, Any]]:
                return [
                    r for r in server.records() if r["logger"] == "exchange.access" and r["path"] == "/health"
                ]

            async def all_logged() -> bool:
                return len(health_lines()) == sent

            assert await eventually(all_logged, 5)
            assert sorted(r["request_id"] for r in health_lines()) == sorted(request_ids)
            assert len({r["pid"] for r in health_lines()}) == 2
            assert any(r["logger"].startswith("uvicorn") for r in server.records())
            assert not any(r["logger"] == "uvicorn.access" for r in server.records())

            # The leader dies without a word: its successor leads, and /metrics counts one
            # leader (the dead worker's gauge is dropped) and keeps the dead worker's counts.
            taken = "price feed: this worker is now the poller"
            records = server.records()
            leader_pid = [r["pid"] for r in records if r["message"] == taken][-1]
            os.kill(leader_pid, signal.SIGKILL)

            async def new_leader() -> bool:
                later = server.records()[len(records) :]
                return any(r["message"] == taken and r["pid"] != leader_pid for r in later)

            assert await eventually(new_leader)
            assert await eventually(one_leader)

            # The supervisor starts a worker in the dead one's place; stop only once it is up.
            async def replaced() -> bool:
                started = {
                    r["pid"] for r in server.records() if r["message"] == "Application startup complete."
                }
                return len(started - {leader_pid}) == 2

            assert await eventually(replaced, 20)
            metrics = await scrape(http)
            assert (
                value(metrics, "exchange_http_requests_total", route="/health", method="GET", status="200")
                == sent
            )

    # Stopped with SIGTERM: every worker alive wrote its last lines before it exited (they
    # used to die with them unwritten), then the supervisor said it was done.
    records = server.records()
    started = {r["pid"] for r in records if r["message"] == "Application startup complete."}
    stopped = {r["pid"] for r in records if r["message"] == "Application shutdown complete."}
    assert stopped == started - {leader_pid} and len(stopped) == 2
    assert records[-1]["message"] == "stopped: every worker has exited"
    # The built-in stand-in's address is written at start, for its control endpoints.
    stand_in = "offline mode: prices come from the local Binance stand-in at http://127.0.0.1:"
    assert any(r["message"].startswith(stand_in) for r in records)


async def test_a_burst_of_keep_alive_connections_is_spread_over_the_workers(
    database_url: str, service_urls: tuple[str, str]
) -> None:
    async with exchange_serve(database_url, service_urls[1], workers=2) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        # Until both workers listen (a worker's socket joins when its start is done).
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=fresh) as http:
            seen: set[str] = set()
            for _ in range(200):
                answer = await http.get("/health")
                seen.add(answer.headers["x-request-id"].rsplit("-", 1)[0])
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.02)
            assert len(seen) == 2, "the second worker never answered"
        # 64 connections opened at once, as `exchange bench` or a fleet of bots would: with
        # one shared listening socket, the first worker awake took most of them (54 of 64).
        connections = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(64)))
        try:
            workers: list[str] = []
            for reader, writer in connections:
                writer.write(b"GET /health HTTP/1.1\r\nHost: exchange\r\n\r\n")
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                [request_id] = [
                    line.split(":", 1)[1].strip()
                    for line in head.split("\r\n")
                    if line.lower().startswith("x-request-id:")
                ]
                workers.append(request_id.rsplit("-", 1)[0])  # the worker's own prefix
        finally:
            for _, writer in connections:
                writer.close()
        per_worker = sorted(workers.count(worker) for worker in set(workers))
        assert len(per_worker) == 2 and per_worker[0] >= 16, per_worker  # by hash: 32 +/- 4

        # A second server on the same port is refused, not let in to share it.
        second = subprocess.run(
            [sys.executable, "-m", "exchange", "serve", "--port", str(port), "--workers", "2"],
            env={**os.environ, "DATABASE_URL": database_url, "REDIS_URL": service_urls[1]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0 and "Address already in use" in second.stderr, second.stderr[-2000:]


def failing_app() -> Any:
    """An app whose start fails, as a worker's does when its database is unreachable."""
    from litestar import Litestar

    async def fail(_: Any) -> None:
        raise RuntimeError("cannot start")

    return Litestar(route_handlers=[], on_startup=[fail])


def test_serve_stops_when_its_workers_cannot_start() -> None:
    started = time.monotonic()
    server = subprocess.run(
        [
            sys.executable,
            "-c",
            "from exchange.ops.serving import run_uvicorn; "
            f"run_uvicorn('test_observability:failing_app', '127.0.0.1', {free_port()}, 2, 'info', 'json')",
        ],
        # This folder (the app factory) and tests/ (the conftest it imports).
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert server.returncode == 3, server.stderr[-3000:]  # uvicorn's STARTUP_FAILURE
    assert "failed to start; stopping" in server.stderr
    assert time.monotonic() - started < 60


def test_serve_stops_when_its_app_cannot_be_imported() -> None:
    # A broken deploy: every worker would die the same way, so the server stops (exit 3)
    # instead of starting workers forever.
    server = subprocess.run(
        [
            sys.executable,
            "-c",
            "from exchange.ops.serving import run_uvicorn; "
            f"run_uvicorn('no_such_module_here:app', '127.0.0.1', {free_port()}, 2, 'info', 'json')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert server.returncode == 3, server.stderr[-3000:]
    assert "failed to start; stopping" in server.stderr
