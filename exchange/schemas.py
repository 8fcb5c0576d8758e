"""msgspec Structs for every request and response body: validation, OpenAPI and encoding.

Money is Decimal, sent and received as JSON strings ("100.50"). A JSON number is also
accepted for an amount: msgspec parses it straight into Decimal, never through float.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from exchange.errors import ExchangeError

# Patterns are checked by msgspec (Python's re) and published in the OpenAPI document
# (ECMA-262 regex), so they use only what both read alike: explicit ranges, not `\s`
# (Python's also matches U+0085), and END, not `$` (Python's also matches before a final
# newline, so "a@b.co\n" would pass).
END = r"(?!\n)$"
# No spaces or control characters, C1 included (PostgreSQL text cannot hold NUL).
_EMAIL_PART = r"[^@\x00-\x20\x7f-\x9f]+"
EMAIL_PATTERN = rf"^{_EMAIL_PART}@{_EMAIL_PART}\.{_EMAIL_PART}{END}"
NO_CONTROL_CHARS = rf"^[^\x00-\x1f\x7f]*{END}"
# Ids are PostgreSQL bigint, but a JSON client (JavaScript's Number) reads integers
# exactly only up to 2**53 - 1: ids are refused above that, far beyond any real id.
ID_MAX = 2**53 - 1
CLIENT_ORDER_ID_PATTERN = r"^[A-Za-z0-9._-]{1,36}$"
ASSET_PATTERN = rf"^[A-Za-z0-9]{{2,12}}{END}"
SYMBOL_PATTERN = rf"^[A-Za-z0-9]{{2,20}}{END}"
# Printable ASCII without spaces, as UUIDs and most client-generated keys are.
IDEMPOTENCY_KEY_PATTERN = rf"^[\x21-\x7e]{{1,100}}{END}"
# Amounts are bounded before they reach the database; the asset's own limits
# (scale, max_amount) are checked in SQL.
AMOUNT_MAX_DIGITS = 40
# A decimal number as a string: digits with an optional fraction and exponent. NaN and
# Infinity parse too, and are refused as invalid_amount (422) like any non-positive one.
# The exponent has at most 9 digits: Decimal cannot hold one past ±999999999999999999,
# and any value this allows is then refused or accepted by the amount rules (422).
DECIMAL_PATTERN = r"^[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,9})?|NaN|sNaN|Infinity)$"
_DECIMAL = re.compile(DECIMAL_PATTERN)


class DecimalText(Decimal):
    """An amount in a request: a string matching DECIMAL_PATTERN ("100.50") or a JSON
    number, read exactly (exchange/http/bodies.py). msgspec alone would take " 1_0" or Arabic-Indic digits
    too; this type makes the server accept exactly what the OpenAPI schema says."""

    __slots__ = ()


def decimal_text(value: object) -> DecimalText:
    """msgspec decoding hook for DecimalText; a ValueError becomes a 400 naming the field."""
    try:
        if isinstance(value, str) and _DECIMAL.fullmatch(value):
            return DecimalText(value)
        if isinstance(value, Decimal | int) and not isinstance(value, bool):
            return DecimalText(value)
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond ±999999999999999999
        raise ValueError("the number's exponent is out of range") from None
    raise ValueError('Expected a decimal number as a string, e.g. "100.50"')


TransactionKind = Literal["deposit", "withdrawal", "buy", "sell"]
# GET /transactions?kind= also takes `withdraw`, the word of the route and of the metrics.
TransactionKindFilter = Literal["deposit", "withdrawal", "withdraw", "buy", "sell"]


class RegisterRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=EMAIL_PATTERN)]
    # 8+ characters and at most 72 bytes in UTF-8 (bcrypt's limit): longer is refused
    # with password_too_long rather than silently truncated (security.check_password_rules),
    # so those two are 422s with their own codes; the schema states the character bounds.
    password: Annotated[
        str,
        msgspec.Meta(
            max_length=1024,
            extra_json_schema={
                "description": "8+ characters, at most 72 bytes in UTF-8 (bcrypt's limit).",
                "extra": {"min_length": 8, "max_length": 72},
            },
        ),
    ]


class TokenForm(msgspec.Struct):
    """OAuth2 password flow (RFC 6749 4.3), form-encoded as Swagger's Authorize sends it."""

    username: Annotated[str, msgspec.Meta(max_length=254, pattern=NO_CONTROL_CHARS)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]
    grant_type: Literal["password"] | None = None
    scope: str | None = None
    client_id: str | None = None
    client_secret: str | None = None


class Token(msgspec.Struct):
    access_token: str
    expires_in: int
    token_type: str = "bearer"


