"""Kubernaut's shared record in PostgreSQL: the storage service's logic, without gRPC.

Validation of requests (field lengths, patterns, enums) is the gRPC layer's job with
protovalidate; the store only rejects what it cannot store faithfully (`InvalidRecord`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import asyncpg
from google.protobuf import json_format
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.runtime.database import PooledStore

# AppliedMigration, MigrationError and load_migrations are re-exported (they lived here).
from kubernaut.runtime.migrations import AppliedMigration as AppliedMigration
from kubernaut.runtime.migrations import MigrationError as MigrationError
from kubernaut.runtime.migrations import applied_migrations
from kubernaut.runtime.migrations import load_migrations as load_migrations
from kubernaut.services.incidents import FINAL_STATUSES
from kubernaut.services.storage import audit, history_queries, page_tokens, quiet_period
from kubernaut.services.storage.embeddings import Embedder, describe_incident, embedder_for
from kubernaut.services.storage.rows import resource_ref
from kubernaut.services.storage.vectors import (
    IncidentVector,
    VectorFilter,
    VectorStoreError,
)
from kubernaut.services.storage.vectors.index import VectorIndex
from kubernaut.services.storage.vectors.settings import VectorStoreSettings

_log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
DEFAULT_SIMILAR_LIMIT: Final = 5
MAX_SIMILAR_LIMIT: Final = 50
MAX_AFFECTED_RESOURCES: Final = 1000


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached; safe to retry."""


class RecordConflict(StoreError):
    """The action_id (or assessment_id) is already stored with different content."""


