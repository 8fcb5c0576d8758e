"""How the product is served by uvicorn (also used for the benchmark's bare endpoint)."""

from __future__ import annotations

import uvicorn


def run_uvicorn(factory: str, host: str, port: int, workers: int, log_level: str) -> None:
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
    )
