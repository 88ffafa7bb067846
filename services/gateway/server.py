"""gateway: takes alerts (from the HTTP edge or integrators) and hands them on."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.alert_processor.v1.alert_processor_pb2_grpc import AlertProcessorServiceStub
from kubernaut.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.runtime.server import ServiceContext, ServiceSpec

# How many alerts of one batch are processed at once.
CONCURRENCY = 16


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, alert_processor: AlertProcessorServiceStub) -> None:
        self.alert_processor = alert_processor
        self.slots = asyncio.Semaphore(CONCURRENCY)

    async def _process(
        self, index: int, request: alert_processor_pb2.ProcessAlertRequest
    ) -> gateway_pb2.AlertOutcome:
        async with self.slots:
            processed = await self.alert_processor.ProcessAlert(request)
        return gateway_pb2.AlertOutcome(
            index=index,
            fingerprint=processed.fingerprint,
            disposition=processed.disposition,
            reason=processed.reason,
            analysis=processed.analysis if processed.HasField("analysis") else None,
            incident_id=processed.incident_id,
            workflow_id=processed.workflow_id,
        )

    async def SubmitAlerts(
        self, request: gateway_pb2.SubmitAlertsRequest, context: Any
    ) -> gateway_pb2.SubmitAlertsResponse:
        # The whole batch was validated by the interceptor before we got here, so a
        # malformed alert never lets part of a batch through.
        outcomes = await asyncio.gather(
            *(
                self._process(index, alert_processor_pb2.ProcessAlertRequest(alert=alert))
                for index, alert in enumerate(request.alerts)
            )
        )
        return gateway_pb2.SubmitAlertsResponse(outcomes=outcomes)


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(GatewayServicer(ctx.clients.stub(AlertProcessorServiceStub)))
