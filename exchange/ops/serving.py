"""How the product is served by uvicorn (also used for the benchmark's bare endpoint).

With several workers, each one listens on a socket of its own with SO_REUSEPORT, and
the kernel spreads new connections over them by a hash of each connection's addresses.
uvicorn's own multi-worker mode shares one listening socket, and the worker that wakes
first accepts every connection waiting: `exchange bench` saw its 64 keep-alive
connections land 54 on one worker and 10 on the other, one core saturated and the other
idle half the time, and so would a fleet of trading bots reconnecting at once. Where
the platform has no SO_REUSEPORT, uvicorn's own mode serves.

The supervisor (this process) holds the port without listening on it, so a second
server on the same port fails at start instead of sharing it; it restarts a worker
that dies, and stops every worker on SIGINT, SIGTERM or SIGHUP. A worker that fails its own
start (the database unreachable, say) stops the server with that failure's exit code.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from exchange.config import Settings
from exchange.ops.http_limits import HttpLimits, uvicorn_options
from exchange.ops.logs import logging_config, write_logs_before_dying_of
from exchange.ops.sockets import bound_socket
from exchange.ops.wire import WireProtocol

log = logging.getLogger("exchange.ops.serving")
# How long a stopping worker may finish its requests before it is killed.
STOP_SECONDS = 30.0
# Pooled connections all workers may hold by default: PostgreSQL's default max_connections
# is 100; the rest is left to psql, migrations and other clients.
DEFAULT_CONNECTIONS_BUDGET = 80
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (a container's --cpuset-cpus)
    and a cgroup v2 CPU quota (--cpus), where os.cpu_count() sees the whole host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return cores


def default_workers(pool_max_size: int) -> int:
    """One worker per usable core, as many as DEFAULT_CONNECTIONS_BUDGET pooled connections
    allow (8 with DB_POOL_MAX_SIZE=10)."""
    return max(1, min(usable_cores(), DEFAULT_CONNECTIONS_BUDGET // pool_max_size))


def run_uvicorn(
    factory: str,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    log_format: str,
    http_limits: HttpLimits | None = None,
    ws_options: dict[str, Any] | None = None,
) -> None:
    """`exchange bench --ceiling` serves its bare endpoint through this too, so the two
    are served alike."""
    http_limits = http_limits or HttpLimits()
    options: dict[str, Any] = {
        **(ws_options or {}),
        "factory": True,
        "host": host,
        "port": port,
        # uvloop and httptools (installed with the package) where the platform has them.
        "loop": "auto",
        "http": "auto",
        "log_level": log_level,
        "log_config": logging_config(log_level, log_format),
        # exchange.access logs every request instead (exchange/http/middleware.py).
        "access_log": False,
        # Header bounds, limit_concurrency, no proxy headers: added in the process that
        # serves (uvicorn_options), as its protocol class is made there.
        "http_limits": http_limits,
    }
    if workers == 1:
        write_logs_before_dying_of(signal.SIGTERM)
        uvicorn.run(factory, **_with_limits(options))
        return
    if not hasattr(socket, "SO_REUSEPORT"):
        # uvicorn's own workers get a pickled Config, which cannot carry the bounded
        # protocol class: header bounds are then uvicorn's (none with httptools).
        options.pop("http_limits")
        log.warning("no SO_REUSEPORT: header size and header timeout bounds are not enforced")
        write_logs_before_dying_of(signal.SIGTERM)
        uvicorn.run(factory, workers=workers, proxy_headers=False, **options)
        return
    raise SystemExit(Supervisor(factory, options, workers).run())


def _with_limits(options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    limits = options.pop("http_limits")
    return {**options, **uvicorn_options(limits)}


# The price socket expects nothing from clients: a frame announcing more than this is
# refused (close 1009) before its payload is read. With uvicorn's default, 16 MiB, ten
# partial 15 MB frames added 145 MB of RSS.
WS_MAX_MESSAGE_BYTES = 4_096


def websocket_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves WebSockets: through WireProtocol (exchange/ops/wire.py), with
    the keepalive ping from the settings, small messages, and no compression (every
    price frame is built once for all clients, and deflate kept zlib state per connection)."""
    return {
        "ws": WireProtocol,
        "ws_max_size": WS_MAX_MESSAGE_BYTES,
        "ws_ping_interval": settings.ws_ping_interval_ms / 1000,
        "ws_ping_timeout": settings.ws_ping_timeout_ms / 1000,
        "ws_per_message_deflate": False,
    }


def serve_worker(factory: str, options: dict[str, Any]) -> None:
    """One worker process: uvicorn on a listening socket of its own."""
    config = uvicorn.Config(factory, **_with_limits(options))  # sets up this process's logging
    write_logs_before_dying_of(signal.SIGTERM)
    try:
        config.load()  # imports the app: a worker that cannot is a start that failed
    except (SystemExit, Exception):
        # uvicorn exits 1 (or an import raises): said as a failed start, the supervisor
        # stops instead of starting workers that die the same way, forever.
        log.exception("the app could not be loaded")
        raise SystemExit(STARTUP_FAILURE) from None
    sock = bound_socket(options["host"], options["port"], reuse_port=True)
    uvicorn.Server(config).run(sockets=[sock])  # listens; SIGINT/SIGTERM stop it gracefully


class Supervisor:
    def __init__(self, factory: str, options: dict[str, Any], workers: int) -> None:
        self._factory = factory
        self._options = options
        self._count = workers
        self._context = multiprocessing.get_context("spawn")

    def run(self) -> int:
        host, port = self._options["host"], self._options["port"]
        # Fails if anything listens on the port already (without SO_REUSEPORT, a second
        # server's bind would fail; with it, the two would silently share the port).
        bound_socket(host, port).close()
        # Holds the port while the workers start: without SO_REUSEADDR, another server's
        # probe cannot bind next to it; with SO_REUSEPORT, the workers can.
        holder = bound_socket(host, port, reuse_port=True, reuse_address=False)
        stop: list[int] = []  # a signal handler only appends (no lock it could wait on)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda signum, _: stop.append(signum))
        workers = [self._start() for _ in range(self._count)]
        log.info("serving on %s:%d with %d workers, one listening socket each", host, port, self._count)
        exit_code = 0
        try:
            while not stop:
                time.sleep(0.5)
                for index, worker in enumerate(workers):
                    if stop or worker.is_alive():
                        continue
                    if worker.exitcode == STARTUP_FAILURE:
                        log.error("worker %s failed to start; stopping", worker.pid)
                        exit_code = STARTUP_FAILURE
                        stop.append(0)
                        break
                    log.warning("worker %s exited (%s); starting another", worker.pid, worker.exitcode)
                    workers[index] = self._start()
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()  # SIGTERM: uvicorn finishes its requests, then exits
            for worker in workers:
                worker.join(STOP_SECONDS)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
            holder.close()
        log.info("stopped: every worker has exited")
        return exit_code

    def _start(self) -> multiprocessing.process.BaseProcess:
        worker = self._context.Process(target=serve_worker, args=(self._factory, self._options))
        worker.start()
        return worker
