"""POST /api/v1/orders: market buys and sells at the live price.

Not served yet: trading lands with the trading issue (PL/pgSQL `buy` and `sell`, prices
from exchange.prices). This module is its place in the route table.
"""

from __future__ import annotations

route_handlers: list[object] = []
