"""The `exchange` command: serve | migrate | create-admin | audit."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys

from exchange import repo
from exchange.config import Settings, settings_from_env
from exchange.db import connect, migrate
from exchange.errors import ExchangeError
from exchange.security import check_password_rules, hash_password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply pending migrations, then serve HTTP (uvicorn)")
    serve.add_argument("--host", help="bind address (HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (WORKERS, default: one per core)")

    commands.add_parser("migrate", help="apply pending migrations and exit")

    admin = commands.add_parser("create-admin", help="make EMAIL an admin (creating the account if needed)")
    admin.add_argument("email")
    admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the new account's password from standard input (else ADMIN_PASSWORD, else a prompt)",
    )

    commands.add_parser("audit", help="check every ledger invariant; exit 1 on any violation")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_from_env()
    if args.command == "serve":
        return serve_command(settings, args.host, args.port, args.workers)
    if args.command == "migrate":
        applied = asyncio.run(migrate(settings.database_url))
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
        return 0
    if args.command == "create-admin":
        return asyncio.run(create_admin(settings, args.email, args.password_stdin))
    if args.command == "audit":
        return asyncio.run(audit_command(settings))
    parser.error(f"unknown command {args.command}")
    return 2


def serve_command(settings: Settings, host: str | None, port: int | None, workers: int | None) -> int:
    import uvicorn

    asyncio.run(migrate(settings.database_url))
    uvicorn.run(
        "exchange.app:create_app",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers or settings.workers or os.cpu_count() or 1,
        # uvloop and httptools (installed with the package) where the platform has them.
        loop="auto",
        http="auto",
        log_level=settings.log_level,
    )
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
