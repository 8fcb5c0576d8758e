"""Rate limits, logout, disabled users, login timing, and no secret in logs or bodies.

Servers with their own settings (low limits, short reloads, a private Redis) run beside
the session's server, on the same PostgreSQL database and, unless said otherwise, the
same Redis key prefix: two of them stand for two workers or hosts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import jwt
import msgspec
import pytest
import redis.asyncio as aioredis
from conftest import TEST_PASSWORD, Account, login, move, register_and_login, serving
from litestar import Litestar
from private_servers import PrivateRedis, private_redis

from exchange.app import create_app
from exchange.config import Settings
from exchange.ops.namespace import redis_namespace, seal
from exchange.store import repository as repo


@asynccontextmanager
async def own_server(
    settings: Settings, **overrides: object
) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    """Another instance of the exchange (another worker, as far as it can tell)."""
    app = create_app(msgspec.structs.replace(settings, **overrides))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield app, http


def private_prefix(settings: Settings) -> str:
    """A Redis prefix of its own, so counters of other tests do not add up."""
    return f"{settings.redis_prefix}{secrets.token_hex(3)}:"


def email() -> str:
    return f"sec-{secrets.token_hex(6)}@example.com"


def from_ip(ip: str) -> dict[str, str]:
    # The app takes the client address from X-Forwarded-For when the peer is a trusted
    # proxy (FORWARDED_ALLOW_IPS, 127.0.0.1 in the tests' settings): as a proxy passes it.
    return {"X-Forwarded-For": ip}


async def try_login(
    http: httpx.AsyncClient, user: str, password: str, ip: str = "10.0.0.1"
) -> httpx.Response:
    return await http.post(
        "/api/v1/auth/token", data={"username": user, "password": password}, headers=from_ip(ip)
    )


def code_of(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


async def make_admin(client: httpx.AsyncClient, db: asyncpg.Pool) -> Account:
    account = await register_and_login(client)
    await repo.set_role(db, account.email, "admin")
    account.headers = await login(client, account.email)
    return account


async def me(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await http.get("/api/v1/users/me", headers=headers)


async def status_within(
    seconds: float,
    expected: int,
    request: Callable[[], Awaitable[httpx.Response]],  # float-ok
) -> float:  # float-ok
    """Poll until the request answers `expected`; return how long it took."""
    start = time.monotonic()
    while True:
        answer = await request()
        elapsed = time.monotonic() - start
        if answer.status_code == expected:
            return elapsed
        assert elapsed < seconds, f"still {answer.status_code} after {elapsed:.2f} s: {answer.text}"
        await asyncio.sleep(0.02)


async def test_wrong_passwords_for_an_email_hold_the_ips_that_sent_them(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await register_and_login(client)
    limits = {"login_limit_per_email": 3, "login_limit_per_ip": 0, "login_window_seconds": 60}
    async with own_server(settings, redis_prefix=private_prefix(settings), **limits) as (_, http):
        for n in range(3):
            wrong = await try_login(http, account.email, "wrong password", ip=f"10.1.0.{n}")
            assert code_of(wrong) == (401, "invalid_credentials")
        # Over the email's limit, an IP that failed on it is held, in any case of the email.
        limited = await try_login(http, account.email.upper(), "wrong again", ip="10.1.0.1")
        assert code_of(limited) == (429, "rate_limited")
        retry_after = int(limited.headers["retry-after"])
        assert 30 <= retry_after <= 60
        assert limited.json()["error"]["details"] == {"retry_after": retry_after}
        # The owner, from an IP without failures, logs in.
        assert (await try_login(http, account.email, TEST_PASSWORD, ip="10.1.0.99")).status_code == 200
        # Another email from the same IPs is not affected.
        other = await register_and_login(client)
        assert (await try_login(http, other.email, TEST_PASSWORD, ip="10.1.0.0")).status_code == 200


async def test_other_spellings_of_an_email_share_its_login_limit(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # Every spelling with the account's normal form (NFKC, case-folded) finds it: upper
    # case, full-width letters, the small roman numeral three (U+2172).
    account = await register_and_login(client, f"limit-{secrets.token_hex(4)}-iii@example.com")
    spellings = [account.email.upper()] + [
        account.email.replace("-iii@", f"-{s}@") for s in ("\uff49\uff49\uff49", "\u2172", "I\uff29i")
    ]
    limits = {"login_limit_per_email": 3, "login_limit_per_ip": 0, "login_window_seconds": 60}
    async with own_server(settings, redis_prefix=private_prefix(settings), **limits) as (_, http):
        for n in range(3):
            wrong = await try_login(http, account.email, "wrong password", ip=f"10.4.0.{n}")
            assert code_of(wrong) == (401, "invalid_credentials")
        for spelling in spellings:
            assert code_of(await try_login(http, spelling, "wrong password", ip="10.4.0.0")) == (
                429,
                "rate_limited",
            )
        # "İ" case-folds to "i" and a combining dot: another address, which finds no
        # account (so its own counter guards nothing), even with the right password.
        dotted = account.email.replace("-iii@", "-\u0130ii@")
        assert code_of(await try_login(http, dotted, TEST_PASSWORD, ip="10.4.0.0")) == (
            401,
            "invalid_credentials",
        )


async def test_login_is_limited_per_ip_whatever_the_email(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await register_and_login(client)
    limits = {"login_limit_per_email": 0, "login_limit_per_ip": 3}
    async with own_server(settings, redis_prefix=private_prefix(settings), **limits) as (_, http):
        for _ in range(3):
            assert (await try_login(http, email(), "guess-123", ip="10.2.0.1")).status_code == 401
        assert code_of(await try_login(http, account.email, TEST_PASSWORD, ip="10.2.0.1")) == (
            429,
            "rate_limited",
        )
        assert (await try_login(http, account.email, TEST_PASSWORD, ip="10.2.0.2")).status_code == 200


async def test_a_limit_lifts_when_its_window_ends(client: httpx.AsyncClient, settings: Settings) -> None:
    account = await register_and_login(client)
    limits = {"login_limit_per_ip": 1, "login_window_seconds": 2}
    async with own_server(settings, redis_prefix=private_prefix(settings), **limits) as (_, http):
        assert (await try_login(http, account.email, TEST_PASSWORD)).status_code == 200
        limited = await try_login(http, account.email, TEST_PASSWORD)
        assert code_of(limited) == (429, "rate_limited")
        assert limited.headers["retry-after"] in ("1", "2")
        await asyncio.sleep(int(limited.headers["retry-after"]) + 0.1)
        assert (await try_login(http, account.email, TEST_PASSWORD)).status_code == 200


async def test_register_limit_is_one_count_across_workers(settings: Settings) -> None:
    """Two servers sharing Redis (two workers) and 16 concurrent registrations from one
    IP: exactly the limit get through, as an in-process counter could not ensure."""
    limits = {
        "register_limit_per_ip": 5,
        "register_limit_per_email": 0,
        "redis_prefix": private_prefix(settings),
    }
    async with own_server(settings, **limits) as (_, one), own_server(settings, **limits) as (_, two):
        answers = await asyncio.gather(
            *(
                http.post("/api/v1/auth/register", json={"email": email(), "password": TEST_PASSWORD})
                for http in [one, two] * 8
            )
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * 5 + [429] * 11
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 429} == {"rate_limited"}


async def test_register_is_limited_per_email(settings: Settings) -> None:
    limits = {
        "register_limit_per_email": 2,
        "register_limit_per_ip": 0,
        "redis_prefix": private_prefix(settings),
    }
    address = email()
    async with own_server(settings, **limits) as (_, http):
        answers = [
            await http.post(
                "/api/v1/auth/register",
                json={"email": address if n % 2 else address.upper(), "password": TEST_PASSWORD},
                headers=from_ip(f"10.3.0.{n}"),
            )
            for n in range(3)
        ]
    assert [a.status_code for a in answers] == [201, 409, 429]


# Logout and disabled users ---------------------------------------------------------------


async def test_logout_revokes_that_token_everywhere_and_no_other(
    client: httpx.AsyncClient, settings: Settings, deployment_id: str
) -> None:
    namespace = redis_namespace(settings.redis_prefix, deployment_id)
    account = await register_and_login(client)
    other_token = await login(client, account.email)
    async with own_server(settings, auth_reload_ms=600_000) as (second_app, second):
        await asyncio.wait_for(second_app.state.services.denylist.subscribed.wait(), 10)
        assert (await me(second, account.headers)).status_code == 200
        # A stray message on the channel is ignored; the listener carries on.
        async with aioredis.from_url(settings.redis_url) as redis:
            await redis.publish(f"{namespace}auth", b'{"op": "nonsense"}')
            await redis.publish(f"{namespace}auth", seal(deployment_id, b'{"op": "nonsense"}'))

        assert (await client.post("/api/v1/auth/logout", headers=account.headers)).status_code == 204

        assert code_of(await me(client, account.headers)) == (401, "unauthorized")
        assert "revoked" in (await me(client, account.headers)).json()["error"]["message"]
        assert code_of(await client.post("/api/v1/auth/logout", headers=account.headers)) == (
            401,
            "unauthorized",
        )
        # The other worker heard it on the channel (its periodic reload is 10 minutes away).
        await status_within(2, 401, lambda: me(second, account.headers))
        for http in (client, second):
            assert (await me(http, other_token)).status_code == 200

    # A worker started later loads the revocation from Redis.
    async with own_server(settings) as (_, third):
        assert code_of(await me(third, account.headers)) == (401, "unauthorized")
        assert (await me(third, other_token)).status_code == 200

    token = account.headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})
    async with aioredis.from_url(settings.redis_url) as redis:
        score = await redis.zscore(f"{namespace}auth:revoked", claims["jti"])
        assert score == claims["exp"]


async def test_disabling_a_user_stops_their_tokens_on_every_worker(
    client: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    user = await register_and_login(client)
    async with own_server(settings, auth_reload_ms=600_000) as (second_app, second):
        await asyncio.wait_for(second_app.state.services.denylist.subscribed.wait(), 10)
        assert (await me(second, user.headers)).status_code == 200

        disabled = await client.post(f"/api/v1/admin/users/{user.id}/disable", headers=admin.headers)
        assert disabled.status_code == 200
        assert disabled.json()["disabled"] is True and disabled.json()["id"] == user.id

        # At once on the server that disabled, and through pub/sub on the other.
        answer = await me(client, user.headers)
        assert code_of(answer) == (401, "unauthorized") and "disabled" in answer.json()["error"]["message"]
        await status_within(2, 401, lambda: me(second, user.headers))
        # Money routes too, not only /users/me.
        assert code_of(await move(client, user, "deposit", "1")) == (401, "unauthorized")
        # Logging in: 403 with the right password, the usual 401 with a wrong one.
        assert code_of(await try_login(client, user.email, TEST_PASSWORD)) == (403, "user_disabled")
        assert code_of(await try_login(client, user.email, "wrong password")) == (401, "invalid_credentials")

        enabled = await client.post(f"/api/v1/admin/users/{user.id}/enable", headers=admin.headers)
        assert enabled.status_code == 200 and enabled.json()["disabled"] is False
        assert (await me(client, user.headers)).status_code == 200
        await status_within(2, 200, lambda: me(second, user.headers))
        assert (await try_login(client, user.email, TEST_PASSWORD)).status_code == 200


async def test_a_dba_disabling_in_psql_takes_effect_within_the_reload_bound(
    client: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool
) -> None:
    reload_ms = 300
    user = await register_and_login(client)
    async with own_server(settings, auth_reload_ms=reload_ms) as (_, http):
        assert (await me(http, user.headers)).status_code == 200
        await db.execute("UPDATE users SET disabled = true WHERE id = $1", user.id)
        took = await status_within(5, 401, lambda: me(http, user.headers))
        assert took < reload_ms / 1000 + 1.0
        await db.execute("UPDATE users SET disabled = false WHERE id = $1", user.id)
        took = await status_within(5, 200, lambda: me(http, user.headers))
        assert took < reload_ms / 1000 + 1.0


async def test_with_redis_down_the_last_known_sets_hold_and_login_fails_open(
    settings: Settings,
    db: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with private_redis() as redis:
        await _last_known_sets_hold(settings, db, redis, caplog)


async def _last_known_sets_hold(
    settings: Settings, db: asyncpg.Pool, redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = {
        "redis_url": redis.url,
        "auth_reload_ms": 200,
        "price_poll_ms": 0,
        "login_limit_per_email_ip": 2,
    }
    async with own_server(settings, **overrides) as (_, http):
        # Litestar's logging config took caplog's handler off the root logger.
        logging.getLogger().addHandler(caplog.handler)
        alice = await register_and_login(http)
        alice_second = await login(http, alice.email)
        bob = await register_and_login(http)
        admin = await make_admin(http, db)
        assert (await http.post("/api/v1/auth/logout", headers=alice.headers)).status_code == 204

        await redis.stop()
        await asyncio.sleep(0.5)  # reloads run and fail to reach Redis
        assert code_of(await me(http, alice.headers)) == (401, "unauthorized")
        assert (await me(http, alice_second)).status_code == 200
        # Logout needs Redis to reach every worker: 503, and the token still works.
        assert code_of(await http.post("/api/v1/auth/logout", headers=alice_second)) == (
            503,
            "service_unavailable",
        )
        assert (await me(http, alice_second)).status_code == 200
        # Disabling works (PostgreSQL), at once on this server.
        assert (
            await http.post(f"/api/v1/admin/users/{bob.id}/disable", headers=admin.headers)
        ).status_code == 200
        assert code_of(await me(http, bob.headers)) == (401, "unauthorized")
        # Rate limits fail open: more wrong passwords than the limit of 2 all get checked.
        caplog.clear()
        for _ in range(3):
            assert code_of(await try_login(http, alice.email, "wrong password")) == (
                401,
                "invalid_credentials",
            )
        assert (await try_login(http, alice.email, TEST_PASSWORD)).status_code == 200
        assert "rate limits not enforced" in caplog.text
        new = await http.post("/api/v1/auth/register", json={"email": email(), "password": TEST_PASSWORD})
        assert new.status_code == 201
        assert (
            await move(http, Account(alice.id, alice.email, alice_second), "deposit", "5")
        ).status_code == 201
        # A DBA's change still arrives through the periodic reload from PostgreSQL.
        await db.execute("UPDATE users SET disabled = true WHERE id = $1", alice.id)
        await status_within(3, 401, lambda: me(http, alice_second))


async def test_authenticated_requests_send_nothing_to_redis(
    settings: Settings,
) -> None:
    """The revoked/disabled check is in memory: the hot path stays one database call."""
    async with private_redis() as redis:
        await _nothing_sent_to_redis(settings, redis)


async def _nothing_sent_to_redis(settings: Settings, redis: PrivateRedis) -> None:
    overrides = {"redis_url": redis.url, "price_poll_ms": 0, "auth_reload_ms": 600_000}
    async with own_server(settings, **overrides) as (app, http), aioredis.from_url(redis.url) as probe:
        account = await register_and_login(http)
        await asyncio.wait_for(app.state.services.denylist.subscribed.wait(), 10)
        await asyncio.sleep(0.3)  # the catch-up reads after subscribing are done

        async def commands() -> int:
            return (await probe.info("stats"))["total_commands_processed"]

        before = await commands()
        for _ in range(50):
            assert (await http.get("/api/v1/wallets", headers=account.headers)).status_code == 200
        # The first INFO itself may be counted.
        assert await commands() - before <= 1


# Admin operations -----------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/api/v1/admin/users"),
    ("POST", "/api/v1/admin/users/{id}/disable"),
    ("POST", "/api/v1/admin/users/{id}/enable"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_admin_user_routes_are_for_admins_only(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    user, victim = await register_and_login(client), await register_and_login(client)
    url = path.format(id=victim.id)
    assert code_of(await client.request(method, url, headers=user.headers)) == (403, "forbidden")
    assert code_of(await client.request(method, url)) == (401, "unauthorized")
    # Nothing changed for the victim.
    assert (await me(client, victim.headers)).status_code == 200


async def test_an_admin_demoted_in_psql_loses_the_admin_routes_at_once(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    boss, victim = await make_admin(client, db), await register_and_login(client)
    assert (await client.get("/api/v1/admin/audit", headers=boss.headers)).status_code == 200
    # A DBA's demotion; the token still says admin until it expires.
    await db.execute("UPDATE users SET role = 'user' WHERE id = $1", boss.id)
    assert code_of(await client.get("/api/v1/admin/audit", headers=boss.headers)) == (403, "forbidden")
    disable = await client.post(f"/api/v1/admin/users/{victim.id}/disable", headers=boss.headers)
    assert code_of(disable) == (403, "forbidden")
    assert (await me(client, victim.headers)).status_code == 200
    # Promoted again, the same token works again: the database has the last word.
    await db.execute("UPDATE users SET role = 'admin' WHERE id = $1", boss.id)
    assert (await client.get("/api/v1/admin/house", headers=boss.headers)).status_code == 200


async def test_admins_page_through_users_without_hashes(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    admin = await make_admin(client, db)
    newest = [await register_and_login(client) for _ in range(3)]
    seen: list[dict[str, object]] = []
    before: int | None = None
    while True:
        params = {"limit": 2} | ({"before": before} if before else {})
        page = await client.get("/api/v1/admin/users", params=params, headers=admin.headers)
        assert page.status_code == 200, page.text
        seen += page.json()["users"]
        before = page.json()["next_before"]
        if before is None:
            break
    ids = [u["id"] for u in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert ids[:3] == [a.id for a in reversed(newest)]
    assert ids == [row["id"] for row in await db.fetch("SELECT id FROM users ORDER BY id DESC")]
    assert all(set(u) == {"id", "email", "role", "disabled", "created_at"} for u in seen)
    assert {u["email"] for u in seen if u["role"] == "admin"} >= {admin.email}
    for params in ({"limit": 0}, {"limit": 101}, {"before": 0}, {"limit": "x"}):
        bad = await client.get("/api/v1/admin/users", params=params, headers=admin.headers)
        assert code_of(bad) == (400, "validation_error"), params


async def test_disable_refuses_unknown_users_and_the_admin_themself(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    for action in ("disable", "enable"):
        missing = await client.post(f"/api/v1/admin/users/999999999/{action}", headers=admin.headers)
        assert code_of(missing) == (404, "not_found")
    myself = await client.post(f"/api/v1/admin/users/{admin.id}/disable", headers=admin.headers)
    assert code_of(myself) == (409, "cannot_disable_self")
    assert (await client.get("/api/v1/admin/users", headers=admin.headers)).status_code == 200
    assert not await db.fetchval("SELECT disabled FROM users WHERE id = $1", admin.id)


# Timing -----------------------------------------------------------------------------------


async def test_login_takes_as_long_for_unknown_emails_as_for_wrong_passwords(settings: Settings) -> None:
    """With a real bcrypt cost (10: ~70 ms here), an unknown email also spends one hash
    (the dummy). Without it the unknown email would answer ~20 times faster."""
    async with own_server(settings, bcrypt_rounds=10, price_poll_ms=0) as (_, http):
        account = await register_and_login(http)
        unknown: list[float] = []  # float-ok: durations
        wrong: list[float] = []  # float-ok
        for _ in range(7):
            for user, times in ((email(), unknown), (account.email, wrong)):
                start = time.perf_counter()
                answer = await try_login(http, user, "wrong password")
                times.append(time.perf_counter() - start)
                assert code_of(answer) == (401, "invalid_credentials")
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2, (unknown, wrong)


# Secrets ----------------------------------------------------------------------------------


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], None]]:
    """Every logger at DEBUG into caplog, including those that do not propagate to the
    root (uvicorn's). Call the result again after an app or server has (re)configured
    logging: Litestar's logging config replaces the root logger's handlers."""
    attached: list[logging.Logger] = []

    def everything_at_debug() -> None:
        caplog.set_level(logging.DEBUG)
        root = logging.getLogger()
        if caplog.handler not in root.handlers:
            root.addHandler(caplog.handler)
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger):
                continue
            caplog.set_level(logging.DEBUG, logger=name)
            if not logger.propagate and caplog.handler not in logger.handlers:
                logger.addHandler(caplog.handler)
                attached.append(logger)

    everything_at_debug()
    yield everything_at_debug
    for logger in attached:
        logger.removeHandler(caplog.handler)


def record_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Each record as formatted (with any traceback) and with all its attributes, so
    `extra` fields a structured logger adds are searched too."""
    return [f"{caplog.handler.format(r)} {vars(r)}" for r in caplog.records]


async def test_no_password_hash_or_token_in_logs_or_error_bodies(
    settings: Settings,
    db: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    every_log: Callable[[], None],
) -> None:
    passwords = {
        name: f"{name}-{secrets.token_hex(8)}" for name in ("alice", "admin", "wrong", "unknown", "broken")
    }
    passwords["long"] = "long-" + secrets.token_hex(40)  # over bcrypt's 72 bytes
    passwords["short"] = secrets.token_hex(3)
    answers: list[httpx.Response] = []
    token_answers: list[httpx.Response] = []

    async with own_server(settings, log_level="debug", redis_prefix=private_prefix(settings)) as (app, http):
        every_log()

        async def call(method: str, url: str, **kwargs: object) -> httpx.Response:
            answer = await http.request(method, url, **kwargs)  # type: ignore[arg-type]
            answers.append(answer)
            return answer

        async def log_in(user: str, password: str) -> httpx.Response:
            answer = await http.post("/api/v1/auth/token", data={"username": user, "password": password})
            (token_answers if answer.status_code == 200 else answers).append(answer)
            return answer

        alice, boss = email(), email()
        for address, password in ((alice, passwords["alice"]), (boss, passwords["admin"])):
            created = await call(
                "POST", "/api/v1/auth/register", json={"email": address, "password": password}
            )
            assert created.status_code == 201
        await repo.set_role(db, boss, "admin")
        # Validation failures with a password in the body.
        for body in (
            {"email": "not-an-email", "password": passwords["alice"]},
            {"email": email(), "password": passwords["alice"], "extra": 1},
            {"email": email(), "password": passwords["long"]},
            {"email": email(), "password": passwords["short"]},
            {"email": 7, "password": passwords["alice"]},
        ):
            assert (await call("POST", "/api/v1/auth/register", json=body)).status_code in (400, 422)
        broken = b'{"email": "x@example.com", "password": "' + passwords["broken"].encode()
        malformed = await call(
            "POST", "/api/v1/auth/register", content=broken, headers={"Content-Type": "application/json"}
        )
        assert malformed.status_code == 400

        token = (await log_in(alice, passwords["alice"])).json()["access_token"]
        second_token = (await log_in(alice, passwords["alice"])).json()["access_token"]
        admin_token = (await log_in(boss, passwords["admin"])).json()["access_token"]
        assert (await log_in(alice, passwords["wrong"])).status_code == 401
        assert (await log_in(email(), passwords["unknown"])).status_code == 401
        assert (await log_in("x" * 300, passwords["alice"])).status_code == 400
        as_json = {"username": alice, "password": passwords["alice"]}
        assert (await call("POST", "/api/v1/auth/token", json=as_json)).status_code in (400, 415)

        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": secrets.token_hex(8)}
        assert (
            await call("POST", "/api/v1/wallets/USDT/deposit", json={"amount": "1000"}, headers=headers)
        ).status_code == 201
        bad_deposit = {"amount": "1", "password": passwords["alice"]}
        assert (
            await call("POST", "/api/v1/wallets/USDT/deposit", json=bad_deposit, headers=headers)
        ).status_code == 400
        order = {"symbol": "BTCUSDT", "side": "buy", "quote_quantity": "100"}
        headers["Idempotency-Key"] = secrets.token_hex(8)
        assert (await call("POST", "/api/v1/orders", json=order, headers=headers)).status_code == 201

        assert (await call("POST", "/api/v1/auth/logout", headers=headers)).status_code == 204
        assert (await call("GET", "/api/v1/users/me", headers=headers)).status_code == 401
        alice_id = await db.fetchval("SELECT id FROM users WHERE email = $1", alice)
        admin_headers = {"Authorization": f"Bearer {admin_token}"}
        assert (
            await call("POST", f"/api/v1/admin/users/{alice_id}/disable", headers=admin_headers)
        ).status_code == 200
        assert (await call("GET", "/api/v1/admin/users", headers=admin_headers)).status_code == 200
        assert (
            await call("GET", "/api/v1/users/me", headers={"Authorization": f"Bearer {second_token}"})
        ).status_code == 401
        assert (await log_in(alice, passwords["alice"])).status_code == 403
        for authorization in (
            f"Bearer {second_token}x",
            f"Bearer {second_token[:-3]}",
            f"Token {second_token}",
        ):
            assert (
                await call("GET", "/api/v1/wallets", headers={"Authorization": authorization})
            ).status_code == 401
        dummy_hash = app.state.services.dummy_password_hash

    hashes: list[str] = [
        row["password_hash"]
        for row in await db.fetch("SELECT password_hash FROM users WHERE email = ANY($1)", [alice, boss])
    ]
    tokens = {"token": token, "second token": second_token, "admin token": admin_token}
    found = {
        **{f"{name} password": secret for name, secret in passwords.items()},
        **tokens,
        **{f"{name} signature": t.rsplit(".", 1)[1] for name, t in tokens.items()},
        **{f"hash {n}": h for n, h in enumerate([*hashes, dummy_hash])},
        # Salt and digest, without the "$2b$04$" prefix.
        **{f"hash {n} digest": h[7:] for n, h in enumerate([*hashes, dummy_hash])},
    }
    assert len(hashes) == 2 and all(answer.status_code < 500 for answer in answers)
    output = capfd.readouterr()
    logs = [*record_texts(caplog), output.out, output.err]
    # The capture works: the test's own HTTP client logged at DEBUG.
    assert any(r.name.startswith("httpcore") and r.levelno == logging.DEBUG for r in caplog.records)
    bodies = [f"{a.status_code} {a.headers} {a.text}" for a in answers] + [
        str(a.headers) for a in token_answers
    ]
    # Names only in the failure message: printing the text would print the secret.
    leaks = [(name, "log") for name, secret in found.items() if any(secret in text for text in logs)]
    leaks += [(name, "response") for name, secret in found.items() if any(secret in body for body in bodies)]
    assert leaks == []
