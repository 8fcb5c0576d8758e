"""The function files of sql/functions/: applied by checksum, compared with the database.

Migrations (sql/migrations/) change the schema and data, once each. Functions, views
and triggers have one current definition each, in a file of sql/functions/ that runs
as it stands (`psql -1 -f`); `exchange migrate` applies, after the migrations, every
file whose checksum is new or changed (as Flyway's repeatable scripts), and records
for each object it defines a SHA-256 of its definition as PostgreSQL prints it.

Drift is what the database runs that its files do not say:
  changed by hand   an object whose definition differs from the one recorded when its
                    file was applied (CREATE OR REPLACE in psql, say);
  missing           an object a file defines that the database lacks (dropped by hand,
                    or by a migration, e.g. a view over a column whose type changed);
  not in any file   an object of the schema that no file defines.
`exchange migrate` re-applies a file whose objects are missing, and refuses to go on
while an object was changed by hand, unless forced (which puts the file's version
back). The server's start is less strict: it leaves such an object alone while its file
is unchanged (and logs it), and refuses only to overwrite it with a changed file.
`exchange sql check` names all three kinds of drift.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from exchange.store.queries import SQL_DIR, Q

log = logging.getLogger("exchange.store.db")

FUNCTIONS_DIR = SQL_DIR / "functions"

# The runner's own records, beside schema_migrations.
BOOKKEEPING_DDL = """
CREATE TABLE IF NOT EXISTS schema_function_files (
    file        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS schema_function_objects (
    identity        text PRIMARY KEY,
    kind            text NOT NULL,
    file            text NOT NULL REFERENCES schema_function_files (file),
    definition_sha  text NOT NULL
);
"""

# What a file defines, by name: functions and procedures (every overload of the name),
# views, and triggers (with their table). Statements start at the beginning of a line.
_ROUTINE = re.compile(
    r"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+(?:exchange\.)?(\w+)\s*\(", re.M
)
_VIEW = re.compile(r"^CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:exchange\.)?(\w+)", re.M)
_TRIGGER = re.compile(
    r"^CREATE\s+(?:OR\s+REPLACE\s+)?TRIGGER\s+(\w+)\s.*?\bON\s+(?:exchange\.)?(\w+)", re.M | re.S
)

# (kind, name, table): table only for triggers, which are named per table.
ObjectName = tuple[str, str, str | None]


class FunctionDrift(RuntimeError):
    """A changed file would overwrite objects changed by hand in the database."""


@dataclass(frozen=True)
class FunctionFile:
    name: str  # file name, e.g. "trades.sql"
    text: str
    checksum: str
    objects: frozenset[ObjectName]


@dataclass(frozen=True)
class CatalogObject:
    kind: str
    name: str
    relation: str | None
    identity: str  # deposit(bigint,text,numeric,text), house_balances, markets_scale ON markets
    definition_sha: str

    @property
    def object_name(self) -> ObjectName:
        return (self.kind, self.name, self.relation)


@dataclass
class FunctionPlan:
    """What `exchange migrate` would do with the function files, and the drift it sees."""

    to_apply: list[str] = field(default_factory=list)  # file names, in order
    changed_files: list[str] = field(default_factory=list)  # checksum new or changed
    changed_by_hand: list[tuple[str, str]] = field(default_factory=list)  # (identity, file)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (object, file)
    not_in_any_file: list[str] = field(default_factory=list)  # identities

    @property
    def conflicts(self) -> list[tuple[str, str]]:
        """Objects changed by hand whose file would be applied over them."""
        return [(identity, file) for identity, file in self.changed_by_hand if file in self.to_apply]

    @property
    def drift(self) -> bool:
        return bool(self.changed_by_hand or self.missing or self.not_in_any_file)


def describe(name: ObjectName) -> str:
    kind, object_name, relation = name
    return f"{kind} {object_name}" + (f" ON {relation}" if relation else "")


def read_function_files(directory: Path = FUNCTIONS_DIR) -> list[FunctionFile]:
    """The *.sql files of `directory`, in name order; an object defined twice fails."""
    files: list[FunctionFile] = []
    owner: dict[ObjectName, str] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text()
        objects = {("function", m[1], None) for m in _ROUTINE.finditer(text)}
        objects |= {("view", m[1], None) for m in _VIEW.finditer(text)}
        objects |= {("trigger", m[1], m[2]) for m in _TRIGGER.finditer(text)}
        for name in objects:
            if name in owner:
                raise RuntimeError(f"{describe(name)} is defined in both {owner[name]} and {path.name}")
            owner[name] = path.name
        checksum = hashlib.sha256(text.encode()).hexdigest()
        files.append(FunctionFile(path.name, text, checksum, frozenset(objects)))
    return files


async def catalog(conn: asyncpg.Connection) -> list[CatalogObject]:
    return [CatalogObject(**row) for row in await conn.fetch(Q.function_objects)]


async def _records(conn: asyncpg.Connection) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Recorded file checksums, and recorded objects: identity -> (file, definition_sha)."""
    if await conn.fetchval("SELECT to_regclass('exchange.schema_function_objects')") is None:
        return {}, {}
    files = {
        row["file"]: row["checksum"]
        for row in await conn.fetch("SELECT file, checksum FROM exchange.schema_function_files")
    }
    objects = {
        row["identity"]: (row["file"], row["definition_sha"])
        for row in await conn.fetch(
            "SELECT identity, file, definition_sha FROM exchange.schema_function_objects"
        )
    }
    return files, objects


async def function_plan(
    conn: asyncpg.Connection, files: list[FunctionFile], *, force: bool = False
) -> FunctionPlan:
    """Compare the files with the database and with what was recorded when they were applied.

    A file is to be applied if its checksum is new or changed, if an object it defines is
    missing, or, with `force`, if an object it defines was changed by hand."""
    recorded_files, recorded_objects = await _records(conn)
    current = await catalog(conn) if await conn.fetchval("SELECT to_regnamespace('exchange')") else []
    by_name: dict[ObjectName, list[CatalogObject]] = {}
    for obj in current:
        by_name.setdefault(obj.object_name, []).append(obj)
    file_of = {name: f.name for f in files for name in f.objects}

    plan = FunctionPlan()
    for obj in current:
        if obj.object_name not in file_of:
            plan.not_in_any_file.append(obj.identity)
            continue
        recorded = recorded_objects.get(obj.identity)
        if recorded is not None and recorded[1] != obj.definition_sha:
            plan.changed_by_hand.append((obj.identity, file_of[obj.object_name]))
    for f in files:
        missing = sorted(describe(name) for name in f.objects if name not in by_name)
        plan.missing += [(name, f.name) for name in missing]
        changed = recorded_files.get(f.name) != f.checksum
        if changed:
            plan.changed_files.append(f.name)
        forced = force and any(file == f.name for _, file in plan.changed_by_hand)
        if changed or missing or forced:
            plan.to_apply.append(f.name)
    return plan


async def apply_function_files(
    conn: asyncpg.Connection, files: list[FunctionFile], *, force: bool = False, strict: bool = False
) -> tuple[list[str], FunctionPlan]:
    """Apply the files the plan names, in one transaction; return them and the plan.

    Raises FunctionDrift, changing nothing, if a changed file would overwrite an object
    changed by hand, or with `strict` if any object was changed by hand (unless `force`,
    which puts the files' versions back). The caller holds the migration lock."""
    plan = await function_plan(conn, files, force=force)
    check_conflicts(plan, force=force, strict=strict)
    for identity, file in plan.changed_by_hand:
        if file not in plan.to_apply:
            log.warning(
                "%s was changed in the database by hand; its file %s is unchanged, so the change stays. "
                "Bring it into sql/functions/%s (psql: \\sf exchange.%s) or `exchange migrate --force` "
                "to put the file's version back",
                identity,
                file,
                file,
                identity.split("(")[0],
            )
    to_apply = [f for f in files if f.name in plan.to_apply]
    if not to_apply:
        return [], plan
    async with conn.transaction():
        await conn.execute(BOOKKEEPING_DDL)
        for f in to_apply:
            await conn.execute(f.text)
            log.info("applied function file %s", f.name)
        # What each file defines, as PostgreSQL prints it now (one catalog read for all).
        current = await catalog(conn)
        await conn.executemany(
            """
            INSERT INTO schema_function_files (file, checksum) VALUES ($1, $2)
            ON CONFLICT (file) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()
            """,
            [(f.name, f.checksum) for f in to_apply],
        )
        await conn.execute(
            "DELETE FROM schema_function_objects WHERE file = ANY($1::text[])", [f.name for f in to_apply]
        )
        await conn.executemany(
            """
            INSERT INTO schema_function_objects (identity, kind, file, definition_sha)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (identity) DO UPDATE
            SET kind = EXCLUDED.kind, file = EXCLUDED.file, definition_sha = EXCLUDED.definition_sha
            """,
            [
                (obj.identity, obj.kind, f.name, obj.definition_sha)
                for f in to_apply
                for obj in current
                if obj.object_name in f.objects
            ],
        )
    return [f.name for f in to_apply], plan


def check_conflicts(plan: FunctionPlan, *, force: bool, strict: bool) -> None:
    conflicts = plan.changed_by_hand if strict else plan.conflicts
    if conflicts and not force:
        raise FunctionDrift(conflict_message(conflicts))


def conflict_message(conflicts: list[tuple[str, str]]) -> str:
    lines = [
        "refusing to overwrite what was changed by hand in the database:",
        *(f"  {identity}  (sql/functions/{file})" for identity, file in conflicts),
        "Keep the database's version: copy it into its file (psql: \\sf exchange.NAME prints it),",
        "then run `exchange migrate` again. Or overwrite it with the file: `exchange migrate --force`.",
    ]
    return "\n".join(lines)


def drift_report(plan: FunctionPlan) -> list[str]:
    """`exchange sql check`'s lines: every object that differs, and the files pending."""
    lines = [
        f"changed by hand: {identity} (file sql/functions/{file})" for identity, file in plan.changed_by_hand
    ]
    lines += [f"missing: {name} (file sql/functions/{file})" for name, file in plan.missing]
    lines += [f"not in any file: {identity}" for identity in plan.not_in_any_file]
    lines += [f"file not applied yet: sql/functions/{name}" for name in plan.changed_files]
    return lines
