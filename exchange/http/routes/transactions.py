"""GET /api/v1/transactions (keyset pages) and GET /api/v1/transactions/{id}."""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from exchange.auth.security import AuthUser
from exchange.http.errors import HTTPError, documented
from exchange.http.services import Services
from exchange.schemas import ASSET_PATTERN, ID_MAX, Transaction, TransactionKindFilter, TransactionPage
from exchange.store import repository as repo

PAGE_SIZE_MAX = 100


@get(
    "/transactions",
    tags=["transactions"],
    summary="The caller's history, newest first",
    responses=documented(400, 401, 404, 503),
)
async def list_transactions(
    request: Request[AuthUser, str, State],
    services: NamedDependency[Services],
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_SIZE_MAX, description="page size")] = 50,
    before: Annotated[
        int | None, QueryParameter(ge=1, le=ID_MAX, description="`next_before` of the previous page")
    ] = None,
    kind: Annotated[
        TransactionKindFilter | None,
        QueryParameter(description="`deposit`, `withdrawal` (or `withdraw`, as its route), `buy`, `sell`"),
    ] = None,
    asset: Annotated[
        str | None, QueryParameter(pattern=ASSET_PATTERN, description="an asset code, any case")
    ] = None,
) -> TransactionPage:
    code = None if asset is None else asset.upper()  # malformed: 400 by the pattern
    page = await repo.transactions_for_user(
        services.pool,
        request.user.id,
        before=before,
        kind="withdrawal" if kind == "withdraw" else kind,
        asset=code,
        limit=limit,
    )
    next_before = page[-1].id if len(page) == limit else None
    return TransactionPage(transactions=page, next_before=next_before)


@get(
    "/transactions/{transaction_id:int}",
    tags=["transactions"],
    summary="One of the caller's transactions",
    responses=documented(400, 401, 404, 503),
)
async def get_transaction(
    transaction_id: Annotated[int, PathParameter(ge=1, le=ID_MAX)],
    request: Request[AuthUser, str, State],
    services: NamedDependency[Services],
) -> Transaction:
    transaction = await repo.transaction_for_user(services.pool, transaction_id, request.user.id)
    if transaction is None:
        # Another user's transaction is answered exactly like a missing one.
        raise HTTPError("not_found", "no such transaction", 404)
    return transaction
