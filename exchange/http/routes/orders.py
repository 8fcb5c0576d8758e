"""POST /api/v1/orders: market buys and sells at the live price (one PL/pgSQL call).

The price is read before the call (this worker's copy of the latest published quote,
else the price cache), so no network call happens while the database holds the user's
wallets locked; the function stores the price it was given on the transaction, and
refuses it if waiting for the locks made it older than TRADE_PRICE_MAX_AGE_MS. Market
rules (step, minimum notional, active) and the price guard are checked in SQL
(sql/functions/trades.sql). Which price a trade uses is exchange/prices/trade_price.py's rule.
"""

from __future__ import annotations

import time

from litestar import Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody

from exchange.auth.security import AuthUser
from exchange.http.errors import documented
from exchange.http.responses import ExchangeResponse
from exchange.http.routes.wallets import IdempotencyKey
from exchange.http.services import Services
from exchange.ledger.batches import Movement
from exchange.ops.metrics import note_movement
from exchange.prices.trade_price import newer_published_price, trade_price
from exchange.schemas import OrderRequest, OrderResult, Wallet


@post(
    "/orders",
    tags=["orders"],
    summary="Buy or sell at the market price",
    description="Fills at once at the cached live price (at most `TRADE_PRICE_MAX_AGE_MS` "
    "old). The fee is taken from the asset received. Answers the trade and the balances "
    "of both wallets right after it.",
    responses=documented(400, 401, 404, 409, 413, 415, 422, 429, 503),
)
async def place_order(
    data: JSONBody[OrderRequest],
    idempotency_key: IdempotencyKey,
    request: Request[AuthUser, str, State],
    services: NamedDependency[Services],
) -> ExchangeResponse[OrderResult]:
    note_movement(request, data.side)
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


route_handlers = [place_order]
