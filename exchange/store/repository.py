"""The repository: one async function per query file, returning msgspec Structs.

No business rule lives here: money rules live in SQL (constraints and the PL/pgSQL
functions), HTTP concerns in the route handlers.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import msgspec

from exchange.schemas import HouseBalance, Order, StoredEmail, Transaction, User, Violation, Wallet
from exchange.store.db import FairPool
from exchange.store.queries import Q

Pool = FairPool
TRANSACTION_FIELDS = Transaction.__struct_fields__
# Where a function also serves the CLI, a single connection does as well as the pool.
Executor = FairPool | asyncpg.Connection


class Credentials(msgspec.Struct):
    """What login needs, including the password hash; never sent to a client."""

    id: int
    email: str
    password_hash: str
    role: str
    disabled: bool


async def create_user(pool: Executor, email: str, password_hash: str, role: str = "user") -> User:
    row = await pool.fetchrow(Q.user_create, email, password_hash, role)
    return User(**row)


async def credentials_by_email(pool: Pool, email: str) -> Credentials | None:
    row = await pool.fetchrow(Q.user_by_email, email)
    return None if row is None else Credentials(**row)


async def user_by_id(pool: Pool, user_id: int) -> User | None:
    row = await pool.fetchrow(Q.user_by_id, user_id)
    return None if row is None else User(**row)


async def set_role(pool: Executor, email: str, role: str) -> User | None:
    row = await pool.fetchrow(Q.user_set_role, email, role)
    return None if row is None else User(**row)


async def max_connections(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(Q.max_connections)


async def user_emails(conn: asyncpg.Connection) -> list[StoredEmail]:
    return [StoredEmail(row["id"], row["email"]) for row in await conn.fetch(Q.user_emails)]


async def set_email(conn: asyncpg.Connection, user_id: int, email: str, email_read: str) -> bool:
    return await conn.execute(Q.user_set_email, user_id, email, email_read) == "UPDATE 1"


async def users_page(pool: Pool, before: int | None, limit: int) -> list[User]:
    return [User(**row) for row in await pool.fetch(Q.users_page, before, limit)]


async def set_disabled(pool: Pool, user_id: int, disabled: bool) -> User | None:
    row = await pool.fetchrow(Q.user_set_disabled, user_id, disabled)
    return None if row is None else User(**row)


async def disabled_user_ids(pool: Pool) -> list[int]:
    return [row["id"] for row in await pool.fetch(Q.users_disabled)]


async def wallets_for_user(pool: Pool, user_id: int, asset: str | None = None) -> list[Wallet]:
    """Every asset's balance, or only `asset`'s (an empty list if it does not exist)."""
    rows = await pool.fetch(Q.wallets_for_user, user_id, asset)
    return [Wallet(**row) for row in rows]


async def transactions_for_user(
    pool: Pool,
    user_id: int,
    *,
    before: int | None,
    kind: str | None,
    asset: str | None,
    limit: int,
) -> list[Transaction]:
    # One statement per filter set, each served by its own index (plans stay simple).
    if asset is not None:
        rows = await pool.fetch(Q.transactions_for_user_by_asset, user_id, before, kind, asset, limit)
    elif kind is not None:
        rows = await pool.fetch(Q.transactions_for_user_by_kind, user_id, before, kind, limit)
    else:
        rows = await pool.fetch(Q.transactions_for_user, user_id, before, limit)
    return [Transaction(**row) for row in rows]


async def transaction_for_user(pool: Pool, transaction_id: int, user_id: int) -> Transaction | None:
    row = await pool.fetchrow(Q.transaction_for_user, transaction_id, user_id)
    return None if row is None else Transaction(**row)


async def deposit(
    pool: Pool, user_id: int, asset: str, amount: Decimal, idempotency_key: str
) -> tuple[Transaction, bool]:
    """(transaction, replayed): replayed is True when the key was used before."""
    row = await pool.fetchrow(Q.deposit, user_id, asset, amount, idempotency_key)
    return movement(row)


async def withdraw(
    pool: Pool, user_id: int, asset: str, amount: Decimal, idempotency_key: str
) -> tuple[Transaction, bool]:
    """(transaction, replayed): replayed is True when the key was used before."""
    row = await pool.fetchrow(Q.withdraw, user_id, asset, amount, idempotency_key)
    return movement(row)


async def trade(
    pool: Executor,
    side: Literal["buy", "sell"],
    user_id: int,
    symbol: str,
    quantity: Decimal | None,
    quote_quantity: Decimal | None,
    price_guard: Decimal | None,
    price: Decimal | None,
    price_at: datetime | None,
    price_valid_ms: int | None,
    idempotency_key: str,
) -> tuple[Transaction, bool]:
    """(trade, replayed), through sql/queries/buy.sql or sell.sql. price_guard is
    max_price (buy) or min_price (sell); price is None when no usable price was read;
    price_valid_ms is how much longer it may be used (a lock wait past it refuses)."""
    query = Q.buy if side == "buy" else Q.sell
    row = await pool.fetchrow(
        query,
        user_id,
        symbol,
        quantity,
        quote_quantity,
        price_guard,
        price,
        price_at,
        price_valid_ms,
        idempotency_key,
    )
    return movement(row)


async def house_balances(pool: Pool) -> list[HouseBalance]:
    return [HouseBalance(**row) for row in await pool.fetch(Q.house_balances)]


ORDER_FIELDS = Order.__struct_fields__


def order(row: Any) -> tuple[Order, bool]:
    """(order, replayed) from an order_answer row."""
    return Order(**{name: row[name] for name in ORDER_FIELDS}), row["replayed"]


async def place_limit_order(
    pool: Executor,
    user_id: int,
    symbol: str,
    side: Literal["buy", "sell"],
    price: Decimal,
    quantity: Decimal,
    time_in_force: Literal["GTC", "IOC", "FOK"],
    client_order_id: str | None,
    live_price: Decimal | None,
    live_price_at: datetime | None,
    price_valid_ms: int | None,
    idempotency_key: str,
) -> tuple[Order, bool]:
    """(order, replayed), through sql/queries/order_place.sql. live_price is None when no
    usable price was read."""
    row = await pool.fetchrow(
        Q.order_place,
        user_id,
        symbol,
        side,
        price,
        quantity,
        time_in_force,
        client_order_id,
        live_price,
        live_price_at,
        price_valid_ms,
        idempotency_key,
    )
    return order(row)


async def cancel_order(pool: Executor, user_id: int, order_id: int) -> Order:
    return order(await pool.fetchrow(Q.order_cancel, user_id, order_id))[0]


async def order_for_user(pool: Executor, user_id: int, order_id: int) -> Order | None:
    row = await pool.fetchrow(Q.order_for_user, user_id, order_id)
    return None if row is None else order(row)[0]


async def orders_for_user(
    pool: Executor,
    user_id: int,
    *,
    status: str | None,
    symbol: str | None,
    client_order_id: str | None,
    before: int | None,
    limit: int,
) -> list[Order]:
    rows = await pool.fetch(Q.orders_for_user, user_id, status, symbol, client_order_id, before, limit)
    return [order(row)[0] for row in rows]


async def fill_crossed_orders(
    pool: Executor, symbol: str, price: Decimal, price_at: datetime, batch: int
) -> int:
    """How many resting orders of symbol the price filled, at most batch (one transaction)."""
    return await pool.fetchval(Q.orders_fill_crossed, symbol, price, price_at, batch)


async def audit(pool: Executor) -> list[Violation]:
    rows = await pool.fetch(Q.audit)
    return [Violation(**row) for row in rows]


async def ping(pool: Pool) -> None:
    await pool.fetchval(Q.ping)


async def movements(connection: asyncpg.Connection, columns: list[list[Any]]) -> list[asyncpg.Record]:
    """Many movements in one call (sql/queries/movements.sql): one row each, its
    movement_result's columns or its error; see exchange/ledger/batches.py."""
    return await connection.fetch(Q.movements, *columns)


def movement(row: Any) -> tuple[Transaction, bool]:
    """(transaction, replayed) from a movement_result row, or a movement_outcome
    row without an error."""
    replayed = row["replayed"]
    return Transaction(**{name: row[name] for name in TRANSACTION_FIELDS}), replayed


async def deployment_id(pool: Executor) -> str:
    return str(await pool.fetchval(Q.deployment_id))


async def market_symbols(pool: Executor) -> list[str]:
    return [row["symbol"] for row in await pool.fetch(Q.market_symbols)]