class InvalidRecord(StoreError, ValueError):
    """The record cannot be stored as given (bad UUID, JSON, timestamp or outcome).
    `field` names the request field at fault when known."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class NotFound(StoreError, LookupError):
    """What the call names does not exist."""


class UnknownIncident(NotFound):
    """No incident has this incident_id."""


class UnknownAction(NotFound):
    """No action record has this action_id."""


class IncidentClosed(StoreError):
    """The incident has a final status already and cannot change."""


class InvalidPageToken(StoreError, ValueError):
    """The page token is malformed or was issued for another filter."""


class IncidentDetail(NamedTuple):
    incident: storage_pb2.Incident
    # Oldest first.
    actions: list[storage_pb2.ActionRecord]
    assessments: list[storage_pb2.Assessment]
    # The subject first; more for a storm.
    affected_resources: list[alert_pb2.ResourceRef]
    # Oldest first (normally one).
    analyses: list[storage_pb2.RecordedAnalysis]


class SimilarIncidents(NamedTuple):
    """A search's answer: the incidents with their distances, nearest first; the embedding
    model; the vector store searched; and, when it could not be, why (then no incidents)."""

    incidents: list[tuple[storage_pb2.Incident, float]]
    model: str
    vector_store: str
    unavailable_reason: str = ""


class RecordedAnalysis(NamedTuple):
    recorded: storage_pb2.RecordedAnalysis
    # Whether this call stored it; False for an analysis_id recorded before.
    created: bool


class OpenedIncident(NamedTuple):
    incident: storage_pb2.Incident
    # Whether this call opened it.
    created: bool
    # What the quiet period after a closed incident decided; empty when it did not apply.
    quiet_period: str = ""


@dataclass(frozen=True)
class StoreStatus:
    server_version: str
    # Empty when the vector extension is not installed.
    pgvector_version: str
    migrations: list[AppliedMigration]


class Store(PooledStore):
    """The storage service's data, in one PostgreSQL database through a connection pool."""

    unavailable = StoreUnavailable
    migrations_dir = MIGRATIONS_DIR

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        timeout: float,
        embedder: Embedder | None = None,
        quiet_seconds: float = 0.0,
        vectors: VectorIndex,
    ) -> None:
        """Use `Store.connect()`. `embedder` embeds incidents; None means the default model
        (loaded on first use). An alert within `quiet_seconds` of its incident's closing
        (unless it closed because the alert resolved) is counted on that incident instead of
        opening one, unless its workload changed since the incident's fix (`open_or_count`).
        `vectors` is where embeddings are searched (PostgreSQL keeps them too)."""
        super().__init__(pool, timeout=timeout)
        self._quiet_seconds = quiet_seconds
        self._embedder = embedder or embedder_for()
        self.vectors = vectors

    @classmethod
    async def connect(
        cls, dsn: str, *, vectors: VectorIndex | None = None, **options: Any
    ) -> Store:
        """`PooledStore.connect`; without `vectors`, pgvector in the same database with the
        default tuning."""
        index = vectors or VectorIndex(VectorStoreSettings.model_construct(), dsn)
        return await super().connect(dsn, vectors=index, **options)

    async def close(self) -> None:
        await self.vectors.close()
        await super().close()

    # -- schema -------------------------------------------------------------------------------

    async def status(self) -> StoreStatus:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT current_setting('server_version') AS server_version,"
                " (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector"
            )
            assert row is not None
            migrations = await applied_migrations(conn)
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
        self,
        alert_name: str,
        page_size: int,
        page_token: str,
        target: alert_pb2.ResourceRef | None = None,
    ) -> tuple[list[storage_pb2.ActionRecord], str]:
        """Action records newest first (started_at, then action_id, descending), for one
        alert name or all when it is empty, and of one target (all four of its names
        compared) when `target` is given; returns (records, next_page_token), the token
        empty on the last page. page_size 0 means 100; above 1000 means 1000."""
        limit = _page_limit(page_size)
        filters = {"alert_name": alert_name}
        if target is not None:
            # Every part compared, the empty ones too: "" is a name here (no cluster label
            # means the default cluster, a Node has no namespace).
            filters |= {
                "target_cluster": target.cluster,
                "target_namespace": target.namespace,
                "target_kind": target.kind,
                "target_name": target.name,
            }
        rows, next_token = await self._keyset_page(
            f"SELECT {_ACTION_COLUMNS} FROM action_records",
            order=("started_at", "action_id"),
            filters=filters,
            keep_empty=frozenset(filters) - {"alert_name"},
            filter_key="\x1f".join(
                [alert_name, *([] if target is None else list(filters.values())[1:])]
            ),
            filter_name="alert_name" if target is None else "alert_name or target",
            limit=limit,
            page_token=page_token,
        )
        return [_row_to_record(row) for row in rows], next_token

    async def _keyset_page(
        self,
        select: str,
        *,
        order: tuple[str, str],
        filters: dict[str, str],
        filter_key: str,
        filter_name: str,
        limit: int,
        page_token: str,
        keep_empty: frozenset[str] = frozenset(),
    ) -> tuple[list[asyncpg.Record], str]:
        """Up to `limit` rows of `select` newest first, by `order` (a time column, then an id
        column, both descending), where each column of `filters` equals its value (an empty
        value means any, unless the column is in `keep_empty`), after the row `page_token`
        names; and the next page's token, empty on the last page. Tokens carry a digest of
        `filter_key`, so a token of another filter is InvalidPageToken (naming
        `filter_name`)."""
        time_column, id_column = order
        conditions: list[str] = []
        args: list[Any] = []
        for column, value in filters.items():
            if value or column in keep_empty:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        if page_token:
            after_time, after_id = _decode_page_token(page_token, filter_key, filter_name)
            args += [after_time, after_id]
            conditions.append(f"({time_column}, {id_column}) < (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)  # one extra row tells whether another page follows
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        # Only column names of this module and placeholders are interpolated into the SQL
        # text; values travel as parameters.
        query = f"{select} {where} ORDER BY {time_column} DESC, {id_column} DESC LIMIT ${len(args)}"
        async with self._connection() as conn:
            rows = await conn.fetch(query, *args)
        page: list[asyncpg.Record] = rows[:limit]
        next_token = ""
        if len(rows) > limit:
            last = page[-1]
            next_token = _encode_page_token(last[time_column], last[id_column], filter_key)
        return page, next_token

    # -- incidents ----------------------------------------------------------------------------

    async def open_incident(
        self,
        fingerprint: str,
        alert: alert_pb2.Alert,
        subject: alert_pb2.ResourceRef,
        trace_id: str = "",
        workload_state: remediation_pb2.WorkloadState | None = None,
    ) -> tuple[storage_pb2.Incident, bool]:
        """`open_or_count` without what the quiet period decided."""
        opened = await self.open_or_count(fingerprint, alert, subject, trace_id, workload_state)
        return opened.incident, opened.created

    async def open_or_count(
        self,
        fingerprint: str,
        alert: alert_pb2.Alert,
        subject: alert_pb2.ResourceRef,
        trace_id: str = "",
        workload_state: remediation_pb2.WorkloadState | None = None,
    ) -> OpenedIncident:
        """Open an incident for `fingerprint`, or count the alert on the open one. Returns the
        incident and whether this call opened it: of any number of concurrent callers (in any
        number of processes) exactly one gets True while no incident is open for the
        fingerprint, the others increment `occurrences` on that one.

        With none open, an incident of the fingerprint closed within the quiet period (not by
        resolving) takes the alert, unless `workload_state` (the workload now) shows that
        the workload changed since that incident's verified fix: then a new incident opens,
        its status_reason saying why. `quiet_period` says which
        (kubernaut.services.storage.quiet_period).

        A new incident's description is embedded (in a worker thread) before it is inserted;
        when embedding fails the incident is stored without an embedding, so that the loop
        that acts on incidents never depends on the model."""
        if not fingerprint:
            raise InvalidRecord("fingerprint is required", field="fingerprint")
        status_reason = f"opened by alert {alert.name}"
        quiet_note = ""
        try:
            # Fast path, the usual case for a repeated alert: no embedding needed.
            async with self._connection() as conn:
                row = await conn.fetchrow(_COUNT_OCCURRENCE, fingerprint)
                if row is None and self._quiet_seconds > 0:
                    closed = await conn.fetchrow(
                        _RECENTLY_CLOSED, fingerprint, float(self._quiet_seconds)
                    )
                    if closed is not None:
                        decision = quiet_period.decide(
                            alert_name=alert.name,
                            closed_incident_id=str(closed["incident_id"]),
                            closed_seconds_ago=float(closed["closed_seconds_ago"]),
                            baseline=_workload_state_of(closed["observed_after"]),
                            current=workload_state,
                        )
                        quiet_note = decision.note
                        if decision.opens:
                            status_reason = decision.status_reason
                        else:
                            row = await conn.fetchrow(
                                _COUNT_AFTER_CLOSE, closed["incident_id"], decision.note[:4096]
                            )
                if row is not None:
                    await _add_resource(conn, row["incident_id"], subject)
            if row is not None:
                return OpenedIncident(_row_to_incident(row), False, quiet_note)
            description = describe_incident(alert, subject)
            model, vector = await self._embed(description)
            incident_id = uuid.uuid4()
            async with self._connection() as conn:
                # Inserts, or, when another caller opened one since, counts on that one.
                row = await conn.fetchrow(
                    _OPEN_INCIDENT,
                    incident_id,
                    fingerprint,
                    status_reason[:4096],
                    alert.name,
                    subject.cluster,
                    subject.namespace,
                    subject.kind,
                    subject.name,
                    json_format.MessageToJson(alert, preserving_proto_field_name=True, indent=0),
                    trace_id,
                    description,
                    model,
                    vector,
                )
                assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns it
                await _add_resource(conn, row["incident_id"], subject)
        except asyncpg.DataError as exc:
            # NUL characters in text, which PostgreSQL cannot store.
            raise InvalidRecord(f"incident for {fingerprint}: {exc}", field="alert") from exc
        created = row["incident_id"] == incident_id
        if created and model is not None and vector is not None:
            await self._index(row, model, vector)
        # A caller that lost the race to open counts on the winner's incident: the quiet
        # period's note was about the closed one, and the winner's answer says it.
        return OpenedIncident(_row_to_incident(row), created, quiet_note if created else "")

    async def _index(self, row: asyncpg.Record, model: str, vector: list[float]) -> None:
        """Put a new incident's embedding in the vector store. When that fails the incident
        stays (PostgreSQL has its embedding) and is missing from searches until
        `kubernaut storage reindex`; the loop that acts on incidents never waits on it."""
        try:
            store = await self.vectors.store()
            await store.upsert([IncidentVector.of_incident(row, model, vector)])
        except VectorStoreError as exc:
            _log.warning(
                "incident %s not in the vector store (%s): %s; `kubernaut storage reindex` adds it",
                row["incident_id"],
                self.vectors.backend,
                exc,
            )

    async def _embed(self, text: str) -> tuple[str | None, list[float] | None]:
        """(model name, vector), or (None, None) when embedding fails."""
        embedder = self._embedder
        try:
            [vector] = await asyncio.to_thread(embedder.embed, [text])
            if len(vector) != embedder.dimensions:
                raise ValueError(
                    f"{embedder.name} returned {len(vector)} dimensions, not {embedder.dimensions}"
                )
            if not all(math.isfinite(x) for x in vector):
                raise ValueError(f"{embedder.name} returned a vector that is not finite")
        except Exception:
            _log.exception("cannot embed an incident; storing it without an embedding")
            return None, None
        return embedder.name, [float(x) for x in vector]

    async def update_incident(
        self,
        incident_id: str,
        status: storage_pb2.IncidentStatus.ValueType,
        reason: str,
    ) -> storage_pb2.Incident:
        """Move an open incident to `status` with `reason`; a final status closes it (sets
        closed_at). UnknownIncident for an unknown id; IncidentClosed when it is closed,
        unless this exact update is what closed it (a retry), which returns it unchanged."""
        row_id = _parse_uuid(incident_id, "incident_id")
        status_name = _status_name(status)
        if status == storage_pb2.INCIDENT_STATUS_UNSPECIFIED:
            raise InvalidRecord("status must be specified", field="status")
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(
                    _UPDATE_INCIDENT, row_id, status_name, reason, status in FINAL_STATUSES
                )
                if row is not None:
                    return _row_to_incident(row)
                row = await conn.fetchrow(_SELECT_INCIDENT, row_id)
        except asyncpg.DataError as exc:
            raise InvalidRecord(f"incident {incident_id}: {exc}", field="status_reason") from exc
        if row is None:
            raise UnknownIncident(f"incident {incident_id} does not exist")
        if row["status"] == status_name and row["status_reason"] == reason:
            return _row_to_incident(row)
        raise IncidentClosed(
            f"incident {incident_id} is closed ({row['status']}) and cannot become {status_name}"
        )

    async def count_incident_alerts(self, incident_id: str, count: int) -> storage_pb2.Incident:
        """Add `count` alerts to the incident's occurrences, whatever its status.
        UnknownIncident for an unknown id."""
        row_id = _parse_uuid(incident_id, "incident_id")
        if count < 1:
            raise InvalidRecord("count must be at least 1", field="count")
        async with self._connection() as conn:
            row = await conn.fetchrow(_COUNT_ALERTS, row_id, count)
        if row is None:
            raise UnknownIncident(f"incident {incident_id} does not exist")
        return _row_to_incident(row)

    async def resolve_incident(
        self, incident_id: str, resolved_at: dt.datetime | None = None
    ) -> tuple[storage_pb2.Incident, bool]:
        """Record that every alert of the incident resolved (at `resolved_at`, default now):
        an OPEN incident (nothing acted on it) is closed as RESOLVED, any other is only
        marked. Returns the incident and whether this call closed it. UnknownIncident for
        an unknown id."""
        row_id = _parse_uuid(incident_id, "incident_id")
        async with self._connection() as conn:
            row = await conn.fetchrow(
                _RESOLVE_INCIDENT,
                row_id,
                resolved_at,
                "every alert of the incident resolved before anything acted on it",
            )
        if row is None:
            raise UnknownIncident(f"incident {incident_id} does not exist")
        return _row_to_incident(row), bool(row["closed_now"])

    async def get_incident(self, incident_id: str) -> IncidentDetail:
        """The incident, its actions (action records with its incident_id) and their
        assessments, both oldest first, its affected resources and its analyses (oldest
        first), read from one snapshot; an archived incident too (`archive_closed`).
        UnknownIncident if none."""
        row_id = _parse_uuid(incident_id, "incident_id")
        async with (
            self._connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            tables = ""
            row = await conn.fetchrow(_SELECT_INCIDENT, row_id)
            if row is None:
                tables = "_archive"
                row = await conn.fetchrow(_SELECT_ARCHIVED_INCIDENT, row_id)
            if row is None:
                raise UnknownIncident(f"incident {incident_id} does not exist")
            actions = await conn.fetch(_INCIDENT_ACTIONS, str(row_id))
            assessments = await conn.fetch(_INCIDENT_ASSESSMENTS, str(row_id))
            resources = await conn.fetch(
                _INCIDENT_RESOURCES.format(tables=tables), row_id, MAX_AFFECTED_RESOURCES
            )
            analyses = await conn.fetch(_INCIDENT_ANALYSES.format(tables=tables), row_id)
        return IncidentDetail(
            _row_to_incident(row),
            [_row_to_record(r) for r in actions],
            [_row_to_assessment(r) for r in assessments],
            [
                alert_pb2.ResourceRef(
                    cluster=r["cluster"], namespace=r["namespace"], kind=r["kind"], name=r["name"]
                )
                for r in resources
            ],
            [_row_to_analysis(r) for r in analyses],
        )

    async def archive_closed(self, older_than: dt.timedelta, batch: int) -> list[str]:
        """Move up to `batch` incidents closed more than `older_than` ago, oldest first,
        with their affected resources and analyses, to the archive tables (0011), and
        take them out of the vector store. Returns their ids; fewer than `batch` means none
        is left. Replicas archiving at once take different incidents (SKIP LOCKED)."""
        async with self._connection() as conn, conn.transaction():
            ids = [
                r["incident_id"]
                for r in await conn.fetch(_ARCHIVABLE, older_than.total_seconds(), batch)
            ]
            if ids:
                for statement in _ARCHIVE:
                    await conn.execute(statement, ids)
        if ids:
            try:
                await (await self.vectors.store()).delete([str(i) for i in ids])
            except VectorStoreError as exc:
                # Searches drop matches PostgreSQL no longer holds; a reindex cleans up.
                _log.warning("archived incidents left in the vector store: %s", exc)
        return [str(i) for i in ids]

    async def list_incidents(
        self,
        status: storage_pb2.IncidentStatus.ValueType,
        page_size: int,
        page_token: str,
    ) -> tuple[list[storage_pb2.Incident], str]:
        """Incidents newest first (opened_at, then incident_id, descending), of one status or
        all when it is unspecified; returns (incidents, next_page_token), the token empty on
        the last page. page_size 0 means 100; above 1000 means 1000."""
        limit = _page_limit(page_size)
        status_name = (
            "" if status == storage_pb2.INCIDENT_STATUS_UNSPECIFIED else _status_name(status)
        )
        rows, next_token = await self._keyset_page(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents",
            order=("opened_at", "incident_id"),
            filters={"status": status_name},
            filter_key=f"incidents:{status_name}",
            filter_name="status",
            limit=limit,
            page_token=page_token,
        )
        return [_row_to_incident(row) for row in rows], next_token

    async def search_similar(
        self,
        incident_id: str,
        limit: int,
        *,
        subject_kind: str = "",
        alert_names: list[str] | None = None,
    ) -> SimilarIncidents:
        """The incidents nearest to `incident_id` by cosine distance between the embeddings
        of their descriptions, nearest first, itself excluded, searched in the vector store.
        Only incidents embedded by the same model are compared; an incident without an
        embedding has no neighbours. Only incidents about a `subject_kind` and opened by
        one of `alert_names` count, where those are given. limit 0 means 5; above 50 means
        50. A vector store that cannot be searched gives no incidents and the reason."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        limit = DEFAULT_SIMILAR_LIMIT if limit == 0 else min(limit, MAX_SIMILAR_LIMIT)
        row_id = _parse_uuid(incident_id, "incident_id")
        backend = self.vectors.backend
        async with self._connection() as conn:
            target = await conn.fetchrow(_INCIDENT_EMBEDDING, row_id)
        if target is None:
            raise UnknownIncident(f"incident {incident_id} does not exist")
        model: str | None = target["embedding_model"]
        if model is None:
            return SimilarIncidents([], "", backend)
        where = VectorFilter(
            model=model,
            subject_kind=subject_kind,
            alert_names=tuple(alert_names or ()),
            exclude_ids=(str(row_id),),
        )
        try:
            matches = await (await self.vectors.store()).search(target["vector"], where, limit)
        except VectorStoreError as exc:
            _log.warning("similar incidents not searched (%s): %s", backend, exc)
            return SimilarIncidents([], model, backend, f"{backend}: {exc}")
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE incident_id = ANY($1::uuid[])",
                [uuid.UUID(m.incident_id) for m in matches],
            )
        # PostgreSQL is the record: a match it no longer holds (archived) is left out.
        found = {str(r["incident_id"]): r for r in rows}
        return SimilarIncidents(
            [
                (_row_to_incident(found[m.incident_id]), m.distance)
                for m in matches
                if m.incident_id in found
            ],
            model,
            backend,
        )

    # -- analyses -----------------------------------------------------------------------------

    async def record_analysis(
        self, analysis_id: str, incident_id: str, analysis: remediation_pb2.Analysis
    ) -> RecordedAnalysis:
        """Put one analysis of an incident on the record, its reasoning included. Returns the
        stored analysis and True; for an analysis_id recorded before, the stored one (as it
        was first recorded, whatever this call carries) and False: a retry is a no-op.
        UnknownIncident for an unknown incident."""
        values = _analysis_values(analysis_id, incident_id, analysis)
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(_INSERT_ANALYSIS, *values)
                created = row is not None
                if row is None:
                    row = await conn.fetchrow(_SELECT_ANALYSIS, values[0])
        except asyncpg.ForeignKeyViolationError as exc:
            raise UnknownIncident(
                f"analysis {analysis_id}: incident {incident_id} does not exist"
            ) from exc
        except asyncpg.DataError as exc:
            # NUL characters in the prompt or answer, which PostgreSQL cannot store.
            raise InvalidRecord(f"analysis {analysis_id}: {exc}", field="analysis") from exc
        if row is None:
            # Only reachable if the row vanished between the statements; nothing deletes rows.
            raise StoreError(f"analysis {analysis_id} conflicted but is not stored")
        return RecordedAnalysis(_row_to_analysis(row), created)

    # -- dropped alerts -----------------------------------------------------------------------

    async def record_dropped_alert(
        self,
        dedup_key: str,
        alert: alert_pb2.Alert,
        reason_code: storage_pb2.AlertDropReason.ValueType,
        reason: str,
        subject: alert_pb2.ResourceRef | None,
    ) -> tuple[storage_pb2.DroppedAlert, bool]:
        """Record that a firing alert did not become an incident, and why. One row per
        alert life (dedup key, alert name, start): a repeat returns the stored row and
        False."""
        if reason_code == storage_pb2.ALERT_DROP_REASON_UNSPECIFIED:
            raise InvalidRecord("reason_code must be specified", field="reason_code")
        subject = subject or alert_pb2.ResourceRef()
        starts_at = alert.starts_at.ToDatetime(dt.UTC) if alert.HasField("starts_at") else None
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(
                    _INSERT_DROPPED_ALERT,
                    uuid.uuid4(),
                    dedup_key,
                    alert.name,
                    storage_pb2.AlertDropReason.Name(reason_code),
                    reason,
                    subject.cluster,
                    subject.namespace,
                    subject.kind,
                    subject.name,
                    json_format.MessageToJson(alert, preserving_proto_field_name=True, indent=0),
                    starts_at,
                )
                created = row is not None
                if row is None:
                    row = await conn.fetchrow(
                        _SELECT_DROPPED_ALERT, dedup_key, alert.name, starts_at
                    )
        except asyncpg.DataError as exc:
            raise InvalidRecord(f"dropped alert {alert.name}: {exc}", field="alert") from exc
        if row is None:
            # Only reachable if the row vanished between the statements; nothing deletes rows.
            raise StoreError(f"dropped alert {alert.name} conflicted but is not stored")
        return _row_to_dropped(row), created

    async def list_dropped_alerts(
        self, page_size: int, page_token: str
    ) -> tuple[list[storage_pb2.DroppedAlert], str]:
        """Dropped alerts newest first; (alerts, next_page_token), the token empty on the
        last page. page_size 0 means 100; above 1000 means 1000."""
        rows, next_token = await self._keyset_page(
            f"SELECT {_DROPPED_COLUMNS} FROM dropped_alerts",
            order=("dropped_at", "drop_id"),
            filters={},
            filter_key="dropped_alerts",
            filter_name="listing",
            limit=_page_limit(page_size),
            page_token=page_token,
        )
        return [_row_to_dropped(row) for row in rows], next_token

    # -- assessments --------------------------------------------------------------------------

    async def record_assessment(self, assessment: storage_pb2.Assessment) -> bool:
        """Store `assessment`. True when stored now; False when the same assessment_id is
        already stored with the same content (a retry); RecordConflict when its content
        differs; UnknownAction when its action is not recorded."""
        values = _assessment_values(assessment)
        try:
            async with self._connection() as conn:
                created = await conn.fetchval(_INSERT_ASSESSMENT, *values)
                if created:
                    return True
                same = await conn.fetchval(_SAME_ASSESSMENT, *values)
        except asyncpg.ForeignKeyViolationError as exc:
            raise UnknownAction(
                f"assessment {assessment.assessment_id}: action {assessment.action_id}"
                " is not recorded"
            ) from exc
        except asyncpg.DataError as exc:
            raise InvalidRecord(
                f"assessment {assessment.assessment_id}: {exc}", field="assessment"
            ) from exc
        if same is None:
            raise StoreError(f"assessment {assessment.assessment_id} conflicted but is not stored")
        if not same:
            raise RecordConflict(
                f"assessment_id {assessment.assessment_id} is already recorded"
                " with different content"
            )
        return False

    # -- audit trail --------------------------------------------------------------------------

    async def append_audit_entry(
        self, request: storage_pb2.AppendAuditEntryRequest
    ) -> tuple[storage_pb2.AuditEntry, bool]:
        """Append an entry to the audit trail's hash chain (see storage.audit): (the entry as
        stored, True), or for an entry_id appended before with the same content (the stored
        entry, False); RecordConflict when its content differs."""
        for field in ("principal", "method", "incident_id", "target", "outcome_message"):
            if "\x00" in getattr(request, field):
                # PostgreSQL cannot store NUL in text.
                raise InvalidRecord(f"{field} contains a NUL character", field=field)
        try:
            async with self._connection() as conn:
                return await audit.append_entry(conn, request)
        except audit.AuditConflict as exc:
            raise RecordConflict(str(exc)) from exc
        except ValueError as exc:
            raise InvalidRecord(
                f"entry_id {request.entry_id!r} is not a UUID", field="entry_id"
            ) from exc
        except asyncpg.DataError as exc:
            # NUL characters, which PostgreSQL cannot store.
            raise InvalidRecord(f"audit entry {request.entry_id}: {exc}") from exc

    async def list_audit_entries(
        self, query: audit.AuditQuery, page_size: int, page_token: str
    ) -> tuple[list[storage_pb2.AuditEntry], str]:
        """Audit entries matching `query` in chain order (or newest first), a page at a time;
        (entries, next_page_token), the token empty on the last page. page_size 0 means
        100; above 1000 means 1000."""
        try:
            async with self._connection() as conn:
                return await audit.list_entries(conn, query, _page_limit(page_size), page_token)
        except audit.InvalidAuditQuery as exc:
            if exc.field == "page_token":
                raise InvalidPageToken(str(exc)) from exc
            raise InvalidRecord(str(exc), field=exc.field) from exc

    # -- history for intelligence -------------------------------------------------------------

    async def list_incidents_matching(
        self, query: history_queries.IncidentQuery, page_size: int, page_token: str
    ) -> tuple[list[storage_pb2.Incident], str]:
        """Incidents matching `query` (status, alert name, subject, opened after), newest
        first; (incidents, next_page_token), the token empty on the last page. page_size 0
        means 100; above 1000 means 1000."""
        try:
            async with self._connection() as conn:
                rows, token = await history_queries.incident_rows(
                    conn, _INCIDENT_COLUMNS, query, _page_limit(page_size), page_token
                )
        except history_queries.InvalidHistoryQuery as exc:
            if exc.field == "page_token":
                raise InvalidPageToken(str(exc)) from exc
            raise InvalidRecord(str(exc), field=exc.field) from exc
        return [_row_to_incident(row) for row in rows], token

    async def list_incident_embeddings(
        self, query: history_queries.EmbeddingQuery, page_size: int, page_token: str
    ) -> tuple[list[storage_pb2.IncidentEmbedding], str]:
        """The embeddings of incidents matching `query` (those embedded), newest first;
        (embeddings, next_page_token), the token empty on the last page. page_size 0 means
        100; above 1000 means 1000."""
        try:
            async with self._connection() as conn:
                return await history_queries.embedding_page(
                    conn, query, _page_limit(page_size), page_token
                )
        except history_queries.InvalidHistoryQuery as exc:
            if exc.field == "page_token":
                raise InvalidPageToken(str(exc)) from exc
            raise InvalidRecord(str(exc), field=exc.field) from exc


_ACTION_COLUMNS: Final = (
    "action_id, incident_id, alert_name, action, target_cluster, target_namespace,"
    " target_kind, target_name, outcome, spec_before, spec_after, message,"
    " started_at, finished_at, params, observed_after"
)

_INSERT_ACTION: Final = f"""
INSERT INTO action_records ({_ACTION_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12, $13, $14, $15::jsonb,
        $16::jsonb)
ON CONFLICT (action_id) DO NOTHING
RETURNING true
"""

# Compared in SQL so jsonb equality and timestamp rounding are PostgreSQL's own.
_SAME_ACTION: Final = """
SELECT (incident_id, alert_name, action, target_cluster, target_namespace, target_kind,
        target_name, outcome, spec_before, spec_after, message, started_at, finished_at,
        params, observed_after)
       IS NOT DISTINCT FROM
       ($2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::text,
        $10::jsonb, $11::jsonb, $12::text, $13::timestamptz, $14::timestamptz, $15::jsonb,
        $16::jsonb)
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
        _params_json(record),
        _observed_after_json(record),
    )


def _params_json(record: storage_pb2.ActionRecord) -> str | None:
    if not record.HasField("params"):
        return None
    return json_format.MessageToJson(record.params, preserving_proto_field_name=True, indent=0)


def _observed_after_json(record: storage_pb2.ActionRecord) -> str | None:
    if not record.HasField("observed_after"):
        return None
    return json_format.MessageToJson(
        record.observed_after, preserving_proto_field_name=True, indent=0
    )


def _workload_state_of(stored: str | None) -> remediation_pb2.WorkloadState | None:
    """A stored observed_after (protobuf JSON) as the message; None when there is none."""
    if stored is None:
        return None
    return json_format.Parse(stored, remediation_pb2.WorkloadState(), ignore_unknown_fields=True)


def _row_to_record(row: asyncpg.Record) -> storage_pb2.ActionRecord:
    record = storage_pb2.ActionRecord(
        action_id=str(row["action_id"]),
        incident_id=row["incident_id"],
        alert_name=row["alert_name"],
        action=row["action"],
        target=resource_ref(row, "target"),
        outcome=storage_pb2.ActionOutcome.Value(row["outcome"]),
        spec_before_json=row["spec_before"] or "",
        spec_after_json=row["spec_after"] or "",
        message=row["message"],
    )
    record.started_at.FromDatetime(row["started_at"])
    if row["finished_at"] is not None:
        record.finished_at.FromDatetime(row["finished_at"])
    if row["params"] is not None:
        json_format.Parse(row["params"], record.params, ignore_unknown_fields=True)
    observed_after = _workload_state_of(row["observed_after"])
    if observed_after is not None:
        record.observed_after.CopyFrom(observed_after)
    return record


_DROPPED_COLUMNS: Final = (
    "drop_id, dedup_key, alert_name, reason_code, reason, subject_cluster, subject_namespace,"
    " subject_kind, subject_name, alert, starts_at, dropped_at"
)

_INSERT_DROPPED_ALERT: Final = f"""
INSERT INTO dropped_alerts (drop_id, dedup_key, alert_name, reason_code, reason,
    subject_cluster, subject_namespace, subject_kind, subject_name, alert, starts_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)
ON CONFLICT (dedup_key, alert_name, coalesce(starts_at, 'epoch'::timestamptz)) DO NOTHING
RETURNING {_DROPPED_COLUMNS}
"""

_SELECT_DROPPED_ALERT: Final = f"""
SELECT {_DROPPED_COLUMNS} FROM dropped_alerts
WHERE dedup_key = $1 AND alert_name = $2
  AND coalesce(starts_at, 'epoch'::timestamptz) = coalesce($3, 'epoch'::timestamptz)
"""


def _row_to_dropped(row: asyncpg.Record) -> storage_pb2.DroppedAlert:
    dropped = storage_pb2.DroppedAlert(
        drop_id=str(row["drop_id"]),
        dedup_key=row["dedup_key"],
        reason_code=storage_pb2.AlertDropReason.Value(row["reason_code"]),
        reason=row["reason"],
    )
    json_format.Parse(row["alert"], dropped.alert, ignore_unknown_fields=True)
    if row["subject_kind"]:
        dropped.subject.CopyFrom(resource_ref(row, "subject"))
    dropped.dropped_at.FromDatetime(row["dropped_at"])
    return dropped


_INCIDENT_COLUMNS: Final = (
    "incident_id, fingerprint, status, status_reason, alert_name, subject_cluster,"
    " subject_namespace, subject_kind, subject_name, alert, occurrences, opened_at,"
    " updated_at, closed_at, trace_id, alert_resolved_at, after_close"
)

_SELECT_INCIDENT: Final = f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE incident_id = $1"
_SELECT_ARCHIVED_INCIDENT: Final = (
    f"SELECT {_INCIDENT_COLUMNS} FROM incidents_archive WHERE incident_id = $1"
)

_COUNT_OCCURRENCE: Final = f"""
UPDATE incidents SET occurrences = occurrences + 1, updated_at = now()
WHERE fingerprint = $1 AND closed_at IS NULL
RETURNING {_INCIDENT_COLUMNS}
"""

# An alert that keeps firing after its incident was remediated (the upstream crash-loop
# rule looks back 5 minutes, AlertManager re-sends until it resolves) belongs to that
# incident: a new one would analyse the fixed workload again and could act twice.
# Unless the workload changed since that incident's fix (kubernaut.services.storage.quiet_period):
# the baseline is the state verified by its last SUCCEEDED change (read-only actions, and
# records from before 0006, have none), NULL when none has one.
_RECENTLY_CLOSED: Final = """
SELECT i.incident_id,
       extract(epoch FROM now() - i.closed_at) AS closed_seconds_ago,
       (SELECT r.observed_after FROM action_records r
        WHERE r.incident_id = i.incident_id::text AND r.outcome = 'ACTION_OUTCOME_SUCCEEDED'
          AND r.observed_after IS NOT NULL
        ORDER BY r.started_at DESC, r.action_id DESC LIMIT 1) AS observed_after
FROM incidents i
WHERE i.fingerprint = $1 AND i.closed_at > now() - make_interval(secs => $2)
  AND i.status <> 'INCIDENT_STATUS_RESOLVED'
ORDER BY i.closed_at DESC LIMIT 1
"""

# The conflict target names the partial unique index of open incidents, so the insert and
# the count are one atomic step however many callers race.
_OPEN_INCIDENT: Final = f"""
INSERT INTO incidents (incident_id, fingerprint, status, status_reason, alert_name,
                       subject_cluster, subject_namespace, subject_kind, subject_name, alert,
                       trace_id, description, embedding_model, embedding)
VALUES ($1, $2, 'INCIDENT_STATUS_OPEN', $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12,
        $13::real[]::vector)
ON CONFLICT (fingerprint) WHERE closed_at IS NULL
DO UPDATE SET occurrences = incidents.occurrences + 1, updated_at = now()
RETURNING {_INCIDENT_COLUMNS}
"""

_UPDATE_INCIDENT: Final = f"""
UPDATE incidents
SET status = $2, status_reason = $3, updated_at = now(),
    closed_at = CASE WHEN $4::boolean THEN now() END
WHERE incident_id = $1 AND closed_at IS NULL
RETURNING {_INCIDENT_COLUMNS}
"""

# An alert the quiet period counts on a closed incident: the incident keeps why.
_COUNT_AFTER_CLOSE: Final = f"""
UPDATE incidents SET occurrences = occurrences + 1, after_close = $2, updated_at = now()
WHERE incident_id = $1
RETURNING {_INCIDENT_COLUMNS}
"""

_COUNT_ALERTS: Final = f"""
UPDATE incidents SET occurrences = occurrences + $2, updated_at = now()
WHERE incident_id = $1
RETURNING {_INCIDENT_COLUMNS}
"""

# One statement, so that a workflow moving the incident to REMEDIATING at the same moment
# either comes first (then the incident is only marked) or finds it closed (and never acts).
_RESOLVE_INCIDENT: Final = f"""
UPDATE incidents
SET alert_resolved_at = COALESCE(alert_resolved_at, $2, now()),
    updated_at = now(),
    status = CASE WHEN status = 'INCIDENT_STATUS_OPEN' THEN 'INCIDENT_STATUS_RESOLVED'
                  ELSE status END,
    status_reason = CASE WHEN status = 'INCIDENT_STATUS_OPEN' THEN $3 ELSE status_reason END,
    closed_at = CASE WHEN status = 'INCIDENT_STATUS_OPEN' THEN now() ELSE closed_at END
WHERE incident_id = $1
RETURNING {_INCIDENT_COLUMNS},
          status = 'INCIDENT_STATUS_RESOLVED' AND closed_at = now() AS closed_now
"""

# The resource list is bounded: a storm over a whole fleet is listed up to the cap, its
# size is still in `occurrences`.
_ADD_RESOURCE: Final = """
INSERT INTO incident_resources (incident_id, cluster, namespace, kind, name)
SELECT $1, $2, $3, $4, $5
WHERE (SELECT count(*) FROM incident_resources WHERE incident_id = $1) < $6
ON CONFLICT DO NOTHING
"""

_ARCHIVABLE: Final = """
SELECT incident_id FROM incidents
WHERE closed_at < now() - make_interval(secs => $1)
ORDER BY closed_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

# Children first (they reference the incident), each copied then deleted.
_ARCHIVE: Final = tuple(
    f"""
WITH moved AS (DELETE FROM {table} WHERE incident_id = ANY($1::uuid[]) RETURNING *)
INSERT INTO {table}_archive SELECT * FROM moved"""
    for table in ("analyses", "incident_resources", "incidents")
)

# {tables}: "" for the live tables, "_archive" for an archived incident's.
_INCIDENT_RESOURCES: Final = """
SELECT cluster, namespace, kind, name FROM incident_resources{tables}
WHERE incident_id = $1 ORDER BY added_at, kind, namespace, name LIMIT $2
"""


async def _add_resource(
    conn: asyncpg.pool.PoolConnectionProxy, incident_id: uuid.UUID, subject: alert_pb2.ResourceRef
) -> None:
    await conn.execute(
        _ADD_RESOURCE,
        incident_id,
        subject.cluster,
        subject.namespace,
        subject.kind,
        subject.name,
        MAX_AFFECTED_RESOURCES,
    )


_INCIDENT_ACTIONS: Final = f"""
SELECT {_ACTION_COLUMNS} FROM action_records WHERE incident_id = $1
ORDER BY started_at, action_id
"""

_ASSESSMENT_COLUMNS: Final = "assessment_id, action_id, delay, verdict, evidence, assessed_at"

_INCIDENT_ASSESSMENTS: Final = """
SELECT a.assessment_id, a.action_id, a.delay, a.verdict, a.evidence, a.assessed_at
FROM assessments a JOIN action_records r ON r.action_id = a.action_id
WHERE r.incident_id = $1
ORDER BY a.assessed_at, a.assessment_id
"""

_ANALYSIS_COLUMNS: Final = "analysis_id, incident_id, recorded_at, analysis"

# No conflict means no row, so no foreign-key check either: a retry after the incident's
# analysis was recorded returns the stored one.
_INSERT_ANALYSIS: Final = f"""
INSERT INTO analyses (analysis_id, incident_id, analysis, decision, analyzer, provider, model,
                      input_tokens, output_tokens, cost_usd)
VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (analysis_id) DO NOTHING
RETURNING {_ANALYSIS_COLUMNS}
"""

_SELECT_ANALYSIS: Final = f"SELECT {_ANALYSIS_COLUMNS} FROM analyses WHERE analysis_id = $1"

_INCIDENT_ANALYSES: Final = (
    f"SELECT {_ANALYSIS_COLUMNS} FROM analyses{{tables}} WHERE incident_id = $1 ORDER BY seq"
)

_INCIDENT_EMBEDDING: Final = """
SELECT embedding_model, embedding::real[] AS vector FROM incidents WHERE incident_id = $1
"""


_INSERT_ASSESSMENT: Final = f"""
INSERT INTO assessments ({_ASSESSMENT_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (assessment_id) DO NOTHING
RETURNING true
"""

_SAME_ASSESSMENT: Final = """
SELECT (action_id, delay, verdict, evidence, assessed_at)
       IS NOT DISTINCT FROM
       ($2::uuid, $3::interval, $4::text, $5::text[], $6::timestamptz)
FROM assessments WHERE assessment_id = $1
"""


def _parse_uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise InvalidRecord(f"{field} {value!r} is not a UUID", field=field) from exc


def _status_name(status: storage_pb2.IncidentStatus.ValueType) -> str:
    try:
        return storage_pb2.IncidentStatus.Name(status)
    except ValueError as exc:
        raise InvalidRecord(f"unknown incident status {status}", field="status") from exc


def _row_to_incident(row: asyncpg.Record) -> storage_pb2.Incident:
    incident = storage_pb2.Incident(
        incident_id=str(row["incident_id"]),
        fingerprint=row["fingerprint"],
        status=storage_pb2.IncidentStatus.Value(row["status"]),
        status_reason=row["status_reason"],
        alert_name=row["alert_name"],
        subject=resource_ref(row, "subject"),
        occurrences=row["occurrences"],
        trace_id=row["trace_id"],
        after_close=row["after_close"],
    )
    json_format.Parse(row["alert"], incident.alert, ignore_unknown_fields=True)
    incident.opened_at.FromDatetime(row["opened_at"])
    incident.updated_at.FromDatetime(row["updated_at"])
    if row["closed_at"] is not None:
        incident.closed_at.FromDatetime(row["closed_at"])
    if row["alert_resolved_at"] is not None:
        incident.alert_resolved_at.FromDatetime(row["alert_resolved_at"])
    return incident


def _assessment_values(assessment: storage_pb2.Assessment) -> tuple[Any, ...]:
    assessment_id = _parse_uuid(assessment.assessment_id, "assessment.assessment_id")
    action_id = _parse_uuid(assessment.action_id, "assessment.action_id")
    for required in ("delay", "assessed_at"):
        if not assessment.HasField(required):
            raise InvalidRecord(
                f"assessment {assessment.assessment_id}: {required} is required",
                field=f"assessment.{required}",
            )
    try:
        verdict = remediation_pb2.Verdict.Name(assessment.verdict)
    except ValueError as exc:
        raise InvalidRecord(
            f"assessment {assessment.assessment_id}: unknown verdict {assessment.verdict}",
            field="assessment.verdict",
        ) from exc
    try:
        delay = assessment.delay.ToTimedelta()
        assessed_at = assessment.assessed_at.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRecord(
            f"assessment {assessment.assessment_id}: bad delay or timestamp: {exc}",
            field="assessment",
        ) from exc
    if delay < dt.timedelta(0):
        raise InvalidRecord(
            f"assessment {assessment.assessment_id}: delay must not be negative",
            field="assessment.delay",
        )
    return (assessment_id, action_id, delay, verdict, list(assessment.evidence), assessed_at)


def _analysis_values(
    analysis_id: str, incident_id: str, analysis: remediation_pb2.Analysis
) -> tuple[Any, ...]:
    row_id = _parse_uuid(analysis_id, "analysis_id")
    incident = _parse_uuid(incident_id, "incident_id")
    try:
        decision = remediation_pb2.Decision.Name(analysis.decision)
    except ValueError as exc:
        raise InvalidRecord(
            f"analysis {analysis_id}: unknown decision {analysis.decision}",
            field="analysis.decision",
        ) from exc
    reasoning = analysis.reasoning
    # The columns are for sums (spend per provider, budgets): a negative or non-finite
    # figure would make every sum over them meaningless.
    for name in ("input_tokens", "output_tokens", "cost_usd", "latency_seconds"):
        figure = getattr(reasoning, name)
        if figure < 0 or not math.isfinite(figure):
            raise InvalidRecord(
                f"analysis {analysis_id}: {name} must be a finite number >= 0, got {figure}",
                field=f"analysis.reasoning.{name}",
            )
    return (
        row_id,
        incident,
        json_format.MessageToJson(analysis, preserving_proto_field_name=True, indent=0),
        decision,
        analysis.analyzer,
        reasoning.provider,
        reasoning.model,
        reasoning.input_tokens,
        reasoning.output_tokens,
        reasoning.cost_usd,
    )


def _row_to_analysis(row: asyncpg.Record) -> storage_pb2.RecordedAnalysis:
    recorded = storage_pb2.RecordedAnalysis(
        analysis_id=str(row["analysis_id"]), incident_id=str(row["incident_id"])
    )
    json_format.Parse(row["analysis"], recorded.analysis, ignore_unknown_fields=True)
    recorded.recorded_at.FromDatetime(row["recorded_at"])
    return recorded


def _row_to_assessment(row: asyncpg.Record) -> storage_pb2.Assessment:
    assessment = storage_pb2.Assessment(
        assessment_id=str(row["assessment_id"]),
        action_id=str(row["action_id"]),
        verdict=remediation_pb2.Verdict.Value(row["verdict"]),
        evidence=row["evidence"],
    )
    assessment.delay.FromTimedelta(row["delay"])
    assessment.assessed_at.FromDatetime(row["assessed_at"])
    return assessment


def _page_limit(page_size: int) -> int:
    """Rows per page: page_size, 0 meaning the default, at most the maximum."""
    if page_size < 0:
        raise ValueError(f"page_size must be >= 0, got {page_size}")
    return DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)


def _encode_page_token(at: dt.datetime, row_id: uuid.UUID, filter_key: str) -> str:
    return page_tokens.encode(at, row_id, filter_key)


def _decode_page_token(
    token: str, filter_key: str, filter_name: str
) -> tuple[dt.datetime, uuid.UUID]:
    try:
        return page_tokens.decode(token, filter_key)
    except page_tokens.ForeignToken as exc:
        raise InvalidPageToken(f"page token was issued for a different {filter_name}") from exc
    except page_tokens.MalformedToken as exc:
        raise InvalidPageToken(str(exc)) from exc
