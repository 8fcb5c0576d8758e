"""A local stand-in for the parts of Binance's spot REST API this project uses.

This machine, CI and offline demos cannot reach Binance, so tests, `exchange serve
--fake-binance` and `exchange bench` talk to this instead, over real HTTP with the same
httpx client as production. It answers with Binance's own shapes:

    GET /api/v3/ping                        {}
    GET /api/v3/time                        {"serverTime": 1700000000000}
    GET /api/v3/ticker/price                all symbols, ?symbol=BTCUSDT or ?symbols=["A","B"]
    GET /api/v3/exchangeInfo                symbols with PRICE_FILTER, LOT_SIZE and NOTIONAL

errors as {"code": -1121, "msg": "Invalid symbol."} with HTTP 400, and the used-weight
headers (`X-MBX-USED-WEIGHT`, `X-MBX-USED-WEIGHT-1M`).

Prices follow a seeded random walk around realistic levels that moves one step per
ticker request: the same seed and the same requests give the same prices.

Control endpoints (not Binance's; for fault tests and demos), served only when the
stand-in is made with control=True (`exchange fake-binance`, the tests): unauthenticated,
they let anyone who reaches the port set prices, so the stand-in `exchange serve
--fake-binance` starts inside the server has none:

    GET    /_fake/stats     {"requests": n, "by_path": {...}, "step": n, "faults": {...}}
    POST   /_fake/faults    {"mode": "error"|"rate_limit"|"ban"|"slow"|"malformed",
                             "delay_ms": 0, "count": null}   count: how many requests
                             to affect (null: until cleared)
    DELETE /_fake/faults    answer normally again
    POST   /_fake/prices    {"prices": {"BTCUSDT": "50000.00"}, "frozen": true}
                             set prices; frozen stops (false restarts) the walk
    POST   /_fake/reset     clear faults and counters
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections import Counter, deque
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromQuery, JSONBody

from exchange.ops.sockets import listening_socket

# symbol: (base, quote, starting price, tick size, lot step, min qty, max qty, min notional)
# Steps and notional follow Binance's exchangeInfo; ETHBTC is one the exchange does not list.
MARKETS: dict[str, tuple[str, str, str, str, str, str, str, str]] = {
    "BTCUSDT": ("BTC", "USDT", "97000.00", "0.01", "0.00001", "0.00001", "9000", "5"),
    "ETHUSDT": ("ETH", "USDT", "3400.00", "0.01", "0.0001", "0.0001", "9000", "5"),
    "SOLUSDT": ("SOL", "USDT", "180.00", "0.01", "0.001", "0.001", "90000", "5"),
    "BNBUSDT": ("BNB", "USDT", "650.00", "0.01", "0.001", "0.001", "90000", "5"),
    "ETHBTC": ("ETH", "BTC", "0.03505", "0.00001", "0.0001", "0.0001", "100000", "0.0001"),
}

# Per-step volatility of the log price and pull back towards the starting level, so
# long runs stay realistic instead of drifting to zero or to the moon.
STEP_VOLATILITY = 0.0004
MEAN_REVERSION = 0.01
# Request weights, as Binance counts them (6000 per minute per IP).
WEIGHT_LIMIT_1M = 6000
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9\-_.]{1,20}$")

FaultMode = Literal["none", "error", "rate_limit", "ban", "slow", "malformed"]


class BinanceError(Exception):
    """Answered as Binance does: {"code": -1121, "msg": "..."} with an HTTP status."""

    def __init__(self, code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or {}


class Faults(msgspec.Struct, forbid_unknown_fields=True):
    mode: FaultMode = "none"
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 0
    # How many upstream requests the fault applies to; None until cleared.
    count: Annotated[int, msgspec.Meta(ge=1)] | None = None


class PricesUpdate(msgspec.Struct, forbid_unknown_fields=True):
    prices: dict[str, Decimal] = {}
    frozen: bool | None = None


class Stats(msgspec.Struct):
    requests: int
    by_path: dict[str, int]
    step: int
    frozen: bool
    faults: Faults


class RandomWalk:
    """One price per symbol, moved together one step at a time by a seeded generator."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - repeatable prices, not secrets
        # The walk runs on log prices in float; prices leave it as Decimal, on the tick.
        self._anchor = {symbol: math.log(float(spec[2])) for symbol, spec in MARKETS.items()}  # float-ok
        self._log_price = dict(self._anchor)
        self._tick = {symbol: Decimal(spec[3]) for symbol, spec in MARKETS.items()}
        self.prices = {symbol: Decimal(spec[2]) for symbol, spec in MARKETS.items()}
        self.step_count = 0
        self.frozen = False

    def step(self) -> None:
        if self.frozen:
            return
        self.step_count += 1
        for symbol in MARKETS:
            x = self._log_price[symbol]
            x += MEAN_REVERSION * (self._anchor[symbol] - x) + self._rng.gauss(0, STEP_VOLATILITY)
            self._log_price[symbol] = x
            tick = self._tick[symbol]
            self.prices[symbol] = max(tick, Decimal(repr(math.exp(x))).quantize(tick))

    def set_price(self, symbol: str, price: Decimal) -> None:
        self.prices[symbol] = price
        self._log_price[symbol] = math.log(float(price))  # float-ok


