"""An independent model of the money rules, in Decimal, written from the comments of
sql/migrations/002_deposit_withdraw.sql and 003_trade.sql rather than from their code:
what a deposit, a withdrawal or a market order should answer. Tests compare the real
answers (SQL functions or HTTP) with it, to the last unit."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Literal

# Far more digits than any amount or product here needs: no rounding but ours.
PRECISION = 100


@dataclass(frozen=True)
class Asset:
    code: str
    scale: int
    max_amount: Decimal

    @property
    def unit(self) -> Decimal:
        return Decimal(1).scaleb(-self.scale)


@dataclass(frozen=True)
class Market:
    symbol: str
    base: Asset
    quote: Asset
    qty_step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    fee_rate: Decimal


@dataclass(frozen=True)
class Fill:
    """A filled order: the base quantity, the quote amount paid (buy) or received before
    the fee (sell), and the fee (in the asset received: base for a buy, quote for a sell)."""

    quantity: Decimal
    quote_qty: Decimal
    fee: Decimal


# As sql/migrations/001_schema.sql seeds them (tests check the database agrees).
ASSETS = {
    code: Asset(code, scale, Decimal(max_amount))
    for code, scale, max_amount in [
        ("USDT", 2, "1000000000"),
        ("BTC", 8, "100000"),
        ("ETH", 8, "1000000"),
        ("SOL", 8, "100000000"),
        ("BNB", 8, "10000000"),
    ]
}
MARKETS = {
    symbol: Market(symbol, ASSETS[base], ASSETS["USDT"], Decimal(step), Decimal(step), Decimal(max_qty),
                   Decimal(5), Decimal("0.001"))
    for symbol, base, step, max_qty in [
        ("BTCUSDT", "BTC", "0.00001", "9000"),
        ("ETHUSDT", "ETH", "0.0001", "9000"),
        ("SOLUSDT", "SOL", "0.001", "90000"),
        ("BNBUSDT", "BNB", "0.001", "90000"),
    ]
}  # fmt: skip


def round_up(value: Decimal, scale: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-scale), ROUND_CEILING)


def round_down(value: Decimal, scale: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-scale), ROUND_FLOOR)


def amount_refusal(asset: Asset, amount: Decimal) -> str | None:
    """Why an amount of this asset is refused (an API error code), or None."""
    with localcontext(prec=PRECISION):
        if not 0 < amount <= asset.max_amount:
            return "invalid_amount"
        if amount != round_down(amount, asset.scale):
            return "too_many_decimals"
    return None


def fill(
    market: Market,
    side: Literal["buy", "sell"],
    quantity: Decimal | None,
    quote_quantity: Decimal | None,
    price: Decimal,
) -> Fill | str:
    """The fill of a market order at this price, or the code it is refused with (funds
    aside: the caller compares the wallet with what the fill takes)."""
    with localcontext(prec=PRECISION):
        if (quantity is None) == (quote_quantity is None):
            return "exactly_one_quantity"
        if quantity is not None:
            if refusal := amount_refusal(market.base, quantity):
                return refusal
            if quantity % market.qty_step != 0:
                return "quantity_off_step"
        else:
            assert quote_quantity is not None
            if refusal := amount_refusal(market.quote, quote_quantity):
                return refusal
            # The most steps whose notional does not exceed quote_quantity.
            steps = (quote_quantity / (price * market.qty_step)).to_integral_value(ROUND_FLOOR)
            quantity = round_down(steps * market.qty_step, market.base.scale)
        notional = quantity * price
        if quantity == 0 or notional < market.min_notional:
            return "below_min_notional"
        if not market.min_qty <= quantity <= market.max_qty:
            return "quantity_out_of_range"
        if side == "buy":
            # The buyer pays the notional rounded up, and receives the quantity less the fee.
            cost = round_up(notional, market.quote.scale)
            fee = round_up(quantity * market.fee_rate, market.base.scale)
            return "below_min_notional" if fee >= quantity else Fill(quantity, cost, fee)
        # The seller receives the notional rounded down, less the fee.
        proceeds = round_down(notional, market.quote.scale)
        fee = round_up(proceeds * market.fee_rate, market.quote.scale)
        return "below_min_notional" if fee >= proceeds else Fill(quantity, proceeds, fee)


def paid(market: Market, side: str, filled: Fill) -> tuple[str, Decimal]:
    """(asset, amount) the order takes from the user's wallet."""
    return (market.quote.code, filled.quote_qty) if side == "buy" else (market.base.code, filled.quantity)


def received(market: Market, side: str, filled: Fill) -> tuple[str, Decimal]:
    """(asset, amount) the order adds to the user's wallet, the fee taken."""
    if side == "buy":
        return market.base.code, filled.quantity - filled.fee
    return market.quote.code, filled.quote_qty - filled.fee
