"""The benchmark's HTTP + driver ceiling: a bare Litestar app whose one route runs
`SELECT 1` through an asyncpg pool sized like the product's. Not a route of the product;
`exchange bench --ceiling` serves it under the same uvicorn settings as `exchange serve`.

    python -m exchange.bench.bare --port 8001 --workers 2
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from litestar import Litestar, get
from litestar.datastructures import State

from exchange.config import settings_from_env
from exchange.serving import run_uvicorn


@get("/select1")
async def select1(state: State) -> dict[str, int]:
    return {"one": await state.pool.fetchval("SELECT 1")}


def create_app() -> Litestar:
    settings = settings_from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(
            settings.database_url, min_size=settings.db_pool_min_size, max_size=settings.db_pool_max_size
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    return Litestar(route_handlers=[select1], lifespan=[lifespan], openapi_config=None)


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
