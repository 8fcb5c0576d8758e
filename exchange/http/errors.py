"""One error shape for every failure: {"error": {"code", "message", "details"}}.

Codes are stable and machine-readable; clients branch on `code`, never on `message`.
The domain raises ExchangeError (exchange/errors.py) with a code and no status; this
module gives each code its HTTP status, maps every SQLSTATE a money function raises
(ledger/errors.py) and Litestar's own errors, and holds the exception handlers.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import msgspec
import redis.exceptions
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from exchange.errors import ExchangeError
from exchange.ledger.errors import SQLSTATE_CODES, UNIQUE_CODES
from exchange.schemas import ErrorBody, ErrorDetail

log = logging.getLogger("exchange.http.errors")


class HTTPError(ExchangeError):
    """An error of the HTTP layer itself (a route's or a body's own check), with its status."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, message, details)
        self.status = status
        self.headers = headers


# The HTTP status of each domain error code (exchange/errors.py, ledger/errors.py).
STATUS_BY_CODE: dict[str, int] = {
    "validation_error": 400,
    "too_many_symbols": 400,
    "unauthorized": 401,
    "invalid_credentials": 401,
    "forbidden": 403,
    "user_disabled": 403,
    "not_found": 404,
    "unknown_asset": 404,
    "unknown_symbol": 404,
    "email_taken": 409,
    "insufficient_funds": 409,
    "market_inactive": 409,
    "price_moved": 409,
    "cannot_disable_self": 409,
    "last_admin": 409,
    "order_not_open": 409,
    "duplicate_client_order_id": 409,
    "conflict": 409,
    "invalid_amount": 422,
    "too_many_decimals": 422,
    "idempotency_key_reused": 422,
    "exactly_one_quantity": 422,
    "quantity_off_step": 422,
    "quantity_out_of_range": 422,
    "below_min_notional": 422,
    "price_off_tick": 422,
    "field_not_for_order_type": 422,
    "price_out_of_band": 422,
    "invalid_price_guard": 422,
    "password_too_short": 422,
    "password_too_long": 422,
    "email_invalid_characters": 422,
    "email_domain_not_ascii": 422,
    "rate_limited": 429,
    "price_unavailable": 503,
    "service_unavailable": 503,
}


def http_status(code: str) -> int:
    return STATUS_BY_CODE[code]


def retry_headers(status: int, retry_after_seconds: int | None = None) -> dict[str, str] | None:
    """When a domain error may be retried: its own time, else 1 s for a 503."""
    if retry_after_seconds is not None:
        return {"Retry-After": str(retry_after_seconds)}
    if status == 503:
        return {"Retry-After": "1"}
    return None


# Litestar's own HTTP errors (routing, parsing, guards) -> stable codes.
STATUS_CODES: dict[int, str] = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "service_unavailable",
}

