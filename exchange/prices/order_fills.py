"""Fills the resting limit orders that the elected feed's prices cross.

After each poll, the feed's leader hands every price it holds (published or unchanged)
to fill_crossed(), which runs sql/functions/orders.sql's fill_crossed_orders for each
market: one transaction per batch of ORDER_FILL_BATCH orders, repeated while batches
come back full, at most ORDER_FILL_BATCHES_PER_POLL times per market and poll (the
rest waits for the next poll, so one market never starves the others). Running on every
poll, not only when a price changes, is what finishes a sweep that a crash or a lost
database connection cut short: a new leader, or a restarted server, fills what the
prices still cross. The price is read before the call: no network call while the
function holds wallets locked. A fill can never happen twice (the SQL re-checks each
order's status under its lock), so two leaders for a moment are harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

import asyncpg

from exchange.prices.binance import Quote
from exchange.store import repository as repo
from exchange.store.db import FairPool

log = logging.getLogger("exchange.prices.order_fills")

ORDER_FILL_BATCH = 1_000  # orders per transaction: wallets held for one batch only
ORDER_FILL_BATCHES_PER_POLL = 20


async def fill_crossed(pool: FairPool, quotes: Iterable[Quote]) -> int:
    """How many orders the quotes filled; a database error is logged, never raised."""
    filled = 0
    for quote in quotes:
        price_at = datetime.fromtimestamp(quote.fetched_at_ms / 1000, UTC)
        try:
            for _ in range(ORDER_FILL_BATCHES_PER_POLL):
                batch = await repo.fill_crossed_orders(
                    pool, quote.symbol, quote.price, price_at, ORDER_FILL_BATCH
                )
                filled += batch
                if batch < ORDER_FILL_BATCH:
                    break
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning(
                "order fills for %s stopped (%s); the next poll goes on", quote.symbol, type(exc).__name__
            )
    return filled
