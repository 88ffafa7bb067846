"""Kubernaut's shared record in PostgreSQL: the storage service's logic, without gRPC.

Validation of requests (field lengths, patterns, enums) is the gRPC layer's job with
protovalidate; the store only rejects what it cannot store faithfully (`InvalidRecord`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import logging
import re
import struct
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
from kubernaut.common.v1 import alert_pb2
from kubernaut.storage.v1 import storage_pb2

_log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000

# pg_advisory_lock key for migrations: the bytes of "kubernau" (any constant works, it only
# has to be the same in every process and unused by anything else in the database).
_MIGRATION_LOCK: Final = int.from_bytes(b"kubernau", "big")
_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Page token: version, started_at in µs since the epoch, action_id, and a digest of the
# alert_name filter so a token cannot be replayed against another filter.
_TOKEN: Final = struct.Struct(">Bq16s8s")
_TOKEN_VERSION: Final = 1
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)

# Errors meaning "the database cannot be reached right now": callers map them to UNAVAILABLE.
_UNREACHABLE: Final = (
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
)


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached; safe to retry."""


class RecordConflict(StoreError):
    """The action_id is already stored with different content."""


class InvalidRecord(StoreError, ValueError):
    """The record cannot be stored as given (bad UUID, JSON, timestamp or outcome)."""


class InvalidPageToken(StoreError, ValueError):
    """The page token is malformed or was issued for another filter."""


class MigrationError(StoreError):
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


@dataclass(frozen=True)
class StoreStatus:
    server_version: str
    # Empty when the vector extension is not installed.
    pgvector_version: str
    migrations: list[AppliedMigration]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
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


