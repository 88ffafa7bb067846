"""The executor's own state in PostgreSQL, schema `executor`: one row per action_id with the
snapshot and the computed change (stored before anything is applied), how far the action
got, and the final record. No other service reads or writes this schema.

One call works on an action at a time, in any number of replicas: `ActionStore.claim()`
holds a PostgreSQL advisory lock on the action_id for the whole call, on the connection
the call uses for all its reads and writes. A second call with the same action_id waits
for the first and then finds its result.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
from google.protobuf import json_format
from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.runtime.database import LazyDatabase, PooledStore, unreachable_as
from kubernaut.runtime.migrations import UNREACHABLE, session_lost
from kubernaut.services.executor.changes import Change

log = logging.getLogger(__name__)

SCHEMA: Final = "executor"
MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")

__all__ = [
    "SCHEMA",
    "ActionBusy",
    "ActionRow",
    "ActionSession",
    "ActionState",
    "ActionStore",
    "ExecutorDatabase",
    "ExecutorStoreUnavailable",
    "unavailable",
]


class ActionState(enum.StrEnum):
    STARTED = "started"
    PLANNED = "planned"
    APPLIED = "applied"
    RESTORING = "restoring"
    FINISHED = "finished"
    RECORDED = "recorded"


class ExecutorStoreUnavailable(Exception):
    """The executor's database cannot be reached; safe to retry."""


class ActionBusy(ExecutorStoreUnavailable):
    """Another call is still working on this action_id; retry later."""


@dataclass
class ActionRow:
    action_id: str
    request: executor_pb2.ExecuteActionRequest
    state: ActionState
    started_at: dt.datetime
    snapshot: dict[str, Any] | None = None
    change: Change | None = None
    generation: int | None = None
    stages: list[str] = field(default_factory=list)
    record: storage_pb2.ActionRecord | None = None
    attempts: int = 1
    # A rollback's row: the action it undoes (RollbackAction).
    undo_of: str | None = None
    # When each line of `stages` was reached (None for lines stored before times were).
    stage_times: list[dt.datetime | None] = field(default_factory=list)
    # When the latest verification started (saved by the run), and when the change was
    # applied (saved by guards.mark_applied; read-only here).
    verify_started_at: dt.datetime | None = None
    applied_at: dt.datetime | None = None
    # When the row was last saved; read-only.
    updated_at: dt.datetime | None = None


