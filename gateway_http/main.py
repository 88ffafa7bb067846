"""Run the HTTP edge: uvicorn in front of the gateway's gRPC API."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import uvicorn
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway_http.app import DEFAULT_MAX_BODY_BYTES, create_app
from gateway_http.security import Authenticator
from services.runtime.clients import Clients
from services.runtime.logs import configure_logging
from services.runtime.names import EDGE_ACCOUNT
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import configure_tracing

log = logging.getLogger("kubernaut.edge")


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_HTTP_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # Bearer tokens the senders present, comma-separated; two at once let a token be
    # rotated without dropping alerts. Never logged.
    tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # A file with one token per line (a mounted Kubernetes Secret), read at start.
    tokens_file: Path | None = None
    # When set, senders must also sign the body: `<signature_header>: sha256=<hex HMAC>`.
    hmac_secret: SecretStr | None = None
    signature_header: str = "X-Kubernaut-Signature"
    # Larger bodies get 413.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    # Accept webhooks without a token. Only for a loopback demo: it must be chosen.
    allow_anonymous: bool = False

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(token.strip() for token in value.split(",") if token.strip())
        return value

    def authenticator(self) -> Authenticator | None:
        """The configured authentication; None for anonymous. ValueError when neither
        tokens nor anonymous access are configured (an open door is never a default)."""
        tokens = [token.get_secret_value() for token in self.tokens]
        if self.tokens_file is not None:
            lines = self.tokens_file.read_text(encoding="utf-8").splitlines()
            tokens += [line.strip() for line in lines if line.strip()]
        if not tokens:
            if self.allow_anonymous:
                return None
            raise ValueError(
                "no webhook tokens: set KUBERNAUT_HTTP_TOKENS or KUBERNAUT_HTTP_TOKENS_FILE "
                "(or KUBERNAUT_HTTP_ALLOW_ANONYMOUS=true on a loopback-only demo)"
            )
        secret = self.hmac_secret.get_secret_value() if self.hmac_secret else None
        return Authenticator.of(tokens, secret, self.signature_header)


async def serve_edge(
    settings: RuntimeSettings | None = None, edge: EdgeSettings | None = None
) -> int:
    settings = settings or RuntimeSettings()
    edge = edge or EdgeSettings()
    configure_logging("gateway-http", settings.log_level)
    configure_tracing("gateway-http", settings.otlp_endpoint)
    try:
        authenticator = edge.authenticator()
    except (ValueError, OSError) as error:
        log.error("cannot start: %s", error)
        return 2
    if authenticator is None:
        log.warning("webhooks are accepted without authentication (KUBERNAUT_HTTP_ALLOW_ANONYMOUS)")
    clients = Clients(settings, EDGE_ACCOUNT)
    gateway = clients.stub(GatewayServiceStub)
    app = create_app(gateway.SubmitAlerts, authenticator, max_body_bytes=edge.max_body_bytes)
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
