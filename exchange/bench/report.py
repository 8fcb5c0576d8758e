"""The benchmark's results: per-operation rates and latencies, ratios to the ceilings,
as a table for people and as JSON for tools."""

from __future__ import annotations

import os
import platform
from statistics import median_low
from typing import Any

from exchange.bench import cpu
from exchange.bench.load import OpStats, Window


def percentile(sorted_ns: list[int], fraction: float) -> float:  # float-ok: latency
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(0, min(len(sorted_ns) - 1, round(fraction * len(sorted_ns)) - 1))
    return sorted_ns[rank] / 1e6


def op_summary(stats: OpStats, seconds: float) -> dict[str, Any]:  # float-ok: a duration
    latencies = sorted(stats.latencies_ns)
    return {
        "requests_per_s": round(len(latencies) / seconds, 1) if seconds else 0.0,
        "ok": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1] / 1e6, 2) if latencies else 0.0,
        "errors": dict(stats.errors),
    }


def window_summary(window: Window) -> dict[str, Any]:
    ops = {name: op_summary(stats, window.seconds) for name, stats in window.ops.items()}
    answered = sum(len(s.latencies_ns) + sum(s.errors.values()) for s in window.ops.values())
    every = sorted(ns for stats in window.ops.values() for ns in stats.latencies_ns)
    return {
        "seconds": round(window.seconds, 2),
        "requests_per_s": round(sum(op["requests_per_s"] for op in ops.values()), 1),
        # Over every operation of the scenario together.
        "p50_ms": round(percentile(every, 0.50), 2),
        "p95_ms": round(percentile(every, 0.95), 2),
        "p99_ms": round(percentile(every, 0.99), 2),
        # CPU seconds the generator spent per wall second: 1.0 is one whole core.
        "generator_cpu": round(window.cpu_seconds / window.seconds, 3) if window.seconds else 0.0,
        # µs of CPU per request by process group, and the machine's busy share.
        "cpu_per_request": cpu.per_request(window.cpu_start, window.cpu_end, answered, window.seconds),
        "ops": ops,
    }


