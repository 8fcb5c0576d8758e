"""The outside review's findings (issue 25), each reproduced against the real server.

Most severe first: the Binance stand-in in production, weak JWT secrets, client
addresses taken from headers, login limits turned against their victim, one user's
unbounded work, the last admin, deleted users, forged log lines, unbounded headers,
security headers and /metrics.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import httpx
import pytest
import redis.asyncio as aioredis
from conftest import TEST_PASSWORD, register_and_login
from test_security import code_of, own_server, private_prefix, try_login

from exchange.config import Settings, jwt_secret_weakness, settings_from_env
from exchange.fake_binance import serve_in_thread

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
    compose = open(os.path.join(os.path.dirname(__file__), "..", "docker-compose.yml")).read()
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
        huge = "x" * 20_000 + ", " + "9" * 5_000
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
