"""alert_processor: validate, filter, resolve the subject, fingerprint, open or count the
incident, and have the alert that opened it analysed."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from kubernaut.ai_analysis.v1 import ai_analysis_pb2
from kubernaut.ai_analysis.v1.ai_analysis_pb2_grpc import AIAnalysisServiceStub
from kubernaut.alert_processor.v1 import alert_processor_pb2, alert_processor_pb2_grpc
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from opentelemetry import trace

from services.alert_processor.processing import fingerprint_of, triage
from services.context_api.client import resource_context
from services.runtime.logs import incident_id_var
from services.runtime.server import ServiceContext, ServiceSpec

log = logging.getLogger(__name__)


class AlertProcessorServicer(alert_processor_pb2_grpc.AlertProcessorServiceServicer):
    def __init__(
        self,
        context_api: ContextAPIServiceStub,
        storage: StorageServiceStub,
        ai_analysis: AIAnalysisServiceStub,
    ) -> None:
        self.context_api = context_api
        self.storage = storage
        self.ai_analysis = ai_analysis

    async def _workload(self, subject: alert_pb2.ResourceRef) -> alert_pb2.ResourceRef:
        """The workload that owns the subject (a Pod's Deployment), or the subject itself
        when the cluster cannot tell (the pod is gone, no cluster configured)."""
        found = await resource_context(self.context_api, subject)
        if found is None or not found.workload.name:
            return subject
        return found.workload

    async def ProcessAlert(
        self, request: alert_processor_pb2.ProcessAlertRequest, context: Any
    ) -> alert_processor_pb2.ProcessAlertResponse:
        alert = request.alert
        result = triage(alert)
        response = alert_processor_pb2.ProcessAlertResponse(
            fingerprint=result.fingerprint,
            disposition=result.disposition,
            reason=result.reason,
            subject=result.subject,
        )
        if (
            result.disposition != remediation_pb2.ALERT_DISPOSITION_ANALYZED
            or result.subject is None
        ):
            return response

        subject = await self._workload(result.subject)
        response.subject.CopyFrom(subject)
        response.fingerprint = fingerprint_of(alert, subject)
        span = trace.get_current_span().get_span_context()
        opened = await self.storage.OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=response.fingerprint,
                alert=alert,
                subject=subject,
                trace_id=format(span.trace_id, "032x") if span.is_valid else "",
            )
        )
        incident = opened.incident
        response.incident_id = incident.incident_id
        incident_id_var.set(incident.incident_id)
        if not opened.created:
            response.disposition = remediation_pb2.ALERT_DISPOSITION_DUPLICATE
            response.reason = (
                f"counted on open incident {incident.incident_id} "
                f"({incident.occurrences} alerts so far)"
            )
            if incident.status != storage_pb2.INCIDENT_STATUS_OPEN:
                return response
            # Still OPEN: the analysis of the alert that opened it may have failed (and
            # that alert's retry is this duplicate). Analysing again is safe: an incident
            # has at most one workflow.

        analyzed = await self.ai_analysis.AnalyzeIncident(
            ai_analysis_pb2.AnalyzeIncidentRequest(incident=incident)
        )
        response.analysis.CopyFrom(analyzed.analysis)
        response.workflow_id = analyzed.workflow_id
        if analyzed.analysis.decision != remediation_pb2.DECISION_REMEDIATE:
            try:
                await self.storage.UpdateIncident(
                    storage_pb2.UpdateIncidentRequest(
                        incident_id=incident.incident_id,
                        status=storage_pb2.INCIDENT_STATUS_NO_ACTION,
                        status_reason="; ".join(analyzed.analysis.reasons)[:4096],
                    )
                )
            except grpc.aio.AioRpcError as error:
                # A concurrent analysis of the same incident closed it first.
                if error.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                    raise
        return response


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(
        AlertProcessorServicer(
            ctx.clients.stub(ContextAPIServiceStub),
            ctx.clients.stub(StorageServiceStub),
            ctx.clients.stub(AIAnalysisServiceStub),
        )
    )