class FakeBinance:
    """The stand-in's state: the walk, the faults to inject and the request counters."""

    def __init__(self, seed: int) -> None:
        self.walk = RandomWalk(seed)
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        self._weights: deque[tuple[float, int]] = deque()

    def count(self, path: str, weight: int) -> int:
        """Count a request; return the weight used in the last minute."""
        self.requests[path] += 1
        now = time.monotonic()
        self._weights.append((now, weight))
        while self._weights and self._weights[0][0] < now - 60:
            self._weights.popleft()
        return sum(w for _, w in self._weights)

    def take_fault(self) -> Faults | None:
        faults = self.faults
        if faults.mode == "none":
            return None
        if faults.count is not None:
            left = faults.count - 1
            self.faults = Faults() if left == 0 else msgspec.structs.replace(faults, count=left)
        return faults

    def stats(self) -> Stats:
        return Stats(
            requests=sum(self.requests.values()),
            by_path=dict(self.requests),
            step=self.walk.step_count,
            frozen=self.walk.frozen,
            faults=self.faults,
        )


def _price_text(price: Decimal) -> str:
    return f"{price:.8f}"  # Binance always sends 8 decimals: "97000.12000000"


def _requested_symbols(symbol: str | None, symbols: str | None) -> list[str]:
    """Binance's ?symbol= / ?symbols=["A","B"] rules, with its error codes."""
    if symbol is not None and symbols is not None:
        raise BinanceError(-1128, "Combination of optional parameters invalid.")
    if symbol is not None:
        if not SYMBOL_PATTERN.match(symbol):
            raise BinanceError(
                -1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'."
            )
        names = [symbol]
    elif symbols is not None:
        try:
            names = msgspec.json.decode(symbols, type=list[str])
        except msgspec.DecodeError:
            raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'.") from None
        if not names or not all(SYMBOL_PATTERN.match(name) for name in names):
            raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'.")
    else:
        return list(MARKETS)
    if any(name not in MARKETS for name in names):
        raise BinanceError(-1121, "Invalid symbol.")
    return list(dict.fromkeys(names))


async def _upstream(request: Request[Any, Any, State], weight: int) -> dict[str, str]:
    """Count the request, apply any injected fault, return Binance's weight headers."""
    fake: FakeBinance = request.app.state.fake
    used = fake.count(request.url.path, weight)
    headers = {"X-MBX-USED-WEIGHT": str(used), "X-MBX-USED-WEIGHT-1M": str(used)}
    faults = fake.take_fault()
    if faults is None:
        return headers
    if faults.delay_ms:
        await asyncio.sleep(faults.delay_ms / 1000)
    if faults.mode == "error":
        raise BinanceError(-1000, "An unknown error occurred while processing the request.", 500, headers)
    if faults.mode == "rate_limit":
        raise BinanceError(
            -1003,
            f"Too much request weight used; current limit is {WEIGHT_LIMIT_1M} request weight per "
            "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
            429,
            {**headers, "Retry-After": "1"},
        )
    if faults.mode == "ban":
        until = int(time.time() * 1000) + 2000
        raise BinanceError(
            -1003,
            f"Way too much request weight used; IP banned until {until}.",
            418,
            {**headers, "Retry-After": "2"},
        )
    if faults.mode == "malformed":
        raise _Malformed(headers)
    return headers  # "slow": the delay was the fault


class _Malformed(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


@get("/api/v3/ping")
async def ping(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    return Response({}, headers=await _upstream(request, 1))


@get("/api/v3/time")
async def server_time(request: Request[Any, Any, State]) -> Response[dict[str, int]]:
    return Response({"serverTime": int(time.time() * 1000)}, headers=await _upstream(request, 1))


@get("/api/v3/ticker/price")
async def ticker_price(
    request: Request[Any, Any, State],
    symbol: FromQuery[str | None] = None,
    symbols: FromQuery[str | None] = None,
) -> Response[Any]:
    headers = await _upstream(request, 2 if symbol is not None else 4)
    names = _requested_symbols(symbol, symbols)
    walk = request.app.state.fake.walk
    walk.step()
    quotes = [{"symbol": name, "price": _price_text(walk.prices[name])} for name in names]
    return Response(quotes[0] if symbol is not None else quotes, headers=headers)


@get("/api/v3/exchangeInfo")
async def exchange_info(
    request: Request[Any, Any, State],
    symbol: FromQuery[str | None] = None,
    symbols: FromQuery[str | None] = None,
) -> Response[dict[str, Any]]:
    headers = await _upstream(request, 20)
    names = _requested_symbols(symbol, symbols)
    body = {
        "timezone": "UTC",
        "serverTime": int(time.time() * 1000),
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": WEIGHT_LIMIT_1M,
            }
        ],
        "exchangeFilters": [],
        "symbols": [_symbol_info(name) for name in names],
    }
    return Response(body, headers=headers)


