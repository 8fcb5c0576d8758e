"""Where the machine's CPU went during a measured window, read from /proc (Linux).

Everything runs on one machine here: the server, PostgreSQL, Redis and the generator
share its cores, so CPU time per request, by process group, is what explains a figure
(and shows the generator is not what limits it). Elsewhere the groups come back empty.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


def snapshot(server_pid: int | None) -> dict[str, float]:
    """CPU seconds used so far by each group: server (the spawned process and its
    workers), postgres, redis, generator (this process); and the machine's busy time."""
    groups = {"server": 0.0, "postgres": 0.0, "redis": 0.0, "generator": 0.0}
    if not PROC.is_dir():
        return {}
    parents: dict[int, int] = {}
    used: dict[int, tuple[str, float]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        # "pid (comm) state ppid ... utime stime": comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = (comm, (int(fields[11]) + int(fields[12])) / TICKS)
    me = os.getpid()
    for pid, (comm, seconds) in used.items():
        if pid == me:
            groups["generator"] += seconds
        elif server_pid is not None and _descends(pid, server_pid, parents):
            groups["server"] += seconds
        elif comm == "postgres":
            groups["postgres"] += seconds
        elif comm.startswith("redis-server"):
            groups["redis"] += seconds
    groups["machine"] = _machine_busy_seconds()
    return groups


def _descends(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = parents.get(pid, 0)
    return False


def _machine_busy_seconds() -> float:  # float-ok: CPU seconds
    # cpu  user nice system idle iowait irq softirq steal ...: busy is all but idle+iowait.
    values = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICKS


def per_request(
    before: dict[str, float],
    after: dict[str, float],
    requests: int,
    seconds: float,  # float-ok: time or rate, not money
) -> dict[str, float]:
    """µs of CPU per request for each group, and how busy the whole machine was (0-1)."""
    if not before or not requests or not seconds:
        return {}
    out = {f"{group}_us": round((after[group] - before[group]) / requests * 1e6, 1) for group in before}
    out.pop("machine_us")
    cores = os.cpu_count() or 1
    out["machine_busy"] = round((after["machine"] - before["machine"]) / (seconds * cores), 3)
    return out
