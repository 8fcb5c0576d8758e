"""Which price a trade uses: the freshest this worker knows, never older than allowed.

This worker's copy of the latest published quote (kept current by the price channel,
exchange/prices/stream.py) costs no Redis round trip, so it comes first while the cache
would call it fresh; else the cache, which reads Redis and refreshes from Binance if
needed. The caller reads the price before it takes the user's turn (a cache miss may
wait for Binance), and looks again once it has the turn, for a newer publication.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from exchange.prices.binance import PriceUnavailable, Quote
from exchange.prices.cache import PriceCache, as_price
from exchange.schemas import Price

log = logging.getLogger("exchange.orders")


async def trade_price(
    cache: PriceCache, latest: Mapping[str, Quote], symbol: str, max_age_ms: int
) -> Price | None:
    """The price to trade at, or None if there is none at most max_age_ms old (the trade
    is refused with price_unavailable, unless it replays an earlier one).

    First this worker's copy of the latest published quote (kept current by the price
    channel, so the common case costs no Redis round trip), used while the cache would
    call it fresh; else the cache, which reads Redis and refreshes if needed."""
    price = published_price(latest, symbol, cache.fresh_ms)
    if price is not None:
        return price
    if symbol not in cache.symbols:
        return None  # unknown market (SQL says so) or one added since this worker started
    try:
        price = await cache.price(symbol)
    except PriceUnavailable as exc:
        log.debug("no price for %s: %s", symbol, exc.reason)  # the cache logs the outage itself
        return None
    return price if price.age_ms <= max_age_ms else None


def published_price(latest: Mapping[str, Quote], symbol: str, fresh_ms: int) -> Price | None:
    """This worker's copy of the symbol's last published quote, if still fresh (no I/O)."""
    quote = latest.get(symbol)
    if quote is None:
        return None
    price = as_price(quote, fresh_ms)
    return None if price.stale else price


def newer_published_price(
    cache: PriceCache, latest: Mapping[str, Quote], symbol: str, price: Price | None
) -> Price | None:
    """A fresh published price newer than `price` (read before), or None."""
    published = published_price(latest, symbol, cache.fresh_ms)
    if published is not None and (price is None or published.fetched_at > price.fetched_at):
        return published
    return None
