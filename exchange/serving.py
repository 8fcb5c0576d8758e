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
import multiprocessing
import signal
import socket
import time
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from exchange.config import Settings
from exchange.logs import logging_config
from exchange.sockets import bound_socket
from exchange.wire import WireProtocol

log = logging.getLogger("exchange.serving")
# How long a stopping worker may finish its requests before it is killed.
STOP_SECONDS = 30.0


def run_uvicorn(
    factory: str,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    log_format: str,
    ws_options: dict[str, Any] | None = None,
) -> None:
    """`exchange bench --ceiling` serves its bare endpoint through this too, so the two
    are served alike."""
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
        # exchange.access logs every request instead (exchange/observability.py).
        "access_log": False,
    }
    if workers == 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(factory, workers=workers, **options)
        return
    raise SystemExit(Supervisor(factory, options, workers).run())


# The price socket expects nothing from clients: a frame announcing more than this is
# refused (close 1009) before its payload is read. With uvicorn's default, 16 MiB, ten
# partial 15 MB frames added 145 MB of RSS.
WS_MAX_MESSAGE_BYTES = 4_096


def websocket_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves WebSockets: through WireProtocol (exchange/wire.py), with
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
    config = uvicorn.Config(factory, **options)  # sets up this process's logging
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
        return exit_code

    def _start(self) -> multiprocessing.process.BaseProcess:
        worker = self._context.Process(target=serve_worker, args=(self._factory, self._options))
        worker.start()
        return worker
