"""effectiveness: judges whether remediations work."""

from __future__ import annotations

from typing import Any

from kubernaut.effectiveness.v1 import effectiveness_pb2, effectiveness_pb2_grpc
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.intelligence.v1.intelligence_pb2_grpc import IntelligenceServiceStub

from services.effectiveness.verdicts import VerdictSettings, verdict_of
from services.runtime.server import ServiceContext, ServiceSpec


class EffectivenessServicer(effectiveness_pb2_grpc.EffectivenessServiceServicer):
    def __init__(self, intelligence: IntelligenceServiceStub, settings: VerdictSettings) -> None:
        self.intelligence = intelligence
        self.settings = settings

    async def GetActionEffectiveness(
        self, request: effectiveness_pb2.GetActionEffectivenessRequest, context: Any
    ) -> effectiveness_pb2.GetActionEffectivenessResponse:
        stats = await self.intelligence.GetActionStats(
            intelligence_pb2.GetActionStatsRequest(alert_name=request.alert_name)
        )
        return effectiveness_pb2.GetActionEffectivenessResponse(
            alert_name=request.alert_name,
            actions=[verdict_of(entry, self.settings) for entry in stats.stats],
        )


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(
        EffectivenessServicer(ctx.clients.stub(IntelligenceServiceStub), VerdictSettings())
    )
