"""`exchange bench`: set up users, run each scenario, check nothing was lost, report.

exchange bench --spawn --scenario all --ceiling --json bench.json
exchange bench --url http://127.0.0.1:8000 --admin-email admin@example.com
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import time
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from exchange.bench import ceiling, report, ws
from exchange.bench.client import host_port
from exchange.bench.load import open_connections, run_load
from exchange.bench.scenarios import ALL, API, FUNDING, SCENARIOS, User
from exchange.bench.spawn import log_directory, spawn
from exchange.config import Settings

SETUP_TIMEOUT_SECONDS = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="drive a running server, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--spawn",
        action="store_true",
        help="start `exchange serve` on a fresh database (on DATABASE_URL's server), with the stand-in",
    )
    parser.add_argument(
        "--scenario",
        default="mixed",
        help=f"comma-separated, from {', '.join(ALL)}; or all (default mixed); or ws alone"
        " (WebSocket fan-out, see exchange/bench/ws.py)",
    )
    parser.add_argument("--users", type=int, default=256, help="simulated users (default 256)")
    parser.add_argument(
        "--subscribers", type=int, default=1000, help="--scenario ws: WebSocket subscribers (default 1000)"
    )
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    parser.add_argument(
        "--duration", type=float, default=10, help="measured seconds per scenario (default 10)"
    )
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each (default 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the scenarios (and the ceilings) this many times in turn and report each one's "
        "median round, for machines whose speed drifts (default 1)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="--spawn: server workers (default one per core)"
    )
    parser.add_argument(
        "--bcrypt-rounds",
        type=int,
        default=4,
        help="--spawn: the server's bcrypt cost (default 4, so setup takes seconds; logins are timed apart)",
    )
    parser.add_argument(
        "--ceiling", action="store_true", help="also measure pgbench and a bare SELECT 1 endpoint"
    )
    parser.add_argument("--json", type=Path, help="write the results to this file as JSON")
    parser.add_argument(
        "--server-pid", type=int, help="--url: the server's main pid, to report its CPU per request (Linux)"
    )
    parser.add_argument(
        "--admin-email", help="--url: an admin account for the audit (its password in BENCH_ADMIN_PASSWORD)"
    )


def bench_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.scenario == "ws":
        return ws_command(settings, args)
    scenarios = ALL if args.scenario == "all" else [s.strip() for s in args.scenario.split(",")]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)} (choose from {', '.join(ALL)} or all)")
    if args.users < args.connections:
        raise SystemExit("--users must be at least --connections: every connection has users of its own")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per set-up request is noise
    _install_uvloop()
    results = asyncio.run(bench(settings, args, scenarios))
    print(report.table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    failed = results["balances"]["mismatches"] or results["audit"].get("violations")
    return 1 if failed else 0


def ws_command(settings: Settings, args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _install_uvloop()
    results = asyncio.run(bench_ws(settings, args))
    print(ws.table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 1 if results["ws"]["dropped"] or not results["ws"]["in_order"] else 0


async def bench_ws(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    workers = args.workers or os.cpu_count() or 1
    results: dict[str, Any] = {"machine": report.machine()}
    async with AsyncExitStack() as stack:
        if args.spawn:
            room = str(args.subscribers + 100)  # every subscriber comes from this one address
            spawned = await stack.enter_async_context(
                spawn(
                    settings,
                    workers,
                    args.bcrypt_rounds,
                    log_directory(),
                    WS_MAX_CONNECTIONS=room,
                    WS_MAX_CONNECTIONS_PER_ADDRESS=room,
                    PRICE_POLL_MS="1000",
                )
            )
            url, server_pid = spawned.url, spawned.server_pid
        else:
            url, server_pid = args.url.rstrip("/"), args.server_pid
        results["run"] = {"url": url, "spawned": bool(args.spawn), "workers": workers if args.spawn else None}
        results["ws"] = await ws.run_ws(url, args.subscribers, args.duration, server_pid)
    return results


async def bench(settings: Settings, args: argparse.Namespace, scenarios: list[str]) -> dict[str, Any]:
    workers = args.workers or os.cpu_count() or 1
    log_dir = log_directory()
    async with AsyncExitStack() as stack:
        if args.spawn:
            spawned = await stack.enter_async_context(spawn(settings, workers, args.bcrypt_rounds, log_dir))
            url, server_pid = spawned.url, spawned.server_pid
            admin: tuple[str, str] | None = (spawned.admin_email, spawned.admin_password)
            bcrypt_rounds: int | str = args.bcrypt_rounds
        else:
            url, bcrypt_rounds, server_pid = args.url.rstrip("/"), "the server's", args.server_pid
            password = os.environ.get("BENCH_ADMIN_PASSWORD")
            admin = (args.admin_email, password) if args.admin_email and password else None
        results: dict[str, Any] = {
            "machine": report.machine(),
            "run": {
                "url": url,
                "spawned": bool(args.spawn),
                "workers": workers if args.spawn else None,
                "users": args.users,
                "connections": args.connections,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
            },
        }
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them
        # under a request (an httpx.ReadError between set-up steps).
        limits = httpx.Limits(max_connections=args.connections, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=SETUP_TIMEOUT_SECONDS) as http:
            users, setup = await set_up_users(http, args.users, args.connections)
            results["setup"] = {**setup, "bcrypt_rounds": bcrypt_rounds}
            host, port = host_port(url)
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
            # Round by round, so each scenario's rounds are spread over the same time as
            # the others' and a drift of the machine's speed reaches all of them. New
            # connections each round: the kernel spreads them over the server's workers
            # by a hash, and one unlucky spread must not weigh on every round.
            for _ in range(args.rounds):
                conns = await open_connections(host, port, args.connections)
                try:
                    for name in scenarios:
                        per_conn = [[users[0]]] * args.connections if name == "hot" else [
                            users[i :: args.connections] for i in range(args.connections)
                        ]  # fmt: skip
                        window = await run_load(
                            conns,
                            per_conn,
                            SCENARIOS[name],
                            host=f"{host}:{port}",
                            run_id=f"bench-{secrets.token_hex(6)}",
                            warmup=args.warmup,
                            duration=args.duration,
                            server_pid=server_pid,
                        )
                        rounds[name].append(report.window_summary(window))
                finally:
                    for conn in conns:
                        conn.close()
            results["scenarios"] = {name: report.median_round(each) for name, each in rounds.items()}
            results["balances"] = await check_balances(http, users)
            results["audit"] = await run_audit(http, admin)
    if args.ceiling:
        # After the spawned server has stopped, so it holds no connections: pgbench's
        # clients, the bare app's pools and an idle --url server fit in max_connections.
        results["ceiling"] = await measure_ceiling(settings.database_url, workers, args, log_dir)
    results["ratios"] = report.ratios(results)
    return results


async def set_up_users(
    http: httpx.AsyncClient, count: int, concurrency: int
) -> tuple[list[User], dict[str, Any]]:
    """Register, log in and fund `count` users; registration and login are timed apart,
    since bcrypt is slow on purpose."""
    run = secrets.token_hex(4)
    users = [User(f"bench-{run}-{i}@example.com", secrets.token_urlsafe(12)) for i in range(count)]
    gate = asyncio.Semaphore(concurrency)

    async def each(step: Any) -> float:  # float-ok: time or rate, not money
        async def guarded(user: User) -> None:
            async with gate:
                await step(user)

        started = time.perf_counter()
        await asyncio.gather(*(guarded(user) for user in users))
        return time.perf_counter() - started

    async def register(user: User) -> None:
        answer = await http.post(
            f"{API}/auth/register", json={"email": user.email, "password": user.password}
        )
        _expect(answer, 201, "register")

    async def login(user: User) -> None:
        answer = await http.post(
            f"{API}/auth/token", data={"username": user.email, "password": user.password}
        )
        _expect(answer, 200, "log in")
        user.token = answer.json()["access_token"]
        user.auth = f"Bearer {user.token}"

    async def fund(user: User) -> None:
        for asset, amount in FUNDING.items():
            answer = await http.post(
                f"{API}/wallets/{asset}/deposit",
                json={"amount": str(amount)},
                headers={"Authorization": user.auth, "Idempotency-Key": f"fund-{run}-{user.email}-{asset}"},
            )
            _expect(answer, 201, "fund")
            user.expected[asset] += amount

    register_s = await each(register)
    login_s = await each(login)
    await each(fund)
    return users, {
        "users": count,
        "register_per_s": round(count / register_s, 1),
        "login_per_s": round(count / login_s, 1),
    }


def _expect(answer: httpx.Response, status: int, what: str) -> None:
    if answer.status_code != status:
        raise SystemExit(f"benchmark set-up failed to {what}: {answer.status_code} {answer.text[:300]}")


async def check_balances(http: httpx.AsyncClient, users: list[User]) -> dict[str, Any]:
    """Every user's balances as the server has them, against what the answers implied."""
    mismatches: list[dict[str, str]] = []
    checked = [user for user in users if not user.uncertain]
    gate = asyncio.Semaphore(32)

    async def check(user: User) -> None:
        async with gate:
            answer = await http.get(f"{API}/wallets", headers={"Authorization": user.auth})
        _expect(answer, 200, "read wallets")
        server = {w["asset"]: Decimal(w["balance"]) for w in answer.json()}
        for asset, expected in user.expected.items():
            if server.get(asset, Decimal(0)) != expected:
                mismatches.append(
                    {
                        "user": user.email,
                        "asset": asset,
                        "expected": str(expected),
                        "server": str(server.get(asset)),
                    }
                )

    await asyncio.gather(*(check(user) for user in checked))
    return {"checked": len(checked), "uncertain": len(users) - len(checked), "mismatches": mismatches}


async def run_audit(http: httpx.AsyncClient, admin: tuple[str, str] | None) -> dict[str, Any]:
    if admin is None:
        return {"skipped": "no admin account: pass --admin-email and BENCH_ADMIN_PASSWORD", "violations": []}
    answer = await http.post(f"{API}/auth/token", data={"username": admin[0], "password": admin[1]})
    _expect(answer, 200, "log in as the admin")
    token = answer.json()["access_token"]
    answer = await http.get(f"{API}/admin/audit", headers={"Authorization": f"Bearer {token}"})
    _expect(answer, 200, "run the audit")
    body = answer.json()
    return {"ok": body["ok"], "violations": body["violations"]}


async def measure_ceiling(
    database_url: str, workers: int, args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    bare = await ceiling.bare_endpoints(
        database_url, workers, args.connections, args.warmup, args.duration, log_dir, args.rounds
    )
    return {
        "select1": report.median_round([report.window_summary(w) for w in bare["select1"]]),
        "bare_deposit": report.median_round([report.window_summary(w) for w in bare["deposit"]]),
        "pgbench": await ceiling.pgbench_rates(database_url, args.connections, args.duration, args.rounds),
    }


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