# The database or Redis cannot be reached: the client may retry later.
UNAVAILABLE_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
# SQLSTATE prefixes that mean "try again later": connection exceptions (08), too many
# connections and other resource limits (53), operator intervention such as a restart
# (57P), lock_timeout (55P03), statement_timeout (57014), and transaction rollbacks
# (40: serialization failure, deadlock; the money functions lock in one order so they
# should never deadlock, hence the warning). The transaction was rolled back whole, so
# a retry (with the same Idempotency-Key) is safe.
UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "55P03", "57014", "40")
# What asyncpg raises itself when the server ended a session under it (a restart): the
# connection is found closed, or in the middle of reading the server's farewell ("cannot
# switch to state 12; another operation (2) is in progress"), when a statement starts or
# when the pool resets the connection after one (it then discards it). Only these exact
# types: their subclasses (DataError: an argument the driver cannot encode...) are bugs.
BROKEN_CONNECTION_ERRORS = (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


# What each error status means across the API, for the OpenAPI document.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "`validation_error`: malformed body, wrong types, unknown or missing fields, a parameter out of "
    "its bounds; `details` names them. `too_many_symbols`: a symbol list over WS_MAX_SYMBOLS",
    401: "`unauthorized` (no, expired, invalid or revoked token, or a disabled or deleted user) or "
    "`invalid_credentials` (login)",
    403: "`forbidden` (admins only) or `user_disabled`",
    404: "`not_found` (also another user's resource), `unknown_asset` or `unknown_symbol`",
    409: "`email_taken`, `insufficient_funds`, `price_moved` (the price crossed `max_price` / "
    "`min_price`), `market_inactive`, `cannot_disable_self`, `last_admin` (the last active admin "
    "cannot be disabled) or `conflict` (another rule of the data)",
    413: "`payload_too_large`: the body is above MAX_BODY_BYTES",
    415: "`unsupported_media_type`: the body is not sent with the Content-Type this route reads",
    422: "`invalid_amount`, `too_many_decimals`, `idempotency_key_reused`, `password_too_short`, "
    "`password_too_long`, `email_invalid_characters`, `email_domain_not_ascii`, `exactly_one_quantity`, "
    "`quantity_off_step`, `quantity_out_of_range`, `below_min_notional`, `invalid_price_guard`; "
    "`details` names the field and the limit",
    429: "`rate_limited`: too many attempts from this IP or for this email, or more money "
    "movements than the user's quota (MOVEMENT_RATE_PER_USER); retry after `Retry-After` seconds "
    "(also in `details.retry_after`)",
    503: "`service_unavailable` (PostgreSQL or Redis unreachable) or `price_unavailable` (Binance "
    "not answering and no recent price; for a trade, none younger than TRADE_PRICE_MAX_AGE_MS); "
    "retry after `Retry-After`",
}


