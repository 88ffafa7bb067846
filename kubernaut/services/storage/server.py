"""storage: owns Kubernaut's shared record in PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from kubernaut.storage.v1 import storage_pb2, storage_pb2_grpc

from kubernaut.runtime.audit import EntryRefused
from kubernaut.runtime.database import LazyDatabase, unavailable_as_status
from kubernaut.runtime.interceptors import abort_invalid
from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.services.storage import history_queries
from kubernaut.services.storage.audit import AuditQuery
from kubernaut.services.storage.embeddings import Embedder, embedder_for
from kubernaut.services.storage.retention import Archiver
from kubernaut.services.storage.settings import StorageSettings
from kubernaut.services.storage.store import (
    IncidentClosed,
    InvalidPageToken,
    InvalidRecord,
    NotFound,
    RecordConflict,
    Store,
    StoreUnavailable,
)
from kubernaut.services.storage.vectors.index import VectorIndex
from kubernaut.services.storage.vectors.settings import VectorStoreSettings

T = TypeVar("T")


class Database(LazyDatabase[Store]):
    """Storage's store, connected and migrated on first use (see LazyDatabase)."""

    def __init__(
        self,
        dsn: str,
        embedder: Embedder | None = None,
        quiet_seconds: float = 0.0,
        vectors: VectorStoreSettings | None = None,
    ) -> None:
        super().__init__(
            dsn,
            Store,
            embedder=embedder,
            quiet_seconds=quiet_seconds,
            vectors=VectorIndex(vectors or VectorStoreSettings.model_construct(), dsn),
        )


@contextlib.asynccontextmanager
async def store_errors_as_status(context: Context, field: str = "") -> AsyncIterator[None]:
    """The store's errors as the status codes the proto documents; `field` is the request
    field an InvalidRecord without a field of its own is about."""
    try:
        yield
    except StoreUnavailable as error:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
    except NotFound as error:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    except IncidentClosed as error:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    except RecordConflict as error:
        await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(error))
    except InvalidPageToken as error:
        await abort_invalid(context, "page_token", str(error))
    except InvalidRecord as error:
        await abort_invalid(context, error.field or field, str(error))


