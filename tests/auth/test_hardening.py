"""The outside review's findings (issue 25), each reproduced against the real server.

Most severe first: the Binance stand-in in production, weak JWT secrets, client
addresses taken from headers, login limits turned against their victim, one user's
unbounded work, the last admin, deleted users, forged log lines, unbounded headers,
security headers and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from conftest import TEST_PASSWORD, fresh_database, key, move, register_and_login, serving
from test_security import code_of, make_admin, own_server, private_prefix, try_login

from exchange.app import create_app
from exchange.config import Settings, jwt_secret_weakness, settings_from_env
from exchange.http.errors import from_postgres_error
from exchange.ops.http_limits import HttpLimits
from exchange.ops.logs import TextFormatter
from exchange.prices.fake_binance import serve_in_thread
from exchange.store.db import SCHEMA
from exchange.store.queries import Q

STRONG_SECRET = secrets.token_urlsafe(32)
# The login limits as shipped (README, Configuration).
DEFAULT_LOGIN_LIMITS = {
    "login_limit_per_ip": 100,
    "login_limit_per_email_ip": 5,
    "login_limit_per_email": 10,
    "login_window_seconds": 60,
}


def run_command(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **environ}
    return subprocess.run(
        [sys.executable, "-m", "exchange", *args], env=env, capture_output=True, text=True, timeout=60
    )


# 1. The Binance stand-in cannot run in production, however it is asked for.


@pytest.mark.parametrize(
    ("args", "environ"),
    [
        (("serve", "--fake-binance", "--port", "0"), {}),
        (("serve", "--port", "0"), {"FAKE_BINANCE": "true"}),
        (("fake-binance", "--port", "0"), {}),
    ],
)
def test_production_refuses_the_binance_stand_in_however_it_is_asked_for(
    args: tuple[str, ...], environ: dict[str, str]
) -> None:
    done = run_command(*args, EXCHANGE_ENV="production", JWT_SECRET=STRONG_SECRET, **environ)
    assert done.returncode != 0
    assert "the Binance stand-in serves made-up prices" in done.stderr + done.stdout


async def test_the_stand_in_started_by_the_server_has_no_control_endpoints() -> None:
    url = serve_in_thread(seed=7)  # what `exchange serve --fake-binance` starts
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/api/v3/ping")).status_code == 200
        forged = await http.post("/_fake/prices", json={"prices": {"BTCUSDT": "10"}, "frozen": True})
        assert forged.status_code in (404, 405)
        assert (await http.get("/_fake/stats")).status_code == 404


# 2. No public or guessable JWT secret in production; compose refuses to start without one.


@pytest.mark.parametrize(
    "secret", ["a" * 32, "a" * 64, "ab" * 32, secrets.token_hex(16), "Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFy"]
)
def test_production_refuses_a_jwt_secret_with_too_little_entropy(secret: str) -> None:
    assert jwt_secret_weakness(secret) is not None
    with pytest.raises(SystemExit, match="JWT_SECRET is too weak for production"):
        settings_from_env({"EXCHANGE_ENV": "production", "JWT_SECRET": secret})


@pytest.mark.parametrize("secret", [secrets.token_urlsafe(32), secrets.token_hex(32)])
def test_production_accepts_a_generated_jwt_secret(secret: str) -> None:
    settings = settings_from_env({"EXCHANGE_ENV": "production", "JWT_SECRET": secret})
    assert settings.jwt_secret == secret


def test_compose_refuses_to_start_without_a_jwt_secret() -> None:
    compose = open(os.path.join(os.path.dirname(__file__), "..", "..", "docker-compose.yml")).read()
    assert "JWT_SECRET: ${JWT_SECRET:?" in compose
    assert "${JWT_SECRET:-" not in compose


# 3. The address the per-IP limits count comes from a trusted proxy only, and is bounded.


async def test_x_forwarded_for_is_ignored_unless_a_proxy_is_trusted(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await register_and_login(client)
    limits = {"login_limit_per_ip": 3, "login_limit_per_email": 0, "login_limit_per_email_ip": 0}
    async with own_server(
        settings, redis_prefix=private_prefix(settings), forwarded_allow_ips="", **limits
    ) as (_, http):
        # A client on loopback rotating its X-Forwarded-For is still one address.
        answers = [await try_login(http, account.email, TEST_PASSWORD, ip=f"10.7.0.{n}") for n in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]


async def test_behind_a_trusted_proxy_the_rightmost_untrusted_address_counts(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await register_and_login(client)
    prefix = private_prefix(settings)
    limits = {"login_limit_per_ip": 2, "login_limit_per_email": 0, "login_limit_per_email_ip": 0}
    trusted = "127.0.0.1, 10.8.0.0/16"
    async with own_server(settings, redis_prefix=prefix, forwarded_allow_ips=trusted, **limits) as (_, http):
        # The client writes whatever it likes on the left; the proxies (10.8.x.x, then
        # 127.0.0.1) append what they saw: 192.0.2.7 is the address they vouch for.
        for n in range(2):
            forged = f"198.51.100.{n}, 192.0.2.7, 10.8.0.1"
            assert (await try_login(http, account.email, TEST_PASSWORD, ip=forged)).status_code == 200
        assert code_of(await try_login(http, account.email, TEST_PASSWORD, ip="1.1.1.1, 192.0.2.7")) == (
            429,
            "rate_limited",
        )
        # A huge or malformed value is no address: the proxy's own is counted, and every
        # key stays short.
        huge = "x" * 8_000 + ", " + "9" * 4_000  # within MAX_HEADER_BYTES; past it: 431
        assert (await try_login(http, account.email, TEST_PASSWORD, ip=huge)).status_code == 200
        redis = aioredis.from_url(settings.redis_url)
        keys = [key async for key in redis.scan_iter(f"{prefix}*")]
        await redis.aclose()
        assert keys and max(len(key) for key in keys) < 200
        assert any(key.endswith(b":127.0.0.1") for key in keys)


# 4. Other addresses' wrong passwords never keep the account's owner out.


async def test_the_owner_logs_in_while_an_attacker_keeps_failing_from_other_addresses(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    victim = await register_and_login(client)
    async with own_server(settings, redis_prefix=private_prefix(settings), **DEFAULT_LOGIN_LIMITS) as (
        _,
        http,
    ):
        for round_ in range(3):
            # The attacker: 15 wrong passwords from 5 addresses (over every per-email limit).
            for n in range(15):
                await try_login(http, victim.email, "not the password", ip=f"203.0.113.{n % 5}")
            attacker = await try_login(http, victim.email, "not the password", ip="203.0.113.1")
            assert code_of(attacker) == (429, "rate_limited")
            # The victim, from their own address, with the right password.
            mine = await try_login(http, victim.email, TEST_PASSWORD, ip="198.51.100.20")
            assert mine.status_code == 200, (round_, mine.text)
        # One address guessing one account stops at LOGIN_LIMIT_PER_EMAIL_IP.
        other = await register_and_login(client)
        answers = [await try_login(http, other.email, "guess-123", ip="203.0.113.200") for _ in range(6)]
        assert [a.status_code for a in answers] == [401] * 5 + [429]


# 5. One user's work is bounded, and every history filter is served by an index.


async def test_a_users_money_movements_are_bounded_by_a_quota(
    client: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool
) -> None:
    quota = {"movement_rate_per_user": 2, "movement_burst_per_user": 3}
    async with own_server(settings, redis_prefix=private_prefix(settings), **quota) as (_, http):
        account = await register_and_login(http)
        other = await register_and_login(http)
        answers = [await move(http, account, "deposit", "1") for _ in range(5)]
        assert [a.status_code for a in answers[:3]] == [201] * 3
        limited = answers[-1]
        assert code_of(limited) == (429, "rate_limited")
        assert limited.headers["retry-after"] == "1"
        # Orders count too, and refused movements wrote nothing.
        order = {"symbol": "BTCUSDT", "side": "buy", "quote_quantity": "10"}
        headers = {**account.headers, "Idempotency-Key": key()}
        assert code_of(await http.post("/api/v1/orders", json=order, headers=headers)) == (
            429,
            "rate_limited",
        )
        written = await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", account.id)
        assert written == sum(a.status_code == 201 for a in answers)
        # Other users have buckets of their own; the bucket refills at its rate.
        assert (await move(http, other, "deposit", "1")).status_code == 201
        await asyncio.sleep(0.6)
        assert (await move(http, account, "deposit", "1")).status_code == 201


# At this many rows (HISTORY_PLAN_ROWS=1000000 for the README's measurement) one user's
# filtered history is planned on an index, never a scan of their history and a sort.
HISTORY_PLAN_ROWS = int(os.environ.get("HISTORY_PLAN_ROWS", "40000"))


@pytest.mark.parametrize(
    ("kind", "asset"),
    [
        (None, None),
        ("withdrawal", None),
        (None, "ETH"),
        ("sell", "USDT"),
        ("withdrawal", "USDT"),
        ("buy", "BTC"),
    ],
)
async def test_every_history_filter_reads_a_page_not_the_history(
    service_urls: tuple[str, str], kind: str | None, asset: str | None
) -> None:
    async with fresh_database(service_urls[0]) as url:
        conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
        try:
            await _fill_history(conn, HISTORY_PLAN_ROWS)
            query, args = _history_query(kind, asset)
            explained = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *args)
        finally:
            await conn.close()
    plan = "\n".join(row[0] for row in explained)
    assert "Index Scan" in plan and "Seq Scan" not in plan and "Bitmap" not in plan, plan
    # The top node's buffers are the whole query's: a page's worth, not the history's.
    hit, read = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan).groups("0")  # type: ignore[union-attr]
    assert int(hit) + int(read) < 200, plan
    print(f"\n{HISTORY_PLAN_ROWS} rows, kind={kind} asset={asset}:\n{plan}")


def _history_query(kind: str | None, asset: str | None) -> tuple[str, list[object]]:
    """The statement repo.transactions_for_user sends for these filters, first page of 50."""
    if asset is not None:
        return Q.transactions_for_user_by_asset, [1, None, kind, asset, 50]
    if kind is not None:
        return Q.transactions_for_user_by_kind, [1, None, kind, 50]
    return Q.transactions_for_user, [1, None, 50]


async def _fill_history(conn: asyncpg.Connection, rows: int) -> None:
    """User 1's history: mostly USDT deposits and BTC/USDT trades, a few withdrawals and
    ETH sells, so some filters match rarely (the case a sort over the user's rows hurts)."""
    await conn.execute(
        "INSERT INTO users (email, password_hash) VALUES ('a@example.com', 'x'), ('b@example.com', 'x')"
    )
    await conn.execute(
        """
        INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount,
                                  balance_after, symbol, quote_asset)
        SELECT 1 + (n % 10 = 0)::int,
               CASE WHEN n % 500 = 1 THEN 'withdrawal' WHEN n % 500 = 2 THEN 'sell'
                    WHEN n % 2 = 0 THEN 'deposit' ELSE 'buy' END,
               'k' || n, '\\x00',
               CASE WHEN n % 500 = 1 THEN 'USDT' WHEN n % 500 = 2 THEN 'ETH'
                    WHEN n % 2 = 0 THEN 'USDT' ELSE 'BTC' END,
               1, 1,
               CASE WHEN n % 500 = 2 THEN 'ETHUSDT' WHEN n % 2 = 1 AND n % 500 <> 1 THEN 'BTCUSDT' END,
               CASE WHEN n % 500 = 2 OR (n % 2 = 1 AND n % 500 <> 1) THEN 'USDT' END
        FROM generate_series(1, $1) AS n
        """,
        rows,
    )
    await conn.execute("ANALYZE transactions")


# 7. The last active admin stays; create-admin recovers a disabled one.


async def test_two_admins_disabling_each_other_at_once_leave_one_admin(
    service_urls: tuple[str, str], settings: Settings
) -> None:
    # A database of its own: the session's has admins from other tests.
    async with fresh_database(service_urls[0]) as url:
        async with own_server(settings, database_url=url, redis_prefix=private_prefix(settings)) as (_, http):
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=2, server_settings={"search_path": SCHEMA}
            )
            try:
                await _admins_cannot_vanish(http, pool, url)
            finally:
                await pool.close()


