"""Run the HTTP edge: uvicorn in front of the gateway's gRPC API."""

from __future__ import annotations

import signal

import uvicorn
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway_http.app import create_app
from services.runtime.clients import Clients
from services.runtime.logs import configure_logging
from services.runtime.names import EDGE_ACCOUNT
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import configure_tracing


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_HTTP_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080


async def serve_edge(
    settings: RuntimeSettings | None = None, edge: EdgeSettings | None = None
) -> int:
    settings = settings or RuntimeSettings()
    edge = edge or EdgeSettings()
    configure_logging("gateway-http", settings.log_level)
    configure_tracing("gateway-http", settings.otlp_endpoint)
    clients = Clients(settings, EDGE_ACCOUNT)
    gateway = clients.stub(GatewayServiceStub)
    app = create_app(gateway.SubmitAlerts)
    server = uvicorn.Server(
        uvicorn.Config(app, host=edge.host, port=edge.port, log_config=None, access_log=False)
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was there before it; a no-op one lets the edge exit 0 like the services.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        await server.serve()
    finally:
        await clients.close()
    return 0