def _lock_key(action_id: str) -> int:
    digest = hashlib.sha256(f"kubernaut-executor-action:{action_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _row(row: asyncpg.Record) -> ActionRow:
    request = json_format.Parse(row["request"], executor_pb2.ExecuteActionRequest())
    record = None
    if row["record"] is not None:
        record = storage_pb2.ActionRecord.FromString(bytes(row["record"]))
    stages = list(row["stages"])
    times: list[dt.datetime | None] = list(row["stage_times"])[: len(stages)]
    times += [None] * (len(stages) - len(times))
    return ActionRow(
        action_id=str(row["action_id"]),
        request=request,
        state=ActionState(row["state"]),
        started_at=row["started_at"],
        snapshot=None if row["snapshot"] is None else json.loads(row["snapshot"]),
        change=None if row["change"] is None else Change.from_json(json.loads(row["change"])),
        generation=row["generation"],
        stages=stages,
        record=record,
        attempts=row["attempts"],
        undo_of=None if row["undo_of"] is None else str(row["undo_of"]),
        stage_times=times,
        verify_started_at=row["verify_started_at"],
        applied_at=row["applied_at"],
        updated_at=row["updated_at"],
    )


_COLUMNS: Final = (
    "action_id, request, state, started_at, snapshot, change, generation, stages, record,"
    " attempts, undo_of, stage_times, verify_started_at, applied_at, updated_at"
)


class ActionSession:
    """One call's hold on one action: reads and writes its row on the locked connection."""

    def __init__(self, conn: asyncpg.pool.PoolConnectionProxy, action_id: str) -> None:
        self._conn = conn
        self.action_id = action_id

    @property
    def connection(self) -> asyncpg.pool.PoolConnectionProxy:
        """The call's connection, which holds its session-level locks (the guards' too)."""
        return self._conn

    async def load(self) -> ActionRow | None:
        async with unavailable():
            row = await self._conn.fetchrow(
                f"SELECT {_COLUMNS} FROM executor.actions WHERE action_id = $1",
                uuid.UUID(self.action_id),
            )
        return None if row is None else _row(row)

    async def create(
        self,
        request: executor_pb2.ExecuteActionRequest,
        started_at: dt.datetime,
        *,
        undo_of: str | None = None,
    ) -> ActionRow:
        """The action's row; a rollback's (`undo_of`) is labelled "undo:<name>"."""
        name = request.action.WhichOneof("params") or ""
        async with unavailable():
            await self._conn.execute(
                "INSERT INTO executor.actions (action_id, incident_id, action, request,"
                " started_at, undo_of) VALUES ($1, $2, $3, $4::jsonb, $5, $6)",
                uuid.UUID(self.action_id),
                request.incident_id,
                f"undo:{name}" if undo_of else name,
                json_format.MessageToJson(request, preserving_proto_field_name=True, indent=0),
                started_at,
                None if undo_of is None else uuid.UUID(undo_of),
            )
        return ActionRow(self.action_id, request, ActionState.STARTED, started_at, undo_of=undo_of)

    async def save(self, row: ActionRow) -> None:
        """Store everything about `row` that can change."""
        async with unavailable():
            await self._conn.execute(
                "UPDATE executor.actions SET state = $2, snapshot = $3::jsonb,"
                " change = $4::jsonb, generation = $5, stages = $6, record = $7,"
                " attempts = $8, stage_times = $9, verify_started_at = $10,"
                " updated_at = now() WHERE action_id = $1",
                uuid.UUID(row.action_id),
                row.state.value,
                _json(row.snapshot),
                _json(None if row.change is None else row.change.to_json()),
                row.generation,
                row.stages,
                None if row.record is None else row.record.SerializeToString(),
                row.attempts,
                row.stage_times,
                row.verify_started_at,
            )


def unavailable() -> AbstractAsyncContextManager[None]:
    """Maps the database failing mid-call (or the pool closing) to ExecutorStoreUnavailable."""
    return unreachable_as(
        ExecutorStoreUnavailable, ActionStore.label, also=ActionStore.unreachable_also
    )


class ActionStore(PooledStore):
    """The `executor` schema through a connection pool."""

    unavailable = ExecutorStoreUnavailable
    label = "executor database"
    schema = SCHEMA
    migrations_dir = MIGRATIONS_DIR
    # A closed pool is unavailable too, as everywhere in this store.
    unreachable_also = (asyncpg.InterfaceError,)
    pool_max_size = 20

    def __init__(self, pool: asyncpg.Pool, *, timeout: float, lock_timeout: float = 600.0) -> None:
        """Use `ActionStore.connect()`. Each call in progress holds one connection, so the
        pool's `max_size` bounds the actions in progress; `lock_timeout` bounds waiting for
        another call of the same action_id."""
        super().__init__(pool, timeout=timeout)
        self._lock_timeout = lock_timeout

    async def get(self, action_id: str) -> ActionRow | None:
        """The action's row as stored, without waiting for a call working on it."""
        async with self._acquire() as conn:
            return await ActionSession(conn, action_id).load()

    async def working_on(self, action_id: str) -> bool:
        """Whether a call (of any replica) holds the action's lock, i.e. works on it now."""
        key = _lock_key(action_id) & 0xFFFFFFFFFFFFFFFF
        async with self._acquire() as conn, unavailable():
            # A bigint advisory lock shows in pg_locks as its two 32-bit halves.
            held = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1"
                " AND granted)",
                key >> 32,
                key & 0xFFFFFFFF,
            )
        return bool(held)

    async def undos_of(self, action_id: str) -> list[ActionRow]:
        """The rollbacks of an action, oldest first."""
        async with self._acquire() as conn, unavailable():
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM executor.actions WHERE undo_of = $1 ORDER BY started_at",
                uuid.UUID(action_id),
            )
        return [_row(row) for row in rows]

    async def latest_applied(
        self, cluster: str, kind: str, namespace: str, name: str, action: str
    ) -> ActionRow | None:
        """The action `action` that last applied its change to the target, as stored (the
        cluster resolved, as the guards store it; namespace '' for a Node)."""
        async with self._acquire() as conn, unavailable():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM executor.actions WHERE cluster = $1"
                " AND target_kind = $2 AND target_namespace = $3 AND target_name = $4"
                " AND action = $5 AND applied_at IS NOT NULL ORDER BY applied_at DESC LIMIT 1",
                cluster,
                kind,
                namespace,
                name,
                action,
            )
        return None if row is None else _row(row)

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection; only acquiring it is mapped to ExecutorStoreUnavailable, not
        what the caller's block raises."""
        try:
            conn = await self._pool.acquire(timeout=self._timeout)
        except (*UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ExecutorStoreUnavailable(
                f"executor database unavailable: {exc or type(exc).__name__}"
            ) from exc
        try:
            yield conn
        finally:
            try:
                await self._pool.release(conn)
            except (*UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("cannot return a connection to the pool", exc_info=True)

    @asynccontextmanager
    async def claim(self, action_id: str) -> AsyncIterator[ActionSession]:
        """Hold the action's advisory lock for the block (waiting up to lock_timeout for
        another call of the same action_id: ActionBusy after that)."""
        key = _lock_key(action_id)
        async with self._acquire() as conn:
            try:
                async with unavailable():
                    await conn.execute(
                        "SELECT set_config('lock_timeout', $1, false)",
                        f"{int(self._lock_timeout * 1000)}ms",
                    )
                    await conn.execute("SELECT pg_advisory_lock($1)", key)
                    await conn.execute("SELECT set_config('lock_timeout', '0', false)")
            except asyncpg.LockNotAvailableError as exc:
                raise ActionBusy(
                    f"another call is still working on action {action_id}; retry later"
                ) from exc
            try:
                yield ActionSession(conn, action_id)
            finally:
                # Released on the way back to the pool too (asyncpg resets sessions with
                # pg_advisory_unlock_all); this is the prompt path.
                if not session_lost(conn):
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1)", key)
                    except (*UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError):
                        log.warning("cannot release the lock of action %s", action_id)


class ExecutorDatabase(LazyDatabase[ActionStore]):
    """The action store, connected and migrated on first use (see LazyDatabase);
    `connect_options` go to `ActionStore.connect()`."""

    def __init__(self, dsn: str, **connect_options: Any) -> None:
        super().__init__(dsn, ActionStore, **connect_options)
