"""Registration, login and bearer tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time

import httpx
import jwt
from conftest import TEST_PASSWORD, register_and_login

from exchange.config import Settings


def _email() -> str:
    return f"auth-{secrets.token_hex(6)}@example.com"


async def test_register_then_login_gives_a_bearer_token(client: httpx.AsyncClient) -> None:
    email = _email()
    created = await client.post("/api/v1/auth/register", json={"email": email, "password": TEST_PASSWORD})
    assert created.status_code == 201
    body = created.json()
    assert body["email"] == email and body["role"] == "user" and "password_hash" not in body

    token = await client.post("/api/v1/auth/token", data={"username": email, "password": TEST_PASSWORD})
    assert token.status_code == 200
    assert token.json()["token_type"] == "bearer"
    assert token.json()["expires_in"] > 0
    assert token.headers["cache-control"] == "no-store"

    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["user"]["id"] == body["id"]


async def test_duplicate_email_in_any_case_is_409(client: httpx.AsyncClient) -> None:
    email = _email()
    first = await client.post("/api/v1/auth/register", json={"email": email, "password": TEST_PASSWORD})
    assert first.status_code == 201
    again = await client.post(
        "/api/v1/auth/register", json={"email": email.upper(), "password": TEST_PASSWORD}
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "email_taken"


async def test_login_email_is_case_insensitive(client: httpx.AsyncClient) -> None:
    account = await register_and_login(client)
    token = await client.post(
        "/api/v1/auth/token", data={"username": account.email.upper(), "password": TEST_PASSWORD}
    )
    assert token.status_code == 200


async def test_wrong_password_and_unknown_email_are_401(client: httpx.AsyncClient) -> None:
    account = await register_and_login(client)
    wrong = await client.post(
        "/api/v1/auth/token", data={"username": account.email, "password": "not the password"}
    )
    unknown = await client.post("/api/v1/auth/token", data={"username": _email(), "password": TEST_PASSWORD})
    for answer in (wrong, unknown):
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_credentials"
    # Same message for both: the answer does not tell which emails exist.
    assert wrong.json() == unknown.json()


async def test_password_rules(client: httpx.AsyncClient) -> None:
    too_short = await client.post("/api/v1/auth/register", json={"email": _email(), "password": "short"})
    assert too_short.status_code == 422
    assert too_short.json()["error"]["code"] == "password_too_short"
    # 25 three-byte characters: 25 characters but 75 bytes, over bcrypt's 72.
    too_long = await client.post("/api/v1/auth/register", json={"email": _email(), "password": "€" * 25})
    assert too_long.status_code == 422
    assert too_long.json()["error"]["code"] == "password_too_long"
    bad_email = await client.post(
        "/api/v1/auth/register", json={"email": "not-an-email", "password": TEST_PASSWORD}
    )
    assert bad_email.status_code == 400
    assert bad_email.json()["error"]["code"] == "validation_error"
    assert "email" in json.dumps(bad_email.json()["error"]["details"])


async def test_password_of_exactly_72_bytes_works(client: httpx.AsyncClient) -> None:
    email, password = _email(), "€" * 24  # 72 bytes
    assert (
        await client.post("/api/v1/auth/register", json={"email": email, "password": password})
    ).status_code == 201
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": password})
    assert token.status_code == 200


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _me(client: httpx.AsyncClient, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await client.get("/api/v1/users/me", headers=headers)


async def test_bad_tokens_are_401(client: httpx.AsyncClient, settings: Settings) -> None:
    account = await register_and_login(client)
    good = account.headers["Authorization"].removeprefix("Bearer ")
    now = int(time.time())
    claims = {"sub": str(account.id), "role": "user", "iat": now, "jti": "x"}
    expired = jwt.encode(
        {**claims, "iat": now - 7200, "exp": now - 3600}, settings.jwt_secret, algorithm="HS256"
    )
    other_secret = jwt.encode({**claims, "exp": now + 600}, "another-secret-" + "x" * 32, algorithm="HS256")
    alg_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({**claims, 'exp': now + 600})}."
    header, _, signature = good.split(".")
    admin_claims = {**jwt.decode(good, options={"verify_signature": False}), "role": "admin"}
    tampered = f"{header}.{_b64(admin_claims)}.{signature}"
    without_jti = jwt.encode(
        {k: v for k, v in {**claims, "exp": now + 600}.items() if k != "jti"},
        settings.jwt_secret,
        algorithm="HS256",
    )

    assert (await _me(client, good)).status_code == 200
    for token in (expired, other_secret, alg_none, tampered, without_jti, "garbage", None):
        answer = await _me(client, token)
        assert answer.status_code == 401, token
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert "expired" in (await _me(client, expired)).json()["error"]["message"]


async def test_token_carries_sub_role_exp_iat_jti(client: httpx.AsyncClient, settings: Settings) -> None:
    account = await register_and_login(client)
    token = account.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == str(account.id) and claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == settings.jwt_ttl_seconds
    assert len(claims["jti"]) == 32


async def test_a_token_verified_once_stops_working_when_it_expires(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # Each worker remembers the tokens it has verified (security.VerifiedTokens): a
    # remembered token must still lapse at its own exp, and a forged twin must not pass.
    account = await register_and_login(client)
    now = int(time.time())
    claims = {"sub": str(account.id), "role": "user", "iat": now, "jti": secrets.token_hex(16)}
    short_lived = jwt.encode({**claims, "exp": now + 2}, settings.jwt_secret, algorithm="HS256")
    forged = short_lived[:-4] + ("AAAA" if not short_lived.endswith("AAAA") else "BBBB")

    assert (await _me(client, short_lived)).status_code == 200
    assert (await _me(client, short_lived)).status_code == 200
    assert (await _me(client, forged)).status_code == 401
    await asyncio.sleep(max(0.0, now + 2.1 - time.time()))
    answer = await _me(client, short_lived)
    assert answer.status_code == 401
    assert "expired" in answer.json()["error"]["message"]
