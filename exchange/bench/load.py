"""The load loop: C keep-alive connections, each sending its next request as soon as
the last one is answered, for a warm-up and then the measured window."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from exchange.bench import cpu
from exchange.bench.client import Connection, ConnectionLost
from exchange.bench.scenarios import Operation, User, error_code


@dataclass
class OpStats:
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Window:
    """What one scenario's measured window recorded."""

    seconds: float = 0.0  # float-ok: time or rate, not money
    cpu_seconds: float = 0.0  # float-ok: time or rate, not money
    ops: dict[str, OpStats] = field(default_factory=dict)
    # CPU seconds by process group at the window's start and end (bench/cpu.py).
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu_end: dict[str, float] = field(default_factory=dict)


async def run_load(
    connections: list[Connection],
    users_per_connection: list[list[User]],
    operations: list[Operation],
    *,
    host: str,
    run_id: str,
    warmup: float,  # float-ok: time or rate, not money
    duration: float,  # float-ok: time or rate, not money
    server_pid: int | None = None,
) -> Window:
    window = Window(ops={op.name: OpStats() for op in operations})
    loop = asyncio.get_running_loop()
    start_at = loop.time() + warmup
    stop_at = start_at + duration
    clock: dict[str, float] = {}

    async def open_window() -> None:
        await asyncio.sleep(warmup)
        window.cpu_start = cpu.snapshot(server_pid)
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

    async def worker(conn: Connection, users: list[User], offset: int) -> None:
        i, n_ops, n_users = offset, len(operations), len(users)
        while (now := loop.time()) < stop_at:
            op = operations[i % n_ops]
            # The user moves on every request and shifts once per cycle of operations,
            # so every user meets every operation whatever the two lengths are.
            user = users[(i + i // n_ops) % n_users]
            i += 1
            request = op.request(user, host, run_id)
            recording = now >= start_at
            started = time.perf_counter_ns()
            try:
                status, _, body = await conn.send(request)
            except (ConnectionLost, OSError) as exc:
                if op.apply is not None:
                    user.uncertain = True
                if recording:
                    window.ops[op.name].errors[f"connection: {type(exc).__name__}"] += 1
                conn.close()
                continue
            elapsed = time.perf_counter_ns() - started
            if status < 300:
                if op.apply is not None:
                    op.apply(user, body)
                if recording:
                    window.ops[op.name].latencies_ns.append(elapsed)
            else:
                if status >= 500 and op.apply is not None:
                    user.uncertain = True  # a 503 may follow a COMMIT (README: Faults)
                if recording:
                    window.ops[op.name].errors[error_code(status, body)] += 1

    tasks = [
        worker(conn, users, n * 7)
        for n, (conn, users) in enumerate(zip(connections, users_per_connection, strict=True))
    ]
    await asyncio.gather(open_window(), *tasks)
    window.seconds = time.perf_counter() - clock["wall"]
    window.cpu_seconds = time.process_time() - clock["cpu"]
    window.cpu_end = cpu.snapshot(server_pid)
    return window


async def open_connections(host: str, port: int, count: int) -> list[Connection]:
    connections = [Connection(host, port) for _ in range(count)]
    await asyncio.gather(*(conn.open() for conn in connections))
    return connections
