"""The executor's guards, shared by every replica through PostgreSQL (see migration 0002):

- target busy: one action at a time per target, a session-level advisory lock on the target
  taken on the call's connection (the one `ActionStore.claim()` holds for the whole call).
  It dies with the session, so a crashed replica never leaves a target locked; asyncpg's
  reset on returning the connection to the pool unlocks it too.
- cooldown: the same action on the same target is refused for `cooldown_seconds` after it
  last changed something (`applied_at`). The target lock serializes everything on one
  target, so this check cannot race.
- rate: at most `max_per_minute` actions admitted per cluster in any 60 s. Counting and
  admitting happen in one transaction under a per-cluster transaction-level advisory lock,
  so two replicas cannot both take the last slot.

Times come from the caller (`now`), not from the database, so that they agree with the
action's own times and tests need not sleep.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Final, Literal

import asyncpg

from kubernaut.runtime.migrations import UNREACHABLE, session_lost
from kubernaut.services.executor.store import ActionState, unavailable

log = logging.getLogger(__name__)

__all__ = ["GuardName", "GuardRefused", "TargetKey", "admit", "mark_applied", "release"]

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
GuardName = Literal["target-busy", "cooldown", "rate"]

RATE_WINDOW: Final = dt.timedelta(seconds=60)
COOLDOWN_SETTING: Final = "KUBERNAUT_EXECUTOR_COOLDOWN_SECONDS"
RATE_SETTING: Final = "KUBERNAUT_EXECUTOR_MAX_ACTIONS_PER_CLUSTER_PER_MINUTE"
_DONE_STATES: Final = [ActionState.FINISHED.value, ActionState.RECORDED.value]


@dataclass(frozen=True)
class TargetKey:
    """The object an action changes. `cluster` is the resolved name (never empty: an empty
    ResourceRef.cluster is the default cluster); `namespace` is empty for cluster-scoped
    kinds."""

    cluster: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where} in cluster {self.cluster}"


class GuardRefused(Exception):
    """A guard refused the action; `reason` says which one, why and until when."""

    def __init__(self, guard: GuardName, reason: str) -> None:
        super().__init__(reason)
        self.guard: GuardName = guard
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _key(prefix: str, *parts: str) -> int:
    """A signed 64-bit advisory lock key. JSON keeps the parts apart whatever they contain,
    and the prefixes keep these keys apart from store.py's action locks."""
    digest = hashlib.sha256(f"{prefix}:{json.dumps(parts)}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _target_lock_key(target: TargetKey) -> int:
    return _key(
        "kubernaut-executor-target", target.cluster, target.kind, target.namespace, target.name
    )


def _cluster_lock_key(cluster: str) -> int:
    return _key("kubernaut-executor-cluster-rate", cluster)


def _when(at: dt.datetime, *, round_up: bool = False) -> str:
    """`at` in UTC to the second, e.g. 2025-01-31T12:00:05Z; `round_up` for a time that
    something becomes allowed, so that the message never names a moment too early."""
    at = at.astimezone(dt.UTC)
    if round_up and at.microsecond:
        at = at.replace(microsecond=0) + dt.timedelta(seconds=1)
    return at.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def _seconds(value: float) -> str:
    return str(int(value)) if math.isclose(value, round(value)) else f"{value:g}"


async def admit(
    conn: Connection,
    *,
    action_id: str,
    action: str,
    target: TargetKey,
    cooldown_seconds: float,
    max_per_minute: int,
    now: dt.datetime,
) -> None:
    """Let the action start on `target`, or raise GuardRefused. Takes the target lock (held
    until `release()`), checks the cooldown and the rate, then marks the row admitted. On
    refusal (or any error) the target lock is released again.

    The row (ActionSession.create) must exist. A row admitted already, a retry of the same
    action_id after a crash, only takes the target lock again; its own row never counts
    against it. `cooldown_seconds` 0 and `max_per_minute` 0 turn those guards off."""
    if now.tzinfo is None:
        raise ValueError("admit() needs an aware `now`")
    key = _target_lock_key(target)
    async with unavailable():
        locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
    if not locked:
        raise GuardRefused("target-busy", await _busy_reason(conn, action_id, target))
    try:
        async with unavailable(), conn.transaction():
            await _admit_locked(
                conn,
                action_id=uuid.UUID(action_id),
                action=action,
                target=target,
                cooldown_seconds=cooldown_seconds,
                max_per_minute=max_per_minute,
                now=now,
            )
    except BaseException:
        await release(conn, target)
        raise


async def _busy_reason(conn: Connection, action_id: str, target: TargetKey) -> str:
    async with unavailable():
        other = await conn.fetchrow(
            "SELECT action_id, action, started_at FROM executor.actions"
            " WHERE cluster = $1 AND target_kind = $2 AND target_namespace = $3"
            " AND target_name = $4 AND admitted_at IS NOT NULL"
            " AND state <> ALL($5::text[]) AND action_id <> $6"
            " ORDER BY admitted_at DESC LIMIT 1",
            target.cluster,
            target.kind,
            target.namespace,
            target.name,
            _DONE_STATES,
            uuid.UUID(action_id),
        )
    if other is None:
        # The holder took the lock but has not committed its admission yet.
        return f"{target} is busy: another action is in progress on it; one action at a time"
    return (
        f"{target} is busy: {other['action']} (action {other['action_id']}) is in progress"
        f" on it since {_when(other['started_at'])}; one action at a time"
    )


async def _admit_locked(
    conn: Connection,
    *,
    action_id: uuid.UUID,
    action: str,
    target: TargetKey,
    cooldown_seconds: float,
    max_per_minute: int,
    now: dt.datetime,
) -> None:
    """The checks and the admission, in the caller's transaction, under the target lock."""
    row = await conn.fetchrow(
        "SELECT admitted_at, incident_id FROM executor.actions WHERE action_id = $1", action_id
    )
    if row is None:
        raise LookupError(f"action {action_id} has no row; ActionSession.create it first")
    if row["admitted_at"] is not None:
        return  # resumed: admitted (and counted) once already

    if cooldown_seconds > 0:
        cooldown = dt.timedelta(seconds=cooldown_seconds)
        # Another incident's change only: one incident's runbook may take the same action
        # on a target twice on purpose (scale up, roll back, scale back down).
        last = await conn.fetchrow(
            "SELECT action_id, applied_at FROM executor.actions"
            " WHERE cluster = $1 AND target_kind = $2 AND target_namespace = $3"
            " AND target_name = $4 AND action = $5 AND applied_at > $6 AND action_id <> $7"
            " AND ($8 = '' OR incident_id <> $8)"
            " ORDER BY applied_at DESC LIMIT 1",
            target.cluster,
            target.kind,
            target.namespace,
            target.name,
            action,
            now - cooldown,
            action_id,
            row["incident_id"],
        )
        if last is not None:
            raise GuardRefused(
                "cooldown",
                f"{action} on {target} is cooling down: it was applied at"
                f" {_when(last['applied_at'])} (action {last['action_id']}); it may run"
                f" there again from {_when(last['applied_at'] + cooldown, round_up=True)}"
                f" ({COOLDOWN_SETTING}={_seconds(cooldown_seconds)})",
            )

    if max_per_minute > 0:
        # Held to the end of the transaction, past the UPDATE below: replicas admitting in
        # the same cluster queue here, so each counts the others' admissions.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _cluster_lock_key(target.cluster))
        recent = await conn.fetch(
            "SELECT admitted_at FROM executor.actions"
            " WHERE cluster = $1 AND admitted_at > $2 AND action_id <> $3"
            " ORDER BY admitted_at",
            target.cluster,
            now - RATE_WINDOW,
            action_id,
        )
        if len(recent) >= max_per_minute:
            # A slot frees once all but max_per_minute - 1 of them are out of the window.
            frees_at = recent[len(recent) - max_per_minute]["admitted_at"] + RATE_WINDOW
            raise GuardRefused(
                "rate",
                f"cluster {target.cluster} has started {len(recent)} actions in the last"
                f" 60 s, the limit ({RATE_SETTING}={max_per_minute}); a slot frees at"
                f" {_when(frees_at, round_up=True)}",
            )

    await conn.execute(
        "UPDATE executor.actions SET cluster = $2, target_kind = $3, target_namespace = $4,"
        " target_name = $5, admitted_at = $6, updated_at = now() WHERE action_id = $1",
        action_id,
        target.cluster,
        target.kind,
        target.namespace,
        target.name,
        now,
    )


async def release(conn: Connection, target: TargetKey) -> None:
    """Release the target lock; nothing happens when it is not held. Never raises for the
    database: a lost session has no lock left, and the pool unlocks on return anyway."""
    if session_lost(conn):
        return
    try:
        # pg_advisory_unlock of a lock not held answers false (and a WARNING notice).
        await conn.execute("SELECT pg_advisory_unlock($1)", _target_lock_key(target))
    except (*UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError):
        log.warning("cannot release the lock of %s", target, exc_info=True)


async def mark_applied(conn: Connection, action_id: str, at: dt.datetime) -> None:
    """Record that the action changed its target at `at`: its cooldown runs from there."""
    async with unavailable():
        status = await conn.execute(
            "UPDATE executor.actions SET applied_at = $2, updated_at = now() WHERE action_id = $1",
            uuid.UUID(action_id),
            at,
        )
    if status == "UPDATE 0":
        raise LookupError(f"action {action_id} has no row")
