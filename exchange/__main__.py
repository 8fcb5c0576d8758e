"""The `exchange` command: serve | migrate | sql | create-admin | audit | bench | fake-binance."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys

from exchange.auth.emails import checked_email, email_report, normal_email
from exchange.auth.security import check_password_rules, hash_password
from exchange.bench.run import add_arguments as add_bench_arguments
from exchange.bench.run import bench_command
from exchange.config import Settings, refuse_fake_binance_in_production, settings_from_env
from exchange.errors import ExchangeError
from exchange.ops.http_limits import http_limits_from
from exchange.ops.logs import configure_logging, log_format_from_env
from exchange.ops.metrics_dir import metrics_directory
from exchange.ops.serving import default_workers, run_uvicorn, websocket_options
from exchange.ops.sockets import listening_socket
from exchange.prices.fake_binance import create_fake_binance, serve_in_thread
from exchange.store import repository as repo
from exchange.store.db import connect, migrate, migrate_report
from exchange.store.function_files import FunctionDrift, drift_report, function_plan, read_function_files

# Connections left to psql, migrations and PostgreSQL's reserved superuser slots.
SPARE_CONNECTIONS = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply pending migrations, then serve HTTP (uvicorn)")
    serve.add_argument("--host", help="bind address (HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (PORT, default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes (WORKERS; default: one per usable core, at most 80 / DB_POOL_MAX_SIZE)",
    )
    serve.add_argument(
        "--fake-binance",
        action="store_true",
        help="run offline: start the local Binance stand-in and take prices from it (FAKE_BINANCE)",
    )

    migrate_parser = commands.add_parser(
        "migrate", help="apply pending migrations, then the changed files of sql/functions, and exit"
    )
    migrate_parser.add_argument(
        "--dry-run", action="store_true", help="show what would be applied and any drift; change nothing"
    )
    migrate_parser.add_argument(
        "--force", action="store_true", help="overwrite functions changed by hand in the database"
    )

    sql = commands.add_parser("sql", help="compare sql/functions with the database (DBA tools)")
    sql_commands = sql.add_subparsers(dest="sql_command", required=True)
    sql_commands.add_parser(
        "check", help="name every function, view or trigger that differs from its file; exit 1 if any"
    )
    sql_commands.add_parser("status", help="what `exchange migrate` would apply (same as migrate --dry-run)")

    admin = commands.add_parser(
        "create-admin", help="make EMAIL an enabled admin (creating the account if needed)"
    )
    admin.add_argument("email")
    admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the new account's password from standard input (else ADMIN_PASSWORD, else a prompt)",
    )

    commands.add_parser("audit", help="check every ledger invariant; exit 1 on any violation")

    emails = commands.add_parser(
        "check-emails",
        help="report accounts whose emails collide once normalised, or hold characters now refused "
        "(exit 1 if any); --normalize stores the others in their normal form",
    )
    emails.add_argument(
        "--normalize",
        action="store_true",
        help="store each email that neither collides nor is refused in its normal form",
    )

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
    # The flag goes through the settings' own check (production refuses the stand-in).
    overrides = {"fake_binance": True} if args.command == "serve" and args.fake_binance else {}
    settings = settings_from_env(**overrides)
    if args.command == "serve":
        return serve_command(settings, args.host, args.port, args.workers)
    if args.command == "migrate":
        return migrate_command(settings, dry_run=args.dry_run, force=args.force)
    if args.command == "sql":
        if args.sql_command == "status":
            return migrate_command(settings, dry_run=True, force=False)
        return asyncio.run(sql_check_command(settings))
    if args.command == "create-admin":
        return asyncio.run(create_admin(settings, args.email, args.password_stdin))
    if args.command == "audit":
        return asyncio.run(audit_command(settings))
    if args.command == "check-emails":
        return asyncio.run(check_emails_command(settings, args.normalize))
    if args.command == "bench":
        return bench_command(settings, args)
    if args.command == "fake-binance":
        refuse_fake_binance_in_production(settings.exchange_env)
        return fake_binance_command(args.host, args.port, args.seed)
    parser.error(f"unknown command {args.command}")
    return 2


def migrate_command(settings: Settings, *, dry_run: bool, force: bool) -> int:
    try:
        report = asyncio.run(migrate_report(settings.database_url, dry_run=dry_run, force=force, strict=True))
    except FunctionDrift as exc:
        print(exc, file=sys.stderr)
        return 1
    migrations, files = report.migrations, report.function_files
    if dry_run:
        print(f"would apply {len(migrations)} migration(s): {', '.join(migrations) or 'none pending'}")
        print(f"would apply {len(files)} function file(s): {', '.join(files) or 'none changed'}")
        for line in drift_report(report.functions):
            print(line)
        return 0
    print(f"applied {len(migrations)} migration(s): {', '.join(migrations) or 'none pending'}")
    print(f"applied {len(files)} function file(s): {', '.join(files) or 'none changed'}")
    return 0


async def sql_check_command(settings: Settings) -> int:
    conn = await connect(settings.database_url)
    try:
        plan = await function_plan(conn, read_function_files())
    finally:
        await conn.close()
    lines = drift_report(plan)
    for line in lines:
        print(line)
    print(f"sql check: {len(lines)} difference(s) between sql/functions and the database")
    return 1 if lines else 0


def serve_command(settings: Settings, host: str | None, port: int | None, workers: int | None) -> int:
    asyncio.run(migrate(settings.database_url))
    workers = workers or settings.workers or default_workers(settings.db_pool_max_size)
    asyncio.run(warn_if_pools_exceed_max_connections(settings, workers))
    if settings.fake_binance:
        # The workers read BINANCE_URL from the environment they inherit.
        os.environ["BINANCE_URL"] = serve_in_thread(settings.fake_binance_seed)
        logging.getLogger("exchange").info(
            "offline mode: prices come from the local Binance stand-in at %s (its control "
            "endpoints are off: prices cannot be set from outside)",
            os.environ["BINANCE_URL"],
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
            workers,
            settings.log_level,
            settings.log_format,
            http_limits_from(settings),
            websocket_options(settings),
        )
    return 0


async def warn_if_pools_exceed_max_connections(settings: Settings, workers: int) -> None:
    """Each worker's pool may open DB_POOL_MAX_SIZE connections: past PostgreSQL's
    max_connections, requests would fail under load with "too many clients"."""
    conn = await connect(settings.database_url)
    try:
        max_connections = await repo.max_connections(conn)
    finally:
        await conn.close()
    pooled = workers * settings.db_pool_max_size
    if pooled > max_connections - SPARE_CONNECTIONS:
        logging.getLogger("exchange").warning(
            "%d workers x DB_POOL_MAX_SIZE %d = %d pooled connections, against PostgreSQL's "
            "max_connections of %d (%d kept for other clients): lower WORKERS or DB_POOL_MAX_SIZE",
            workers,
            settings.db_pool_max_size,
            pooled,
            max_connections,
            SPARE_CONNECTIONS,
        )


def fake_binance_command(host: str, port: int, seed: int) -> int:
    import uvicorn

    print(
        f"Binance stand-in on http://{host}:{port} (seed {seed}), for tests and demos: its control "
        "endpoints (/_fake/stats, /_fake/faults, /_fake/prices, /_fake/reset) are ON and unauthenticated: "
        "anyone who can reach this port sets the prices"
    )
    sock = listening_socket(host, port)
    app = create_fake_binance(seed, control=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


async def create_admin(settings: Settings, email: str, password_stdin: bool) -> int:
    try:
        email = checked_email(email)
    except ExchangeError as exc:
        raise SystemExit(exc.message) from None
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
            # Enabled too (a disabled admin is recovered); workers apply it within AUTH_RELOAD_MS.
            print(f"{user.email} (id {user.id}) is now an admin (enabled)")
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


async def check_emails_command(settings: Settings, normalize: bool) -> int:
    """Accounts made before emails were normalised (exchange/auth/emails.py). Nothing is merged
    or changed: that is for an admin (README, *Security*, "Emails")."""
    conn = await connect(settings.database_url)
    try:
        report = email_report(await repo.user_emails(conn))
        # !a: escaped, so an invisible or lookalike character shows (a\u200b@x.com).
        for group in report.collisions:
            print(f"collision: {len(group)} accounts are {normal_email(group[0].email)!a} once normalised:")
            for account in group:
                print(f"  id {account.id}: {account.email!a}")
        for account, code in report.refused:
            print(f"refused today ({code}): id {account.id}: {account.email!a}")
        normalised = 0
        for account in report.to_normalise:
            if not normalize:
                print(f"not in normal form: id {account.id}: {account.email!a}")
            elif await repo.set_email(conn, account.id, normal_email(account.email), account.email):
                normalised += 1
    finally:
        await conn.close()
    pending = f"{len(report.to_normalise)} not in normal form (--normalize stores them so)"
    print(
        f"check-emails: {len(report.collisions)} collision(s), {len(report.refused)} refused today, "
        + (f"{normalised} normalised" if normalize else pending)
    )
    return 1 if report.needs_an_admin else 0


if __name__ == "__main__":
    sys.exit(main())
