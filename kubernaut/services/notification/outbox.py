"""The notification outbox: each idempotency key is delivered once, across calls, replicas
and restarts. Plain logic over asyncpg, with no gRPC in it.

The outbox lives in the notification service's own PostgreSQL schema, `notification`
(migrations in `migrations/`, applied on first connect). One row per idempotency key holds
the message as rendered by the first call, its status (pending, sent, failed), the last
attempt's result per channel, the number of attempts and timestamps.

How a key is delivered once (`Outbox.deliver_once`):

1. Insert the row, or read it when the key is known (INSERT ... ON CONFLICT DO NOTHING).
   A sent row is answered from the table: nothing is delivered again.
2. Lock the row (SELECT ... FOR UPDATE) in a transaction that stays open while delivering,
   so concurrent callers, in this process or in other replicas, queue behind the one
   delivering. Callers in one process queue on an asyncio lock first, so that waiting does
   not take a database connection each.
3. With the lock: a row that is sent now, or that someone else attempted while this caller
   waited, is answered from the table (the loser reads the winner's result). Otherwise this
   caller delivers through the Notifier and records the outcome: `sent` when at least one
   channel delivered, `failed` (with the errors) when none did, so that the next call with
   the key tries again, and so does the background redelivery (`redelivery.py`).

Once it starts, a delivery finishes and is recorded even if the caller goes away (the gRPC
call is cancelled at its deadline): it runs in its own task, shielded from the caller.
If the process dies between the SMTP server accepting a message and the commit, the row
stays pending and a repeat delivers again; that window is a few milliseconds wide.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from kubernaut.runtime.database import LazyDatabase, PooledStore
from kubernaut.services.notification.channels import DeliveryOutcome, NoChannelConfigured, Notifier
from kubernaut.services.notification.dispatch import Dispatcher
from kubernaut.services.notification.rendering import RenderedMessage
from kubernaut.services.notification.settings import RedeliveryPolicy
from kubernaut.services.notification.vendors.base import Notice

__all__ = [
    "MIGRATIONS_DIR",
    "SCHEMA",
    "Delivery",
    "DeliveryStatus",
    "InvalidOutboxEntry",
    "Outbox",
    "OutboxDatabase",
    "OutboxEntry",
    "OutboxError",
    "OutboxUnavailable",
    "RedeliveryPolicy",
    "Routed",
]

log = logging.getLogger(__name__)

SCHEMA: Final = "notification"
MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")

_COLUMNS: Final = (
    "idempotency_key, incident_id, event_kind, subject, body, status, results, attempts,"
    " last_error, created_at, updated_at, sent_at, event"
)
_INSERT: Final = f"""
INSERT INTO notification.outbox (idempotency_key, incident_id, event_kind, subject, body, event)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {_COLUMNS}
"""
# Each routed channel of an event: what it answered last.
_CHANNELS: Final = """
SELECT channel, route, status, last_error, retry_at <= now() OR retry_at IS NULL AS due
FROM notification.deliveries WHERE idempotency_key = $1 ORDER BY channel
"""
_CHOSEN: Final = """
INSERT INTO notification.deliveries (idempotency_key, channel, route, status, last_error)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
"""
_CHANNEL_RESULT: Final = """
UPDATE notification.deliveries
SET status = $3, last_error = $4, attempts = attempts + 1, updated_at = now(),
    retry_at = CASE WHEN $5::float8 IS NULL THEN NULL
                    ELSE now() + make_interval(secs => $5::float8) END,
    sent_at = CASE WHEN $3 = 'sent' THEN now() ELSE sent_at END
WHERE idempotency_key = $1 AND channel = $2
"""
_THREAD: Final = "SELECT data FROM notification.threads WHERE channel = $1 AND incident_id = $2"
_KEEP_THREAD: Final = """
INSERT INTO notification.threads (channel, incident_id, data) VALUES ($1, $2, $3::jsonb)
ON CONFLICT (channel, incident_id)
DO UPDATE SET data = notification.threads.data || EXCLUDED.data, updated_at = now()
"""
# A routed channel's statuses after which nothing more is sent on it.
_FINAL: Final = frozenset({"sent", "permanent", "held"})
_SELECT: Final = f"SELECT {_COLUMNS} FROM notification.outbox WHERE idempotency_key = $1"
# NO KEY UPDATE: excludes other deliverers of the key as FOR UPDATE would, but lets the
# routed path's per-channel rows (their foreign key takes KEY SHARE) commit meanwhile.
_LOCK: Final = _SELECT + " FOR NO KEY UPDATE"
_INCIDENT_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
_RECORD: Final = f"""
UPDATE notification.outbox
SET status = $2,
    results = $3::jsonb,
    last_error = $4,
    attempts = attempts + 1,
    updated_at = now(),
    sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END
