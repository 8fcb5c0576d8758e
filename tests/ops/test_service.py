"""The service as an operator runs it: migrations, `exchange serve`, health, the API docs."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest
from conftest import TEST_PASSWORD, fresh_database, running_server

from exchange.__main__ import warn_if_pools_exceed_max_connections
from exchange.config import Settings, settings_from_env
from exchange.ops import serving
from exchange.ops.sockets import free_port
from exchange.store.db import migrate, migration_files


async def test_concurrent_migrations_apply_each_file_once(service_urls: tuple[str, str]) -> None:
    async with fresh_database(service_urls[0], migrated=False) as url:
        results = await asyncio.gather(*(migrate(url) for _ in range(4)))
        every = [path.stem for path in migration_files()]
        assert sorted(results, key=len) == [[], [], [], every]
        assert await migrate(url) == []


async def test_exchange_serve_migrates_an_empty_database_then_serves_offline(
    service_urls: tuple[str, str],
) -> None:
    async with fresh_database(service_urls[0], migrated=False) as url:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": service_urls[1],
            "REDIS_PREFIX": f"test:{secrets.token_hex(4)}:",
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": "warning",
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exchange",
                "serve",
                "--port",
                str(port),
                "--workers",
                "2",
                "--fake-binance",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                for _ in range(200):
                    try:
                        if (await http.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert server.poll() is None, server.stdout.read() if server.stdout else ""
                    await asyncio.sleep(0.1)
                ready = await http.get("/ready")
                assert ready.json() == {"status": "ready", "postgres": "ok", "redis": "ok"}
                assert (await http.get("/health")).json() == {"status": "ok"}

                email = "served@example.com"
                created = await http.post(
                    "/api/v1/auth/register", json={"email": email, "password": TEST_PASSWORD}
                )
                assert created.status_code == 201
                token = await http.post(
                    "/api/v1/auth/token", data={"username": email, "password": TEST_PASSWORD}
                )
                headers = {"Authorization": f"Bearer {token.json()['access_token']}", "Idempotency-Key": "k1"}
                deposit = await http.post(
                    "/api/v1/wallets/USDT/deposit", json={"amount": "1"}, headers=headers
                )
                assert deposit.status_code == 201

                # --fake-binance: prices come from the stand-in the server started itself.
                prices = await http.get("/api/v1/prices")
                assert prices.status_code == 200, prices.text
                assert [p["symbol"] for p in prices.json()] == ["BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"]
        finally:
            server.terminate()
            output, _ = server.communicate(timeout=30)
        # The development JWT secret is announced loudly, and nothing sensitive is logged.
        assert "JWT_SECRET is not set" in output
        assert TEST_PASSWORD not in output
        assert token.json()["access_token"] not in output


async def test_ready_reports_redis_down_without_a_500(settings: Settings) -> None:
    broken = msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:1/0")
    async with running_server(broken) as url, httpx.AsyncClient(base_url=url) as http:
        ready = await http.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable" and body["postgres"] == "ok"
        assert body["redis"].startswith("down")
        assert (await http.get("/health")).status_code == 200


async def test_openapi_lists_every_route_and_the_oauth2_password_flow(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert {
        "/api/v1/auth/register",
        "/api/v1/auth/token",
        "/api/v1/users/me",
        "/api/v1/wallets",
        "/api/v1/wallets/{asset}",
        "/api/v1/wallets/{asset}/deposit",
        "/api/v1/wallets/{asset}/withdraw",
        "/api/v1/transactions",
        "/api/v1/transactions/{transaction_id}",
        "/api/v1/admin/audit",
        "/health",
        "/ready",
    } <= set(schema["paths"])
    flow = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"]
    assert flow["tokenUrl"] == "/api/v1/auth/token"
    token_body = schema["paths"]["/api/v1/auth/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in token_body


async def test_docs_page_references_only_its_own_files_and_no_inline_script(
    client: httpx.AsyncClient,
) -> None:
    """What a Content-Security-Policy of 'self' needs (the browser itself: test_docs_browser.py)."""
    page = (await client.get("/schema/swagger")).text
    urls = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(urls) == 5 and all(url.startswith("/schema/assets/") for url in urls), urls
    assert "<style" not in page and "style=" not in page
    scripts = [f'<script src="{url}">' for url in urls if url.endswith(".js")]
    assert re.findall(r"<script[^>]*>", page) == scripts
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200 and asset.content, url
        assert "cdn." not in asset.text and "unpkg" not in asset.text, url
    assert (await client.get("/schema/scalar")).status_code == 404  # dropped: it needed a CDN


async def test_unknown_route_and_method_answer_in_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    wrong_method = await client.delete("/health")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_exchange_migrate_applies_pending_files_once(service_urls: tuple[str, str]) -> None:
    async with fresh_database(service_urls[0], migrated=False) as url:
        env = {**os.environ, "DATABASE_URL": url}
        command = [sys.executable, "-m", "exchange", "migrate"]
        first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert f"applied {len(migration_files())} migration(s)" in first.stdout
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert "none pending" in second.stdout


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"`{field.name.upper()}`" in readme, field.name


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({"PRICE_CACHE_TTL_MS": "10000", "PRICE_STALE_MAX_MS": "5000"}, "PRICE_STALE_MAX_MS"),
        ({"PRICE_POLL_MS": "10"}, "PRICE_POLL_MS"),
        ({"PRICE_CACHE_TTL_MS": "10000", "TRADE_PRICE_MAX_AGE_MS": "5000"}, "TRADE_PRICE_MAX_AGE_MS"),
        ({"WS_SEND_TIMEOUT_MS": "20000", "WS_PING_TIMEOUT_MS": "20000"}, "WS_SEND_TIMEOUT_MS"),
        ({"BINANCE_MAX_ATTEMPTS": "0"}, "binance_max_attempts"),
        ({"FAKE_BINANCE": "maybe"}, "fake_binance"),
        ({"EXCHANGE_ENV": "production"}, "JWT_SECRET"),
        ({"EXCHANGE_ENV": "production", "JWT_SECRET": "x" * 32, "FAKE_BINANCE": "true"}, "FAKE_BINANCE"),
    ],
)
def test_bad_settings_stop_the_start_with_a_clear_message(environ: dict[str, str], complaint: str) -> None:
    with pytest.raises(SystemExit, match=complaint):
        settings_from_env(environ)


def test_settings_read_booleans_and_numbers_from_the_environment() -> None:
    settings = settings_from_env({"FAKE_BINANCE": "true", "PRICE_POLL_MS": "0", "JWT_SECRET": "x" * 32})
    assert settings.fake_binance is True and settings.price_poll_ms == 0


def test_default_workers_follow_the_usable_cores_and_the_connection_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(serving, "CGROUP_CPU_MAX", cpu_max)
    cpu_max.write_text("max 100000\n")  # no quota
    assert serving.usable_cores() == affinity
    cpu_max.write_text("150000 100000\n")  # docker --cpus 1.5
    assert serving.usable_cores() == min(affinity, 2)
    cpu_max.write_text("64000000 100000\n")  # a quota above the cores: the cores bound it
    assert serving.usable_cores() == affinity
    assert serving.default_workers(pool_max_size=10) == min(affinity, 8)
    assert serving.default_workers(pool_max_size=80) == 1


async def test_serve_warns_when_the_pools_exceed_max_connections(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="exchange"):
        await warn_if_pools_exceed_max_connections(settings, workers=2)  # 2 x 20: fits in 100
        assert caplog.records == []
        await warn_if_pools_exceed_max_connections(settings, workers=5)  # 5 x 20 = 100
    [record] = caplog.records
    assert "5 workers x DB_POOL_MAX_SIZE 20 = 100 pooled connections" in record.getMessage()
