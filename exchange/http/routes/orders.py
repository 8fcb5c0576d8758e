"""Orders: POST /api/v1/orders places a market order (buys or sells at the live price) or
a limit order (sql/functions/orders.sql: fills at once if marketable, else rests with its
funds locked, GTC, or expires, IOC/FOK); DELETE cancels a resting order; GET reads them.
One PL/pgSQL call per order.

The price is read before the call (this worker's copy of the latest published quote,
else the price cache), so no network call happens while the database holds the user's
wallets locked; the function stores the price it was given on the transaction, and
refuses it if waiting for the locks made it older than TRADE_PRICE_MAX_AGE_MS. Market
rules (step, minimum notional, active) and the price guard are checked in SQL
(sql/functions/trades.sql). Which price a trade uses is exchange/prices/trade_price.py's rule.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from exchange.auth.security import AuthUser
from exchange.http.errors import HTTPError, documented
from exchange.http.responses import ExchangeResponse
from exchange.http.routes.wallets import IdempotencyKey
from exchange.http.services import Services
from exchange.ledger.batches import Movement
from exchange.ops.metrics import note_movement
from exchange.prices.trade_price import newer_published_price, trade_price
from exchange.schemas import (
    CLIENT_ORDER_ID_PATTERN,
    ID_MAX,
    SYMBOL_PATTERN,
    Order,
    OrderPage,
    OrderRequest,
    OrderResult,
    Wallet,
)
from exchange.store import repository as repo

PAGE_SIZE_MAX = 200


@post(
    "/orders",
    tags=["orders"],
    summary="Buy or sell at the market price, or place a limit order",
    description="A market order (the default) fills at once at the cached live price (at most "
    "`TRADE_PRICE_MAX_AGE_MS` old). The fee is taken from the asset received. Answers the "
    "trade and the balances of both wallets right after it.\n\n"
    'A limit order (`type` "limit") that is marketable (a buy at or above the live price, a '
    "sell at or below) fills at once at the live price as taker. Otherwise a GTC order rests "
    "with its funds locked (a buy: quantity x price of the quote, rounded up; a sell: the "
    "quantity of the base) and fills whole at its own price, as maker, when a published "
    "price crosses it; an IOC or FOK order ends EXPIRED with nothing locked. Answers the "
    "order and the market's two wallets. Only `available` funds (balance - locked) can be "
    "used: 409 insufficient_funds, with `available` in details.",
    responses=documented(400, 401, 404, 409, 413, 415, 422, 429, 503),
)
async def place_order(
    data: JSONBody[OrderRequest],
    idempotency_key: IdempotencyKey,
    request: Request[AuthUser, str, State],
    services: NamedDependency[Services],
) -> ExchangeResponse[OrderResult]:
    note_movement(request, data.side)
    if data.type == "limit":
        return await _place_limit_order(data, idempotency_key, request, services)
    data.refuse_limit_fields()
    guard = data.price_guard()
    quantity, quote_quantity = data.checked_quantities()
    symbol = data.symbol.upper()
    await services.rate_limiter.take_movement(request.user.id)  # before any lock is waited for
    max_age_ms = services.settings.trade_price_max_age_ms
    # Read before taking the user's turn: on a cache miss this may wait for Binance, and
    # the user's other movements must not wait behind that.
    latest = services.price_stream.latest
    price = await trade_price(services.prices, latest, symbol, max_age_ms)
    read_at = time.monotonic()
    async with services.user_turns.turn(request.user.id):
        # A newer publication may have come while this order waited for its turn.
        newer = newer_published_price(services.prices, latest, symbol, price)
        if newer is not None:
            price, read_at = newer, time.monotonic()
        # The price may be used until it is max_age_ms old: what is left of that when
        # the call is sent (after the waits for a batch and a connection) bounds the
        # wait for the wallets' locks, checked in SQL; zero or less refuses the price
        # there, unless the order replays an earlier one.
        movement = Movement(
            kind=data.side,
            user_id=request.user.id,
            subject=symbol,
            amount=quantity,
            quote_quantity=quote_quantity,
            price_guard=guard,
            price=None if price is None else price.price,
            price_at=None if price is None else price.fetched_at,
            price_valid_until=None if price is None else read_at + (max_age_ms - price.age_ms) / 1000,
            idempotency_key=idempotency_key,
        )
        trade, replayed = await services.movements.move(movement)
    # Both balances as the trade left them (stored on it, so a replay answers the same).
    wallets = [
        Wallet(asset=trade.asset, balance=trade.balance_after),
        Wallet(asset=trade.quote_asset, balance=trade.quote_balance_after),  # type: ignore[arg-type]
    ]
    headers = {"Idempotency-Replayed": "true"} if replayed else None
    return ExchangeResponse(OrderResult(trade=trade, wallets=wallets), status_code=201, headers=headers)


async def _place_limit_order(
    data: OrderRequest,
    idempotency_key: str,
    request: Request[AuthUser, str, State],
    services: Services,
) -> ExchangeResponse[OrderResult]:
    price_limit, quantity = data.limit_fields()
    symbol = data.symbol.upper()
    await services.rate_limiter.take_movement(request.user.id)  # before any lock is waited for
    max_age_ms = services.settings.trade_price_max_age_ms
    price = await trade_price(services.prices, services.price_stream.latest, symbol, max_age_ms)
    async with services.user_turns.turn(request.user.id):
        order, replayed = await repo.place_limit_order(
            services.pool,
            request.user.id,
            symbol,
            data.side,
            price_limit,
            quantity,
            data.time_in_force or "GTC",
            data.client_order_id,
            None if price is None else price.price,
            None if price is None else price.fetched_at,
            None if price is None else max(0, max_age_ms - price.age_ms),
            idempotency_key,
        )
    # The market's two wallets: their codes are the symbol's ends (BTC + USDT).
    wallets = [
        w
        for w in await repo.wallets_for_user(services.pool, request.user.id)
        if symbol.startswith(w.asset) or symbol.endswith(w.asset)
    ]
    headers = {"Idempotency-Replayed": "true"} if replayed else None
    return ExchangeResponse(OrderResult(order=order, wallets=wallets), status_code=201, headers=headers)


OrderId = Annotated[int, PathParameter(ge=1, le=ID_MAX)]
OrderStatus = Literal["NEW", "FILLED", "CANCELED", "EXPIRED", "REJECTED"]


def order_not_found(order_id: int) -> HTTPError:
    return HTTPError("not_found", "no such order", 404, {"order_id": order_id})


@delete(
    "/orders/{order_id:int}",
    tags=["orders"],
    summary="Cancel a resting limit order",
    description="Releases its locked funds and answers the order (status CANCELED). An order "
    "that is already final answers 409 order_not_open; another user's order 404.",
    status_code=200,
    responses=documented(400, 401, 404, 409, 503),
)
async def cancel_order(
    order_id: OrderId, request: Request[AuthUser, str, State], services: NamedDependency[Services]
) -> Order:
    async with services.user_turns.turn(request.user.id):
        return await repo.cancel_order(services.pool, request.user.id, order_id)


@get(
    "/orders/{order_id:int}",
    tags=["orders"],
    summary="One of the caller's orders",
    responses=documented(400, 401, 404, 503),
)
async def get_order(
    order_id: OrderId, request: Request[AuthUser, str, State], services: NamedDependency[Services]
) -> Order:
    order = await repo.order_for_user(services.pool, request.user.id, order_id)
    if order is None:
        raise order_not_found(order_id)
    return order


@get(
    "/orders",
    tags=["orders"],
    summary="The caller's orders, newest first",
    description="Filters: `status`, `symbol`, `client_order_id` (at most one order). Keyset "
    "pages: pass `next_before` as `before`.",
    responses=documented(400, 401, 503),
)
async def list_orders(
    request: Request[AuthUser, str, State],
    services: NamedDependency[Services],
    status: Annotated[OrderStatus | None, QueryParameter(description="only orders in this status")] = None,
    symbol: Annotated[str | None, QueryParameter(pattern=SYMBOL_PATTERN)] = None,
    client_order_id: Annotated[str | None, QueryParameter(pattern=CLIENT_ORDER_ID_PATTERN)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_SIZE_MAX, description="page size")] = 50,
    before: Annotated[
        int | None, QueryParameter(ge=1, le=ID_MAX, description="`next_before` of the previous page")
    ] = None,
) -> OrderPage:
    page = await repo.orders_for_user(
        services.pool,
        request.user.id,
        status=status,
        symbol=None if symbol is None else symbol.upper(),
        client_order_id=client_order_id,
        before=before,
        limit=limit,
    )
    return OrderPage(orders=page, next_before=page[-1].id if len(page) == limit else None)


route_handlers = [place_order, cancel_order, get_order, list_orders]
