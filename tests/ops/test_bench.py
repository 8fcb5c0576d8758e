"""`exchange bench` itself: a short spawned run reports every operation, finds the audit
clean and every user's balances as the answers implied. No assertion on speed: speed is
what the benchmark measures, not what the tests check."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from exchange.bench import report, ws
from exchange.bench.scenarios import SCENARIOS
from exchange.config import Settings


async def test_a_short_spawned_run_reports_every_operation_and_loses_nothing(
    settings: Settings, service_urls: tuple[str, str], tmp_path: Path
) -> None:
    results_file = tmp_path / "bench.json"
    env = {**os.environ, "DATABASE_URL": service_urls[0], "REDIS_URL": settings.redis_url}
    args = ["--spawn", "--duration", "2", "--warmup", "0.5", "--users", "16", "--connections", "8"]
    args += ["--rounds", "2"]
    args += ["--scenario", "mixed,hot", "--ceiling", "--json", str(results_file)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange", "bench", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = output.decode()

    assert proc.returncode == 0, text
    results = json.loads(results_file.read_text())
    mixed, hot = results["scenarios"]["mixed"], results["scenarios"]["hot"]
    every_operation = {op.name for op in SCENARIOS["mixed"]}
    assert every_operation == {"deposit", "withdraw", "buy", "sell", "wallets", "history"}
    assert set(mixed["ops"]) == every_operation
    for name, op in {**mixed["ops"], "hot deposit": hot["ops"]["deposit"]}.items():
        assert op["ok"] > 0 and op["errors"] == {}, (name, op)
        assert 0 < op["p50_ms"] <= op["p95_ms"] <= op["p99_ms"] <= op["max_ms"], (name, op)
    assert 0 < mixed["generator_cpu"] < 2
    assert results["audit"] == {"ok": True, "violations": []}
    assert results["balances"] == {"checked": 16, "uncertain": 0, "mismatches": []}
    ceiling = results["ceiling"]
    assert ceiling["select1"]["ops"]["select1"]["ok"] > 0
    assert ceiling["bare_deposit"]["ops"]["deposit"]["ok"] > 0
    if shutil.which("pgbench"):
        assert ceiling["pgbench"]["tpcb_like"] > 0 and ceiling["pgbench"]["hot_row"] > 0
        assert ceiling["pgbench"]["tpcb_like"] == min(ceiling["pgbench"]["rounds"]["tpcb_like"])
        assert len(ceiling["pgbench"]["rounds"]["hot_row"]) == 2
        assert set(results["ratios"]) >= {"hot/hot_row", "mixed/tpcb_like"}
    else:
        assert ceiling["pgbench"] == "pgbench is not installed"
    # Two rounds of everything; each figure is the lower of the two (the median round).
    for summary in (mixed, hot, ceiling["select1"], ceiling["bare_deposit"]):
        assert len(summary["rounds_requests_per_s"]) == 2
        assert summary["requests_per_s"] == min(summary["rounds_requests_per_s"])
    # The table a person reads carries the same findings.
    assert "audit: 0 violation(s)" in text and "16 users checked, 0 mismatch(es)" in text
    assert "rounds: 2; each figure above is its median round" in text


def test_the_median_round_is_reported_whole_with_every_rate_in_order() -> None:
    rounds = [
        {"requests_per_s": rate, "p99_ms": p99}
        for rate, p99 in [(900.0, 30.0), (700.0, 50.0), (800.0, 40.0), (1_000.0, 20.0)]
    ]
    median = report.median_round(rounds)
    assert median == {
        "requests_per_s": 800.0,
        "p99_ms": 40.0,
        "rounds_requests_per_s": [900.0, 700.0, 800.0, 1_000.0],
    }
    assert report.median_round(rounds[:1])["requests_per_s"] == 900.0


def test_the_table_says_pgbench_was_not_measured_only_when_it_was_not() -> None:
    def results(pgbench: object, rounds: int) -> dict[str, object]:
        return {
            "run": {"rounds": rounds},
            "scenarios": {},
            "ceiling": {"pgbench": pgbench},
            "setup": {"users": 1, "register_per_s": 1.0, "login_per_s": 1.0, "bcrypt_rounds": 4},
            "balances": {"checked": 1, "uncertain": 0, "mismatches": []},
            "audit": {"violations": []},
        }

    measured = {
        "tpcb_like": 3_000.0,
        "hot_row": 1_500.0,
        "rounds": {"tpcb_like": [3_000.0], "hot_row": [1_500.0]},
    }
    for rounds in (1, 2):
        text = report.table(results(measured, rounds))
        assert "pgbench tpcb-like: 3,000 tps; one hot row: 1,500 tps" in text
        assert "not measured" not in text
        missing = report.table(results("pgbench is not installed", rounds))
        assert "pgbench: not measured (pgbench is not installed)" in missing


async def test_the_ws_scenario_hears_every_update_at_every_subscriber(base_url: str) -> None:
    """Against the session's server (its feed polls every 100 ms): 20 raw subscribers."""
    results = await ws.run_ws(base_url, subscribers=20, seconds=1.5, server_pid=None)
    assert results["dropped"] == [] and results["in_order"] is True
    counts = results["messages_per_subscriber"]
    assert counts["min"] >= 5 and counts["max"] - counts["min"] <= 1  # every update, each
    assert results["messages"] >= 20 * counts["min"]
    assert 0 < results["delivery_delay_ms"]["p50"] <= results["delivery_delay_ms"]["p99"]
    assert results["rest_read_ms_alone"]["p50"] > 0 and results["rest_read_ms_with_subscribers"]["p50"] > 0
    assert "ws: 20 subscribers" in ws.table({"ws": results})
