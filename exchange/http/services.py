"""What the handlers use, in one typed object: the app's lifespan opens each service
(exchange/app.py) and handlers receive them as `services: Services` (a Litestar
dependency), so a reader and a type checker follow a deposit from its route to the pool."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis
from litestar.datastructures import State

from exchange.auth.denylist import Denylist
from exchange.auth.ratelimit import RateLimiter
from exchange.auth.security import VerifiedTokens
from exchange.config import Settings
from exchange.ledger.batches import MovementBatches
from exchange.ledger.turns import UserTurns
from exchange.prices.cache import PriceCache
from exchange.prices.feed import PriceFeed
from exchange.prices.slots import Slots
from exchange.prices.stream import PriceStream
from exchange.store.db import FairPool


@dataclass(slots=True)
class Services:
    settings: Settings
    pool: FairPool  # PostgreSQL, FIFO
    redis: aioredis.Redis
    deployment_id: str  # this deployment's own, stored in PostgreSQL (migration 014)
    redis_namespace: str  # every Redis key and channel of the deployment starts with it
    rate_limiter: RateLimiter  # login/register limits and the per-user movement quota
    verified_tokens: VerifiedTokens  # JWTs this worker has checked, until they expire
    denylist: Denylist  # revoked tokens, disabled and deleted users
    dummy_password_hash: str  # logins for unknown emails check against it (same time)
    user_turns: UserTurns  # one movement per user at a time
    movements: MovementBatches  # the write path to PostgreSQL
    http: httpx.AsyncClient  # to Binance
    prices: PriceCache
    price_stream: PriceStream  # this worker's WebSocket fan-out and latest quotes
    ws_slots: Slots  # WebSocket connections, counted for the whole server
    price_feed: PriceFeed  # the elected poller


def services_of(state: State) -> Services:
    """The app's services (set by the lifespan); the Litestar dependency `services`."""
    services: Services = state.services
    return services