def median_round(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Of one scenario's rounds, the one with the median rate (the lower middle for an
    even count), reported whole so its latencies and CPU belong to its rate; every
    round's rate, in the order they ran, in "rounds_requests_per_s"."""
    rates = [summary["requests_per_s"] for summary in summaries]
    median = summaries[rates.index(median_low(rates))]
    return {**median, "rounds_requests_per_s": rates}


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """Each target of issue 6 as a fraction: deposit / bare SELECT 1, trade / deposit,
    hot / one-hot-row PL/pgSQL, and every scenario / pgbench tpcb-like."""
    scenarios = results["scenarios"]
    ceiling = results.get("ceiling") or {}
    rate = {name: s["requests_per_s"] for name, s in scenarios.items()}
    out: dict[str, float] = {}

    def ratio(name: str, numerator: float | None, denominator: float | None) -> None:  # float-ok: rates
        if numerator is not None and denominator:
            out[name] = round(numerator / denominator, 3)

    select1 = ceiling.get("select1", {}).get("requests_per_s")
    pgbench = ceiling.get("pgbench") if isinstance(ceiling.get("pgbench"), dict) else {}
    ratio("deposit/select1", rate.get("deposit"), select1)
    ratio("deposit/bare_deposit", rate.get("deposit"), ceiling.get("bare_deposit", {}).get("requests_per_s"))
    ratio("trade/deposit", rate.get("trade"), rate.get("deposit"))
    ratio("hot/hot_row", rate.get("hot"), pgbench.get("hot_row"))
    for name, value in rate.items():
        ratio(f"{name}/tpcb_like", value, pgbench.get("tpcb_like"))
    return out


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def table(results: dict[str, Any]) -> str:
    rows = [("scenario", "operation", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "gen CPU", "errors")]
    for scenario, summary in results["scenarios"].items():
        rows += _rows(scenario, summary)
    ceiling = results.get("ceiling") or {}
    if "select1" in ceiling:
        rows += _rows("ceiling", ceiling["select1"])
    if "bare_deposit" in ceiling:
        rows += [
            (scenario, "bare deposit", *rest)
            for scenario, _, *rest in _rows("ceiling", ceiling["bare_deposit"])
        ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    # Names left-aligned, figures right-aligned.
    lines = [
        "  ".join(
            cell.rjust(w) if 1 < i < 8 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    cpu_lines = [(name, summary.get("cpu_per_request")) for name, summary in results["scenarios"].items()]
    for name in ("select1", "bare_deposit"):
        if name in ceiling:
            cpu_lines.append((f"bare {name.removeprefix('bare_')}", ceiling[name].get("cpu_per_request")))
    for name, use in cpu_lines:
        if use:
            groups = ", ".join(
                f"{k.removesuffix('_us')} {v:,.0f}" for k, v in use.items() if k.endswith("_us")
            )
            lines.append(f"CPU µs per request, {name}: {groups}; machine {use['machine_busy']:.0%} busy")
    pgbench = ceiling.get("pgbench")
    if isinstance(pgbench, dict):
        lines.append(
            f"pgbench tpcb-like: {pgbench['tpcb_like']:,.0f} tps; one hot row: {pgbench['hot_row']:,.0f} tps"
        )
    elif pgbench:
        lines.append(f"pgbench: not measured ({pgbench})")
    if results["run"]["rounds"] > 1:
        lines += _rounds_lines(results)
    if results.get("ratios"):
        lines.append("ratios: " + ", ".join(f"{k} {v:.0%}" for k, v in results["ratios"].items()))
    setup = results["setup"]
    lines.append(
        f"setup: {setup['users']} users registered at {setup['register_per_s']:,.1f}/s, "
        f"logged in at {setup['login_per_s']:,.1f}/s (bcrypt cost {setup['bcrypt_rounds']})"
    )
    balances, audit = results["balances"], results["audit"]
    lines.append(
        f"balances: {balances['checked']} users checked, {len(balances['mismatches'])} mismatch(es), "
        f"{balances['uncertain']} left unchecked (a request without an answer)"
    )
    if audit.get("skipped"):
        lines.append(f"audit: not run ({audit['skipped']})")
    else:
        lines.append(f"audit: {len(audit['violations'])} violation(s)")
    return "\n".join(lines)


def _rows(scenario: str, summary: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    ops = summary["ops"]
    for name, op in ops.items():
        errors = ", ".join(f"{code} {n}" for code, n in op["errors"].items()) or "-"
        out.append(
            (scenario, name, f"{op['requests_per_s']:,.0f}", f"{op['p50_ms']:.2f}", f"{op['p95_ms']:.2f}",
             f"{op['p99_ms']:.2f}", f"{op['max_ms']:.1f}", f"{summary['generator_cpu']:.0%}", errors)
        )  # fmt: skip
    if len(ops) > 1:
        latency = [f"{summary[key]:.2f}" for key in ("p50_ms", "p95_ms", "p99_ms")]
        rate, cpu = f"{summary['requests_per_s']:,.0f}", f"{summary['generator_cpu']:.0%}"
        out.append((scenario, "all", rate, *latency, "", cpu, ""))
    return out


def _rounds_lines(results: dict[str, Any]) -> list[str]:
    """Each round's rate, in the order they ran: the spread behind the medians above."""
    ceiling = results.get("ceiling") or {}
    rates = {name: summary["rounds_requests_per_s"] for name, summary in results["scenarios"].items()}
    for name in ("select1", "bare_deposit"):
        if name in ceiling:
            rates[f"bare {name.removeprefix('bare_')}"] = ceiling[name]["rounds_requests_per_s"]
    pgbench = ceiling.get("pgbench")
    if isinstance(pgbench, dict):
        rates.update({f"pgbench {name}": each for name, each in pgbench["rounds"].items()})
    lines = [f"rounds: {results['run']['rounds']}; each figure above is its median round. Rates by round:"]
    lines += [f"  {name}: " + ", ".join(f"{rate:,.0f}" for rate in each) for name, each in rates.items()]
    return lines
