"""Settings, read once from environment variables and validated at start."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import string
from collections import Counter
from typing import Annotated, Literal

import msgspec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(spec: str) -> tuple[Network, ...]:
    """FORWARDED_ALLOW_IPS (`10.0.0.5, 172.16.0.0/12, ::1`) as networks; ValueError
    names an entry that is neither an address nor a network ("*" included)."""
    networks = []
    for entry in (part.strip() for part in spec.split(",")):
        if entry:
            networks.append(ipaddress.ip_network(entry, strict=False))
    return tuple(networks)


log = logging.getLogger("exchange.config")

# Allowed only outside production, and then with a loud warning: anyone who knows it can
# forge tokens.
DEV_JWT_SECRET = "dev-only-insecure-secret-change-me-0123456789"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting, its environment variable (upper-case name) and its default."""

    exchange_env: Literal["development", "production"] = "development"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_pool_min_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    db_pool_max_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 10
    # Bounds on any one statement and on any wait for a row lock; past them the request
    # is rolled back whole and answers 503 service_unavailable (safe to retry).
    db_statement_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 10_000
    db_lock_timeout_ms: Annotated[int, msgspec.Meta(ge=10, le=600_000)] = 5_000
    # Money movements go to PostgreSQL in batches (exchange/ledger/batches.py): at
    # most this many calls at once per worker (each holds a pooled connection), each
    # carrying up to MOVEMENT_BATCH_MAX movements. MOVEMENT_BATCH_MAX=1: one per call.
    movement_batch_lanes: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    movement_batch_max: Annotated[int, msgspec.Meta(ge=1, le=32)] = 32
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis connections per worker; a request waits for a free one rather than failing.
    redis_max_connections: Annotated[int, msgspec.Meta(ge=2, le=10_000)] = 100
    # Every Redis key this deployment writes starts with this (tests use their own).
    redis_prefix: Annotated[str, msgspec.Meta(max_length=64)] = "exchange:"
    binance_url: str = "https://api.binance.com"
    # Each request to Binance gets this long per phase (connect, read...) and at most
    # BINANCE_MAX_ATTEMPTS tries with backoff; then the price is unavailable (503).
    binance_timeout_ms: Annotated[int, msgspec.Meta(ge=50, le=30_000)] = 2_000
    binance_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
    binance_max_connections: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    # `exchange serve` starts the local Binance stand-in and uses it instead of
    # BINANCE_URL, so the product runs offline (also `exchange serve --fake-binance`).
    fake_binance: bool = False
    fake_binance_seed: int = 1
    # A cached price is served while younger than this; older, it is fetched again.
    price_cache_ttl_ms: Annotated[int, msgspec.Meta(ge=50, le=3_600_000)] = 5_000
    # While Binance fails, a price up to this old is served marked `stale`; older -> 503.
    price_stale_max_ms: Annotated[int, msgspec.Meta(ge=50, le=86_400_000)] = 60_000
    # A trade uses a price at most this old (else 503 price_unavailable); at least
    # PRICE_CACHE_TTL_MS, since the cache does not refresh a younger price.
    trade_price_max_age_ms: Annotated[int, msgspec.Meta(ge=50, le=3_600_000)] = 10_000
    # The elected poller refreshes every market this often; 0 turns the feed off.
    price_poll_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 1_000
    # The poller's lease: if its worker dies, another takes over within this long.
    price_feed_lease_ms: Annotated[int, msgspec.Meta(ge=300, le=60_000)] = 3_000
    # WebSocket clients of the whole server (every worker; counted in Redis, see
    # exchange/prices/slots.py), and of one client address on one worker.
    ws_max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1_000
    ws_max_connections_per_address: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 20
    ws_max_symbols: Annotated[int, msgspec.Meta(ge=1, le=1_000)] = 20
    # A price client is dropped as too slow once the server holds more than this many
    # bytes it has not sent (besides the kernel's bounded share), or once it has not
    # taken what was sent for WS_SEND_TIMEOUT_MS (a ping sent after it unanswered).
    ws_max_unsent_bytes: Annotated[int, msgspec.Meta(ge=1_024, le=16_777_216)] = 16_384
    ws_send_timeout_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 5_000
    # uvicorn pings every WebSocket client this often, and closes (1011) one whose pong
    # has not come within WS_PING_TIMEOUT_MS.
    ws_ping_interval_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 5_000
    ws_ping_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 20_000
    jwt_secret: Annotated[str, msgspec.Meta(min_length=32)] = DEV_JWT_SECRET
    jwt_ttl_seconds: Annotated[int, msgspec.Meta(ge=60, le=86_400)] = 3600
    # bcrypt cost; tests lower it to keep the suite fast.
    bcrypt_rounds: Annotated[int, msgspec.Meta(ge=4, le=16)] = 12
    # In each fixed window, counted in Redis for the whole deployment
    # (exchange/auth/ratelimit.py; 0 turns a limit off): login attempts per client IP; wrong
    # passwords per email from one IP; wrong passwords per email from all IPs, past
    # which only IPs without a failure on that email may try it.
    login_limit_per_ip: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 100
    login_limit_per_email_ip: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 5
    login_limit_per_email: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10
    login_window_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    register_limit_per_ip: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 20
    register_limit_per_email: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 5
    register_window_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    # Money movements (deposits, withdrawals, orders) per user: a token bucket in Redis
    # refilled by MOVEMENT_RATE_PER_USER a second, holding MOVEMENT_BURST_PER_USER;
    # past it 429 rate_limited with Retry-After. 0 turns the quota off.
    movement_rate_per_user: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 20
    movement_burst_per_user: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100
    # Each worker rereads disabled users (PostgreSQL) and revoked tokens (Redis) this
    # often: the bound for a change that bypassed the API or a lost pub/sub message.
    auth_reload_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 5_000
    # Reverse proxies trusted to give the client's address in X-Forwarded-For
    # (addresses or networks, comma-separated); empty: the header is never believed.
    forwarded_allow_ips: Annotated[str, msgspec.Meta(max_length=1_000)] = ""
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    # 0 means one worker per core.
    workers: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    # Request bodies above this many bytes are refused with 413.
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=10_000_000)] = 65_536
    # The request line and headers together, and how many header fields; past either,
    # 431 and the connection closed (exchange/ops/http_limits.py).
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1_048_576)] = 16_384
    max_headers: Annotated[int, msgspec.Meta(ge=10, le=1_000)] = 100
    # From a connection's start (or a request's first byte) to the end of its headers;
    # past it the connection is closed (a slowloris client holds no connection longer).
    header_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 10_000
    # Connections and requests in flight per worker (uvicorn's limit_concurrency); past
    # it new requests answer 503. Above WS_MAX_CONNECTIONS: WebSocket clients count.
    limit_concurrency: Annotated[int, msgspec.Meta(ge=10, le=1_000_000)] = 2_048
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # json: one JSON object per line (exchange/ops/logs.py); text: for reading in a terminal.
    log_format: Literal["json", "text"] = "json"
    # If set, GET /metrics asks for `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: Annotated[str, msgspec.Meta(max_length=256)] = ""


