"""SQL migrations for a service's own PostgreSQL schema: numbered files applied once each,
in order, under an advisory lock so that replicas starting together do not race.

A service keeps its migrations in a directory of `NNNN_name.sql` files. With `schema`, the
schema is created first and the bookkeeping table is `<schema>.schema_migrations`; the files
name their objects with the schema themselves. Without it (storage, which predates
per-service schemas) the bookkeeping table is `schema_migrations` on the search path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

_log = logging.getLogger(__name__)

# Errors meaning "the database cannot be reached right now", not "the statement is wrong":
# callers map them to UNAVAILABLE and retry.
UNREACHABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # Raised when the pool (re)connects: a dropped database or changed credentials.
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    # asyncpg lost track of a connection's protocol state when the server went away in the
    # middle of an operation ("cannot switch to state ..."): the connection is broken.
    asyncpg.InternalClientError,
)

# The advisory lock key of the unqualified (storage) migrations: the bytes of "kubernau".
# Any constant works as long as every process uses the same one.
DEFAULT_LOCK_KEY: Final = int.from_bytes(b"kubernau", "big")

_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(Exception):
    """A migration file is malformed or failed to apply (it was rolled back)."""


@dataclass(frozen=True)
class Migration:
    """A migration file, `NNNN_name.sql`."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    applied_at: dt.datetime


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations in `directory`, by version. Any other `.sql` name is an error, since a
    misnamed migration would otherwise be skipped silently."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version} is used twice")
        found[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def lock_key(schema: str | None) -> int:
    """The advisory lock key of a schema's migrations (a signed 64-bit integer)."""
    if schema is None:
        return DEFAULT_LOCK_KEY
    digest = hashlib.sha256(f"kubernaut-migrations:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _table(schema: str | None) -> str:
    if schema is None:
        return "schema_migrations"
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} is not a plain lower-case identifier")
    return f"{schema}.schema_migrations"


async def apply_migrations(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    migrations: Sequence[Migration],
    *,
    schema: str | None = None,
) -> list[int]:
    """Apply the migrations not yet applied, in order, each in its own transaction with its
    bookkeeping row; return the versions applied now. Concurrent callers queue on an
    advisory lock, so each migration runs once. A failing migration raises MigrationError;
    a lost connection raises one of UNREACHABLE."""
    table = _table(schema)
    key = lock_key(schema)
    applied_now: list[int] = []
    # Session-level lock, held across the per-migration transactions. A pool's reset on
    # release (pg_advisory_unlock_all) frees it even if the unlock below fails.
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        # Created under the lock: concurrent CREATE ... IF NOT EXISTS can still fail.
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {table}")}
        for migration in migrations:
            if migration.version in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {table} (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
            except UNREACHABLE:
                raise  # the connection failed, not the migration
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}"
                    f"{f' of schema {schema}' if schema else ''} failed "
                    f"and was rolled back: {exc}"
                ) from exc
            _log.info(
                "applied migration %04d_%s",
                migration.version,
                migration.name,
                extra={"schema": schema or "public"},
            )
            applied_now.append(migration.version)
    finally:
        if not session_lost(conn):
            with suppress(*UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError):
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return applied_now


def session_lost(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> bool:
    """The connection's session is gone (closed, or its proxy detached by asyncpg when
    the server ended it, e.g. a restart). A detached proxy raises InterfaceError from every
    method, is_closed() too: an error there must not replace the one that ended the call."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


async def applied_migrations(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, *, schema: str | None = None
) -> list[AppliedMigration]:
    """The migrations recorded as applied, by version; empty before the first migrate."""
    table = _table(schema)
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
        return []
    return [
        AppliedMigration(r["version"], r["name"], r["applied_at"])
        for r in await conn.fetch(f"SELECT version, name, applied_at FROM {table} ORDER BY version")
    ]
