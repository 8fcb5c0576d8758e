"""How the product is served by uvicorn (also used for the benchmark's bare endpoint)."""

from __future__ import annotations

import uvicorn

from exchange.logs import logging_config


def run_uvicorn(factory: str, host: str, port: int, workers: int, log_level: str, log_format: str) -> None:
    """`exchange bench --ceiling` serves its bare endpoint through this too, so the two
    are served alike."""
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # uvloop and httptools (installed with the package) where the platform has them.
        loop="auto",
        http="auto",
        log_level=log_level,
        log_config=logging_config(log_level, log_format),
        # exchange.access logs every request instead (exchange/observability.py).
        access_log=False,
    )