# A production JWT_SECRET carries at least this much key material: 32 random bytes (the
# HS256 key size), estimated from its characters' own frequencies.
JWT_SECRET_MIN_BITS = 128
JWT_SECRET_MIN_BYTES = 32
_HEX_DIGITS = frozenset(string.hexdigits)
_BASE64_CHARS = frozenset(string.ascii_letters + string.digits + "+/-_=")


def jwt_secret_weakness(secret: str) -> str | None:
    """Why the secret is too weak to sign production tokens, or None. A hex string must
    hold 32 bytes (64 digits), a base64 one 32 bytes (43 characters); and whatever its
    alphabet, the secret's characters must not repeat like a pattern: their empirical
    entropy (Shannon, per character, times the length) must reach JWT_SECRET_MIN_BITS.
    "a" * 64 and "abab..." fail; `secrets.token_urlsafe(32)` has about 200 bits."""
    if set(secret) <= _HEX_DIGITS:
        if len(secret) < 2 * JWT_SECRET_MIN_BYTES:
            return f"a hex secret needs {2 * JWT_SECRET_MIN_BYTES} digits ({JWT_SECRET_MIN_BYTES} bytes)"
    elif set(secret) <= _BASE64_CHARS:
        if len(secret.rstrip("=")) < math.ceil(JWT_SECRET_MIN_BYTES * 4 / 3):
            return f"a base64 secret needs {JWT_SECRET_MIN_BYTES} bytes (43 characters)"
    counts = Counter(secret)
    bits_per_char = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    if bits_per_char * len(secret) < JWT_SECRET_MIN_BITS:
        return f"its characters repeat too much (under {JWT_SECRET_MIN_BITS} bits by their frequencies)"
    return None


