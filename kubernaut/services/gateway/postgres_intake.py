"""The gateway's intake in PostgreSQL: the shared state of `decisions.py` in the gateway's
own schema (`gateway`, migrations in `migrations/`), over asyncpg, no gRPC here. This is the
reference backend: `redis_intake.py` answers every call as this one does (the tests run on
both).

A batch is decided in one transaction: the answer comes only once every alert of it is
durably recorded, and two replicas taking the same alert at once serialize on its row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import asyncpg
from google.protobuf import json_format
from kubernaut.common.v1 import alert_pb2

from kubernaut.runtime.database import LazyDatabase, PooledStore
from kubernaut.runtime.leases import LeaseTable
from kubernaut.services.alerts import alert_json
from kubernaut.services.gateway.backend import MAX_ERROR_CHARS, IntakeUnavailable, QueuedAlert
from kubernaut.services.gateway.decisions import (
    IntakeItem,
    Outcome,
    accepted,
    as_joined,
    decision_parts,
    dropped_before_forwarding,
    duplicate,
    flagged,
    in_storm,
    items_of,
    not_firing,
    refused,
    resolution_queued,
    storm_id_of,
)
from kubernaut.services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SCHEMA: Final = "gateway"
# A batch is taken again this many times at most after PostgreSQL broke a deadlock.
_DEADLOCK_RETRIES: Final = 3
MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")


_FINGERPRINT_COLUMNS: Final = (
    "fingerprint, alert_name, cluster, state, incident_id, storm_id, occurrences, ended"
)

_INSERT_FINGERPRINT: Final = f"""
INSERT INTO gateway.fingerprints (fingerprint, alert_name, cluster, state, alert)
VALUES ($1, $2, $3, 'firing', $4::jsonb)
ON CONFLICT (fingerprint) DO NOTHING
RETURNING {_FINGERPRINT_COLUMNS}
"""

_LOCK_FINGERPRINT: Final = f"""
SELECT {_FINGERPRINT_COLUMNS} FROM gateway.fingerprints WHERE fingerprint = $1 FOR UPDATE
"""

_COUNT_DUPLICATE: Final = """
UPDATE gateway.fingerprints
SET occurrences = occurrences + 1, uncounted = uncounted + 1, last_seen_at = now()
WHERE fingerprint = $1 AND state = 'firing' AND NOT ended
RETURNING occurrences, incident_id
"""

_RESTART_LIFE: Final = """
UPDATE gateway.fingerprints
SET state = 'firing', alert = $2::jsonb, incident_id = '', storm_id = '', occurrences = 1,
    uncounted = 0, ended = false, life_started_at = now(), last_seen_at = now(),
    resolved_at = NULL
