"""The assessment schedule in PostgreSQL, schema `effectiveness`: the actions to assess, their
baselines and their checkpoints with the replicas' leases. No other service reads or writes
this schema; verdicts reach the shared record only through storage.RecordAssessment."""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
from kubernaut.common.v1 import alert_pb2, remediation_pb2

from kubernaut.runtime import leases
from kubernaut.runtime.database import LazyDatabase, PooledStore, proto_from_json, proto_to_json
from kubernaut.runtime.leases import LeaseTable
from kubernaut.services.effectiveness.assessment import Baseline, assessment_id

log = logging.getLogger(__name__)

SCHEMA: Final = "effectiveness"
MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")


class Status(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class ScheduleError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(ScheduleError):
    """The database cannot be reached; safe to retry."""


class LeaseLost(ScheduleError, leases.LeaseLost):
    """This replica no longer holds the checkpoint's lease: another one took it over."""


@dataclass(frozen=True)
class Result:
    """A checkpoint's verdict, as stored before it is recorded."""

    verdict: remediation_pb2.Verdict.ValueType
    evidence: tuple[str, ...]
    assessed_at: dt.datetime


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint with its action's request and baseline."""

    action_id: str
    delay: dt.timedelta
    assessment_id: str
    final: bool
    due_at: dt.datetime
    status: Status
    attempts: int
    last_error: str
    lease_owner: str | None
    result: Result | None
    recorded_at: dt.datetime | None
    incident_id: str
    alert: alert_pb2.Alert
    target: alert_pb2.ResourceRef
    acted_at: dt.datetime
    baseline: Baseline


_CHECKPOINT_COLUMNS: Final = (
    "c.action_id, c.delay, c.assessment_id, c.final, c.due_at, c.status, c.attempts,"
    " c.last_error, c.lease_owner, c.verdict, c.evidence, c.assessed_at, c.recorded_at,"
    " a.incident_id, a.alert, a.target, a.acted_at, a.baseline, a.baseline_note"
)

_LEASES: Final = LeaseTable("effectiveness.checkpoints", "c", key=("action_id", "delay"))
_CLAIM: Final = _LEASES.claim(
    due="c.status = 'pending' AND c.next_attempt_at <= clock_timestamp()",
    order_by="c.next_attempt_at",
    limit="$3",
    owner="$1",
    seconds="$2",
    also_set="attempts = c.attempts + 1",
    join=("effectiveness.scheduled_actions a", "a.action_id = c.action_id"),
    returning=_CHECKPOINT_COLUMNS,
)


def _checkpoint(row: asyncpg.Record) -> Checkpoint:
    verdict = row["verdict"]
    result = (
        None
        if verdict is None
        else Result(
            remediation_pb2.Verdict.Value(verdict), tuple(row["evidence"]), row["assessed_at"]
        )
    )
    restarts = row["baseline"]
    return Checkpoint(
        action_id=str(row["action_id"]),
        delay=row["delay"],
        assessment_id=str(row["assessment_id"]),
        final=row["final"],
        due_at=row["due_at"],
        status=Status(row["status"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        lease_owner=row["lease_owner"],
        result=result,
        recorded_at=row["recorded_at"],
        incident_id=row["incident_id"],
        alert=proto_from_json(row["alert"], alert_pb2.Alert()),
        target=proto_from_json(row["target"], alert_pb2.ResourceRef()),
        acted_at=row["acted_at"],
        baseline=Baseline(
            None if restarts is None else {str(k): int(v) for k, v in json.loads(restarts).items()},
            row["baseline_note"],
        ),
    )


class ScheduleStore(PooledStore):
    """The schedule through a connection pool. Use `ScheduleStore.connect()`."""

    unavailable = StoreUnavailable
    schema = SCHEMA
    migrations_dir = MIGRATIONS_DIR

    # -- scheduling ---------------------------------------------------------------------------

    async def delays_of(self, action_id: str) -> list[dt.timedelta] | None:
        """The delays an action was scheduled with, in order; None when it was not."""
        async with self._connection() as conn:
            return await self._delays(conn, uuid.UUID(action_id))

    @staticmethod
    async def _delays(
        conn: asyncpg.pool.PoolConnectionProxy, action_id: uuid.UUID
    ) -> list[dt.timedelta] | None:
        rows = await conn.fetch(
            "SELECT delay FROM effectiveness.checkpoints WHERE action_id = $1 ORDER BY delay",
            action_id,
        )
        return [row["delay"] for row in rows] or None

    async def schedule(
        self,
        action_id: str,
        incident_id: str,
        alert: alert_pb2.Alert,
        target: alert_pb2.ResourceRef,
        acted_at: dt.datetime,
        baseline: Baseline,
        delays: Sequence[dt.timedelta],
    ) -> tuple[list[dt.timedelta], bool]:
        """Store the action and one pending checkpoint per delay (the largest is final), due
        at acted_at + delay. When the action is scheduled already, nothing changes: return
        its delays and False. Concurrent calls for one action create it once."""
        key = uuid.UUID(action_id)
        ordered = sorted(set(delays))
        restarts = None if baseline.restarts is None else json.dumps(dict(baseline.restarts))
        async with self._connection() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO effectiveness.scheduled_actions"
                " (action_id, incident_id, alert, target, acted_at, baseline, baseline_note)"
                " VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6::jsonb, $7)"
                " ON CONFLICT (action_id) DO NOTHING RETURNING true",
                key,
                incident_id,
                proto_to_json(alert),
                proto_to_json(target),
                acted_at,
                restarts,
                baseline.note,
            )
            if not inserted:
                existing = await self._delays(conn, key)
                return existing or [], False
            await conn.executemany(
                "INSERT INTO effectiveness.checkpoints"
                " (action_id, delay, assessment_id, final, due_at, next_attempt_at)"
                " VALUES ($1, $2, $3, $4, $5, $5)",
                [
                    (
                        key,
                        delay,
                        uuid.UUID(assessment_id(action_id, delay)),
                        delay == ordered[-1],
                        acted_at + delay,
                    )
                    for delay in ordered
                ],
            )
        return ordered, True

    async def checkpoints(self, action_id: str) -> list[Checkpoint]:
        """An action's checkpoints, by delay (for inspection and tests)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM effectiveness.checkpoints c"
                " JOIN effectiveness.scheduled_actions a USING (action_id)"
                " WHERE c.action_id = $1 ORDER BY c.delay",
                uuid.UUID(action_id),
            )
        return [_checkpoint(row) for row in rows]

    # -- the scheduler's side -----------------------------------------------------------------

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[Checkpoint]:
        """Take the lease of up to `limit` due pending checkpoints that no live replica holds,
        the longest due first. SKIP LOCKED: concurrent claimers never get the same
        checkpoint and never wait on each other."""
        async with self._connection() as conn:
            rows = await conn.fetch(_CLAIM, owner, lease_seconds, limit)
        return sorted((_checkpoint(row) for row in rows), key=lambda c: c.due_at)

    async def save_result(self, checkpoint: Checkpoint, owner: str, result: Result) -> Result:
        """Store the checkpoint's verdict unless one is stored already; return the stored
        one (what is recorded through storage, whoever assessed first). LeaseLost when
        `owner` no longer holds the lease."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "UPDATE effectiveness.checkpoints SET"
                " verdict = COALESCE(verdict, $4),"
                " evidence = CASE WHEN verdict IS NULL THEN $5::text[] ELSE evidence END,"
                " assessed_at = COALESCE(assessed_at, $6)"
                " WHERE action_id = $1 AND delay = $2 AND lease_owner = $3 AND status = 'pending'"
                " RETURNING verdict, evidence, assessed_at",
                uuid.UUID(checkpoint.action_id),
                checkpoint.delay,
                owner,
                remediation_pb2.Verdict.Name(result.verdict),
                list(result.evidence),
                result.assessed_at,
            )
        if row is None:
            raise LeaseLost(f"checkpoint {checkpoint.assessment_id} is no longer held by {owner}")
        return Result(
            remediation_pb2.Verdict.Value(row["verdict"]),
            tuple(row["evidence"]),
            row["assessed_at"],
        )

    async def mark_done(self, checkpoint: Checkpoint, owner: str) -> bool:
        """Recorded: done, lease released. False when `owner` lost the lease meanwhile (the
        new holder records the same content again, harmlessly)."""
        async with self._connection() as conn:
            done = await conn.fetchval(
                "UPDATE effectiveness.checkpoints SET status = 'done', recorded_at = now(),"
                " last_error = '', lease_owner = NULL, lease_expires_at = NULL"
                " WHERE action_id = $1 AND delay = $2 AND lease_owner = $3 RETURNING true",
                uuid.UUID(checkpoint.action_id),
                checkpoint.delay,
                owner,
            )
        return bool(done)

    async def retry_later(
        self, checkpoint: Checkpoint, owner: str, after_seconds: float, error: str
    ) -> bool:
        """Release the lease and try again in `after_seconds`."""
        async with self._connection() as conn:
            released = await conn.fetchval(
                "UPDATE effectiveness.checkpoints SET"
                " next_attempt_at = clock_timestamp() + make_interval(secs => $4),"
                " last_error = $5, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE action_id = $1 AND delay = $2 AND lease_owner = $3 RETURNING true",
                uuid.UUID(checkpoint.action_id),
                checkpoint.delay,
                owner,
                after_seconds,
                error[:4096],
            )
        return bool(released)

    async def give_up(self, checkpoint: Checkpoint, owner: str, error: str) -> bool:
        """Storage refused the record for good: failed, with the reason."""
        async with self._connection() as conn:
            failed = await conn.fetchval(
                "UPDATE effectiveness.checkpoints SET status = 'failed', last_error = $4,"
                " lease_owner = NULL, lease_expires_at = NULL"
                " WHERE action_id = $1 AND delay = $2 AND lease_owner = $3 RETURNING true",
                uuid.UUID(checkpoint.action_id),
                checkpoint.delay,
                owner,
                error[:4096],
            )
        return bool(failed)

    async def release_all(self, owner: str) -> int:
        """Give up every lease `owner` holds (a replica stopping); returns how many."""
        async with self._connection() as conn:
            rows = await conn.fetch(_LEASES.release_all, owner)
        return len(rows)


class ScheduleDatabase(LazyDatabase[ScheduleStore]):
    """The schedule store, connected and migrated on first use (see LazyDatabase);
    `pool_options` go to `ScheduleStore.connect()`."""

    def __init__(self, dsn: str, **pool_options: Any) -> None:
        super().__init__(dsn, ScheduleStore, **pool_options)