async def _admins_cannot_vanish(http: httpx.AsyncClient, pool: asyncpg.Pool, url: str) -> None:
    last = None
    for _ in range(5):
        first, second = await make_admin(http, pool), await make_admin(http, pool)
        if last is not None:  # the last round's survivor steps down: these two are the admins
            await pool.execute("UPDATE users SET role = 'user' WHERE id = $1", last.id)
        answers = await asyncio.gather(
            http.post(f"/api/v1/admin/users/{second.id}/disable", headers=first.headers),
            http.post(f"/api/v1/admin/users/{first.id}/disable", headers=second.headers),
        )
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        refused = next(a for a in answers if a.status_code == 409)
        assert refused.json()["error"]["code"] == "last_admin"
        active = await pool.fetchval("SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled")
        assert active == 1
        # Neither a DBA's demotion nor a deletion takes the last one out.
        last = first if answers[0].status_code == 200 else second
        with pytest.raises(asyncpg.PostgresError, match="last active admin"):
            await pool.execute("UPDATE users SET role = 'user' WHERE id = $1", last.id)
        with pytest.raises(asyncpg.PostgresError, match="last active admin"):
            await pool.execute("DELETE FROM users WHERE id = $1", last.id)
    # create-admin makes a disabled account an enabled admin again.
    assert last is not None
    disabled = await make_admin(http, pool)
    refused = await http.post(f"/api/v1/admin/users/{disabled.id}/disable", headers=last.headers)
    assert refused.status_code == 200
    done = run_command("create-admin", disabled.email, DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    row = await pool.fetchrow("SELECT role, disabled FROM users WHERE id = $1", disabled.id)
    assert (row["role"], row["disabled"]) == ("admin", False)


# 8. A deleted user's token stops working; a deleted user's movement is a 401, not a 500.


async def test_a_deleted_users_token_answers_401(
    client: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool
) -> None:
    async with (
        own_server(settings, auth_reload_ms=60_000) as (_, slow),
        own_server(settings, auth_reload_ms=200) as (
            _,
            quick,
        ),
    ):
        account = await register_and_login(client)
        await db.execute("DELETE FROM users WHERE id = $1", account.id)
        # Before any reload: the movement's foreign key refuses it, mapped to 401.
        for kind in ("deposit", "withdraw"):
            assert code_of(await move(slow, account, kind, "1")) == (401, "unauthorized")
        order = {"symbol": "BTCUSDT", "side": "buy", "quote_quantity": "10"}
        ordered = await slow.post(
            "/api/v1/orders", json=order, headers={**account.headers, "Idempotency-Key": key()}
        )
        assert ordered.status_code in (401, 503), ordered.text  # 503 only if no price yet
        # After a reload, every route refuses the token.
        await asyncio.sleep(0.6)
        assert code_of(await quick.get("/api/v1/wallets", headers=account.headers)) == (401, "unauthorized")


async def test_every_integrity_violation_has_a_named_error() -> None:
    fields = {
        "S": "ERROR",
        "C": "23514",
        "M": "new row violates check constraint",
        "n": "accounts_balance_check",
    }
    answer = from_postgres_error(None, asyncpg.PostgresError.new(fields))  # type: ignore[arg-type]
    assert answer.status_code == 409 and answer.content.error.code == "conflict"
    fields = {"S": "ERROR", "C": "23503", "M": "violates foreign key", "n": "accounts_user_id_fkey"}
    answer = from_postgres_error(None, asyncpg.PostgresError.new(fields))  # type: ignore[arg-type]
    assert answer.status_code == 401 and answer.content.error.code == "unauthorized"


# 9. A client's value never writes a log line of its own, and is logged bounded.


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_text_logs_escape_and_bound_what_a_client_sends(client: httpx.AsyncClient) -> None:
    access = logging.getLogger("exchange.access")
    records, level = _Records(), access.level
    access.addHandler(records)
    access.setLevel(logging.INFO)
    try:
        forged = (
            "/x%0a2026-12-01 00:00:00,000 INFO exchange.access: request path=/admin status=200%1b[2J%e2%80%a8"
        )
        await client.get(forged)
        await client.get("/" + "a" * 8_000)
    finally:
        access.removeHandler(records)
        access.setLevel(level)
    lines = [TextFormatter().format(record) for record in records.records]
    assert len(lines) == 2
    assert all("\n" not in line and "\x1b" not in line and "\u2028" not in line for line in lines)
    assert "\\n2026-12-01" in lines[0] and "\\x1b" in lines[0] and "\\u2028" in lines[0]
    # The forged "fields" stay inside the quoted path.
    assert ' path="/x\\\\n2026-12-01' in lines[0]
    assert records.records[1].fields["path"] == "/" + "a" * 255 + "..."  # type: ignore[attr-defined]
    assert len(lines[1]) < 600


# 10. Headers are bounded in size, count and time; connections per worker are bounded.


@asynccontextmanager
async def bounded_server(settings: Settings, limits: HttpLimits) -> AsyncIterator[tuple[str, int]]:
    async with serving(create_app(settings), http_limits=limits) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


async def _exchange(host: str, port: int, request: bytes, wait_s: float = 5) -> bytes:  # float-ok
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65_536), wait_s)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_oversized_or_too_many_headers_answer_431(settings: Settings) -> None:
    async with bounded_server(settings, HttpLimits(max_header_bytes=8_192, max_headers=50)) as (host, port):
        huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        assert (await _exchange(host, port, huge)).startswith(b"HTTP/1.1 431 ")
        many = (
            b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(60)) + b"\r\n"
        )
        answer = await _exchange(host, port, many)
        assert answer.startswith(b"HTTP/1.1 431 ") and b'"code":"headers_too_large"' in answer
        long_path = b"GET /" + b"p" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await _exchange(host, port, long_path)).startswith(b"HTTP/1.1 431 ")
        # Within the bounds, requests are served on the same kind of connection.
        fine = (
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"X-Ok: "
            + b"b" * 4_000
            + b"\r\nConnection: close\r\n\r\n"
        )
        assert (await _exchange(host, port, fine)).startswith(b"HTTP/1.1 200 ")


