"""ai_analysis: decides whether and how to remediate (rule-based without an LLM)."""

from __future__ import annotations

import asyncio
import logging

import grpc
from kubernaut.ai_analysis.v1 import ai_analysis_pb2, ai_analysis_pb2_grpc
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.runtime.interceptors import abort_invalid
from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.services.ai_analysis.history import HistoryUnavailable
from kubernaut.services.ai_analysis.rules import RulesSettings, analyze
from kubernaut.services.context_api.client import resource_context

log = logging.getLogger(__name__)


class AIAnalysisServicer(ai_analysis_pb2_grpc.AIAnalysisServiceServicer):
    def __init__(
        self,
        context_api: ContextAPIServiceStub,
        workflow: WorkflowServiceStub,
        settings: RulesSettings,
    ) -> None:
        self.context_api = context_api
        self.workflow = workflow
        self.settings = settings

    async def _knowledge(self, alert_name: str) -> context_api_pb2.AlertKnowledge | None:
        try:
            found = await self.context_api.GetAlertKnowledge(
                context_api_pb2.GetAlertKnowledgeRequest(alert_name=alert_name)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return None  # an alert outside the knowledge base is still analysed
            raise
        knowledge: context_api_pb2.AlertKnowledge = found.knowledge
        return knowledge

    async def _history(
        self, incident_id: str
    ) -> context_api_pb2.IncidentHistory | HistoryUnavailable:
        # History only weighs on a decision the evidence already supports, so an outage of
        # storage or effectiveness must not stop remediation: decide without it, and say so.
        try:
            found = await self.context_api.GetIncidentHistory(
                context_api_pb2.GetIncidentHistoryRequest(incident_id=incident_id)
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "no history for the analysis",
                extra={"code": error.code().name, "why": error.details()},
            )
            return HistoryUnavailable(f"{error.code().name}: {error.details()}"[:256])
        history: context_api_pb2.IncidentHistory = found.history
        return history

    async def _evidence(
        self, request: ai_analysis_pb2.AnalyzeIncidentRequest
    ) -> context_api_pb2.ResourceContext | None:
        """The evidence the alert processor read moments ago, when it sent it; else read
        now."""
        if request.HasField("evidence"):
            return request.evidence
        return await resource_context(self.context_api, request.incident.subject)

    async def AnalyzeAlert(
        self, request: ai_analysis_pb2.AnalyzeAlertRequest, context: Context
    ) -> ai_analysis_pb2.AnalyzeAlertResponse:
        if request.alert.status != alert_pb2.ALERT_STATUS_FIRING:
            await abort_invalid(context, "alert.status", "only firing alerts are analysed")
        knowledge = await self._knowledge(request.alert.name)
        return ai_analysis_pb2.AnalyzeAlertResponse(
            analysis=analyze(request.alert, request.subject, knowledge, self.settings)
        )

    async def AnalyzeIncident(
        self, request: ai_analysis_pb2.AnalyzeIncidentRequest, context: Context
    ) -> ai_analysis_pb2.AnalyzeIncidentResponse:
        incident = request.incident
        if incident.alert.status != alert_pb2.ALERT_STATUS_FIRING:
            await abort_invalid(context, "incident.alert.status", "only firing alerts are analysed")
        # Independent reads: one round trip's wait instead of three.
        knowledge, evidence, history = await asyncio.gather(
            self._knowledge(incident.alert.name),
            self._evidence(request),
            self._history(incident.incident_id),
        )
        analysis = analyze(
            incident.alert, incident.subject, knowledge, self.settings, evidence, history
        )
        response = ai_analysis_pb2.AnalyzeIncidentResponse(analysis=analysis)
        if analysis.decision == remediation_pb2.DECISION_REMEDIATE:
            created = await self.workflow.CreateWorkflow(
                workflow_pb2.CreateWorkflowRequest(
                    incident_id=incident.incident_id,
                    alert=incident.alert,
                    recommendation=analysis.recommendation,
                )
            )
            response.workflow_id = created.workflow.workflow_id
        log.info(
            "analysed",
            extra={
                "decision": remediation_pb2.Decision.Name(analysis.decision),
                "action": analysis.recommendation.action.WhichOneof("params") or "",
                "workflow_id": response.workflow_id,
            },
        )
        return response


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(
        AIAnalysisServicer(
            ctx.clients.stub(ContextAPIServiceStub),
            ctx.clients.stub(WorkflowServiceStub),
            RulesSettings(),
        )
    )
