"""GET /health (the process answers) and GET /ready (PostgreSQL and Redis answer)."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from exchange.http.services import Services
from exchange.schemas import Health, Readiness
from exchange.store import repository as repo

PROBE_TIMEOUT_SECONDS = 2.0


@get("/health", tags=["health"], summary="Liveness")
async def health() -> Health:
    return Health(status="ok")


@get(
    "/ready",
    tags=["health"],
    summary="Readiness: PostgreSQL and Redis answer",
    responses={503: ResponseSpec(data_container=Readiness, description="PostgreSQL or Redis is down")},
)
async def ready(services: NamedDependency[Services]) -> Response[Readiness]:
    postgres = await _probe(repo.ping(services.pool))
    redis = await _probe(services.redis.ping())
    ok = postgres == "ok" and redis == "ok"
    body = Readiness(status="ready" if ok else "unavailable", postgres=postgres, redis=redis)
    return Response(body, status_code=200 if ok else 503)


async def _probe(check: object) -> str:
    try:
        await asyncio.wait_for(check, PROBE_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return f"down ({type(exc).__name__})"
    return "ok"
