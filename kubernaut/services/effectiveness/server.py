"""effectiveness: judges whether remediations work."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Final

from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.effectiveness.v1 import effectiveness_pb2, effectiveness_pb2_grpc
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.intelligence.v1.intelligence_pb2_grpc import IntelligenceServiceStub
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.database import redact_dsn, unavailable_as_status
from kubernaut.runtime.interceptors import abort_invalid
from kubernaut.runtime.prometheus import PrometheusAPI
from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.services.effectiveness.alertmanager import AlertmanagerClient
from kubernaut.services.effectiveness.scheduler import Assessor, EvidenceSources
from kubernaut.services.effectiveness.settings import AssessmentSettings, VerdictSettings
from kubernaut.services.effectiveness.store import ScheduleDatabase, StoreUnavailable
from kubernaut.services.effectiveness.verdicts import recurrence_of, verdict_of
from kubernaut.services.signals import MetricReader

log = logging.getLogger(__name__)

# acted_at may be this far ahead of our clock (clock skew); further is a malformed request.
MAX_CLOCK_SKEW: Final = dt.timedelta(minutes=5)


def _response(
    delays: Sequence[dt.timedelta], created: bool
) -> effectiveness_pb2.ScheduleAssessmentResponse:
    response = effectiveness_pb2.ScheduleAssessmentResponse(created=created)
    for delay in delays:
        response.delays.add().FromTimedelta(delay)
    return response


class EffectivenessServicer(effectiveness_pb2_grpc.EffectivenessServiceServicer):
    def __init__(
        self,
        intelligence: IntelligenceServiceStub,
        settings: VerdictSettings,
        database: ScheduleDatabase,
        sources: EvidenceSources,
        assessment: AssessmentSettings,
    ) -> None:
        self.intelligence = intelligence
        self.settings = settings
        self.database = database
        self.sources = sources
        self.assessment = assessment

    async def GetActionEffectiveness(
        self, request: effectiveness_pb2.GetActionEffectivenessRequest, context: Context
    ) -> effectiveness_pb2.GetActionEffectivenessResponse:
        stats = await self.intelligence.GetActionStats(
            intelligence_pb2.GetActionStatsRequest(alert_name=request.alert_name)
        )
        response = effectiveness_pb2.GetActionEffectivenessResponse(
            alert_name=request.alert_name,
            actions=[verdict_of(entry, self.settings) for entry in stats.stats],
        )
        if request.HasField("subject"):
            recurrence = await recurrence_of(self.intelligence, request.subject, request.alert_name)
            if isinstance(recurrence, str):
                response.recurrence_unavailable_reason = recurrence
            elif recurrence is not None:
                response.recurrence.CopyFrom(recurrence)
        return response

    async def ScheduleAssessment(
        self, request: effectiveness_pb2.ScheduleAssessmentRequest, context: Context
    ) -> effectiveness_pb2.ScheduleAssessmentResponse:
        try:
            acted_at = request.acted_at.ToDatetime(tzinfo=dt.UTC)
        except (ValueError, OverflowError) as error:
            await abort_invalid(context, "acted_at", f"not a valid time: {error}")
            raise
        if acted_at > dt.datetime.now(dt.UTC) + MAX_CLOCK_SKEW:
            await abort_invalid(context, "acted_at", f"{acted_at.isoformat()} is in the future")
        async with unavailable_as_status(context, StoreUnavailable):
            store = await self.database.store()
            existing = await store.delays_of(request.action_id)
            if existing is not None:
                return _response(existing, created=False)
            # Taken before storing, outside the transaction: a slow cluster must not
            # hold a database connection. A concurrent repeat may take one too; only
            # the first stored counts.
            baseline = await self.sources.baseline(request.target)
            delays, created = await store.schedule(
                request.action_id,
                request.incident_id,
                request.alert,
                request.target,
                acted_at,
                baseline,
                [dt.timedelta(seconds=s) for s in self.assessment.delays],
            )
        log.info(
            "assessment scheduled" if created else "assessment already scheduled",
            extra={
                "action_id": request.action_id,
                "delays": [d.total_seconds() for d in delays],
                "baseline": "taken" if baseline.restarts is not None else baseline.note,
            },
        )
        return _response(delays, created)


async def build(ctx: ServiceContext) -> ServiceSpec:
    return await build_with(ctx, AssessmentSettings(), VerdictSettings())


async def build_with(
    ctx: ServiceContext, settings: AssessmentSettings, verdicts: VerdictSettings
) -> ServiceSpec:
    """The service from settings read once by `build` (tests pass their own)."""
    # Connects lazily: the service starts NOT_SERVING while PostgreSQL is down.
    database = ScheduleDatabase(settings.database_url)
    alertmanager = (
        AlertmanagerClient(settings.alertmanager_url, settings.alertmanager_timeout_seconds)
        if settings.alertmanager_url
        else None
    )
    if alertmanager is None:
        log.warning(
            "no AlertManager configured (KUBERNAUT_EFFECTIVENESS_ALERTMANAGER_URL): "
            "assessments lack the alert's evidence and never judge an action effective"
        )
    prometheus = (
        PrometheusAPI(settings.prometheus_url, settings.prometheus_timeout_seconds)
        if settings.prometheus_url
        else None
    )
    if prometheus is None:
        log.warning(
            "no Prometheus configured (KUBERNAUT_EFFECTIVENESS_PROMETHEUS_URL): "
            "assessments lack the metrics before and after each action"
        )
    sources = EvidenceSources(
        ctx.clients.stub(ContextAPIServiceStub),
        alertmanager,
        settings,
        MetricReader(prometheus) if prometheus is not None else None,
    )
    assessor = Assessor(database, sources, ctx.clients.stub(StorageServiceStub), settings)
    assessor.start()
    log.info(
        "assessment scheduler started",
        extra={
            "dsn": redact_dsn(settings.database_url),
            "delays": list(settings.delays),
            "alertmanager": alertmanager.display_url if alertmanager else "",
            "prometheus": prometheus.display_url if prometheus else "",
            "owner": assessor.owner,
        },
    )

    async def stop() -> None:
        await assessor.stop()
        if alertmanager is not None:
            await alertmanager.close()
        if prometheus is not None:
            await prometheus.close()
        await database.close()

    servicer = EffectivenessServicer(
        ctx.clients.stub(IntelligenceServiceStub), verdicts, database, sources, settings
    )
    return ServiceSpec(servicer, readiness=[("postgresql", database.ready)], on_stop=[stop])
