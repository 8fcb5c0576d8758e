"""Wallets: balances, deposits and withdrawals (one PL/pgSQL call each)."""

from __future__ import annotations

import re
from typing import Annotated

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import HeaderParameter, JSONBody, PathParameter

from exchange.auth.security import AuthUser
from exchange.http.errors import HTTPError, documented
from exchange.http.responses import ExchangeResponse
from exchange.http.services import Services
from exchange.ledger.batches import Movement
from exchange.ops.metrics import note_movement
from exchange.schemas import ASSET_PATTERN, IDEMPOTENCY_KEY_PATTERN, AmountRequest, Transaction, Wallet
from exchange.store import repository as repo

IdempotencyKey = Annotated[
    str,
    HeaderParameter(
        name="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="A key of the client's choosing (a UUID is ideal), at most 100 printable "
        "characters. A retry with the same key and body returns the first answer with "
        "`Idempotency-Replayed: true`; the same key with another body is refused (422).",
    ),
]
# An example in the document lets clients (and schemathesis's explicit-examples phase)
# reach a real wallet; a random code is a 404.
AssetCode = Annotated[
    str,
    PathParameter(description="An asset code such as USDT (any case).", examples=[Example(value="USDT")]),
]
_ASSET = re.compile(ASSET_PATTERN)


def asset_code(asset: str) -> str:
    """Asset codes are upper case (`usdt` means USDT); anything else is unknown."""
    if not _ASSET.match(asset):
        raise unknown_asset(asset[:20])
    return asset.upper()


def unknown_asset(code: str) -> HTTPError:
    return HTTPError("unknown_asset", f"unknown asset {code}", 404, {"asset": code})


@get(
    "/wallets",
    tags=["wallets"],
    summary="The caller's balance in every asset",
    responses=documented(401, 503),
)
async def list_wallets(
    request: Request[AuthUser, str, State], services: NamedDependency[Services]
) -> list[Wallet]:
    return await repo.wallets_for_user(services.pool, request.user.id)


@get(
    "/wallets/{asset:str}",
    tags=["wallets"],
    summary="The caller's balance in one asset",
    responses=documented(400, 401, 404, 503),
)
async def get_wallet(
    asset: AssetCode, request: Request[AuthUser, str, State], services: NamedDependency[Services]
) -> Wallet:
    code = asset_code(asset)
    wallets = await repo.wallets_for_user(services.pool, request.user.id, code)
    if not wallets:
        raise unknown_asset(code)
    return wallets[0]


@post(
    "/wallets/{asset:str}/deposit",
    tags=["wallets"],
    summary="Deposit into a wallet",
    responses=documented(400, 401, 404, 413, 415, 422, 429, 503),
)
async def deposit(
    asset: AssetCode,
    data: JSONBody[AmountRequest],
    idempotency_key: IdempotencyKey,
    request: Request[AuthUser, str, State],
    services: NamedDependency[Services],
) -> ExchangeResponse[Transaction]:
    note_movement(request, "deposit")
    return await _move("deposit", asset, data, idempotency_key, request, services)


@post(
    "/wallets/{asset:str}/withdraw",
    tags=["wallets"],
    summary="Withdraw from a wallet",
    responses=documented(400, 401, 404, 409, 413, 415, 422, 429, 503),
)
async def withdraw(
    asset: AssetCode,
    data: JSONBody[AmountRequest],
    idempotency_key: IdempotencyKey,
    request: Request[AuthUser, str, State],
    services: NamedDependency[Services],
) -> ExchangeResponse[Transaction]:
    note_movement(request, "withdraw")
    return await _move("withdrawal", asset, data, idempotency_key, request, services)


async def _move(
    kind: str,
    asset: str,
    data: AmountRequest,
    idempotency_key: str,
    request: Request[AuthUser, str, State],
    services: NamedDependency[Services],
) -> ExchangeResponse[Transaction]:
    code, amount = asset_code(asset), data.checked_amount()
    await services.rate_limiter.take_movement(request.user.id)  # before any lock is waited for
    async with services.user_turns.turn(request.user.id):
        movement = Movement(
            kind=kind, user_id=request.user.id, subject=code, amount=amount, idempotency_key=idempotency_key
        )
        transaction, replayed = await services.movements.move(movement)
    headers = {"Idempotency-Replayed": "true"} if replayed else None
    return ExchangeResponse(transaction, status_code=201, headers=headers)