def refuse_fake_binance_in_production(exchange_env: str) -> None:
    """The one place that decides whether the Binance stand-in may run, however it is
    asked for (`--fake-binance`, FAKE_BINANCE, `exchange fake-binance`): never in
    production, where its made-up prices would fill real trades."""
    if exchange_env == "production":
        raise SystemExit(
            "the Binance stand-in serves made-up prices: it is refused when EXCHANGE_ENV=production "
            "(FAKE_BINANCE, --fake-binance, exchange fake-binance)"
        )


def settings_from_env(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from `NAME` environment variables; refuse bad values at start."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        raw = environ.get(field.name.upper())
        if raw is not None and raw != "":
            values[field.name] = raw
    values.update(overrides)
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None
    if settings.db_pool_min_size > settings.db_pool_max_size:
        raise SystemExit("invalid configuration: DB_POOL_MIN_SIZE is above DB_POOL_MAX_SIZE")
    if settings.price_stale_max_ms < settings.price_cache_ttl_ms:
        raise SystemExit("invalid configuration: PRICE_STALE_MAX_MS is below PRICE_CACHE_TTL_MS")
    if settings.trade_price_max_age_ms < settings.price_cache_ttl_ms:
        raise SystemExit("invalid configuration: TRADE_PRICE_MAX_AGE_MS is below PRICE_CACHE_TTL_MS")
    if settings.limit_concurrency <= settings.ws_max_connections:
        raise SystemExit("invalid configuration: LIMIT_CONCURRENCY must be above WS_MAX_CONNECTIONS")
    if settings.ws_send_timeout_ms >= settings.ws_ping_timeout_ms:
        # Else uvicorn closes a stuck price client (1011) before the app says too_slow.
        raise SystemExit("invalid configuration: WS_SEND_TIMEOUT_MS must be below WS_PING_TIMEOUT_MS")
    if 0 < settings.price_poll_ms < 50:
        raise SystemExit("invalid configuration: PRICE_POLL_MS must be 0 (off) or at least 50")
    try:
        trusted_networks(settings.forwarded_allow_ips)
    except ValueError as exc:
        raise SystemExit(f"invalid configuration: FORWARDED_ALLOW_IPS: {exc}") from None
    if settings.fake_binance:
        refuse_fake_binance_in_production(settings.exchange_env)
    if settings.jwt_secret == DEV_JWT_SECRET:
        if settings.exchange_env == "production":
            raise SystemExit("JWT_SECRET must be set in production (EXCHANGE_ENV=production)")
        log.warning(
            "JWT_SECRET is not set: using the development default. Anyone can forge "
            "tokens for this server. Set JWT_SECRET (32+ characters) before exposing it."
        )
    elif settings.exchange_env == "production" and (weakness := jwt_secret_weakness(settings.jwt_secret)):
        raise SystemExit(
            f"JWT_SECRET is too weak for production: {weakness}. Make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` or `openssl rand -hex 32`"
        )
    return settings
