"""What the benchmark's simulated users do, and the balances their answers imply.

Each operation builds one request and, from a 2xx answer, applies its effect to the
user's expected balances; at the end the benchmark compares those with the server's.

Scenarios (each connection cycles through its list, starting at its own offset):
- deposit:  deposits of 1 USDT
- withdraw: withdrawals of 1 USDT
- trade:    market buys and sells of 0.0001 BTC, alternately
- read:     GET /wallets and GET /transactions?limit=20, alternately
- mixed:    a trading front end's blend, per 20 requests: 5 wallet reads, 3 history
            pages, 4 deposits, 2 withdrawals, 3 buys, 3 sells
            (40% reads, 30% trades, 30% deposits and withdrawals)
- hot:      deposits, every request on one user (the row-lock-bound rate)

Every connection has its own users, so only `hot` waits on row locks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import count

import msgspec

API = "/api/v1"
QUOTE, BASE, SYMBOL = "USDT", "BTC", "BTCUSDT"
MOVE_AMOUNT = Decimal("1.00")
TRADE_QUANTITY = Decimal("0.0001")
# What each user starts with: enough for the longest run of withdrawals and buys.
FUNDING = {QUOTE: Decimal("1000000.00"), BASE: Decimal("100.00000000")}


@dataclass
class User:
    email: str
    password: str
    token: str = ""
    auth: str = ""
    expected: dict[str, Decimal] = field(default_factory=lambda: {QUOTE: Decimal(0), BASE: Decimal(0)})
    # A request got no answer: its effect is unknown, so this user's balances are not compared.
    uncertain: bool = False
    id: int = 0  # known only to the ceiling's bare deposits


class TradeAnswer(msgspec.Struct):
    kind: str
    asset: str
    amount: Decimal
    quote_asset: str
    quote_qty: Decimal
    fee: Decimal
    fee_asset: str


class OrderAnswer(msgspec.Struct):
    trade: TradeAnswer


class ErrorBody(msgspec.Struct):
    code: str


class ErrorAnswer(msgspec.Struct):
    error: ErrorBody


_decode_order = msgspec.json.Decoder(OrderAnswer).decode
_decode_error = msgspec.json.Decoder(ErrorAnswer).decode
_keys = count()


def error_code(status: int, body: bytes) -> str:
    try:
        return _decode_error(body).error.code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return f"http_{status}"


@dataclass(frozen=True)
class Operation:
    name: str
    request: Callable[[User, str, str], bytes]  # (user, host, run id) -> request bytes
    apply: Callable[[User, bytes], None] | None = None  # a 2xx answer's effect


def _post(path: str, body: bytes, user: User, host: str, key: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {user.auth}\r\n"
        f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _get(path: str, user: User, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {user.auth}\r\n\r\n".encode()


def _movement(name: str, sign: int) -> Operation:
    body = msgspec.json.encode({"amount": str(MOVE_AMOUNT)})
    path = f"{API}/wallets/{QUOTE}/{name}"

    def request(user: User, host: str, run: str) -> bytes:
        return _post(path, body, user, host, f"{run}-{next(_keys)}")

    def apply(user: User, _: bytes) -> None:
        user.expected[QUOTE] += sign * MOVE_AMOUNT

    return Operation(name, request, apply)


def _order(side: str) -> Operation:
    body = msgspec.json.encode({"symbol": SYMBOL, "side": side, "quantity": str(TRADE_QUANTITY)})

    def request(user: User, host: str, run: str) -> bytes:
        return _post(f"{API}/orders", body, user, host, f"{run}-{next(_keys)}")

    return Operation(side, request, apply_trade)


def apply_trade(user: User, body: bytes) -> None:
    """A fill's effect: the fee is taken from the asset received."""
    trade = _decode_order(body).trade
    base, quote = trade.asset, trade.quote_asset
    if trade.kind == "buy":
        user.expected[base] += trade.amount
        user.expected[quote] -= trade.quote_qty
    else:
        user.expected[base] -= trade.amount
        user.expected[quote] += trade.quote_qty
    user.expected[trade.fee_asset] -= trade.fee


def _read(name: str, path: str) -> Operation:
    return Operation(name, lambda user, host, _: _get(path, user, host))


DEPOSIT = _movement("deposit", +1)
WITHDRAW = _movement("withdraw", -1)
BUY, SELL = _order("buy"), _order("sell")
WALLETS = _read("wallets", f"{API}/wallets")
HISTORY = _read("history", f"{API}/transactions?limit=20")

# The mixed blend, spread so that no connection sends the same kind twice in a row.
# fmt: off
MIXED = [
    WALLETS, DEPOSIT, BUY, HISTORY, SELL, WALLETS, DEPOSIT, WITHDRAW, BUY, WALLETS,
    HISTORY, SELL, DEPOSIT, WALLETS, BUY, WITHDRAW, HISTORY, SELL, DEPOSIT, WALLETS,
]
# fmt: on

SCENARIOS: dict[str, list[Operation]] = {
    "deposit": [DEPOSIT],
    "withdraw": [WITHDRAW],
    "trade": [BUY, SELL],
    "read": [WALLETS, HISTORY],
    "mixed": MIXED,
    "hot": [DEPOSIT],
}
ALL = ["deposit", "withdraw", "trade", "read", "mixed", "hot"]
