"""Bad input over real HTTP: oversized, mistyped, malformed or unbounded requests get a
4xx with a stable code, never a 500, and never write anything to the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest
from conftest import TEST_PASSWORD, Account, audit, balance, key, ledger_counts

from exchange.config import Settings
from exchange.schemas import ID_MAX

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def funded(new_user: Callable[[], Awaitable[Account]], client: httpx.AsyncClient) -> Account:
    account = await new_user()
    answer = await client.post(
        "/api/v1/wallets/USDT/deposit",
        json={"amount": "50"},
        headers={**account.headers, "Idempotency-Key": key()},
    )
    assert answer.status_code == 201, answer.text
    return account


async def post_deposit(
    client: httpx.AsyncClient, account: Account, body: bytes | AsyncIterator[bytes], content_type: str | None
) -> httpx.Response:
    headers = {**account.headers, "Idempotency-Key": key()}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await client.post("/api/v1/wallets/USDT/deposit", content=body, headers=headers)


def error_of(answer: httpx.Response) -> tuple[int, str]:
    assert answer.headers["content-type"].startswith(JSON), answer.text
    return answer.status_code, answer.json()["error"]["code"]


async def test_a_body_just_under_max_body_bytes_is_read_and_one_over_is_413(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account, settings: Settings
) -> None:
    start, end = b'{"amount": "1"', b"}"
    padding = settings.max_body_bytes - len(start) - len(end)
    before = await ledger_counts(db)

    too_big = await post_deposit(client, funded, start + b" " * (padding + 1) + end, JSON)
    assert error_of(too_big) == (413, "payload_too_large")
    assert await ledger_counts(db) == before

    just_fits = await post_deposit(client, funded, start + b" " * padding + end, JSON)
    assert just_fits.status_code == 201, just_fits.text


async def test_a_chunked_body_without_content_length_is_cut_off_at_the_limit(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account, settings: Settings
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"amount": "1", "pad": "'
        for _ in range(settings.max_body_bytes // 1000 + 10):
            sent += 1000
            yield b"x" * 1000
        yield b'"}'

    before = await ledger_counts(db)
    answer = await post_deposit(client, funded, chunks(), JSON)

    assert "content-length" not in answer.request.headers
    assert answer.request.headers["transfer-encoding"] == "chunked"
    assert error_of(answer) == (413, "payload_too_large")
    assert await ledger_counts(db) == before


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        (
            "/api/v1/auth/register",
            b'{"email": "big@example.com", "password": "' + b"x" * 70_000 + b'"}',
            JSON,
        ),
        ("/api/v1/auth/token", b"username=big%40example.com&password=" + b"x" * 70_000, FORM),
    ],
    ids=["register", "token"],
)
async def test_public_routes_refuse_big_bodies_too(
    client: httpx.AsyncClient, path: str, body: bytes, content_type: str
) -> None:
    answer = await client.post(path, content=body, headers={"Content-Type": content_type})
    assert error_of(answer) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b'{"amount": "1"}', "text/plain", id="text-plain"),
        pytest.param(b'{"amount": "1"}', None, id="no-content-type"),
        pytest.param(b"amount=1", FORM, id="form"),
        pytest.param(
            b'--b\r\nContent-Disposition: form-data; name="amount"\r\n\r\n1\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
            id="multipart",
        ),
        pytest.param(b'{"amount": "1"}', "application/xml", id="xml"),
    ],
)
async def test_a_json_route_refuses_other_media_types_with_415(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account, body: bytes, content_type: str | None
) -> None:
    before = await ledger_counts(db)
    answer = await post_deposit(client, funded, body, content_type)
    assert error_of(answer) == (415, "unsupported_media_type")
    assert answer.json()["error"]["details"] == {"expected": JSON}
    assert await ledger_counts(db) == before
    assert await balance(client, funded) == "50.00"


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json"])
async def test_json_with_a_charset_or_a_json_suffix_is_json(
    client: httpx.AsyncClient, funded: Account, content_type: str
) -> None:
    answer = await post_deposit(client, funded, b'{"amount": "1"}', content_type)
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b'{"username": "a@example.com", "password": "x"}', JSON, id="json"),
        pytest.param(b"username=a%40example.com&password=x", "text/plain", id="text-plain"),
        pytest.param(
            b'--b\r\nContent-Disposition: form-data; name="username"\r\n\r\na\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
            id="multipart",
        ),
    ],
)
async def test_the_token_route_reads_only_url_encoded_forms(
    client: httpx.AsyncClient, body: bytes, content_type: str
) -> None:
    answer = await client.post("/api/v1/auth/token", content=body, headers={"Content-Type": content_type})
    assert error_of(answer) == (415, "unsupported_media_type")
    assert answer.json()["error"]["details"] == {"expected": FORM}


MALFORMED = [
    pytest.param(b'{"amount": "1"', id="truncated"),
    pytest.param(b'{"amount": "1"} trailing', id="trailing-garbage"),
    pytest.param(b'{"amount": "\xff\xfe"}', id="not-utf8"),
    pytest.param(b'{"amount": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", id="nested-too-deep"),
    pytest.param(b'{"amount": NaN}', id="bare-nan"),
    pytest.param(b'{"amount": Infinity}', id="bare-infinity"),
    pytest.param(b"{'amount': '1'}", id="single-quotes"),
    pytest.param(b'{"amount": "1",}', id="trailing-comma"),
    # A number Decimal cannot hold (its exponent past ±999999999999999999).
    pytest.param(b'{"amount": 1e-9999999999999999999}', id="number-exponent-past-decimal"),
    pytest.param(b'{"email": 1E99999999999999999999}', id="number-anywhere-in-the-body"),
]


@pytest.mark.parametrize("body", MALFORMED)
async def test_malformed_json_is_400_never_500(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account, body: bytes
) -> None:
    before = await ledger_counts(db)
    answer = await post_deposit(client, funded, body, JSON)
    assert error_of(answer) == (400, "validation_error")
    assert await ledger_counts(db) == before


AMOUNTS = [
    # JSON numbers are read exactly: 19 significant digits are not rounded to 0.1 by a float.
    pytest.param(b"0.1000000000000000001", 422, "too_many_decimals", id="number-past-float-precision"),
    pytest.param(b"1e999999", 422, "invalid_amount", id="number-past-float-range"),
    pytest.param(b"1" + b"0" * 400, 422, "invalid_amount", id="huge-integer"),
    pytest.param(b"-1", 422, "invalid_amount", id="negative-number"),
    # Strings follow the documented pattern: what Python's Decimal also reads is refused.
    pytest.param(b'" 1"', 400, "validation_error", id="leading-space"),
    pytest.param(b'"1_000"', 400, "validation_error", id="underscore"),
    pytest.param('"\u0661"'.encode(), 400, "validation_error", id="arabic-digit"),
    pytest.param(b'"inf"', 400, "validation_error", id="inf-lowercase"),
    pytest.param(b'"0x10"', 400, "validation_error", id="hex"),
    pytest.param(b'"1E99999999999999999999"', 400, "validation_error", id="string-exponent-past-decimal"),
    pytest.param(b'{"value": "1"}', 400, "validation_error", id="object"),
]


@pytest.mark.parametrize(("amount", "status", "code"), AMOUNTS)
async def test_amounts_are_read_exactly_or_refused(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account, amount: bytes, status: int, code: str
) -> None:
    before = await ledger_counts(db)
    answer = await post_deposit(client, funded, b'{"amount": ' + amount + b"}", JSON)
    assert error_of(answer) == (status, code)
    assert "amount" in str(answer.json()["error"].get("details")), answer.text
    assert await ledger_counts(db) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/wallets/USDT/deposit", {"amount": "1", "currency": "USDT"}),
        ("/api/v1/orders", {"symbol": "BTCUSDT", "side": "buy", "quantity": "0.001", "leverage": "10"}),
        ("/api/v1/auth/register", {"email": "x@example.com", "password": TEST_PASSWORD, "role": "admin"}),
    ],
    ids=["deposit", "order", "register"],
)
async def test_unknown_fields_are_refused_by_name(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account, path: str, body: dict[str, str]
) -> None:
    before = await ledger_counts(db)
    answer = await client.post(path, json=body, headers={**funded.headers, "Idempotency-Key": key()})
    assert error_of(answer) == (400, "validation_error")
    unknown = next(
        name for name in body if name not in {"amount", "symbol", "side", "quantity", "email", "password"}
    )
    assert f"unknown field `{unknown}`" in answer.text
    assert await ledger_counts(db) == before


@pytest.mark.parametrize(
    "body",
    [
        {"symbol": 1, "side": "buy", "quantity": "0.001"},
        {"symbol": "BTCUSDT", "side": ["buy"], "quantity": "0.001"},
        {"symbol": "BTCUSDT", "side": "buy", "quantity": True},
        {"symbol": "BTCUSDT", "side": "buy", "quantity": {"value": "1"}},
        {"symbol": "B" * 21, "side": "buy", "quantity": "0.001"},
        {"symbol": "BTCUSDT", "side": "buy", "max_price": "cheap", "quantity": "0.001"},
    ],
    ids=["symbol-int", "side-list", "quantity-bool", "quantity-object", "symbol-too-long", "price-text"],
)
async def test_orders_of_the_wrong_types_are_400(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account, body: dict[str, object]
) -> None:
    before = await ledger_counts(db)
    answer = await client.post(
        "/api/v1/orders", json=body, headers={**funded.headers, "Idempotency-Key": key()}
    )
    assert error_of(answer) == (400, "validation_error")
    assert await ledger_counts(db) == before


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=1e3",
        f"before={ID_MAX + 1}",
        "before=0",
        "kind=refund",
        "asset=" + "A" * 13,
        "asset=!!",
        "asset=",
    ],
)
async def test_page_sizes_and_filters_of_the_history_are_bounded(
    client: httpx.AsyncClient, funded: Account, query: str
) -> None:
    answer = await client.get(f"/api/v1/transactions?{query}", headers=funded.headers)
    assert error_of(answer) == (400, "validation_error")


async def test_the_largest_page_and_id_are_accepted(client: httpx.AsyncClient, funded: Account) -> None:
    page = await client.get(f"/api/v1/transactions?limit=100&before={ID_MAX}", headers=funded.headers)
    assert page.status_code == 200, page.text
    assert len(page.json()["transactions"]) == 1
    missing = await client.get(f"/api/v1/transactions/{ID_MAX}", headers=funded.headers)
    assert error_of(missing) == (404, "not_found")
    too_big = await client.get(f"/api/v1/transactions/{ID_MAX + 1}", headers=funded.headers)
    assert error_of(too_big) == (400, "validation_error")


async def test_price_symbol_lists_are_bounded(client: httpx.AsyncClient, settings: Settings) -> None:
    two = await client.get("/api/v1/prices?symbols=btcusdt,ETHUSDT")
    assert two.status_code == 200, two.text
    assert [p["symbol"] for p in two.json()] == ["BTCUSDT", "ETHUSDT"]

    many = ",".join(f"S{i}USDT" for i in range(settings.ws_max_symbols + 1))
    too_many = await client.get(f"/api/v1/prices?symbols={many}")
    assert error_of(too_many) == (400, "too_many_symbols")
    assert too_many.json()["error"]["details"] == {"max": settings.ws_max_symbols}
    too_long = await client.get("/api/v1/prices?symbols=" + "B" * 1001)
    assert error_of(too_long) == (400, "validation_error")
    unknown = await client.get("/api/v1/prices?symbols=BTCUSDT,DOGEUSDT")
    assert error_of(unknown) == (404, "unknown_symbol")
    assert unknown.json()["error"]["details"] == {"symbols": ["DOGEUSDT"]}


async def test_long_path_segments_are_answered_without_echoing_them_whole(
    client: httpx.AsyncClient, funded: Account
) -> None:
    wallet = await client.get("/api/v1/wallets/" + "A" * 5000, headers=funded.headers)
    assert error_of(wallet) == (404, "unknown_asset")
    price = await client.get("/api/v1/prices/" + "B" * 5000)
    assert error_of(price) == (404, "unknown_symbol")
    assert len(wallet.text) < 300 and len(price.text) < 300


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"email": "a" * 250 + "@example.com", "password": TEST_PASSWORD}, 400, "validation_error"),
        ({"email": "x@example.com", "password": "p" * 1025}, 400, "validation_error"),
        ({"email": "x@example.com", "password": "é" * 37}, 422, "password_too_long"),  # 74 bytes
        ({"email": "x@example.com", "password": "short"}, 422, "password_too_short"),
        ({"email": "a\u0000b@example.com", "password": TEST_PASSWORD}, 400, "validation_error"),
        ({"email": 12, "password": TEST_PASSWORD}, 400, "validation_error"),
    ],
    ids=[
        "email-too-long",
        "password-too-long-chars",
        "password-too-long-bytes",
        "password-too-short",
        "email-nul",
        "email-number",
    ],
)
async def test_registration_strings_are_bounded(
    client: httpx.AsyncClient, body: dict[str, object], status: int, code: str
) -> None:
    answer = await client.post("/api/v1/auth/register", json=body)
    assert error_of(answer) == (status, code)


@pytest.mark.parametrize(
    "idempotency_key",
    ["k" * 101, "", "with space", "caf\u00e9"],
    ids=["101-chars", "empty", "space", "non-ascii"],
)
async def test_idempotency_keys_are_bounded(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account, idempotency_key: str
) -> None:
    before = await ledger_counts(db)
    headers = {**funded.headers, "Idempotency-Key": idempotency_key.encode("utf-8")}
    answer = await client.post("/api/v1/wallets/USDT/deposit", json={"amount": "1"}, headers=headers)
    assert error_of(answer) == (400, "validation_error")
    assert await ledger_counts(db) == before


async def test_a_missing_idempotency_key_is_named_in_details(
    client: httpx.AsyncClient, db: asyncpg.Pool, funded: Account
) -> None:
    before = await ledger_counts(db)
    answer = await client.post("/api/v1/wallets/USDT/deposit", json={"amount": "1"}, headers=funded.headers)
    assert error_of(answer) == (400, "validation_error")
    [error] = answer.json()["error"]["details"]["errors"]
    assert (error["key"], error["source"]) == ("Idempotency-Key", "header")
    malformed = {**funded.headers, "Idempotency-Key": "with space"}
    answer = await client.post("/api/v1/wallets/USDT/deposit", json={"amount": "1"}, headers=malformed)
    assert [e["key"] for e in answer.json()["error"]["details"]["errors"]] == ["Idempotency-Key"]
    assert await ledger_counts(db) == before


async def test_validation_errors_name_the_fields_never_the_values_or_the_query(
    client: httpx.AsyncClient, funded: Account
) -> None:
    answer = await client.get(
        "/api/v1/transactions?kind=refund-me&limit=abc&api_secret=hunter2", headers=funded.headers
    )
    assert error_of(answer) == (400, "validation_error")
    assert "hunter2" not in answer.text and "refund-me" not in answer.text and "abc" not in answer.text
    keys = sorted(e["key"] for e in answer.json()["error"]["details"]["errors"])
    assert keys in (["kind"], ["limit"], ["kind", "limit"])  # Litestar may stop at the first


async def test_a_wrong_method_is_405_with_the_allowed_methods(
    client: httpx.AsyncClient, funded: Account
) -> None:
    answer = await client.put("/api/v1/orders", headers=funded.headers)
    assert error_of(answer) == (405, "method_not_allowed")
    assert "POST" in answer.headers["allow"].split(", ")


@pytest.mark.parametrize("path", ["/api/v1/admin/audit", "/api/v1/orders", "/api/v1/prices"])
async def test_options_lists_the_methods_of_any_route_without_a_token(
    client: httpx.AsyncClient, path: str
) -> None:
    answer = await client.options(path)
    assert answer.status_code == 204, answer.text
    assert "OPTIONS" in answer.headers["allow"]


@pytest.mark.parametrize("email", ["new@example.com\n", "new\u0085x@example.com", "new@exam ple.com"])
async def test_emails_with_line_breaks_or_spaces_are_refused(client: httpx.AsyncClient, email: str) -> None:
    answer = await client.post("/api/v1/auth/register", json={"email": email, "password": TEST_PASSWORD})
    assert error_of(answer) == (400, "validation_error")


async def test_after_all_the_bad_input_the_books_still_balance(db: asyncpg.Pool) -> None:
    assert await audit(db) == []
