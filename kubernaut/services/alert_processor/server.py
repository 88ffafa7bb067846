"""alert_processor: validate, filter, resolve the subject, fingerprint, open or count the
incident, and have the alert that opened it analysed. The servicer is thin: the logic is in
pipeline.py, and GrpcDownstream maps its calls onto the other services' stubs."""

from __future__ import annotations

import logging

import grpc
from kubernaut.ai_analysis.v1 import ai_analysis_pb2
from kubernaut.ai_analysis.v1.ai_analysis_pb2_grpc import AIAnalysisServiceStub
from kubernaut.alert_processor.v1 import alert_processor_pb2, alert_processor_pb2_grpc
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.notification.v1 import notification_pb2
from kubernaut.notification.v1.notification_pb2_grpc import NotificationServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.services.alert_processor.pipeline import (
    AlertPipeline,
    ClosedMeanwhile,
    NotDelivered,
    SubjectGone,
    UnknownIncident,
)
from kubernaut.services.context_api.client import ResourceGone, resource_context

log = logging.getLogger(__name__)


# A model may take part in the analysis: ai_analysis bounds it by what is left of this
# deadline (and its own KUBERNAUT_AI_ANSWER_TIMEOUT_SECONDS), then lets the rules decide.
# Below the gateway's forward timeout (120 s), so the gateway never gives up first.
ANALYSIS_DEADLINE_SECONDS = 75.0


class GrpcDownstream:
    """The pipeline's Downstream through the generated stubs."""

    def __init__(
        self,
        context_api: ContextAPIServiceStub,
        storage: StorageServiceStub,
        ai_analysis: AIAnalysisServiceStub,
        notification: NotificationServiceStub,
    ) -> None:
        self.context_api = context_api
        self.storage = storage
        self.ai_analysis = ai_analysis
        self.notification = notification

    async def resource_context(
        self, subject: alert_pb2.ResourceRef
    ) -> context_api_pb2.ResourceContext | None:
        try:
            return await resource_context(self.context_api, subject, gone_is_none=False)
        except ResourceGone as gone:
            raise SubjectGone(str(gone)) from gone

    async def open_incident(
        self, request: storage_pb2.OpenIncidentRequest
    ) -> storage_pb2.OpenIncidentResponse:
        opened: storage_pb2.OpenIncidentResponse = await self.storage.OpenIncident(request)
        return opened

    async def update_incident(self, request: storage_pb2.UpdateIncidentRequest) -> None:
        try:
            await self.storage.UpdateIncident(request)
        except grpc.aio.AioRpcError as error:
            # Closed concurrently (another analysis, or its alerts resolved).
            if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                raise ClosedMeanwhile from error
            raise

    async def resolve_incident(
        self, request: storage_pb2.ResolveIncidentRequest
    ) -> storage_pb2.ResolveIncidentResponse:
        try:
            resolved: storage_pb2.ResolveIncidentResponse = await self.storage.ResolveIncident(
                request
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                raise UnknownIncident(request.incident_id) from error
            raise
        return resolved

    async def record_dropped_alert(
        self, request: storage_pb2.RecordDroppedAlertRequest
    ) -> storage_pb2.RecordDroppedAlertResponse:
        recorded: storage_pb2.RecordDroppedAlertResponse = await self.storage.RecordDroppedAlert(
            request
        )
        return recorded

    async def analyze_incident(
        self, request: ai_analysis_pb2.AnalyzeIncidentRequest
    ) -> ai_analysis_pb2.AnalyzeIncidentResponse:
        analyzed: ai_analysis_pb2.AnalyzeIncidentResponse = await self.ai_analysis.AnalyzeIncident(
            request, timeout=ANALYSIS_DEADLINE_SECONDS
        )
        return analyzed

    async def notify_incident_event(
        self, request: notification_pb2.NotifyIncidentEventRequest
    ) -> None:
        try:
            await self.notification.NotifyIncidentEvent(request)
        except grpc.aio.AioRpcError as error:
            raise NotDelivered(error.code().name) from error


class AlertProcessorServicer(alert_processor_pb2_grpc.AlertProcessorServiceServicer):
    def __init__(self, pipeline: AlertPipeline) -> None:
        self.pipeline = pipeline

    async def ProcessAlert(
        self, request: alert_processor_pb2.ProcessAlertRequest, context: Context
    ) -> alert_processor_pb2.ProcessAlertResponse:
        return await self.pipeline.process(request)


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(
        AlertProcessorServicer(
            AlertPipeline(
                GrpcDownstream(
                    ctx.clients.stub(ContextAPIServiceStub),
                    ctx.clients.stub(StorageServiceStub),
                    ctx.clients.stub(AIAnalysisServiceStub),
                    ctx.clients.stub(NotificationServiceStub),
                )
            )
        )
    )
