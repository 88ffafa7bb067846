"""ai_analysis: decides whether and how to remediate (rule-based without an LLM)."""

from __future__ import annotations

from typing import Any

import grpc
from kubernaut.ai_analysis.v1 import ai_analysis_pb2, ai_analysis_pb2_grpc
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub

from services.ai_analysis.rules import RulesSettings, analyze
from services.runtime.interceptors import abort_invalid
from services.runtime.server import ServiceContext, ServiceSpec


class AIAnalysisServicer(ai_analysis_pb2_grpc.AIAnalysisServiceServicer):
    def __init__(self, context_api: ContextAPIServiceStub, settings: RulesSettings) -> None:
        self.context_api = context_api
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

    async def AnalyzeAlert(
        self, request: ai_analysis_pb2.AnalyzeAlertRequest, context: Any
    ) -> ai_analysis_pb2.AnalyzeAlertResponse:
        if request.alert.status != alert_pb2.ALERT_STATUS_FIRING:
            await abort_invalid(context, "alert.status", "only firing alerts are analysed")
        knowledge = await self._knowledge(request.alert.name)
        return ai_analysis_pb2.AnalyzeAlertResponse(
            analysis=analyze(request.alert, request.subject, knowledge, self.settings)
        )


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(AIAnalysisServicer(ctx.clients.stub(ContextAPIServiceStub), RulesSettings()))