class Store:
    """The storage service's data, in one PostgreSQL database through a connection pool."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float) -> None:
        """Use `Store.connect()`."""
        self._pool = pool
        self._timeout = timeout

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
    ) -> Store:
        """Open a pool to `dsn`. Raises StoreUnavailable, naming the server (never the
        password), when it cannot connect: min_size >= 1 makes that fail here, not later.
        `connect_timeout` also bounds waiting for a pooled connection and `ping()`."""
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, timeout=connect_timeout
            )
        except (*_UNREACHABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {exc or type(exc).__name__}"
            ) from exc
        return cls(pool, timeout=connect_timeout)

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> bool:
        """True when the database answers a query within the timeout."""
        try:
            async with asyncio.timeout(self._timeout), self._pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except (*_UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"database unavailable: {exc or type(exc).__name__}") from exc

    # -- schema -------------------------------------------------------------------------------

    async def migrate(self, directory: Path = MIGRATIONS_DIR) -> list[int]:
        """Apply the migrations not yet applied, in order, each in its own transaction; return
        the versions applied now. Concurrent callers (several replicas starting at once) queue
        on an advisory lock, so each migration runs once."""
        migrations = load_migrations(directory)
        applied_now: list[int] = []
        async with self._connection() as conn:
            # Session-level lock, held across the per-migration transactions. The pool's
            # reset on release (pg_advisory_unlock_all) frees it even if unlock below fails.
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                # Created under the lock: concurrent CREATE TABLE IF NOT EXISTS can still fail.
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {
                    r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
                }
                for migration in migrations:
                    if migration.version in done:
                        continue
                    try:
                        async with conn.transaction():
                            await conn.execute(migration.sql)
                            await conn.execute(
                                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                migration.version,
                                migration.name,
                            )
                    except _UNREACHABLE:
                        raise  # the connection failed, not the migration: StoreUnavailable
                    except asyncpg.PostgresError as exc:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} failed "
                            f"and was rolled back: {exc}"
                        ) from exc
                    _log.info("applied migration %04d_%s", migration.version, migration.name)
                    applied_now.append(migration.version)
            finally:
                if not conn.is_closed():
                    with suppress(*_UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError):
                        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied_now

    async def status(self) -> StoreStatus:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT current_setting('server_version') AS server_version,"
                " (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector,"
                " to_regclass('schema_migrations') IS NOT NULL AS has_migrations"
            )
            assert row is not None
            migrations: list[AppliedMigration] = []
            if row["has_migrations"]:
                migrations = [
                    AppliedMigration(r["version"], r["name"], r["applied_at"])
                    for r in await conn.fetch(
                        "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
                    )
                ]
        return StoreStatus(
            server_version=str(row["server_version"]),
            pgvector_version=str(row["pgvector"] or ""),
            migrations=migrations,
        )

    # -- action records -----------------------------------------------------------------------

    async def record_action(self, record: storage_pb2.ActionRecord) -> bool:
        """Store `record`. True when stored now; False when the same action_id is already
        stored with the same content (a retry); RecordConflict when its content differs.

        Content is compared as stored: timestamps to the microsecond, specs as JSON values
        (so whitespace and key order do not matter)."""
        values = _record_values(record)
        try:
            async with self._connection() as conn:
                created = await conn.fetchval(_INSERT_ACTION, *values)
                if created:
                    return True
                same = await conn.fetchval(_SAME_ACTION, *values)
        except asyncpg.DataError as exc:
            # Invalid JSON, NUL characters in text, out-of-range timestamps.
            raise InvalidRecord(f"action {record.action_id}: {exc}") from exc
        if same is None:
            # Only reachable if the row vanished between the statements; nothing deletes rows.
            raise StoreError(f"action {record.action_id} conflicted but is not stored")
        if not same:
            raise RecordConflict(
                f"action_id {record.action_id} is already recorded with different content"
            )
        return False

    async def list_actions(
        self, alert_name: str, page_size: int, page_token: str
    ) -> tuple[list[storage_pb2.ActionRecord], str]:
        """Action records newest first (started_at, then action_id, descending), for one
        alert name or all when it is empty; returns (records, next_page_token), the token
        empty on the last page. page_size 0 means 100; above 1000 means 1000."""
        if page_size < 0:
            raise ValueError(f"page_size must be >= 0, got {page_size}")
        limit = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
        conditions: list[str] = []
        args: list[Any] = []
        if alert_name:
            args.append(alert_name)
            conditions.append(f"alert_name = ${len(args)}")
        if page_token:
            after_time, after_id = _decode_page_token(page_token, alert_name)
            args += [after_time, after_id]
            conditions.append(f"(started_at, action_id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)  # one extra row tells whether another page follows
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        # Only placeholders are interpolated into the SQL text; values travel as parameters.
        query = (
            f"SELECT {_ACTION_COLUMNS} FROM action_records {where}"
            f" ORDER BY started_at DESC, action_id DESC LIMIT ${len(args)}"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(query, *args)
        page = rows[:limit]
        next_token = ""
        if len(rows) > limit:
            last = page[-1]
            next_token = _encode_page_token(last["started_at"], last["action_id"], alert_name)
        return [_row_to_record(row) for row in page], next_token


_ACTION_COLUMNS: Final = (
    "action_id, incident_id, alert_name, action, target_cluster, target_namespace,"
    " target_kind, target_name, outcome, spec_before, spec_after, message,"
    " started_at, finished_at"
)

_INSERT_ACTION: Final = f"""
INSERT INTO action_records ({_ACTION_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12, $13, $14)
ON CONFLICT (action_id) DO NOTHING
RETURNING true
"""

# Compared in SQL so jsonb equality and timestamp rounding are PostgreSQL's own.
_SAME_ACTION: Final = """
SELECT (incident_id, alert_name, action, target_cluster, target_namespace, target_kind,
        target_name, outcome, spec_before, spec_after, message, started_at, finished_at)
       IS NOT DISTINCT FROM
       ($2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::text,
        $10::jsonb, $11::jsonb, $12::text, $13::timestamptz, $14::timestamptz)
FROM action_records WHERE action_id = $1
"""


def _record_values(record: storage_pb2.ActionRecord) -> tuple[Any, ...]:
    try:
        action_id = uuid.UUID(record.action_id)
    except ValueError as exc:
        raise InvalidRecord(f"action_id {record.action_id!r} is not a UUID") from exc
    if not record.HasField("started_at"):
        raise InvalidRecord(f"action {record.action_id}: started_at is required")
    try:
        outcome = storage_pb2.ActionOutcome.Name(record.outcome)
    except ValueError as exc:
        raise InvalidRecord(f"action {record.action_id}: unknown outcome {record.outcome}") from exc
    try:
        started_at = record.started_at.ToDatetime(tzinfo=dt.UTC)
        finished_at = (
            record.finished_at.ToDatetime(tzinfo=dt.UTC) if record.HasField("finished_at") else None
        )
    except (ValueError, OverflowError) as exc:
        raise InvalidRecord(f"action {record.action_id}: bad timestamp: {exc}") from exc
    target = record.target
    return (
        action_id,
        record.incident_id,
        record.alert_name,
        record.action,
        target.cluster,
        target.namespace,
        target.kind,
        target.name,
        outcome,
        record.spec_before_json or None,
        record.spec_after_json or None,
        record.message,
        started_at,
        finished_at,
    )


def _row_to_record(row: asyncpg.Record) -> storage_pb2.ActionRecord:
    record = storage_pb2.ActionRecord(
        action_id=str(row["action_id"]),
        incident_id=row["incident_id"],
        alert_name=row["alert_name"],
        action=row["action"],
        target=alert_pb2.ResourceRef(
            cluster=row["target_cluster"],
            namespace=row["target_namespace"],
            kind=row["target_kind"],
            name=row["target_name"],
        ),
        outcome=storage_pb2.ActionOutcome.Value(row["outcome"]),
        spec_before_json=row["spec_before"] or "",
        spec_after_json=row["spec_after"] or "",
        message=row["message"],
    )
    record.started_at.FromDatetime(row["started_at"])
    if row["finished_at"] is not None:
        record.finished_at.FromDatetime(row["finished_at"])
    return record


def _filter_digest(alert_name: str) -> bytes:
    return hashlib.sha256(alert_name.encode()).digest()[:8]


def _encode_page_token(started_at: dt.datetime, action_id: uuid.UUID, alert_name: str) -> str:
    micros = (started_at - _EPOCH) // _MICROSECOND
    raw = _TOKEN.pack(_TOKEN_VERSION, micros, action_id.bytes, _filter_digest(alert_name))
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_page_token(token: str, alert_name: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        version, micros, id_bytes, digest = _TOKEN.unpack(raw)
        started_at = _EPOCH + micros * _MICROSECOND
    except (UnicodeEncodeError, binascii.Error, struct.error, OverflowError) as exc:
        raise InvalidPageToken("malformed page token") from exc
    if version != _TOKEN_VERSION:
        raise InvalidPageToken("malformed page token")
    if digest != _filter_digest(alert_name):
        raise InvalidPageToken("page token was issued for a different alert_name")
    return started_at, uuid.UUID(bytes=id_bytes)


def redact_dsn(dsn: str) -> str:
    """`dsn` without its password, for messages."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        host = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return parts._replace(netloc=user + host).geturl()
    except ValueError:
        return "<unparsable DSN>"