WHERE idempotency_key = $1
RETURNING {_COLUMNS}
"""


# Messages that still owe a delivery and are due for another attempt: failed ones once
# their backoff (doubling from $4, capped at $5) has passed, and pending ones left by an
# attempt cut short (a crash) for longer than $3; not after $2 attempts, nor once older
# than $1 seconds. Oldest attempt first.
_DUE: Final = f"""
SELECT {_COLUMNS} FROM notification.outbox
WHERE status <> 'sent'
  AND created_at > now() - make_interval(secs => $1)
  AND attempts < $2
  AND (status = 'failed' OR updated_at < now() - make_interval(secs => $3))
  AND updated_at <= now() - make_interval(
        secs => least($4 * power(2, greatest(attempts - 1, 0)), $5))
ORDER BY updated_at
LIMIT $6
"""


class OutboxError(Exception):
    """Base of the outbox's errors."""


class OutboxUnavailable(OutboxError):
    """The database cannot be reached, or the key's delivery is still in progress
    elsewhere after the lock timeout; safe to retry."""


class InvalidOutboxEntry(OutboxError, ValueError):
    """The entry cannot be stored as given; `field` is "idempotency_key" or "incident_id"."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    idempotency_key: str
    incident_id: str
    event_kind: str
    message: RenderedMessage
    status: DeliveryStatus
    # The last attempt's outcome per channel; empty before the first attempt.
    results: tuple[DeliveryOutcome, ...]
    attempts: int
    last_error: str
    created_at: dt.datetime
    updated_at: dt.datetime
    sent_at: dt.datetime | None
    # The event as proto JSON (routed delivery); None for rows stored before routing.
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Routed:
    """An incident event for the routed channels: as channels get it, as stored."""

    notice: Notice
    event_json: str
    dispatcher: Dispatcher


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one `deliver_once` call did."""

    results: tuple[DeliveryOutcome, ...]
    # True only when this call delivered the message (on at least one channel).
    sent: bool
    entry: OutboxEntry


