"""The local Binance stand-in answers with Binance's own shapes, errors and headers."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import httpx

from tests.conftest import FakeBinanceControl, fake_binance_server


async def test_ping_time_and_weight_headers(fake_binance: FakeBinanceControl) -> None:
    async with httpx.AsyncClient(base_url=fake_binance.url) as http:
        ping = await http.get("/api/v3/ping")
        assert ping.status_code == 200 and ping.json() == {}
        used = int(ping.headers["X-MBX-USED-WEIGHT-1M"])
        server_time = await http.get("/api/v3/time")
        assert isinstance(server_time.json()["serverTime"], int)
        assert int(server_time.headers["X-MBX-USED-WEIGHT-1M"]) > used


async def test_ticker_price_one_a_list_or_all(fake_binance: FakeBinanceControl) -> None:
    async with httpx.AsyncClient(base_url=fake_binance.url) as http:
        one = (await http.get("/api/v3/ticker/price", params={"symbol": "BTCUSDT"})).json()
        assert one.keys() == {"symbol", "price"} and one["symbol"] == "BTCUSDT"
        assert Decimal(one["price"]) > 0 and len(one["price"].split(".")[1]) == 8

        some = (await http.get("/api/v3/ticker/price", params={"symbols": '["ETHUSDT","BTCUSDT"]'})).json()
        assert [quote["symbol"] for quote in some] == ["ETHUSDT", "BTCUSDT"]

        every = (await http.get("/api/v3/ticker/price")).json()
        assert {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"} <= {quote["symbol"] for quote in every}


async def test_errors_have_binance_codes(fake_binance: FakeBinanceControl) -> None:
    async with httpx.AsyncClient(base_url=fake_binance.url) as http:
        cases = [
            ({"symbol": "NOPE"}, -1121, "Invalid symbol."),
            ({"symbols": '["BTCUSDT","NOPE"]'}, -1121, "Invalid symbol."),
            ({"symbol": "btc usdt"}, -1100, None),
            ({"symbols": "[BTCUSDT"}, -1100, None),
            ({"symbol": "BTCUSDT", "symbols": '["BTCUSDT"]'}, -1128, None),
        ]
        for params, code, msg in cases:
            answer = await http.get("/api/v3/ticker/price", params=params)
            assert answer.status_code == 400, params
            assert answer.json()["code"] == code, params
            if msg:
                assert answer.json()["msg"] == msg


async def test_exchange_info_filters_match_our_markets(
    fake_binance: FakeBinanceControl, db: asyncpg.Pool
) -> None:
    """The markets table follows Binance's exchangeInfo: same steps, minimums and tick sizes."""
    async with httpx.AsyncClient(base_url=fake_binance.url) as http:
        info = (await http.get("/api/v3/exchangeInfo")).json()
    symbols = {entry["symbol"]: entry for entry in info["symbols"]}
    markets = await db.fetch(
        "SELECT symbol, base, quote, qty_step, min_qty, tick_size, min_notional FROM markets"
    )
    assert markets
    for market in markets:
        entry = symbols[market["symbol"]]
        filters = {f["filterType"]: f for f in entry["filters"]}
        assert (entry["baseAsset"], entry["quoteAsset"]) == (market["base"], market["quote"])
        assert Decimal(filters["LOT_SIZE"]["stepSize"]) == market["qty_step"]
        assert Decimal(filters["LOT_SIZE"]["minQty"]) == market["min_qty"]
        assert Decimal(filters["PRICE_FILTER"]["tickSize"]) == market["tick_size"]
        assert Decimal(filters["NOTIONAL"]["minNotional"]) == market["min_notional"]


async def _walk(fake: FakeBinanceControl, steps: int) -> list[str]:
    async with httpx.AsyncClient(base_url=fake.url) as http:
        return [
            (await http.get("/api/v3/ticker/price", params={"symbol": "BTCUSDT"})).json()["price"]
            for _ in range(steps)
        ]


async def test_prices_are_a_repeatable_seeded_walk() -> None:
    async with fake_binance_server(seed=7) as first, fake_binance_server(seed=7) as second:
        walk = await _walk(first, 20)
        assert await _walk(second, 20) == walk
    async with fake_binance_server(seed=8) as other:
        assert await _walk(other, 20) != walk
    assert len(set(walk)) > 10  # it moves
    start = Decimal("97000")
    assert all(abs(Decimal(price) - start) / start < Decimal("0.05") for price in walk)  # realistic


async def test_control_injects_faults_counts_requests_and_sets_prices() -> None:
    async with fake_binance_server() as fake, httpx.AsyncClient(base_url=fake.url) as http:
        await fake.fail("rate_limit", count=1)
        limited = await http.get("/api/v3/ticker/price")
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        assert limited.json()["code"] == -1003
        assert (await http.get("/api/v3/ticker/price")).status_code == 200  # count=1: once only

        await fake.fail("error")
        for _ in range(2):
            assert (await http.get("/api/v3/ticker/price")).status_code == 500
        await fake.fail("ban", count=1)
        assert (await http.get("/api/v3/ticker/price")).status_code == 418
        await fake.fail("malformed", count=1)
        broken = await http.get("/api/v3/ticker/price")
        assert broken.status_code == 200
        try:
            broken.json()
            raise AssertionError("the body should not be JSON")
        except ValueError:
            pass
        await fake.heal()

        await fake.set_prices({"BTCUSDT": "50000.5"}, frozen=True)
        for _ in range(2):
            quote = (await http.get("/api/v3/ticker/price", params={"symbol": "BTCUSDT"})).json()
            assert quote["price"] == "50000.50000000"
        stats = await fake.stats()
        assert stats["requests"] == 8 and stats["by_path"] == {"/api/v3/ticker/price": 8}
        assert stats["frozen"] is True