async def history_query(context: Context, parse: Callable[..., T], *args: Any) -> T:
    """`parse(*args)`, a history filter from a request; its InvalidHistoryQuery as
    INVALID_ARGUMENT naming the field."""
    try:
        return parse(*args)
    except history_queries.InvalidHistoryQuery as error:
        await abort_invalid(context, error.field, str(error))
        raise AssertionError("unreachable") from error  # abort raises


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database

    async def GetStoreStatus(
        self, request: storage_pb2.GetStoreStatusRequest, context: Context
    ) -> storage_pb2.GetStoreStatusResponse:
        async with unavailable_as_status(context, StoreUnavailable):
            status = await (await self.database.store()).status()
        response = storage_pb2.GetStoreStatusResponse(
            server_version=status.server_version, pgvector_version=status.pgvector_version
        )
        for migration in status.migrations:
            entry = response.migrations.add(version=migration.version, name=migration.name)
            entry.applied_at.FromDatetime(migration.applied_at)
        return response

    async def RecordAction(
        self, request: storage_pb2.RecordActionRequest, context: Context
    ) -> storage_pb2.RecordActionResponse:
        async with store_errors_as_status(context, "record"):
            created = await (await self.database.store()).record_action(request.record)
        return storage_pb2.RecordActionResponse(created=created)

    async def ListActionRecords(
        self, request: storage_pb2.ListActionRecordsRequest, context: Context
    ) -> storage_pb2.ListActionRecordsResponse:
        async with store_errors_as_status(context):
            records, token = await (await self.database.store()).list_actions(
                request.alert_name,
                request.page_size,
                request.page_token,
                request.target if request.HasField("target") else None,
            )
        return storage_pb2.ListActionRecordsResponse(records=records, next_page_token=token)

    async def OpenIncident(
        self, request: storage_pb2.OpenIncidentRequest, context: Context
    ) -> storage_pb2.OpenIncidentResponse:
        async with store_errors_as_status(context, "alert"):
            opened = await (await self.database.store()).open_or_count(
                request.fingerprint,
                request.alert,
                request.subject,
                request.trace_id,
                request.workload_state if request.HasField("workload_state") else None,
            )
        return storage_pb2.OpenIncidentResponse(
            incident=opened.incident, created=opened.created, quiet_period=opened.quiet_period
        )

    async def UpdateIncident(
        self, request: storage_pb2.UpdateIncidentRequest, context: Context
    ) -> storage_pb2.UpdateIncidentResponse:
        async with store_errors_as_status(context, "incident_id"):
            incident = await (await self.database.store()).update_incident(
                request.incident_id, request.status, request.status_reason
            )
        return storage_pb2.UpdateIncidentResponse(incident=incident)

    async def CountIncidentAlerts(
        self, request: storage_pb2.CountIncidentAlertsRequest, context: Context
    ) -> storage_pb2.CountIncidentAlertsResponse:
        async with store_errors_as_status(context, "incident_id"):
            incident = await (await self.database.store()).count_incident_alerts(
                request.incident_id, request.count
            )
        return storage_pb2.CountIncidentAlertsResponse(incident=incident)

    async def ResolveIncident(
        self, request: storage_pb2.ResolveIncidentRequest, context: Context
    ) -> storage_pb2.ResolveIncidentResponse:
        resolved_at = (
            request.resolved_at.ToDatetime(dt.UTC) if request.HasField("resolved_at") else None
        )
        async with store_errors_as_status(context, "incident_id"):
            incident, closed = await (await self.database.store()).resolve_incident(
                request.incident_id, resolved_at
            )
        return storage_pb2.ResolveIncidentResponse(incident=incident, closed=closed)

    async def GetIncident(
        self, request: storage_pb2.GetIncidentRequest, context: Context
    ) -> storage_pb2.GetIncidentResponse:
        async with store_errors_as_status(context, "incident_id"):
            detail = await (await self.database.store()).get_incident(request.incident_id)
        return storage_pb2.GetIncidentResponse(
            incident=detail.incident,
            actions=detail.actions,
            assessments=detail.assessments,
            affected_resources=detail.affected_resources,
            analyses=detail.analyses,
        )

    async def ListIncidents(
        self, request: storage_pb2.ListIncidentsRequest, context: Context
    ) -> storage_pb2.ListIncidentsResponse:
        query = await history_query(context, history_queries.IncidentQuery.of, request)
        if query.filters_beyond_status:
            return await self._list_incidents_matching(query, request, context)
        async with store_errors_as_status(context, "status"):
            incidents, token = await (await self.database.store()).list_incidents(
                request.status, request.page_size, request.page_token
            )
        return storage_pb2.ListIncidentsResponse(incidents=incidents, next_page_token=token)

    async def _list_incidents_matching(
        self,
        query: history_queries.IncidentQuery,
        request: storage_pb2.ListIncidentsRequest,
        context: Context,
    ) -> storage_pb2.ListIncidentsResponse:
        async with store_errors_as_status(context, "status"):
            incidents, token = await (await self.database.store()).list_incidents_matching(
                query, request.page_size, request.page_token
            )
        return storage_pb2.ListIncidentsResponse(incidents=incidents, next_page_token=token)

    async def ListIncidentEmbeddings(
        self, request: storage_pb2.ListIncidentEmbeddingsRequest, context: Context
    ) -> storage_pb2.ListIncidentEmbeddingsResponse:
        opened_after = await history_query(
            context, history_queries.timestamp_or_none, request, "opened_after"
        )
        query = history_queries.EmbeddingQuery(request.embedding_model, opened_after)
        async with store_errors_as_status(context):
            embeddings, token = await (await self.database.store()).list_incident_embeddings(
                query, request.page_size, request.page_token
            )
        return storage_pb2.ListIncidentEmbeddingsResponse(
            embeddings=embeddings, next_page_token=token
        )

    async def RecordAssessment(
        self, request: storage_pb2.RecordAssessmentRequest, context: Context
    ) -> storage_pb2.RecordAssessmentResponse:
        async with store_errors_as_status(context, "assessment"):
            created = await (await self.database.store()).record_assessment(request.assessment)
        return storage_pb2.RecordAssessmentResponse(created=created)

    async def SearchSimilarIncidents(
        self, request: storage_pb2.SearchSimilarIncidentsRequest, context: Context
    ) -> storage_pb2.SearchSimilarIncidentsResponse:
        async with store_errors_as_status(context, "incident_id"):
            similar = await (await self.database.store()).search_similar(
                request.incident_id,
                request.limit,
                subject_kind=request.subject_kind,
                alert_names=list(request.alert_names),
            )
        return storage_pb2.SearchSimilarIncidentsResponse(
            incidents=[
                storage_pb2.SimilarIncident(incident=incident, distance=distance)
                for incident, distance in similar.incidents
            ],
            embedding_model=similar.model,
            vector_store=similar.vector_store,
            unavailable_reason=similar.unavailable_reason,
        )

    async def RecordDroppedAlert(
        self, request: storage_pb2.RecordDroppedAlertRequest, context: Context
    ) -> storage_pb2.RecordDroppedAlertResponse:
        async with store_errors_as_status(context, "alert"):
            dropped, created = await (await self.database.store()).record_dropped_alert(
                request.dedup_key,
                request.alert,
                request.reason_code,
                request.reason,
                request.subject if request.HasField("subject") else None,
            )
        return storage_pb2.RecordDroppedAlertResponse(dropped=dropped, created=created)

    async def ListDroppedAlerts(
        self, request: storage_pb2.ListDroppedAlertsRequest, context: Context
    ) -> storage_pb2.ListDroppedAlertsResponse:
        async with store_errors_as_status(context, "page_token"):
            dropped, token = await (await self.database.store()).list_dropped_alerts(
                request.page_size, request.page_token
            )
        return storage_pb2.ListDroppedAlertsResponse(alerts=dropped, next_page_token=token)

    async def RecordAnalysis(
        self, request: storage_pb2.RecordAnalysisRequest, context: Context
    ) -> storage_pb2.RecordAnalysisResponse:
        async with store_errors_as_status(context, "analysis"):
            recorded, created = await (await self.database.store()).record_analysis(
                request.analysis_id, request.incident_id, request.analysis
            )
        return storage_pb2.RecordAnalysisResponse(recorded=recorded, created=created)

    async def AppendAuditEntry(
        self, request: storage_pb2.AppendAuditEntryRequest, context: Context
    ) -> storage_pb2.AppendAuditEntryResponse:
        async with store_errors_as_status(context):
            entry, created = await (await self.database.store()).append_audit_entry(request)
        return storage_pb2.AppendAuditEntryResponse(entry=entry, created=created)

    async def ListAuditEntries(
        self, request: storage_pb2.ListAuditEntriesRequest, context: Context
    ) -> storage_pb2.ListAuditEntriesResponse:
        query = AuditQuery(
            principal=request.principal,
            incident_id=request.incident_id,
            method=request.method,
            since=request.since.ToDatetime(dt.UTC) if request.HasField("since") else None,
            until=request.until.ToDatetime(dt.UTC) if request.HasField("until") else None,
            newest_first=request.newest_first,
        )
        async with store_errors_as_status(context):
            entries, token = await (await self.database.store()).list_audit_entries(
                query, request.page_size, request.page_token
            )
        return storage_pb2.ListAuditEntriesResponse(entries=entries, next_page_token=token)


class StoreAuditSink:
    """Storage's own audited calls go to its store directly, not in an RPC to itself."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def append(self, entry: storage_pb2.AppendAuditEntryRequest) -> None:
        try:
            await (await self.database.store()).append_audit_entry(entry)
        except (InvalidRecord, RecordConflict) as error:
            raise EntryRefused(str(error)) from error


async def build(ctx: ServiceContext) -> ServiceSpec:
    settings = StorageSettings()
    # Fails here, at start, for an unknown model; the model itself loads on first use.
    database = Database(
        settings.database_url,
        embedder_for(settings.embedding_model),
        settings.incident_quiet_seconds,
        VectorStoreSettings(),
    )
    ctx.audit.write_to(StoreAuditSink(database))
    archiver = Archiver(
        database, settings.incident_retention_days, settings.incident_archive_poll_seconds
    )
    archiver.start()
    return ServiceSpec(
        StorageServicer(database),
        readiness=[("postgresql", database.ready)],
        on_stop=[archiver.stop, database.close],
    )