def _symbol_info(symbol: str) -> dict[str, Any]:
    base, quote, _, tick, step, min_qty, max_qty, min_notional = MARKETS[symbol]
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "MARKET"],
        "quoteOrderQtyMarketAllowed": True,
        "isSpotTradingAllowed": True,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": _price_text(Decimal(tick)),
                "maxPrice": "1000000.00000000",
                "tickSize": _price_text(Decimal(tick)),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": _price_text(Decimal(min_qty)),
                "maxQty": _price_text(Decimal(max_qty)),
                "stepSize": _price_text(Decimal(step)),
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": _price_text(Decimal(min_notional)),
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
    }


@get("/_fake/stats", sync_to_thread=False)
def stats(state: State) -> Stats:
    return state.fake.stats()


@post("/_fake/faults", status_code=200, sync_to_thread=False)
def set_faults(state: State, data: JSONBody[Faults]) -> Stats:
    state.fake.faults = data
    return state.fake.stats()


@delete("/_fake/faults", status_code=200, sync_to_thread=False)
def clear_faults(state: State) -> Stats:
    state.fake.faults = Faults()
    return state.fake.stats()


@post("/_fake/prices", status_code=200, sync_to_thread=False)
def set_prices(state: State, data: JSONBody[PricesUpdate]) -> Stats:
    walk: RandomWalk = state.fake.walk
    unknown = sorted(set(data.prices) - set(MARKETS))
    if unknown or any(not price.is_finite() or price <= 0 for price in data.prices.values()):
        raise HTTPException(status_code=400, detail=f"unknown symbols or bad prices: {unknown}")
    for symbol, price in data.prices.items():
        walk.set_price(symbol, price)
    if data.frozen is not None:
        walk.frozen = data.frozen
    return state.fake.stats()


@post("/_fake/reset", status_code=200, sync_to_thread=False)
def reset(state: State) -> Stats:
    state.fake.faults = Faults()
    state.fake.requests.clear()
    return state.fake.stats()


def _binance_error(_: Request[Any, Any, Any], exc: BinanceError) -> Response[dict[str, Any]]:
    return Response({"code": exc.code, "msg": exc.msg}, status_code=exc.status, headers=exc.headers)


def _malformed(_: Request[Any, Any, Any], exc: _Malformed) -> Response[bytes]:
    # A truncated body, as a proxy cutting the connection short would leave it.
    return Response(b'{"symbol":"BTCUSDT","price":"970', media_type="application/json", headers=exc.headers)


def _validation_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    return Response({"code": -1102, "msg": str(exc.detail)}, status_code=exc.status_code)


def create_fake_binance(seed: int = 1, *, control: bool) -> Litestar:
    """The stand-in as an ASGI app; each app has its own walk, faults and counters.
    control=True adds the /_fake/ endpoints (tests and demos only)."""
    controls = (stats, set_faults, clear_faults, set_prices, reset) if control else ()
    return Litestar(
        route_handlers=[*(ping, server_time, ticker_price, exchange_info), *controls],
        state=State({"fake": FakeBinance(seed)}),
        exception_handlers={
            BinanceError: _binance_error,
            _Malformed: _malformed,
            HTTPException: _validation_error,
        },
        openapi_config=None,
        logging_config=None,  # the process's logging is configured once, by its command
        debug=False,
    )


def serve_in_thread(seed: int = 1, host: str = "127.0.0.1", port: int = 0) -> str:
    """Serve the stand-in from a daemon thread with its own event loop; return its URL.

    `exchange serve --fake-binance` uses this so the whole product runs offline in one
    command: the API workers reach it over HTTP like the real Binance. Without control
    endpoints: no local process can set the prices it trades at.
    """
    import threading

    import uvicorn

    # uvicorn's loggers are shared by the process: keep the stand-in's access lines out,
    # and its start and stop lines, which would read as the API server's (warnings stay).
    # The filters ask the thread itself: records carry no thread name (logs.py).
    def not_the_stand_in(record: logging.LogRecord) -> bool:
        return threading.current_thread().name != "fake-binance" or record.levelno >= logging.WARNING

    logging.getLogger("uvicorn.access").addFilter(not_the_stand_in)
    logging.getLogger("uvicorn.error").addFilter(not_the_stand_in)
    sock = listening_socket(host, port)
    # log_config and log_level None: uvicorn leaves the process's logging as it is (its
    # own dictConfig would close the server's log handler, and later lines, such as the
    # one giving this stand-in's URL, would never be written).
    app = create_fake_binance(seed, control=False)
    config = uvicorn.Config(app, log_config=None, log_level=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="fake-binance", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Binance stand-in did not start")
        time.sleep(0.01)
    bound_host, bound_port = sock.getsockname()[:2]
    return f"http://{bound_host}:{bound_port}"
