"""Passwords (bcrypt, in a worker thread), JWT access tokens, authentication, role guards."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import bcrypt
import jwt
import msgspec

from exchange.config import Settings
from exchange.errors import ExchangeError

# Pinned: a token naming any other algorithm (including "none") is refused.
JWT_ALGORITHM = "HS256"
# bcrypt reads at most 72 bytes of a password; longer ones are refused, not truncated.
PASSWORD_MAX_BYTES = 72
PASSWORD_MIN_CHARS = 8


class AuthUser(msgspec.Struct, frozen=True):
    """Who is calling, as the access token says; no database query needed."""

    id: int
    role: str
    # The token's own id and expiry (epoch seconds): what a logout revokes, until when.
    jti: str
    exp: int


def check_password_rules(password: str) -> None:
    if len(password) < PASSWORD_MIN_CHARS:
        raise ExchangeError(
            "password_too_short",
            f"password must have at least {PASSWORD_MIN_CHARS} characters",
            {"field": "password"},
        )
    if len(password.encode()) > PASSWORD_MAX_BYTES:
        raise ExchangeError(
            "password_too_long",
            f"password must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8 (bcrypt's limit)",
            {"field": "password"},
        )


async def hash_password(password: str, rounds: int) -> str:
    salt = bcrypt.gensalt(rounds)
    hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), salt)
    return hashed.decode()


async def verify_password(password: str, password_hash: str) -> bool:
    encoded = password.encode()
    # A password over bcrypt's limit is never stored, so it never matches; it still
    # spends one hash (on its first 72 bytes) so timing does not tell the difference.
    matches = await asyncio.to_thread(bcrypt.checkpw, encoded[:PASSWORD_MAX_BYTES], password_hash.encode())
    return matches and len(encoded) <= PASSWORD_MAX_BYTES


def issue_token(settings: Settings, user_id: int, role: str) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "role": role,
        "iat": now,
        "exp": now + settings.jwt_ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=JWT_ALGORITHM)


def unauthorized(message: str) -> ExchangeError:
    return ExchangeError("unauthorized", message)


def decode_token(settings: Settings, token: str) -> AuthUser:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["exp", "iat", "sub", "role", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("the access token has expired") from None
    except jwt.InvalidTokenError:
        raise unauthorized("the access token is not valid") from None
    try:
        return AuthUser(
            id=int(claims["sub"]), role=str(claims["role"]), jti=str(claims["jti"]), exp=int(claims["exp"])
        )
    except (TypeError, ValueError):
        raise unauthorized("the access token is not valid") from None


class VerifiedTokens:
    """The tokens this worker has already verified, so a client's later requests skip
    PyJWT's signature check and JSON parsing (~26 µs, the largest cost of auth).

    Keyed by the whole token string, so only the exact text that passed verification
    hits, and a hit counts only until the token's own `exp`. Revoked tokens and disabled
    users are still checked on every request (exchange/auth/denylist.py). When full, it
    starts over."""

    def __init__(self, settings: Settings, max_entries: int = 10_000) -> None:
        self._settings = settings
        self._max_entries = max_entries
        self._users: dict[str, AuthUser] = {}

    def user(self, token: str) -> AuthUser:
        user = self._users.get(token)
        if user is not None:
            if user.exp > time.time():
                return user
            del self._users[token]
        user = decode_token(self._settings, token)  # 401 if invalid or expired
        if len(self._users) >= self._max_entries:
            self._users.clear()
        self._users[token] = user
        return user


def forbidden() -> ExchangeError:
    return ExchangeError("forbidden", "this operation is for admins only")
