"""The `exchange` command: serve | migrate | create-admin | audit | bench | fake-binance."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys

import msgspec

from exchange import repo
from exchange.bench.run import add_arguments as add_bench_arguments
from exchange.bench.run import bench_command
from exchange.config import Settings, settings_from_env
from exchange.db import connect, migrate
from exchange.errors import ExchangeError
from exchange.fake_binance import create_fake_binance, serve_in_thread
from exchange.logs import configure_logging, log_format_from_env
from exchange.metrics_dir import metrics_directory
from exchange.security import check_password_rules, hash_password
from exchange.serving import run_uvicorn, websocket_options
from exchange.sockets import listening_socket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply pending migrations, then serve HTTP (uvicorn)")
    serve.add_argument("--host", help="bind address (HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (WORKERS, default: one per core)")
    serve.add_argument(
        "--fake-binance",
        action="store_true",
        help="run offline: start the local Binance stand-in and take prices from it (FAKE_BINANCE)",
    )

    commands.add_parser("migrate", help="apply pending migrations and exit")

    admin = commands.add_parser("create-admin", help="make EMAIL an admin (creating the account if needed)")
    admin.add_argument("email")
    admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the new account's password from standard input (else ADMIN_PASSWORD, else a prompt)",
    )

    commands.add_parser("audit", help="check every ledger invariant; exit 1 on any violation")

    fake = commands.add_parser("fake-binance", help="serve the local stand-in for Binance's REST API")
    fake.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    fake.add_argument("--port", type=int, default=9100, help="port (default 9100)")
    fake.add_argument("--seed", type=int, default=1, help="random-walk seed: same seed, same prices")

    bench = commands.add_parser(
        "bench", help="load a server with simulated users, then check the ledger (see README: Performance)"
    )
    add_bench_arguments(bench)

    args = parser.parse_args(argv)
    if args.command == "serve":
        # Before the settings are read: their check may warn already.
        configure_logging("info", log_format_from_env())
    else:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_from_env()
    if args.command == "serve":
        if args.fake_binance:
            settings = msgspec.structs.replace(settings, fake_binance=True)
        return serve_command(settings, args.host, args.port, args.workers)
    if args.command == "migrate":
        applied = asyncio.run(migrate(settings.database_url))
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
        return 0
    if args.command == "create-admin":
        return asyncio.run(create_admin(settings, args.email, args.password_stdin))
    if args.command == "audit":
        return asyncio.run(audit_command(settings))
    if args.command == "bench":
        return bench_command(settings, args)
    if args.command == "fake-binance":
        return fake_binance_command(args.host, args.port, args.seed)
    parser.error(f"unknown command {args.command}")
    return 2


def serve_command(settings: Settings, host: str | None, port: int | None, workers: int | None) -> int:
    asyncio.run(migrate(settings.database_url))
    if settings.fake_binance:
        # The workers read BINANCE_URL from the environment they inherit.
        os.environ["BINANCE_URL"] = serve_in_thread(settings.fake_binance_seed)
        logging.getLogger("exchange").info(
            "offline mode: prices come from the local Binance stand-in at %s", os.environ["BINANCE_URL"]
        )
    if port is not None:
        # The workers' settings name the port too (their WebSocket slots are counted per
        # host and port, exchange/prices/slots.py).
        os.environ["PORT"] = str(port)
    # The workers inherit PROMETHEUS_MULTIPROC_DIR: /metrics adds up all of them.
    with metrics_directory():
        run_uvicorn(
            "exchange.app:create_app",
            host or settings.host,
            settings.port if port is None else port,
            workers or settings.workers or os.cpu_count() or 1,
            settings.log_level,
            settings.log_format,
            websocket_options(settings),
        )
    return 0


def fake_binance_command(host: str, port: int, seed: int) -> int:
    import uvicorn

    print(f"Binance stand-in on http://{host}:{port} (seed {seed}); control: /_fake/stats, /_fake/faults")
    sock = listening_socket(host, port)
    uvicorn.Server(uvicorn.Config(create_fake_binance(seed), log_level="warning")).run(sockets=[sock])
    return 0


async def create_admin(settings: Settings, email: str, password_stdin: bool) -> int:
    conn = await connect(settings.database_url)
    try:
        user = await repo.set_role(conn, email, "admin")
        if user is None:
            password = _read_password(password_stdin)
            try:
                check_password_rules(password)
            except ExchangeError as exc:
                raise SystemExit(exc.message) from None
            password_hash = await hash_password(password, settings.bcrypt_rounds)
            user = await repo.create_user(conn, email, password_hash, role="admin")
            print(f"created admin {user.email} (id {user.id})")
        else:
            print(f"{user.email} (id {user.id}) is now an admin")
    finally:
        await conn.close()
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("ADMIN_PASSWORD"):
        return os.environ["ADMIN_PASSWORD"]
    password = getpass.getpass("password for the new admin: ")
    if getpass.getpass("again: ") != password:
        raise SystemExit("the passwords differ")
    return password


async def audit_command(settings: Settings) -> int:
    conn = await connect(settings.database_url)
    try:
        violations = await repo.audit(conn)
    finally:
        await conn.close()
    for violation in violations:
        print(f"{violation.invariant}: {violation.subject} ({violation.amount})")
    print(f"audit: {len(violations)} violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