WHERE fingerprint = $1
"""

_TAKE_FIRING: Final = """
SELECT fingerprint, occurrences, incident_id, started
FROM gateway.take_firing($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""
# What take_firing raises when another replica started a life it was starting.
_RACED: Final = "KG409"

_ACTIVE_STORM: Final = """
SELECT storm_id FROM gateway.storms WHERE alert_name = $1 AND cluster = $2 AND ended_at IS NULL
"""

# Members of a storm count too: a replica that looked for an active storm a moment before
# another one's storm committed still counts that storm's members, tips over the threshold
# and joins it (_START_STORM), instead of accepting the alert on its own.
# Counted up to the threshold only ($4): beyond it the answer is the same, and a busy
# alert name would otherwise cost a scan of every recent start on each new one.
_RECENT_STARTS: Final = """
SELECT count(*) FROM (
    SELECT 1 FROM gateway.fingerprints
    WHERE alert_name = $1 AND cluster = $2 AND state = 'firing' AND NOT ended
      AND life_started_at > now() - make_interval(secs => $3)
    LIMIT $4) AS recent
"""

_START_STORM: Final = """
INSERT INTO gateway.storms (storm_id, alert_name, cluster) VALUES ($1, $2, $3)
ON CONFLICT (alert_name, cluster) WHERE ended_at IS NULL DO NOTHING
RETURNING storm_id
"""

# The recent members join the storm. Those still queued and never tried are switched to
# storm members; the others keep their own incident and are listed on the storm's too.
_JOIN_RECENT: Final = """
UPDATE gateway.fingerprints SET storm_id = $4
WHERE alert_name = $1 AND cluster = $2 AND state = 'firing' AND NOT ended AND storm_id = ''
  AND life_started_at > now() - make_interval(secs => $3)
RETURNING fingerprint, alert::text AS alert
"""

_SWITCH_QUEUED_TO_STORM: Final = """
UPDATE gateway.queue SET storm_id = $2, not_before = now()
WHERE fingerprint = ANY($1::text[]) AND kind = 'firing' AND attempts = 0 AND failed_at IS NULL
RETURNING fingerprint
"""

_SET_STORM: Final = "UPDATE gateway.fingerprints SET storm_id = $2 WHERE fingerprint = $1"

# `storm_id <> ''` names the partial index's predicate, so that a generic plan (one made for
# any $1) may read it.
_STORM_SIZE: Final = (
    "SELECT count(*) FROM gateway.fingerprints WHERE storm_id = $1 AND storm_id <> ''"
)

_ENQUEUE: Final = """
INSERT INTO gateway.queue (fingerprint, kind, alert, storm_id, incident_id, not_before,
                           trace_context)
VALUES ($1, $2, $3::jsonb, $4, $5, now() + make_interval(secs => $6), $7)
"""

_RESOLVE_FINGERPRINT: Final = """
UPDATE gateway.fingerprints
SET state = 'resolved', resolved_at = now(), last_seen_at = now()
WHERE fingerprint = $1
"""

# A firing alert nobody tried to forward yet: dropping it means it never became work.
_DROP_UNTRIED: Final = """
DELETE FROM gateway.queue
WHERE fingerprint = $1 AND kind = 'firing' AND attempts = 0 AND failed_at IS NULL
RETURNING id
"""

_END_STORM_IF_QUIET: Final = """
UPDATE gateway.storms SET ended_at = now()
WHERE storm_id = $1 AND ended_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM gateway.fingerprints
      WHERE storm_id = $1 AND storm_id <> '' AND state = 'firing' AND NOT ended)
"""

# A firing row of the fingerprint that a forwarder took (or is taking) already.
_FIRING_IN_FLIGHT: Final = """
SELECT EXISTS (
    SELECT 1 FROM gateway.queue
    WHERE fingerprint = $1 AND kind = 'firing' AND failed_at IS NULL)
"""


_FIRING_QUEUED: Final = """
SELECT DISTINCT fingerprint FROM gateway.queue
WHERE fingerprint = ANY($1::text[]) AND kind = 'firing' AND failed_at IS NULL
"""


async def _firing_queued(
    conn: asyncpg.pool.PoolConnectionProxy, fingerprints: Sequence[str]
) -> set[str]:
    """Which of `fingerprints` have a firing alert queued or in flight."""
    if not fingerprints:
        return set()
    return {row["fingerprint"] for row in await conn.fetch(_FIRING_QUEUED, list(fingerprints))}


async def _counted_duplicate(
    conn: asyncpg.pool.PoolConnectionProxy, item: IntakeItem, counted: asyncpg.Record
) -> Outcome:
    incident_id = counted["incident_id"]
    queued = not incident_id and bool(await conn.fetchval(_FIRING_IN_FLIGHT, item.fingerprint))
    return duplicate(item, counted["occurrences"], incident_id, queued)


class IntakeStore(PooledStore):
    unavailable = IntakeUnavailable
    label = "gateway database"
    schema = SCHEMA
    migrations_dir = MIGRATIONS_DIR
    # Every use is a statement or a transaction, never session state (the migration's
    # advisory lock is unlocked by the migration itself): skip the reset round trip.
    reset_on_release = False

    def __init__(self, pool: asyncpg.Pool, *, timeout: float, settings: GatewaySettings) -> None:
        super().__init__(pool, timeout=timeout)
        self.settings = settings

    async def take(
        self, alerts: Sequence[alert_pb2.Alert], trace_context: str = ""
    ) -> list[Outcome]:
        """Decide every alert of a batch, in one transaction; outcomes in request order.
        IntakeUnavailable (nothing taken) when the database cannot be reached.
        `trace_context` (a W3C traceparent) is kept with what is queued."""
        items = items_of(alerts, dt.datetime.now(dt.UTC), self.settings)
        at_once = True
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                return await self._take(items, trace_context, at_once=at_once)
            except asyncpg.exceptions.DeadlockDetectedError:
                # Two replicas racing into one storm can lock the same rows in two orders
                # (a row and the storm's unique index); PostgreSQL undid one transaction
                # whole, so taking the batch again is safe.
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
                log.info("intake transaction deadlocked; retrying", extra={"attempt": attempt})
            except asyncpg.PostgresError as error:
                if error.sqlstate != _RACED or attempt == _DEADLOCK_RETRIES - 1:
                    raise
                # Nothing was taken; a replica racing on the same new alert is settled
                # by deciding each alert with its row locked.
                at_once = False
                log.info("intake raced another replica; deciding one at a time")
        raise AssertionError("unreachable")

    async def _take(
        self, items: Sequence[IntakeItem], trace_context: str, *, at_once: bool
    ) -> list[Outcome]:
        outcomes = {item.index: refused(item) for item in items if item.freshness.refusal}
        firing, resolving = decision_parts(items)
        firing = [item for item in firing if item.index not in outcomes]
        # Fingerprint -> storm, for alerts of this batch a storm started later in the
        # batch took in.
        joined: dict[str, str] = {}
        async with self._connection() as conn:
            # The usual batch, in one statement (its own transaction) when it can be.
            if (
                at_once
                and firing
                and not resolving
                and await self._take_firing(conn, firing, outcomes, trace_context, partial=False)
            ):
                return [outcomes[i] for i in range(len(items))]
            async with conn.transaction():
                if at_once and firing:
                    await self._take_firing(conn, firing, outcomes, trace_context, partial=True)
                for item in firing + resolving:
                    if item.index in outcomes:
                        continue
                    if item.alert.status == alert_pb2.ALERT_STATUS_RESOLVED:
                        outcomes[item.index] = await self._resolved(conn, item, trace_context)
                    else:
                        outcomes[item.index] = await self._firing(conn, item, joined, trace_context)
        return [as_joined(outcomes[i], joined) for i in range(len(items))]

    async def _take_firing(
        self,
        conn: asyncpg.pool.PoolConnectionProxy,
        firing: Sequence[IntakeItem],
        outcomes: dict[int, Outcome],
        trace_context: str,
        *,
        partial: bool,
    ) -> bool:
        """Decide firing alerts in one statement (gateway.take_firing, migration 0004):
        repeats within a life are counted, and new lives start where no storm may start.
        With `partial` it leaves the others to the caller; without, it decides all or
        nothing. Whether it decided any."""
        settings = self.settings
        by_fingerprint: dict[str, list[IntakeItem]] = {}
        for item in firing:  # in decision order: fingerprint, then arrival
            by_fingerprint.setdefault(item.fingerprint, []).append(item)
        firsts = [group[0] for group in by_fingerprint.values()]
        rows = await conn.fetch(
            _TAKE_FIRING,
            list(by_fingerprint),
            [len(group) for group in by_fingerprint.values()],
            [item.alert.name for item in firsts],
            [item.cluster for item in firsts],
            [alert_json(flagged(item.alert, item.freshness.flags)) for item in firsts],
            settings.hold_seconds,
            trace_context,
            settings.storm_window_seconds,
            settings.storm_threshold,
            partial,
        )
        # Only a life without an incident needs to know whether its first alert waits.
        queued = await _firing_queued(
            conn, [r["fingerprint"] for r in rows if not r["started"] and not r["incident_id"]]
        )
        for row in rows:
            group = by_fingerprint[row["fingerprint"]]
            if row["started"]:
                outcomes[group[0].index] = accepted(group[0])
                continue
            # Occurrences as each alert was counted, one after the other.
            first = row["occurrences"] - len(group)
            for number, item in enumerate(group, start=1):
                outcomes[item.index] = duplicate(
                    item, first + number, row["incident_id"], row["fingerprint"] in queued
                )
        return bool(rows)

    async def _restart_life(
        self, conn: asyncpg.pool.PoolConnectionProxy, item: IntakeItem, alert_json: str
    ) -> Outcome | None:
        """The fingerprint's row exists (its insert conflicted): a live row means another
        replica started the life since our first look, and the alert is its duplicate;
        else a new life starts on the row (None)."""
        row = await conn.fetchrow(_LOCK_FINGERPRINT, item.fingerprint)
        assert row is not None  # it conflicted, and rows are only deleted when finished
        if row["state"] == "firing" and not row["ended"]:
            counted = await conn.fetchrow(_COUNT_DUPLICATE, item.fingerprint)
            assert counted is not None  # the row is locked, and live
            return await _counted_duplicate(conn, item, counted)
        await conn.execute(_RESTART_LIFE, item.fingerprint, alert_json)
        return None

    async def _firing(
        self,
        conn: asyncpg.pool.PoolConnectionProxy,
        item: IntakeItem,
        joined: dict[str, str],
        trace_context: str,
    ) -> Outcome:
        counted = await conn.fetchrow(_COUNT_DUPLICATE, item.fingerprint)
        if counted is not None:
            return await _counted_duplicate(conn, item, counted)
        stored = alert_json(flagged(item.alert, item.freshness.flags))
        row = await conn.fetchrow(
            _INSERT_FINGERPRINT, item.fingerprint, item.alert.name, item.cluster, stored
        )
        if row is None:
            repeat = await self._restart_life(conn, item, stored)
            if repeat is not None:
                return repeat
        settings = self.settings
        name, cluster = item.alert.name, item.cluster
        storm_id = await conn.fetchval(_ACTIVE_STORM, name, cluster)
        if storm_id is None:
            recent = await conn.fetchval(
                _RECENT_STARTS,
                name,
                cluster,
                settings.storm_window_seconds,
                settings.storm_threshold,
            )
            if recent >= settings.storm_threshold:
                storm_id = await self._start_storm(conn, item, joined, trace_context)
        if storm_id is None:
            await conn.execute(
                _ENQUEUE,
                item.fingerprint,
                "firing",
                stored,
                "",
                "",
                settings.hold_seconds,
                trace_context,
            )
            return accepted(item)
        await conn.execute(_SET_STORM, item.fingerprint, storm_id)
        await conn.execute(
            _ENQUEUE, item.fingerprint, "firing", stored, storm_id, "", 0.0, trace_context
        )
        return in_storm(item, storm_id, await conn.fetchval(_STORM_SIZE, storm_id))

    async def _start_storm(
        self,
        conn: asyncpg.pool.PoolConnectionProxy,
        starter: IntakeItem,
        joined: dict[str, str],
        trace_context: str,
    ) -> str:
        """Start (or join, when another replica just did) the storm of the starter's alert
        name on its cluster; the recent members join it (and are noted in `joined`). The
        starter itself is queued by the caller."""
        name, cluster = starter.alert.name, starter.cluster
        storm_id = await conn.fetchval(
            _START_STORM, storm_id_of(name, cluster, dt.datetime.now(dt.UTC)), name, cluster
        )
        if storm_id is None:  # another replica started it a moment ago
            storm_id = await conn.fetchval(_ACTIVE_STORM, name, cluster)
            assert storm_id is not None
        members = await conn.fetch(
            _JOIN_RECENT, name, cluster, self.settings.storm_window_seconds, storm_id
        )
        fingerprints = [m["fingerprint"] for m in members]
        joined.update(dict.fromkeys(fingerprints, str(storm_id)))
        switched = {
            r["fingerprint"]
            for r in await conn.fetch(_SWITCH_QUEUED_TO_STORM, fingerprints, storm_id)
        }
        for member in members:
            fingerprint = member["fingerprint"]
            if fingerprint not in switched and fingerprint != starter.fingerprint:
                await conn.execute(
                    _ENQUEUE,
                    fingerprint,
                    "firing",
                    member["alert"],
                    storm_id,
                    "",
                    0.0,
                    trace_context,
                )
        return str(storm_id)

    async def _resolved(
        self, conn: asyncpg.pool.PoolConnectionProxy, item: IntakeItem, trace_context: str
    ) -> Outcome:
        row = await conn.fetchrow(_LOCK_FINGERPRINT, item.fingerprint)
        if row is None or row["state"] != "firing":
            return not_firing(item)
        await conn.execute(_RESOLVE_FINGERPRINT, item.fingerprint)
        dropped = await conn.fetch(_DROP_UNTRIED, item.fingerprint)
        if row["storm_id"]:
            await conn.execute(_END_STORM_IF_QUIET, row["storm_id"])
        # Never work only if nothing of this life reached (or is reaching) the alert
        # processor: no incident yet, and no firing row of it being tried.
        in_flight = await conn.fetchval(_FIRING_IN_FLIGHT, item.fingerprint)
        if dropped and not row["incident_id"] and not in_flight:
            return dropped_before_forwarding(item)
        await conn.execute(
            _ENQUEUE,
            item.fingerprint,
            "resolved",
            alert_json(item.alert),
            row["storm_id"],
            row["incident_id"],
            0.0,
            trace_context,
        )
        return resolution_queued(item, row["incident_id"])

    # -- what the forwarder uses ------------------------------------------------------------

    async def claim(self, limit: int, lease_seconds: float) -> list[QueuedAlert]:
        """Take up to `limit` due rows for `lease_seconds`: the oldest of each fingerprint
        only, so that a fingerprint's firing alert is always forwarded before its
        resolution. A row whose lease ran out (its forwarder died) is due again."""
        async with self._connection() as conn:
            rows = await conn.fetch(_CLAIM, limit, lease_seconds)
        return [
            QueuedAlert(
                row["id"],
                row["fingerprint"],
                row["kind"],
                json_format.Parse(row["alert"], alert_pb2.Alert(), ignore_unknown_fields=True),
                row["storm_id"],
                row["incident_id"],
                row["attempts"],
                row["trace_context"],
            )
            for row in sorted(rows, key=lambda r: r["id"])
        ]

    async def forwarded(self, queued: QueuedAlert, incident_id: str) -> None:
        """The alert processor took it: remember the incident the fingerprint's alerts are
        counted on (a member of a storm listed late keeps its own), drop the row."""
        async with self._connection() as conn, conn.transaction():
            if incident_id and queued.kind == "firing":
                await conn.execute(_SET_INCIDENT, queued.fingerprint, incident_id)
            await conn.execute(_DELETE_QUEUED, queued.row_id)

    async def retry_later(self, queued: QueuedAlert, error: str, delay_seconds: float) -> None:
        async with self._connection() as conn:
            await conn.execute(_RETRY_LATER, queued.row_id, error[:MAX_ERROR_CHARS], delay_seconds)

    async def give_up(self, queued: QueuedAlert, error: str) -> None:
        """Refused for good: kept for operators, and the fingerprint's life ends so that
        the next alert of it is tried afresh."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_GIVE_UP, queued.row_id, error[:MAX_ERROR_CHARS])
            await conn.execute(_END_LIFE, queued.fingerprint)

    async def resolution_target(self, queued: QueuedAlert) -> tuple[str, int]:
        """(the incident a resolution is about, how many of its fingerprints still fire)."""
        async with self._connection() as conn:
            incident_id = queued.incident_id or await conn.fetchval(
                _INCIDENT_OF, queued.fingerprint
            )
            if not incident_id:
                return "", 0
            firing = await conn.fetchval(_STILL_FIRING, incident_id)
        return str(incident_id), int(firing)

    async def next_due_in(self) -> float | None:
        """Seconds until the next queued row is due (0 when one is); None when none waits."""
        async with self._connection() as conn:
            value = await conn.fetchval(_NEXT_DUE)
        return None if value is None else max(0.0, float(value))

    async def uncounted(self, limit: int) -> list[tuple[str, str, int]]:
        """(fingerprint, incident_id, duplicates not yet counted on it)."""
        async with self._connection() as conn:
            rows = await conn.fetch(_UNCOUNTED, limit)
        return [(r["fingerprint"], r["incident_id"], r["uncounted"]) for r in rows]

    @asynccontextmanager
    async def counting_lease(self) -> AsyncIterator[bool]:
        """Whether this replica may count duplicates now. One replica at a time: two that
        read the same uncounted rows would both add them to the incident. A session-level
        advisory lock, so a replica that dies frees it with its connection."""
        async with self._connection() as conn:
            held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _COUNT_LOCK))
            try:
                yield held
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock($1)", _COUNT_LOCK)

    async def counted(
        self, incident_id: str, counts: Sequence[tuple[str, int]], incident_closed: bool
    ) -> None:
        """The duplicates were added to the incident; a closed incident ends the life of
        every fingerprint counted on it."""
        async with self._connection() as conn, conn.transaction():
            for fingerprint, count in counts:
                await conn.execute(_COUNTED, fingerprint, count)
            if incident_closed:
                await conn.execute(_END_LIVES_OF_INCIDENT, incident_id)

    async def forget_finished(self) -> int:
        """Delete lives that finished longer than the retention ago; how many."""
        async with self._connection() as conn, conn.transaction():
            removed = await conn.fetchval(_FORGET_FINISHED, self.settings.retention_seconds)
            await conn.execute(_FORGET_STORMS, self.settings.retention_seconds)
        return int(removed)

    async def queue_depth(self) -> tuple[int, float]:
        """(rows waiting to be forwarded, age of the oldest in seconds)."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_QUEUE_DEPTH)
        assert row is not None
        return int(row["depth"]), float(row["oldest"] or 0.0)


# The queue's leases have no owner: a row claimed is due again when its lease runs out
# (its forwarder died). Only the oldest row of a fingerprint is due, so that its firing
# alert is always forwarded before its resolution.
_LEASES: Final = LeaseTable(
    "gateway.queue", "q", key=("id",), expires="claimed_until", owner=None, clock="now()"
)
_CLAIM: Final = _LEASES.claim(
    due="""q.failed_at IS NULL AND q.not_before <= now()
      AND NOT EXISTS (
          SELECT 1 FROM gateway.queue e
          WHERE e.fingerprint = q.fingerprint AND e.id < q.id AND e.failed_at IS NULL)""",
    order_by="q.id",
    limit="$1",
    seconds="$2",
    # A claimed row's not_before is its lease's end (see _NEXT_DUE).
    also_set="not_before = GREATEST(q.not_before, now() + make_interval(secs => $2)),"
    " attempts = q.attempts + 1",
    returning="q.id, q.fingerprint, q.kind, q.alert::text AS alert, q.storm_id,"
    " q.incident_id, q.attempts, q.trace_context",
)

_SET_INCIDENT: Final = """
UPDATE gateway.fingerprints SET incident_id = $2 WHERE fingerprint = $1 AND incident_id = ''
"""

_DELETE_QUEUED: Final = "DELETE FROM gateway.queue WHERE id = $1"

_RETRY_LATER: Final = """
UPDATE gateway.queue
SET claimed_until = NULL, last_error = $2, not_before = now() + make_interval(secs => $3)
WHERE id = $1
"""

_GIVE_UP: Final = """
UPDATE gateway.queue SET claimed_until = NULL, last_error = $2, failed_at = now() WHERE id = $1
"""

_END_LIFE: Final = "UPDATE gateway.fingerprints SET ended = true WHERE fingerprint = $1"

_INCIDENT_OF: Final = "SELECT incident_id FROM gateway.fingerprints WHERE fingerprint = $1"

_STILL_FIRING: Final = """
SELECT count(*) FROM gateway.fingerprints
WHERE incident_id = $1 AND state = 'firing' AND NOT ended
"""

# A claimed row's not_before is its lease's end. Only the first row of a fingerprint can be
# claimed: one waiting behind a row in flight is not due, or an idle forwarder would spin
# while another replica forwards that row.
_NEXT_DUE: Final = """
SELECT extract(epoch FROM q.not_before - now()) FROM gateway.queue q
WHERE q.failed_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM gateway.queue e
      WHERE e.fingerprint = q.fingerprint AND e.id < q.id AND e.failed_at IS NULL)
ORDER BY q.not_before LIMIT 1
"""

# The advisory lock of the duplicate counting (one replica at a time).
_COUNT_LOCK: Final = int.from_bytes(
    hashlib.sha256(b"kubernaut-gateway:count-duplicates").digest()[:8], "big", signed=True
)

_UNCOUNTED: Final = """
SELECT fingerprint, incident_id, uncounted FROM gateway.fingerprints
WHERE uncounted > 0 AND incident_id <> ''
ORDER BY last_seen_at
LIMIT $1
"""

_COUNTED: Final = """
UPDATE gateway.fingerprints SET uncounted = GREATEST(uncounted - $2, 0) WHERE fingerprint = $1
"""

_END_LIVES_OF_INCIDENT: Final = """
UPDATE gateway.fingerprints SET ended = true WHERE incident_id = $1 AND state = 'firing'
"""

_FORGET_FINISHED: Final = """
WITH gone AS (
    DELETE FROM gateway.fingerprints f
    WHERE (f.state = 'resolved' OR f.ended)
      AND f.last_seen_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM gateway.queue q WHERE q.fingerprint = f.fingerprint)
    RETURNING 1)
SELECT count(*) FROM gone
"""

_FORGET_STORMS: Final = """
DELETE FROM gateway.storms WHERE ended_at < now() - make_interval(secs => $1)
"""

_QUEUE_DEPTH: Final = """
SELECT count(*) AS depth, extract(epoch FROM now() - min(enqueued_at)) AS oldest
FROM gateway.queue WHERE failed_at IS NULL
"""


class IntakeDatabase(LazyDatabase[IntakeStore]):
    def __init__(self, dsn: str, settings: GatewaySettings) -> None:
        super().__init__(dsn, IntakeStore, settings=settings)
