"""GET /metrics: Prometheus metrics of every worker of this server (exchange/ops/metrics.py
keeps them), open in development, behind METRICS_TOKEN (always in production)."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from exchange.http.errors import HTTPError, documented
from exchange.http.services import Services
from exchange.ops.metrics import CONTENT_TYPE, price_ages, render


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics of every worker of this server",
    description="The Prometheus text format. With METRICS_TOKEN set, send "
    "`Authorization: Bearer <METRICS_TOKEN>`. Without it: open in development, closed (401) "
    "with EXCHANGE_ENV=production: it shows business volume and failed logins.",
    media_type=CONTENT_TYPE,
    responses=documented(401),
)
async def metrics_endpoint(
    request: Request[Any, Any, State], services: NamedDependency[Services]
) -> Response[bytes]:
    settings = services.settings
    token = settings.metrics_token
    if not token and settings.exchange_env == "production":
        raise HTTPError("unauthorized", "/metrics is closed in production until METRICS_TOKEN is set", 401)
    given = request.headers.get("authorization", "").encode("latin-1")
    if token and not hmac.compare_digest(given, f"Bearer {token}".encode()):
        raise HTTPError("unauthorized", "this endpoint needs METRICS_TOKEN", 401)
    quotes = await services.prices.read_all()
    prices = price_ages({s: q.fetched_at_ms for s, q in quotes.items()}, int(time.time() * 1000))
    # The multiprocess collector reads every worker's files: off the event loop.
    body = await asyncio.to_thread(render, prices)
    return Response(body, media_type=CONTENT_TYPE)
