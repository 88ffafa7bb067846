"""alert_processor: validate, filter, fingerprint, and get an analysis for firing alerts."""

from __future__ import annotations

from typing import Any

from kubernaut.ai_analysis.v1 import ai_analysis_pb2
from kubernaut.ai_analysis.v1.ai_analysis_pb2_grpc import AIAnalysisServiceStub
from kubernaut.alert_processor.v1 import alert_processor_pb2, alert_processor_pb2_grpc
from kubernaut.common.v1 import remediation_pb2

from services.alert_processor.processing import triage
from services.runtime.server import ServiceContext, ServiceSpec


class AlertProcessorServicer(alert_processor_pb2_grpc.AlertProcessorServiceServicer):
    def __init__(self, ai_analysis: AIAnalysisServiceStub) -> None:
        self.ai_analysis = ai_analysis

    async def ProcessAlert(
        self, request: alert_processor_pb2.ProcessAlertRequest, context: Any
    ) -> alert_processor_pb2.ProcessAlertResponse:
        result = triage(request.alert)
        response = alert_processor_pb2.ProcessAlertResponse(
            fingerprint=result.fingerprint,
            disposition=result.disposition,
            reason=result.reason,
            subject=result.subject,
        )
        if result.disposition == remediation_pb2.ALERT_DISPOSITION_ANALYZED:
            analyzed = await self.ai_analysis.AnalyzeAlert(
                ai_analysis_pb2.AnalyzeAlertRequest(alert=request.alert, subject=result.subject)
            )
            response.analysis.CopyFrom(analyzed.analysis)
        return response


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(AlertProcessorServicer(ctx.clients.stub(AIAnalysisServiceStub)))
