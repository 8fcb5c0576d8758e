"""The benchmark's ceilings over HTTP: a bare Litestar app, served like the product, with
an asyncpg pool made like the product's (exchange/store/db.py). Not routes of the product;
`exchange bench --ceiling` serves them under the same uvicorn settings as `exchange serve`.

- GET /select1: runs `SELECT 1`, the HTTP + driver ceiling.
- POST /deposit/{user_id}: the product's own deposit (1 USDT, a random idempotency key),
  sent in batches as the product sends it (exchange/ledger/batches.py), with no
  authentication, validation, logging or metrics around it: the ceiling of a durable
  money movement through this framework and driver.

    python -m exchange.bench.bare --port 8001 --workers 2
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from litestar import Litestar, get, post
from litestar.datastructures import State

from exchange.config import settings_from_env
from exchange.ledger.batches import Movement, MovementBatches
from exchange.ops.serving import run_uvicorn
from exchange.store.db import create_pool

ONE = Decimal("1.00")


@get("/select1")
async def select1(state: State) -> dict[str, int]:
    return {"one": await state.pool.fetchval("SELECT 1")}


@post("/deposit/{user_id:int}", status_code=201)
async def deposit(user_id: int, state: State) -> dict[str, str]:
    movement = Movement(
        kind="deposit", user_id=user_id, subject="USDT", amount=ONE, idempotency_key=secrets.token_hex(8)
    )
    transaction, _ = await state.movements.move(movement)
    return {"id": str(transaction.id), "balance_after": str(transaction.balance_after)}


def create_app() -> Litestar:
    settings = settings_from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings)
        app.state.movements = MovementBatches.from_settings(app.state.pool, settings)
        try:
            yield
        finally:
            await app.state.pool.close()

    return Litestar(
        route_handlers=[select1, deposit], lifespan=[lifespan], openapi_config=None, logging_config=None
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    settings = settings_from_env()  # logging as `exchange serve` would set it up
    run_uvicorn(
        "exchange.bench.bare:create_app",
        args.host,
        args.port,
        args.workers,
        settings.log_level,
        settings.log_format,
    )
