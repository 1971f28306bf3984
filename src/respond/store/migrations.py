"""Schema migrations: numbered SQL files per dialect, each applied once, in order.

Layout: ``store/migrations/<dialect>/NNNN_name.sql`` (``sqlite`` and ``postgresql``, with
the same numbers meaning the same change), each dialect with its ``apply_*`` function
below. Applied versions are recorded in ``schema_migrations``; a migration and its record
commit together or not at all, so a failed migration leaves the database as it was and the
next start tries again. Replicas that start together apply each migration once: SQLite
serialises them with ``BEGIN IMMEDIATE``, PostgreSQL with a transaction-scoped advisory lock
keyed by the ``search_path``.

Rules: files are never edited once released (add a new number instead); numbers start at
1 and have no gaps; a database newer than this build is used as is, with a warning.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from respond.store.statements import (
    BEGIN_WRITE,
    COMMIT,
    CREATE_SCHEMA_MIGRATIONS,
    MIGRATION_DONE,
    MIGRATION_LOCK,
    MIGRATIONS_DONE,
    NEWEST_MIGRATION,
    RECORD_MIGRATION,
    ROLLBACK,
)

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """The dialect's migrations in order; raises ``ValueError`` on a misnamed or missing file."""
    folder = resources.files(__package__) / "migrations" / dialect
    migrations = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise ValueError(f"migration file {dialect}/{entry.name} is not named NNNN_name.sql")
        migrations.append(
            Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8"))
        )
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"{dialect} migrations must be numbered 1, 2, 3...; found {versions}")
    return migrations


def sqlite_statements(script: str) -> list[str]:
    """Split an SQLite script into statements (``CREATE TRIGGER ... END;`` stays whole)."""
    statements = []
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            statements.append(script[start : end + 1].strip())
            start = end + 1
    rest = script[start:]
    if any(line.strip() and not line.strip().startswith("--") for line in rest.splitlines()):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {rest.strip()!r}")
    return statements


def apply_sqlite(conn: sqlite3.Connection, dialect: str = "sqlite") -> list[int]:
    """Apply the pending migrations on ``conn`` (autocommit mode); return the versions applied.

    Each migration runs in ``BEGIN IMMEDIATE``, which takes the write lock before checking
    whether it is still pending, so two processes opening one new file apply it once.
    """
    if conn.isolation_level is not None:
        raise ValueError("apply_sqlite needs a connection opened with isolation_level=None")
    migrations = load(dialect)
    conn.execute(CREATE_SCHEMA_MIGRATIONS.on("sqlite").text)
    applied = []
    for migration in migrations:
        conn.execute(BEGIN_WRITE.on("sqlite").text)
        try:
            done = conn.execute(
                MIGRATION_DONE.on("sqlite").text, (migration.version,)
            ).fetchone()
            if done is None:
                for statement in sqlite_statements(migration.sql):
                    conn.execute(statement)
                record = RECORD_MIGRATION.on("sqlite")
                conn.execute(record.text, record.args(
                    {"version": migration.version, "applied_at": int(time.time())}))
                applied.append(migration.version)
            conn.execute(COMMIT.on("sqlite").text)
        except BaseException:
            if conn.in_transaction:
                conn.execute(ROLLBACK.on("sqlite").text)
            raise
        if done is None:
            log.info("applied %s migration %04d_%s", dialect, migration.version, migration.name)
    newest = conn.execute(NEWEST_MIGRATION.on("sqlite").text).fetchone()[0]
    if migrations and newest is not None and newest > migrations[-1].version:
        log.warning(
            "the database schema is at version %d, newer than this build knows (%d)",
            newest, migrations[-1].version,
        )
    return applied


# Class id of respond's advisory locks (any constant; the second key names the schema).
PG_LOCK_CLASS = 0x7265_7370  # "resp"


def quote_identifier(name: str) -> str:
    """``name`` as a PostgreSQL identifier, quoted (so any schema name is safe in SQL text)."""
    if not name or "\x00" in name:
        raise ValueError(f"not a valid PostgreSQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


async def apply_postgresql(conn: Any, *, create_schema: str | None = None) -> list[int]:
    """Apply the pending migrations on an ``asyncpg`` connection; return the versions applied.

    Each migration runs in its own transaction that first takes an advisory lock keyed by
    the connection's ``search_path`` and then checks whether it is still pending, so replicas
    opening one fresh schema together apply it once, and the others wait and skip it.
    ``create_schema`` is created (if missing) under the same lock.
    """
    migrations = load("postgresql")
    applied: list[int] = []
    done: set[int] = set()
    for migration in migrations:
        async with conn.transaction():
            await conn.execute(MIGRATION_LOCK.on("postgresql").text, PG_LOCK_CLASS)
            if create_schema is not None:
                await conn.execute(
                    f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(create_schema)}")
            await conn.execute(CREATE_SCHEMA_MIGRATIONS.on("postgresql").text)
            done = {row[0] for row in await conn.fetch(MIGRATIONS_DONE.on("postgresql").text)}
            if migration.version not in done:
                await conn.execute(migration.sql)  # no arguments: a multi-statement script
                record = RECORD_MIGRATION.on("postgresql")
                await conn.execute(record.text, *record.args(
                    {"version": migration.version, "applied_at": int(time.time())}))
                applied.append(migration.version)
        if migration.version not in done:
            log.info("applied postgresql migration %04d_%s", migration.version, migration.name)
    if migrations and done and max(done) > migrations[-1].version:
        log.warning(
            "the database schema is at version %d, newer than this build knows (%d)",
            max(done), migrations[-1].version,
        )
    return applied
