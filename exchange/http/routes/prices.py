"""Prices for anyone: GET /prices, GET /prices/{symbol} and WS /ws/prices?symbols=..."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Annotated, Any

import msgspec
from litestar import WebSocket, get, websocket
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromQuery, PathParameter, QueryParameter

from exchange.config import Settings
from exchange.http.errors import ErrorDetail, HTTPError, documented
from exchange.http.services import Services, services_of
from exchange.ops.wire import wire_of
from exchange.prices.cache import PriceCache
from exchange.prices.slots import AddressFull, ServerFull, Slots
from exchange.prices.stream import PriceStream, Subscriber
from exchange.schemas import SYMBOL_PATTERN, Price, StreamError

_SYMBOL = re.compile(SYMBOL_PATTERN)
# RFC 6455 close codes: 1008 policy violation (bad request, too slow), 1013 try again later.
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
CLOSE_WAIT_SECONDS = 1.0
# A dropped client has this long to take its last messages and the close; then the
# connection is cut, whatever it still holds.
CLOSE_GRACE_SECONDS = 10.0


def unknown_symbol(symbols: list[str]) -> HTTPError:
    names = ", ".join(symbols)
    return HTTPError("unknown_symbol", f"unknown symbol {names}", 404, {"symbols": symbols})


def market_symbol(symbol: str, cache: PriceCache) -> str:
    """Symbols are upper case (`btcusdt` means BTCUSDT); anything not listed is unknown."""
    name = symbol.upper()
    if not _SYMBOL.match(symbol) or name not in cache.symbols:
        raise unknown_symbol([symbol[:20]])
    return name


SYMBOLS_MAX_CHARS = 1_000
SymbolsQuery = Annotated[
    str | None,
    QueryParameter(
        description="Comma-separated symbols, e.g. `BTCUSDT,ETHUSDT` (default: every market); "
        "at most WS_MAX_SYMBOLS of them.",
        max_length=SYMBOLS_MAX_CHARS,
    ),
]


@get(
    "/prices",
    tags=["prices"],
    summary="Every market's price, or those of `symbols`, with their age",
    responses=documented(400, 404, 503),
)
async def list_prices(services: NamedDependency[Services], symbols: SymbolsQuery = None) -> list[Price]:
    cache: PriceCache = services.prices
    if symbols is None:
        return await cache.prices()
    return await cache.prices(_followed_symbols(symbols, cache, services.settings.ws_max_symbols))


@get(
    "/prices/{symbol:str}",
    tags=["prices"],
    summary="One market's price, with its age",
    responses=documented(400, 404, 503),
)
async def get_price(
    services: NamedDependency[Services], symbol: Annotated[str, PathParameter(description="e.g. BTCUSDT")]
) -> Price:
    cache: PriceCache = services.prices
    return await cache.price(market_symbol(symbol, cache))


@websocket("/ws/prices", name="price_stream")
async def price_stream(socket: WebSocket[Any, Any, State], symbols: FromQuery[str | None] = None) -> None:
    """Live prices. After the current price of each symbol, every change is pushed as
    {"type": "price", ...}. A refused or dropped connection first gets
    {"type": "error", "error": {"code": ...}} and is then closed (see the README)."""
    services = services_of(socket.app.state)
    cache: PriceCache = services.prices
    stream: PriceStream = services.price_stream
    slots: Slots = services.ws_slots
    settings: Settings = services.settings
    await socket.accept()
    try:
        names = _followed_symbols(symbols, cache, settings.ws_max_symbols)
        slot = await slots.take(socket.client.host if socket.client else None)
    except HTTPError as exc:
        await _refuse(socket, exc.code, exc.message, CLOSE_POLICY, exc.details)
        return
    except AddressFull:
        limit = settings.ws_max_connections_per_address
        message = "too many WebSocket connections from this address"
        await _refuse(socket, "too_many_connections_from_address", message, CLOSE_POLICY, {"max": limit})
        return
    except ServerFull:
        await _refuse(
            socket, "too_many_connections", "this server is at its WebSocket limit", CLOSE_TRY_LATER
        )
        return
    try:
        wire = wire_of(socket.scope)
        if wire is not None:
            wire.limit_send_buffer()
        client = stream.subscribe(names, wire)
        try:
            stream.offer(client, (await cache.read(names)).values())
            await _pump(socket, client, settings.ws_send_timeout_ms)
        finally:
            stream.unsubscribe(client)
    finally:
        await slots.release(slot)


def _followed_symbols(raw: str | None, cache: PriceCache, max_symbols: int) -> list[str]:
    # Checked here, not by the query parameter, so that a WebSocket gets the documented
    # error message and close (a failed parameter refuses the handshake with a bare 403).
    if raw is not None and len(raw) > SYMBOLS_MAX_CHARS:
        message = f"symbols is longer than {SYMBOLS_MAX_CHARS} characters"
        raise HTTPError(
            "validation_error", message, 400, {"field": "symbols", "max_length": SYMBOLS_MAX_CHARS}
        )
    if raw is None or not raw.strip():
        names = list(cache.symbols)
    else:
        names = list(dict.fromkeys(part.strip().upper() for part in raw.split(",")))
    if len(names) > max_symbols:
        raise HTTPError(
            "too_many_symbols", f"at most {max_symbols} symbols per connection", 400, {"max": max_symbols}
        )
    unknown = [name[:20] for name in names if not _SYMBOL.match(name) or name not in cache.symbols]
    if unknown:
        raise unknown_symbol(unknown)
    return names


async def _pump(socket: WebSocket[Any, Any, State], client: Subscriber, send_timeout_ms: int) -> None:
    """Wait until the client leaves or is dropped; without a wire, send its queue."""
    tasks = [asyncio.create_task(_discard_incoming(socket)), asyncio.create_task(client.dropped.wait())]
    if client.wire is None:
        tasks.append(asyncio.create_task(_send_queued(socket, client, send_timeout_ms)))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[0] in done:  # the client left
        return
    # It is too slow (or we are stopping).
    await _refuse(socket, "too_slow", "the connection fell too far behind and was dropped", CLOSE_POLICY)
    if client.wire is not None:
        client.wire.abort_later(CLOSE_GRACE_SECONDS)


async def _send_queued(socket: WebSocket[Any, Any, State], client: Subscriber, send_timeout_ms: int) -> None:
    while True:
        text = await client.queue.get()
        try:
            await asyncio.wait_for(socket.send_text(text), send_timeout_ms / 1000)
        except TimeoutError:
            return
        client.taken(text)


async def _discard_incoming(socket: WebSocket[Any, Any, State]) -> None:
    """Nothing is expected from the client; reading notices when it leaves."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await socket.receive_data("text")


async def _refuse(
    socket: WebSocket[Any, Any, State], code: str, message: str, close_code: int, details: Any = None
) -> None:
    body = StreamError(ErrorDetail(code=code, message=message, details=details))
    # The client may already be gone or stuck; closing is best effort and bounded.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(socket.send_text(msgspec.json.encode(body).decode()), CLOSE_WAIT_SECONDS)
        await asyncio.wait_for(socket.close(code=close_code, reason=code), CLOSE_WAIT_SECONDS)