class User(msgspec.Struct):
    id: int
    email: str
    role: Literal["user", "admin"]
    disabled: bool
    created_at: datetime


class Wallet(msgspec.Struct, omit_defaults=True):
    """A balance: `balance` is the total, `locked` what resting limit orders reserve,
    `available` what withdrawals and new orders may use (balance - locked). A trade's
    answer gives each wallet's balance only (as the trade left it)."""

    asset: str
    balance: Decimal
    locked: Decimal | None = None
    available: Decimal | None = None


class AmountRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of a deposit or a withdrawal: {"amount": "100.50"}."""

    amount: DecimalText

    def checked_amount(self) -> Decimal:
        return checked_decimal(self.amount, "amount")


class OrderRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A market order (`type` "market", the default): exactly one of `quantity` (base)
    and `quote_quantity` (quote, as Binance's quoteOrderQty), and optionally a price
    guard: `max_price` for a buy, `min_price` for a sell (409 price_moved if the price
    has crossed it). A limit order (`type` "limit"): `quantity`, `price`, optionally
    `time_in_force` (GTC by default, IOC or FOK) and `client_order_id`."""

    symbol: Annotated[str, msgspec.Meta(pattern=SYMBOL_PATTERN, examples=["BTCUSDT"])]
    side: Literal["buy", "sell"]
    type: Literal["market", "limit"] = "market"
    price: Annotated[
        DecimalText | None,
        msgspec.Meta(description="Limit only: the limit price, on the market's tick.", examples=["60000.00"]),
    ] = None
    time_in_force: Annotated[
        Literal["GTC", "IOC", "FOK"] | None,
        msgspec.Meta(description="Limit only: GTC (rests until filled or cancelled; the default), IOC, FOK."),
    ] = None
    client_order_id: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=CLIENT_ORDER_ID_PATTERN,
                description="Limit only: your own id, unique among your orders.",
            ),
        ]
        | None
    ) = None
    quantity: Annotated[
        DecimalText | None,
        msgspec.Meta(description="Base quantity, a multiple of the market's step.", examples=["0.01"]),
    ] = None
    quote_quantity: Annotated[
        DecimalText | None,
        msgspec.Meta(
            description="Instead of quantity: trade the most steps whose notional is at most this.",
            examples=["100"],
        ),
    ] = None
    max_price: Annotated[
        DecimalText | None, msgspec.Meta(description="Buy only: refuse (409 price_moved) above this price.")
    ] = None
    min_price: Annotated[
        DecimalText | None, msgspec.Meta(description="Sell only: refuse (409 price_moved) below this price.")
    ] = None

    def price_guard(self) -> Decimal | None:
        """max_price of a buy or min_price of a sell; the other one is refused."""
        given, other = ("max_price", "min_price") if self.side == "buy" else ("min_price", "max_price")
        if getattr(self, other) is not None:
            message = f"a {self.side} takes {given}, not {other}"
            raise ExchangeError("invalid_price_guard", message, {"field": other})
        guard = getattr(self, given)
        return None if guard is None else checked_decimal(guard, given)

    def limit_fields(self) -> tuple[Decimal, Decimal]:
        """(price, quantity) of a limit order; a market order's fields are refused."""
        for field in ("quote_quantity", "max_price", "min_price"):
            if getattr(self, field) is not None:
                message = f"a limit order takes no {field}"
                raise ExchangeError("field_not_for_order_type", message, {"field": field})
        for field in ("price", "quantity"):
            if getattr(self, field) is None:
                message = f"a limit order needs {field}"
                raise ExchangeError("field_not_for_order_type", message, {"field": field})
        return checked_decimal(self.price, "price"), checked_decimal(self.quantity, "quantity")  # type: ignore[arg-type]

    def refuse_limit_fields(self) -> None:
        """A market order takes none of a limit order's fields."""
        for field in ("price", "time_in_force", "client_order_id"):
            if getattr(self, field) is not None:
                message = f'{field} is for limit orders (type "limit")'
                raise ExchangeError("field_not_for_order_type", message, {"field": field})

    def checked_quantities(self) -> tuple[Decimal | None, Decimal | None]:
        """(quantity, quote_quantity), each sane if given; SQL checks the market's rules.
        Exactly one must be given, and that is said first, as SQL's order_quantity does."""
        if (self.quantity is None) == (self.quote_quantity is None):
            raise ExchangeError(
                "exactly_one_quantity",
                "give exactly one of quantity and quote_quantity",
                {"fields": ["quantity", "quote_quantity"]},
            )
        return (
            None if self.quantity is None else checked_decimal(self.quantity, "quantity"),
            None if self.quote_quantity is None else checked_decimal(self.quote_quantity, "quote_quantity"),
        )