async def test_a_client_slow_to_send_its_headers_is_disconnected(settings: Settings) -> None:
    async with bounded_server(settings, HttpLimits(header_timeout_ms=500)) as (host, port):
        for opening in (b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"):  # idle, or headers half sent
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(opening)
            started = time.monotonic()
            try:
                for _ in range(5):  # a byte now and then does not keep it open
                    await asyncio.sleep(0.15)
                    writer.write(b"X")
                assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
            except ConnectionError:
                pass
            finally:
                writer.close()
            assert time.monotonic() - started < 1.5


async def test_connections_past_limit_concurrency_answer_503(settings: Settings) -> None:
    async with bounded_server(settings, HttpLimits(limit_concurrency=10)) as (host, port):
        idle = [await asyncio.open_connection(host, port) for _ in range(10)]
        try:
            answer = await _exchange(host, port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503 ")
        finally:
            for _, writer in idle:
                writer.close()
        await asyncio.sleep(0.1)
        answer = await _exchange(host, port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")


# 11. Security headers on every answer; the docs pages allow only their own scripts.


async def test_every_answer_carries_the_security_headers(client: httpx.AsyncClient) -> None:
    json_body = {"Content-Type": "application/json"}
    answers = [
        await client.get("/health"),
        await client.get("/api/v1/wallets"),  # 401
        await client.get("/no/such/route"),  # 404, unmatched
        await client.post("/api/v1/auth/register", content=b"{", headers=json_body),
        await client.get("/schema/openapi.json"),
    ]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["content-security-policy"].startswith(
            "default-src 'none'; frame-ancestors 'none'"
        )
        assert "strict-transport-security" not in answer.headers
    # HTTPS terminated by a trusted proxy in front: HSTS.
    https = await client.get("/health", headers={"X-Forwarded-Proto": "https"})
    assert https.headers["strict-transport-security"].startswith("max-age=31536000")


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
async def test_the_docs_pages_allow_only_this_origin_and_no_inline_script(
    client: httpx.AsyncClient, path: str
) -> None:
    page = await client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    # The page needs no more: every script it has is a file of this origin.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page.text, re.DOTALL)
    assert scripts and all('src="/' in attributes and not body.strip() for attributes, body in scripts)


# 12. /metrics is closed in production unless a token is set; open in development.


async def test_metrics_are_closed_in_production_without_a_token(settings: Settings) -> None:
    async with own_server(settings, exchange_env="production", jwt_secret=STRONG_SECRET) as (_, http):
        closed = await http.get("/metrics")
        assert code_of(closed) == (401, "unauthorized")
        assert "METRICS_TOKEN" in closed.json()["error"]["message"]
    token = secrets.token_urlsafe(16)
    async with own_server(
        settings, exchange_env="production", jwt_secret=STRONG_SECRET, metrics_token=token
    ) as (
        _,
        http,
    ):
        assert (await http.get("/metrics")).status_code == 401
        scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scraped.status_code == 200 and "exchange_http_requests_total" in scraped.text
    async with own_server(settings) as (_, http):  # development: open
        assert (await http.get("/metrics")).status_code == 200
