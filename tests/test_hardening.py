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

from exchange.config import jwt_secret_weakness, settings_from_env
from exchange.fake_binance import serve_in_thread

STRONG_SECRET = secrets.token_urlsafe(32)


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