def checked_decimal(value: Decimal, field: str) -> Decimal:
    """The value if it is a finite, positive, sane number; else invalid_amount (422)."""
    digits, exponent = len(value.as_tuple().digits), value.as_tuple().exponent
    if (
        not value.is_finite()
        or value <= 0
        or digits > AMOUNT_MAX_DIGITS
        or not -AMOUNT_MAX_DIGITS <= exponent <= AMOUNT_MAX_DIGITS
    ):
        raise ExchangeError(
            "invalid_amount",
            f'{field} must be a positive decimal number, e.g. "100.50"',
            {"field": field},
        )
    return Decimal(value)


class Transaction(msgspec.Struct, omit_defaults=True):
    """One money movement. Trade fields are present only on buys and sells."""

    id: int
    kind: TransactionKind
    asset: str
    amount: Decimal
    balance_after: Decimal
    created_at: datetime
    symbol: str | None = None
    quote_asset: str | None = None
    price: Decimal | None = None
    quote_qty: Decimal | None = None
    fee: Decimal | None = None
    fee_asset: str | None = None
    price_at: datetime | None = None
    # The quote wallet's balance right after a trade (balance_after is the base's).
    quote_balance_after: Decimal | None = None


class OrderResult(msgspec.Struct, omit_defaults=True):
    """A market order: its trade and the two wallets' balances right after it. A limit
    order: the order (its `transaction_id` is its fill when it filled at once) and the
    market's two wallets with their locked and available amounts."""

    wallets: list[Wallet]
    trade: Transaction | None = None
    order: Order | None = None


class HouseBalance(msgspec.Struct):
    """A house account: `external` (deposits in, withdrawals out), `market` (the other
    side of every trade) or `fees`; its balance is the sum of its entries."""

    asset: str
    kind: Literal["external", "market", "fees"]
    balance: Decimal


class Order(msgspec.Struct):
    """A limit order (sql/functions/orders.sql, order_answer). Fills are whole:
    executed_qty is 0 or quantity. locked_amount of locked_asset is what it reserves
    while NEW; transaction_id is its fill, once FILLED."""

    id: int
    symbol: str
    side: Literal["buy", "sell"]
    type: Literal["market", "limit"]
    time_in_force: Literal["GTC", "IOC", "FOK"]
    price: Decimal | None
    quantity: Decimal
    executed_qty: Decimal
    cumulative_quote_qty: Decimal
    status: Literal["NEW", "FILLED", "CANCELED", "EXPIRED", "REJECTED"]
    locked_asset: str
    locked_amount: Decimal
    client_order_id: str | None
    created_at: datetime
    updated_at: datetime
    transaction_id: int | None


class OrderPage(msgspec.Struct):
    orders: list[Order]
    # Pass as ?before= to get the next (older) page; null on the last page.
    next_before: int | None


class TransactionPage(msgspec.Struct):
    transactions: list[Transaction]
    # Pass as ?before= to get the next (older) page; null on the last page.
    next_before: int | None


class UserPage(msgspec.Struct):
    users: list[User]
    # Pass as ?before= to get the next (older) page; null on the last page.
    next_before: int | None


class Me(msgspec.Struct):
    user: User
    wallets: list[Wallet]
    recent_transactions: list[Transaction]


class Violation(msgspec.Struct):
    invariant: str
    subject: str
    amount: Decimal | None


class AuditReport(msgspec.Struct):
    ok: bool
    violations: list[Violation]


class Price(msgspec.Struct):
    """A market's price as Binance last gave it, when we fetched it and how old it is."""

    symbol: str
    price: Decimal
    fetched_at: datetime
    age_ms: int
    # Older than PRICE_CACHE_TTL_MS: Binance is not answering and this is the last price
    # it gave (served up to PRICE_STALE_MAX_MS, then 503 price_unavailable).
    stale: bool


class PriceMessage(Price, tag="price", tag_field="type"):
    """A WebSocket push: {"type": "price", "symbol": ..., "price": ..., ...}."""


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(msgspec.Struct):
    """The body of every error response (documented in the OpenAPI schema)."""

    error: ErrorDetail


class StreamError(msgspec.Struct, tag="error", tag_field="type"):
    """Sent before the server closes a WebSocket: {"type": "error", "error": {...}}."""

    error: ErrorDetail


class StoredEmail(NamedTuple):
    """A user's email as stored, for exchange check-emails (exchange/auth/emails.py)."""

    id: int
    email: str


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: Literal["ready", "unavailable"]
    postgres: str
    redis: str
