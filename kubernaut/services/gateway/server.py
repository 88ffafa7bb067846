"""gateway: takes alerts (from the HTTP edge or integrators), decides once for all replicas
which become work, and hands those to the alert processor in the background."""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from kubernaut.alert_processor.v1.alert_processor_pb2_grpc import AlertProcessorServiceStub
from kubernaut.common.v1 import remediation_pb2
from kubernaut.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from prometheus_client import Counter

from kubernaut.runtime.identity import peer_of
from kubernaut.runtime.names import EDGE_ACCOUNT
from kubernaut.runtime.ratelimit import RateLimiter
from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.gateway.backend import (
    IntakeSource,
    IntakeUnavailable,
    current_trace_context,
)
from kubernaut.services.gateway.decisions import Outcome
from kubernaut.services.gateway.forwarding import Forwarder
from kubernaut.services.gateway.intake import intake_source
from kubernaut.services.gateway.settings import GatewaySettings

ALERTS: Final = Counter(
    "kubernaut_gateway_alerts_total",
    "Alerts the gateway decided on, by disposition (accepted, duplicate, storm, refused, "
    "ignored_resolved).",
    ["disposition"],
)


# Dispositions that never queue anything for the forwarder.
_NOTHING_QUEUED: Final = frozenset(
    {remediation_pb2.ALERT_DISPOSITION_DUPLICATE, remediation_pb2.ALERT_DISPOSITION_REFUSED}
)


def _disposition_label(outcome: Outcome) -> str:
    name = remediation_pb2.AlertDisposition.Name(outcome.disposition)
    return name.removeprefix("ALERT_DISPOSITION_").lower()


def rate_limited_status(retry_after: float, who: str) -> grpc.Status:
    """RESOURCE_EXHAUSTED carrying google.rpc.RetryInfo, as gRPC clients expect."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(retry_after * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message=f"{who} sends alerts faster than its rate limit; retry in {retry_after:.1f}s",
            details=[detail],
        )
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        database: IntakeSource,
        forwarder: Forwarder,
        limiter: RateLimiter,
        runtime: RuntimeSettings,
    ) -> None:
        self.database = database
        self.forwarder = forwarder
        self.limiter = limiter
        self.runtime = runtime

    async def SubmitAlerts(
        self, request: gateway_pb2.SubmitAlertsRequest, context: Context
    ) -> gateway_pb2.SubmitAlertsResponse:
        # The whole batch was validated by the interceptor before we got here, so a
        # malformed alert never lets part of a batch through.
        peer = peer_of(context, self.runtime)
        if peer.account != EDGE_ACCOUNT:  # the edge limits each of its own senders
            verdict = self.limiter.take(peer.label, len(request.alerts))
            if not verdict.allowed:
                await context.abort_with_status(
                    rate_limited_status(verdict.retry_after, peer.label)
                )
        try:
            outcomes = await (await self.database.store()).take(
                request.alerts, current_trace_context()
            )
        except IntakeUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"nothing was taken: {error}")
            raise
        queued = [o.disposition for o in outcomes if o.disposition not in _NOTHING_QUEUED]
        if queued:
            # New alerts are held; storm members and resolutions are due at once.
            held = all(d == remediation_pb2.ALERT_DISPOSITION_ACCEPTED for d in queued)
            self.forwarder.wake(due_in=self.forwarder.settings.hold_seconds if held else 0.0)
        for outcome in outcomes:
            ALERTS.labels(_disposition_label(outcome)).inc()
        return gateway_pb2.SubmitAlertsResponse(
            outcomes=[
                gateway_pb2.AlertOutcome(
                    index=index,
                    fingerprint=outcome.fingerprint,
                    disposition=outcome.disposition,
                    reason=outcome.reason,
                    incident_id=outcome.incident_id,
                    flags=outcome.flags,
                )
                for index, outcome in enumerate(outcomes)
            ]
        )


async def build(ctx: ServiceContext) -> ServiceSpec:
    settings = GatewaySettings()
    database, check = intake_source(settings)
    forwarder = Forwarder(
        database,
        ctx.clients.stub(AlertProcessorServiceStub).ProcessAlert,
        ctx.clients.stub(StorageServiceStub).CountIncidentAlerts,
        settings,
    )
    forwarder.start()

    async def stop() -> None:
        await forwarder.stop()
        await database.close()

    limiter = RateLimiter(settings.caller_rate_per_second, settings.caller_burst)
    return ServiceSpec(
        GatewayServicer(database, forwarder, limiter, ctx.settings),
        readiness=[(check, database.ready)],
        on_stop=[stop],
    )