def documented(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for a handler's error statuses, all with the ErrorBody shape."""
    return {
        status: ResponseSpec(data_container=ErrorBody, description=ERROR_DESCRIPTIONS[status])
        for status in statuses
    }


def error_response(
    code: str,
    message: str,
    status: int,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorBody]:
    body = ErrorBody(ErrorDetail(code=code, message=message, details=details))
    if status == 401:  # every 401 says how to authenticate (RFC 9110)
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return Response(body, status_code=status, headers=headers)


def from_exchange_error(_: Request, exc: ExchangeError) -> Response[ErrorBody]:
    if isinstance(exc, HTTPError):
        status, headers = exc.status, exc.headers
    else:
        status = http_status(exc.code)
        headers = retry_headers(status, exc.retry_after_seconds)
    return error_response(exc.code, exc.message, status, exc.details, headers)


def from_http_exception(_: Request, exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    code = STATUS_CODES.get(status, "http_error" if status < 500 else "internal_error")
    details: dict[str, Any] | None = None
    message = exc.detail if status < 500 else "internal error"
    if isinstance(exc, ValidationException):
        message, details = _validation_failure(exc)
    # Keep Litestar's headers: a 405 must list the allowed methods in `Allow` (RFC 9110).
    return error_response(code, message, status, details, dict(exc.headers or {}) or None)


# Litestar's message for a missing parameter: "Missing required header parameter
# 'Idempotency-Key' for path /api/v1/...".
_MISSING_PARAMETER = re.compile(r"Missing required (\w+) parameter '([^']{1,100})'")
# msgspec messages that quote the value given: "Invalid enum value 'x'".
_QUOTED_VALUE = re.compile(r"^(Invalid (?:enum )?value) '.*'", re.DOTALL)


def _validation_failure(exc: ValidationException) -> tuple[str, dict[str, Any] | None]:
    """A fixed message and the fields at fault (`key`, `source`, what is wrong), never
    the values sent: Litestar's own message repeats the whole path and query string."""
    missing = _MISSING_PARAMETER.match(exc.detail)
    if missing:
        source, name = missing.groups()
        error = {"message": f"missing required {source} parameter", "key": name, "source": source}
        return f"missing required {source} parameter {name}", {"errors": [error]}
    if not isinstance(exc.extra, list) or not exc.extra:
        return "the request is not valid", None
    errors = []
    for item in exc.extra:
        if not isinstance(item, dict):
            continue
        error = dict(item)
        if isinstance(error.get("message"), str):
            # msgspec names the field ("Expected `str`, got `int` - at `$.email`").
            error["message"] = _QUOTED_VALUE.sub(r"\1", error["message"])
        if error.get("source") == "header" and isinstance(error.get("key"), str):
            error["key"] = error["key"].replace("_", "-").title()  # idempotency_key: Idempotency-Key
        errors.append(error)
    message = "the request is not valid; `details.errors` names each field"
    return message, ({"errors": errors} if errors else None)


def from_postgres_error(_: Request, exc: asyncpg.PostgresError) -> Response[ErrorBody]:
    sqlstate = exc.sqlstate or ""
    if sqlstate in SQLSTATE_CODES:
        code = SQLSTATE_CODES[sqlstate]
        status = http_status(code)
        details = _json_details(exc.detail)
        return error_response(code, exc.message, status, details, retry_headers(status))
    constraint = getattr(exc, "constraint_name", None)
    if sqlstate == "23505" and constraint in UNIQUE_CODES:
        code, message = UNIQUE_CODES[constraint]
        return error_response(code, message, http_status(code))
    if isinstance(exc, UNAVAILABLE_ERRORS) or sqlstate.startswith(UNAVAILABLE_SQLSTATES):
        if sqlstate.startswith("40"):
            log.warning("transaction rolled back by PostgreSQL (SQLSTATE %s); answered 503", sqlstate)
        return unavailable()
    if sqlstate == "23503" and (constraint or "").endswith("user_id_fkey"):
        # A row for a user who no longer exists (deleted by a DBA): their token is
        # refused everywhere once the workers reload (users_deleted), and at once here.
        return error_response("unauthorized", "the access token's user no longer exists", 401)
    if sqlstate.startswith("23"):
        # Any other integrity constraint (class 23): the data's rules refused the request,
        # nothing was written. The constraint's name says which, in the log only.
        log.warning("integrity constraint %s refused a request (SQLSTATE %s)", constraint, sqlstate)
        return error_response("conflict", "the request conflicts with the data's rules", 409)
    if sqlstate.startswith("22"):
        # Data exception: a value the database cannot take (out of range, NUL byte...).
        # Bad input, not a server fault; the value itself is not echoed or logged.
        return error_response("validation_error", "a value in the request is not valid", 400)
    log.error("unexpected database error %s", sqlstate, exc_info=exc)
    return error_response("internal_error", "internal error", 500)


def from_unavailable(_: Request, exc: Exception) -> Response[ErrorBody]:
    log.warning("dependency unavailable: %s", type(exc).__name__)
    return unavailable()


def from_driver_error(request: Request, exc: Exception) -> Response[ErrorBody]:
    if type(exc) in BROKEN_CONNECTION_ERRORS:
        # asyncpg's messages name states and operations, never a query's values.
        log.warning("database connection broken: %s", exc)
        return unavailable()
    return from_unexpected(request, exc)


def from_unexpected(_: Request, exc: Exception) -> Response[ErrorBody]:
    log.error("unhandled error", exc_info=exc)
    return error_response("internal_error", "internal error", 500)


def unavailable() -> Response[ErrorBody]:
    # A movement whose COMMIT happened just before the connection broke is answered this
    # way too: the retry with the same Idempotency-Key replays it, or applies it once.
    return error_response(
        "service_unavailable",
        "a backing service is unavailable; retry shortly (with the same Idempotency-Key)",
        503,
        headers={"Retry-After": "1"},
    )


def _json_details(detail: str | None) -> dict[str, Any] | None:
    if not detail:
        return None
    try:
        value = msgspec.json.decode(detail)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def exception_handlers() -> ExceptionHandlersMap:
    handlers: dict[Any, Any] = {
        ExchangeError: from_exchange_error,
        HTTPException: from_http_exception,
        asyncpg.PostgresError: from_postgres_error,
        **{exc_type: from_driver_error for exc_type in BROKEN_CONNECTION_ERRORS},
        Exception: from_unexpected,
    }
    for exc_type in UNAVAILABLE_ERRORS:
        if not issubclass(exc_type, asyncpg.PostgresError):
            handlers[exc_type] = from_unavailable
    return handlers
