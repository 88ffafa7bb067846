"""Run the HTTP edge: uvicorn in front of the gateway's gRPC API."""

from __future__ import annotations

import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn
from kubernaut.effectiveness.v1.effectiveness_pb2_grpc import EffectivenessServiceStub
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.edge.app import create_app
from kubernaut.edge.approvals import Decide
from kubernaut.edge.coalescing import Coalescer
from kubernaut.edge.settings import EdgeSettings, TokenReviewSettings
from kubernaut.runtime.access import ON_BEHALF_OF_HEADER
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.logs import configure_logging
from kubernaut.runtime.names import EDGE_ACCOUNT
from kubernaut.runtime.rotation import DEFAULT_CHECK_SECONDS, rotating_ssl_context
from kubernaut.runtime.server import freeze_startup_heap
from kubernaut.runtime.settings import KubeSettings, RuntimeSettings
from kubernaut.runtime.telemetry import configure_tracing, start_metrics_server

log = logging.getLogger("kubernaut.edge")

# Slack wants its answer within three seconds; a decision is one row.
DECIDE_TIMEOUT_SECONDS = 2.5


def decide_for(workflow: WorkflowServiceStub) -> Decide:
    """DecideApproval on behalf of the person the edge authenticated."""

    async def decide(
        request: workflow_pb2.DecideApprovalRequest, subject: str
    ) -> workflow_pb2.DecideApprovalResponse:
        answer: workflow_pb2.DecideApprovalResponse = await workflow.DecideApproval(
            request, metadata=((ON_BEHALF_OF_HEADER, subject),), timeout=DECIDE_TIMEOUT_SECONDS
        )
        return answer

    return decide


def server_config(
    app: Any, edge: EdgeSettings, *, check_seconds: float = DEFAULT_CHECK_SECONDS
) -> uvicorn.Config:
    """uvicorn's configuration for the edge: its address, and TLS when it has a
    certificate (KUBERNAUT_HTTP_TLS_CERT_FILE and _KEY_FILE), re-read when the files
    change (looked at every check_seconds)."""
    tls_files = [path for path in (edge.tls_cert_file, edge.tls_key_file) if path]

    def rotating(_: uvicorn.Config, make: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        # uvicorn has no way to reload its context; the context's SNI callback has.
        return rotating_ssl_context(
            make, tls_files, check_seconds, what="the edge's TLS certificate files"
        )

    return uvicorn.Config(
        app,
        host=edge.host,
        port=edge.port,
        log_config=None,
        access_log=False,
        ssl_certfile=edge.tls_cert_file,
        ssl_keyfile=edge.tls_key_file,
        ssl_context_factory=rotating if tls_files else None,
    )


async def serve_edge(settings: RuntimeSettings, edge: EdgeSettings) -> int:
    configure_logging("gateway-http", settings.log_level)
    configure_tracing("gateway-http", settings.otlp_endpoint)
    try:
        # Read here, where a bad value is logged as the reason the edge cannot start;
        # KUBERNAUT_KUBE_* only when token review asks the cluster.
        token_review = TokenReviewSettings()
        reviewer = None
        if token_review.enabled:
            # Imported only when on: the Kubernetes client is some 40 MiB of the edge's RSS.
            from kubernaut.edge.tokenreview import reviewer_for

            reviewer = reviewer_for(token_review, KubeSettings())
        authenticator = edge.authenticator(
            reviewer, check_seconds=settings.credentials_check_seconds
        )
        clients = Clients(settings, EDGE_ACCOUNT)
        approvals = edge.approvals(decide_for(clients.stub(WorkflowServiceStub)))
        console = edge.console(
            clients.stub(StorageServiceStub),
            clients.stub(WorkflowServiceStub),
            clients.stub(EffectivenessServiceStub),
            settings.trace_ui_url,
        )
    except (ValueError, OSError) as error:
        log.error("cannot start: %s", error)
        return 2
    if authenticator is None:
        log.warning("webhooks are accepted without authentication (KUBERNAUT_HTTP_ALLOW_ANONYMOUS)")
    metrics_port = start_metrics_server(settings.metrics_host, edge.metrics_port_for(settings))
    log.info("edge metrics", extra={"metrics_port": metrics_port})
    gateway = clients.stub(GatewayServiceStub)
    app = create_app(
        # Webhooks arriving together go to the gateway in one call (one transaction).
        Coalescer(gateway.SubmitAlerts, max_in_flight=edge.max_gateway_calls),
        authenticator,
        max_body_bytes=edge.max_body_bytes,
        rate_limiter=edge.rate_limiter(),
        max_concurrent=edge.max_concurrent,
        approvals=approvals,
        console=console,
    )
    server = uvicorn.Server(
        server_config(app, edge, check_seconds=settings.credentials_check_seconds)
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was there before it; a no-op one lets the edge exit 0 like the services.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    freeze_startup_heap()
    try:
        await server.serve()
    finally:
        if approvals is not None:
            await approvals.close()
        if console is not None:
            await console.close()
        await clients.close()
        if reviewer is not None:
            await reviewer.close()
    return 0