def _entry(row: asyncpg.Record) -> OutboxEntry:
    results = json.loads(row["results"])
    return OutboxEntry(
        idempotency_key=row["idempotency_key"],
        incident_id=row["incident_id"],
        event_kind=row["event_kind"],
        message=RenderedMessage(subject=row["subject"], body=row["body"]),
        status=DeliveryStatus(row["status"]),
        results=tuple(
            DeliveryOutcome(
                channel=str(r["channel"]), delivered=bool(r["delivered"]), error=str(r["error"])
            )
            for r in results
        ),
        attempts=row["attempts"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
        event=row["event"],
    )


def _results_json(outcomes: Sequence[DeliveryOutcome]) -> str:
    return json.dumps(
        [{"channel": o.channel, "delivered": o.delivered, "error": o.error} for o in outcomes]
    )


def _check_text(value: str, field: str) -> None:
    # PostgreSQL text cannot hold NUL; say so instead of failing in the driver.
    if "\x00" in value:
        raise InvalidOutboxEntry(f"{field} must not contain NUL characters", field=field)


class Outbox(PooledStore):
    """The outbox table through a connection pool. Use `Outbox.connect()`."""

    unavailable = OutboxUnavailable
    label = "outbox database"
    schema = SCHEMA
    migrations_dir = MIGRATIONS_DIR
    # A closed pool (the service stopping) is unavailable too.
    unreachable_also = (asyncpg.InterfaceError,)

    def __init__(self, pool: asyncpg.Pool, *, timeout: float, lock_timeout: float = 120.0) -> None:
        """`lock_timeout` bounds waiting for another caller's delivery of a key."""
        super().__init__(pool, timeout=timeout)
        self._lock_timeout = lock_timeout
        # One asyncio lock per incident being delivered in this process; unused ones go away.
        self._incident_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._tasks: set[asyncio.Task[Delivery]] = set()

    async def close(self, grace_seconds: float = 30.0) -> None:
        """Let deliveries in progress finish and record (up to `grace_seconds`), then close."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        await super().close()

    async def get(self, idempotency_key: str) -> OutboxEntry | None:
        _check_text(idempotency_key, "idempotency_key")
        async with self._connection() as conn:
            row = await conn.fetchrow(_SELECT, idempotency_key)
        return None if row is None else _entry(row)

    async def due(self, policy: RedeliveryPolicy, limit: int) -> list[OutboxEntry]:
        """Up to `limit` undelivered messages due for another attempt (see `_DUE`)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                _DUE,
                policy.max_age_seconds,
                policy.max_attempts,
                policy.stale_pending_seconds,
                policy.first_backoff_seconds,
                policy.max_backoff_seconds,
                limit,
            )
        return [_entry(row) for row in rows]

    async def undelivered(self) -> int:
        """Messages not delivered on any channel yet, whatever their age."""
        async with self._connection() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM notification.outbox WHERE status <> 'sent'"
            )
        return int(count)

    async def deliver_once(
        self,
        idempotency_key: str,
        message: RenderedMessage,
        notifier: Notifier,
        *,
        incident_id: str,
        event_kind: str,
        routed: Routed | None = None,
    ) -> Delivery:
        """Deliver `message` on every channel of `notifier` unless `idempotency_key` was
        delivered already (see the module's docstring). With `routed`, the event goes to
        the channels its route chooses instead, each once (see `_deliver_routed`).

        A repeat of a sent key returns the stored results with sent=False. A key whose
        last attempt failed on every channel is attempted again, with the message stored
        by the first call. Raises NoChannelConfigured (nothing stored), InvalidOutboxEntry,
        OutboxUnavailable."""
        _check_text(idempotency_key, "idempotency_key")
        _check_text(incident_id, "incident_id")
        if routed is None and not notifier.channels():
            raise NoChannelConfigured()
        task = asyncio.create_task(
            self._deliver_once(idempotency_key, message, notifier, incident_id, event_kind, routed),
            name=f"notification outbox {idempotency_key}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        # Shielded: when our caller is cancelled, the delivery still finishes and records.
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Delivery]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # Also raised to the caller, unless the caller has gone: then this is its trace.
            log.debug("outbox delivery %s ended with %r", task.get_name(), error)

    async def _deliver_once(
        self,
        key: str,
        message: RenderedMessage,
        notifier: Notifier,
        incident_id: str,
        event_kind: str,
        routed: Routed | None,
    ) -> Delivery:
        try:
            async with self._connection() as conn:
                event_json = routed.event_json if routed is not None else None
                row = await conn.fetchrow(
                    _INSERT, key, incident_id, event_kind, message.subject, message.body, event_json
                )
                if row is None:
                    # The key is known. The INSERT waited for the row's transaction, so this
                    # statement's snapshot sees it (rows are never deleted while in use).
                    row = await conn.fetchrow(_SELECT, key)
            if row is None:
                raise OutboxError(f"outbox row {key!r} conflicted but cannot be read")
            entry = _entry(row)
            if entry.status is DeliveryStatus.SENT:
                return Delivery(entry.results, sent=False, entry=entry)
            if entry.message != message:
                log.warning(
                    "outbox key %r was first stored with another message; delivering that one",
                    key,
                )
            return await self._deliver_locked(key, entry.attempts, notifier, routed, incident_id)
        except asyncpg.LockNotAvailableError as exc:
            raise OutboxUnavailable(
                f"another delivery of {key!r} is still in progress; retry later"
            ) from exc

    async def _deliver_locked(
        self,
        key: str,
        seen_attempts: int,
        notifier: Notifier,
        routed: Routed | None,
        incident_id: str,
    ) -> Delivery:
        # Per incident (so per key too), taken before a connection: events of one incident
        # waiting here hold none of the pool (the advisory lock below does the same across
        # replicas).
        lock = self._incident_locks.get(incident_id)
        if lock is None:
            lock = self._incident_locks[incident_id] = asyncio.Lock()
        try:
            async with asyncio.timeout(self._lock_timeout):
                await lock.acquire()
        except TimeoutError as exc:
            raise OutboxUnavailable(
                f"another delivery of incident {incident_id}'s events is still in progress"
                f" ({key!r} waits); retry later"
            ) from exc
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT set_config('lock_timeout', $1, true)",
                    f"{int(self._lock_timeout * 1000)}ms",
                )
                # One event of an incident at a time, over all replicas, in the order they
                # came: the first opens the Slack thread, the Jira issue, the ServiceNow
                # record, and the next finds it (two at once would open two).
                await conn.execute(_INCIDENT_LOCK, f"notification/{incident_id}")
                row = await conn.fetchrow(_LOCK, key)
                if row is None:
                    raise OutboxError(f"outbox row {key!r} vanished")
                entry = _entry(row)
                if entry.status is DeliveryStatus.SENT or entry.attempts > seen_attempts:
                    # Sent, or attempted by another caller while we waited: theirs is the
                    # answer (a failed attempt included; the caller retries later).
                    return Delivery(entry.results, sent=False, entry=entry)
                if routed is not None:
                    return await self._deliver_routed(conn, entry, routed)
                return await self._deliver(conn, entry, notifier)
        finally:
            lock.release()

    async def _deliver(
        self, conn: asyncpg.pool.PoolConnectionProxy, entry: OutboxEntry, notifier: Notifier
    ) -> Delivery:
        message = entry.message
        outcomes = await notifier.send(message.subject, message.body, [], entry.incident_id)
        delivered = any(o.delivered for o in outcomes)
        status = DeliveryStatus.SENT if delivered else DeliveryStatus.FAILED
        errors = "; ".join(f"{o.channel}: {o.error}" for o in outcomes if o.error)
        try:
            row = await conn.fetchrow(
                _RECORD, entry.idempotency_key, status.value, _results_json(outcomes), errors
            )
        except BaseException:
            if delivered:
                log.error(
                    "outbox key %r was delivered but its outcome could not be recorded; "
                    "a repeat of the call will deliver it again",
                    entry.idempotency_key,
                )
            raise
        assert row is not None  # the row is locked by this transaction
        recorded = _entry(row)
        log.info(
            "incident event %s",
            "delivered" if delivered else "not delivered",
            extra={
                "idempotency_key": entry.idempotency_key,
                "incident_id": entry.incident_id,
                "event_kind": entry.event_kind,
                "attempt": recorded.attempts,
                "error": errors,
            },
        )
        return Delivery(tuple(outcomes), sent=delivered, entry=recorded)

    async def _deliver_routed(
        self, conn: asyncpg.pool.PoolConnectionProxy, entry: OutboxEntry, routed: Routed
    ) -> Delivery:
        """Send the event on each channel its route chose that has not taken it yet.

        The channels are chosen on the first attempt and kept. Each channel's answer is
        committed on its own connection as soon as it comes (the row lock held by `conn`
        keeps other callers out meanwhile), so a crash redelivers only to the channels
        that had not answered. A 429's Retry-After holds its channel back until then."""
        key, notice, dispatcher = entry.idempotency_key, routed.notice, routed.dispatcher
        async with self._connection() as own:
            channels = await own.fetch(_CHANNELS, key)
            if not channels:
                for chosen in dispatcher.choose(notice):
                    if chosen.held:
                        dispatcher.held(chosen)
                    status = "held" if chosen.held else "pending"
                    await own.execute(
                        _CHOSEN, key, chosen.channel, chosen.route, status, chosen.held
                    )
                channels = await own.fetch(_CHANNELS, key)
            outcomes: list[DeliveryOutcome] = []
            statuses: dict[str, str] = {}
            delivered_now = False
            for row in channels:
                channel, status, error = row["channel"], row["status"], row["last_error"]
                if status in _FINAL or not row["due"]:
                    statuses[channel] = status
                    outcomes.append(DeliveryOutcome(channel, status == "sent", error))
                    continue
                thread = await own.fetchval(_THREAD, channel, entry.incident_id)
                result = await dispatcher.send(
                    channel, notice, json.loads(thread) if thread else {}
                )
                status = (
                    "sent" if result.delivered else "permanent" if result.permanent else "failed"
                )
                await own.execute(
                    _CHANNEL_RESULT, key, channel, status, result.error, result.retry_after
                )
                statuses[channel] = status
                if result.thread:
                    await own.execute(
                        _KEEP_THREAD, channel, entry.incident_id, json.dumps(dict(result.thread))
                    )
                delivered_now = delivered_now or result.delivered
                outcomes.append(DeliveryOutcome(channel, result.delivered, result.error))
        # Nothing more to send once every channel took it, refused it for good, or was
        # held back; else the redelivery tries the others again.
        done = all(status in _FINAL for status in statuses.values())
        status = DeliveryStatus.SENT if done else DeliveryStatus.FAILED
        errors = "; ".join(f"{o.channel}: {o.error}" for o in outcomes if o.error)
        recorded_row = await conn.fetchrow(
            _RECORD, key, status.value, _results_json(outcomes), errors
        )
        assert recorded_row is not None  # the row is locked by this transaction
        recorded = _entry(recorded_row)
        log.info(
            "incident event routed",
            extra={
                "idempotency_key": key,
                "incident_id": entry.incident_id,
                "channels": statuses,
                "attempt": recorded.attempts,
            },
        )
        return Delivery(tuple(outcomes), sent=delivered_now, entry=recorded)


class OutboxDatabase(LazyDatabase[Outbox]):
    """The outbox, connected and migrated on first use (see LazyDatabase);
    `connect_options` go to `Outbox.connect()`."""

    def __init__(self, dsn: str, **connect_options: Any) -> None:
        super().__init__(dsn, Outbox, **connect_options)

    async def outbox(self) -> Outbox:
        """The migrated outbox; OutboxUnavailable while the database cannot be reached."""
        return await self.store()
