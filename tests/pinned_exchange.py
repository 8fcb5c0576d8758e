"""An exchange server of its own whose prices change only when a test says so: the
stand-in's random walk frozen, no price feed, a long cache TTL."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import msgspec
from conftest import Account, FakeBinanceControl, fake_binance_server, key, move, register_and_login, serving
from litestar import Litestar

from exchange.app import create_app
from exchange.config import Settings


@dataclass
class Exchange:
    """A server of its own whose prices change only when a test says so."""

    http: httpx.AsyncClient
    fake: FakeBinanceControl
    app: Litestar

    async def set_prices(self, prices: dict[str, str]) -> None:
        """The stand-in moves to these prices, and the cache fetches them through httpx."""
        await self.fake.set_prices(prices, frozen=True)
        await self.app.state.services.prices.refresh()

    async def user(self, usdt: str | None = None) -> Account:
        account = await register_and_login(self.http)
        if usdt is not None:
            assert (await move(self.http, account, "deposit", usdt)).status_code == 201
        return account

    async def order(
        self, account: Account, idempotency_key: str | None = None, **body: Any
    ) -> httpx.Response:
        headers = {**account.headers, "Idempotency-Key": idempotency_key or key()}
        return await self.http.post("/api/v1/orders", json=body, headers=headers)

    async def balances(self, account: Account) -> dict[str, Decimal]:
        """The account's non-zero balances."""
        answer = await self.http.get("/api/v1/wallets", headers=account.headers)
        return {w["asset"]: Decimal(w["balance"]) for w in answer.json() if Decimal(w["balance"])}


@asynccontextmanager
async def exchange_server(settings: Settings, **overrides: Any) -> AsyncIterator[Exchange]:
    async with fake_binance_server() as fake:
        await fake.set_prices({"BTCUSDT": "64123.45", "ETHUSDT": "2500.00"}, frozen=True)
        configured = msgspec.structs.replace(
            settings,
            binance_url=fake.url,
            redis_prefix=f"test:{secrets.token_hex(4)}:",
            **{
                # No feed, and a long cache TTL: a price changes only through set_prices.
                "price_poll_ms": 0,
                "price_cache_ttl_ms": 60_000,
                "price_stale_max_ms": 120_000,
                "trade_price_max_age_ms": 60_000,
                **overrides,
            },
        )
        app = create_app(configured)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with serving(app) as url, httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
            yield Exchange(http, fake, app)
