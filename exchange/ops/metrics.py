"""Prometheus metrics (prometheus_client) and GET /metrics.

Under `exchange serve` every uvicorn worker writes its metrics to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, see metrics_dir.py),
and /metrics, whichever worker answers it, adds them all up. Without that variable (an
app served in-process, as in the tests) the process's default registry is used.

The metrics are module globals, as prometheus_client intends: one set per process.
Label children are resolved once per label set and kept (resolving them costs more than
incrementing them), so a request pays for two increments and one observation.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from typing import Any

from litestar import Request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

# Where a handler notes which money movement a request is (see note_movement).
MOVEMENT_SCOPE_KEY = "exchange.movement"
# Routes, methods and statuses are finite, but a client chooses the method: past this
# many label sets, children are looked up each time instead of being kept.
CHILD_CACHE_MAX = 2_048
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
# prometheus_client chose its mode (files in this directory, or memory) when imported,
# just above: /metrics reads where the metrics were written.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
# What generate_latest writes (and Prometheus reads from any version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REQUESTS = Counter(
    "exchange_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "exchange_http_request_duration_seconds",
    "Time from receiving an HTTP request to the end of its answer, by route, method and status class.",
    ["route", "method", "status_class"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MOVEMENTS = Counter(
    "exchange_money_movements",
    "Money movement requests that reached their handler, by kind and outcome "
    "(ok, replayed, or the error code).",
    ["kind", "outcome"],
)
MOVEMENTS_PER_CALL = Histogram(
    "exchange_movements_per_call",
    "Money movements sent to PostgreSQL in one call (exchange/ledger/batches.py).",
    buckets=(1, 2, 4, 8, 16, 32),
)
# inc/dec rather than set: several feeds may share a process (tests), and livesum adds
# the live workers up, so a host shows 1 while one of its workers polls for everyone.
FEED_LEADER = Gauge(
    "exchange_price_feed_leader",
    "1 while a worker of this server holds the price feed's lease (polls Binance), else 0.",
    multiprocess_mode="livesum",
)

_route_names: dict[str, str] = {}
_request_children: dict[tuple[str | None, str, int], tuple[Any, Any]] = {}
_movement_children: dict[tuple[str, str], Any] = {}
_PATH_PARAMETER = re.compile(r"\{(\w+):\w+\}")


def route_name(path_template: str | None) -> str:
    """`/api/v1/wallets/{asset:str}/deposit` -> `/api/v1/wallets/{asset}/deposit`."""
    if path_template is None:
        return UNMATCHED_ROUTE
    name = _route_names.get(path_template)
    if name is None:
        name = _PATH_PARAMETER.sub(r"{\1}", path_template)
        if len(_route_names) < CHILD_CACHE_MAX:
            _route_names[path_template] = name
    return name


def observe_request(
    path_template: str | None,
    method: str,
    status: int,
    seconds: float,  # float-ok: a duration
) -> None:
    key = (path_template, method, status)
    children = _request_children.get(key)
    if children is None:
        route = route_name(path_template)
        method_label = method if method in KNOWN_METHODS else "other"
        children = (
            REQUESTS.labels(route, method_label, str(status)),
            REQUEST_SECONDS.labels(route, method_label, f"{status // 100}xx"),
        )
        if len(_request_children) < CHILD_CACHE_MAX:
            _request_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def count_movement(kind: str, outcome: str) -> None:
    child = _movement_children.get((kind, outcome))
    if child is None:
        child = MOVEMENTS.labels(kind, outcome)
        if len(_movement_children) < CHILD_CACHE_MAX:
            _movement_children[kind, outcome] = child
    child.inc()


def note_movement(request: Request[Any, Any, Any], kind: str) -> None:
    """Called by a movement's handler: the request middleware counts its outcome."""
    request.scope[MOVEMENT_SCOPE_KEY] = kind  # type: ignore[literal-required]


def price_ages(fetched_at_ms: dict[str, int], now_ms: int) -> GaugeMetricFamily:
    """Each market's price age at scrape time, from when Binance gave it."""
    family = GaugeMetricFamily(
        "exchange_price_age_seconds",
        "Age of the cached price of each market, from the time Binance gave it, at scrape time.",
        labels=["symbol"],
    )
    for symbol in sorted(fetched_at_ms):
        family.add_metric([symbol], max(0, now_ms - fetched_at_ms[symbol]) / 1000)
    return family


class _Scrape:
    """What one /metrics answer shows: every worker's metrics (or this process's), and
    the price ages computed now."""

    def __init__(self, prices: GaugeMetricFamily) -> None:
        self._prices = prices

    def collect(self) -> Iterator[Metric]:
        if MULTIPROCESS_DIR:
            forget_dead_workers(MULTIPROCESS_DIR)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
            yield from registry.collect()
        else:
            yield from REGISTRY.collect()
        yield self._prices


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that died without saying so (SIGKILL, crash):
    uvicorn restarts them under new pids, and their old values would still count."""
    files = glob.glob(os.path.join(directory, "gauge_live*_*.db"))
    for pid in {int(m.group(1)) for f in files if (m := _PID.search(f))}:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)


_PID = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def feed_leadership_changed(leading: bool) -> None:
    """The price feed's callback: this worker took (or lost) the feed's lease."""
    FEED_LEADER.inc(1 if leading else -1)


def worker_stopped() -> None:
    """A worker that stops cleanly takes its live gauges out at once."""
    if MULTIPROCESS_DIR:
        multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)


def render(prices: GaugeMetricFamily) -> bytes:
    return generate_latest(_Scrape(prices))  # type: ignore[arg-type]
