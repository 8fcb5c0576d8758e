"""Money: a Decimal that always prints in plain fixed-point notation.

Python prints Decimal("0.00000001") as "1E-8", and msgspec encodes Decimals with str().
A satoshi must read "0.00000001" in JSON, so numerics from PostgreSQL are decoded as
Money (db.py), and the app encodes Money with its fixed-point str (app.py).
"""

from __future__ import annotations

from decimal import Decimal


class Money(Decimal):
    __slots__ = ()

    def __str__(self) -> str:
        return format(self, "f")

    __repr__ = Decimal.__repr__


def encode_money(value: object) -> str:
    """msgspec enc_hook: msgspec encodes Decimal itself but not its subclasses."""
    if isinstance(value, Money):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")
