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

from gateway_http.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT, create_app
from gateway_http.coalescing import Coalescer
from gateway_http.security import Authenticator, TokenReview
from gateway_http.tokenreview import TokenReviewSettings
from services.runtime.clients import Clients
from services.runtime.logs import configure_logging
from services.runtime.names import EDGE_ACCOUNT, METRICS_PORT_OFFSET, ServiceName
from services.runtime.ratelimit import RateLimiter
from services.runtime.server import freeze_startup_heap
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import configure_tracing, start_metrics_server

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
    # Per sender (token, reviewed service account, or client address when anonymous):
    # webhook requests per second and burst; 0 turns the limit off.
    rate_per_second: float = Field(default=50.0, ge=0)
    rate_burst: float = Field(default=200.0, ge=1)
    # Requests in progress at once, over all senders; beyond it 503. 0 turns it off.
    max_concurrent: int = Field(default=DEFAULT_MAX_CONCURRENT, ge=0)
    # Calls to the gateway at once; webhooks arriving meanwhile go together in the next.
    # One gives the largest batches: the least CPU per alert and the shortest tail under
    # load (bench/edge_throughput --set KUBERNAUT_HTTP_MAX_GATEWAY_CALLS=2 compares).
    max_gateway_calls: int = Field(default=1, ge=1)
    # Where /metrics is served (not on the webhook port: that one faces the senders).
    # Unset: KUBERNAUT_PORT_BASE + 100 + 10, after the ten services'. 0: any free port.
    metrics_port: int | None = None

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(token.strip() for token in value.split(",") if token.strip())
        return value

    def authenticator(self, reviewer: TokenReview | None = None) -> Authenticator | None:
        """The configured authentication; None for anonymous. ValueError when neither
        tokens, nor a token reviewer, nor anonymous access are configured (an open door is
        never a default)."""
        tokens = [token.get_secret_value() for token in self.tokens]
        if self.tokens_file is not None:
            lines = self.tokens_file.read_text(encoding="utf-8").splitlines()
            tokens += [line.strip() for line in lines if line.strip()]
        if not tokens and reviewer is None:
            if self.allow_anonymous:
                return None
            raise ValueError(
                "no webhook tokens: set KUBERNAUT_HTTP_TOKENS or KUBERNAUT_HTTP_TOKENS_FILE, "
                "or enable KUBERNAUT_HTTP_TOKEN_REVIEW_ENABLED (or "
                "KUBERNAUT_HTTP_ALLOW_ANONYMOUS=true on a loopback-only demo)"
            )
        secret = self.hmac_secret.get_secret_value() if self.hmac_secret else None
        return Authenticator.of(tokens, secret, self.signature_header, reviewer=reviewer)

    def rate_limiter(self) -> RateLimiter:
        return RateLimiter(self.rate_per_second, self.rate_burst)

    def metrics_port_for(self, settings: RuntimeSettings) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return settings.port_base + METRICS_PORT_OFFSET + len(ServiceName)


async def serve_edge(
    settings: RuntimeSettings | None = None, edge: EdgeSettings | None = None
) -> int:
    settings = settings or RuntimeSettings()
    edge = edge or EdgeSettings()
    configure_logging("gateway-http", settings.log_level)
    configure_tracing("gateway-http", settings.otlp_endpoint)
    try:
        reviewer = TokenReviewSettings().reviewer()
        authenticator = edge.authenticator(reviewer)
    except (ValueError, OSError) as error:
        log.error("cannot start: %s", error)
        return 2
    if authenticator is None:
        log.warning("webhooks are accepted without authentication (KUBERNAUT_HTTP_ALLOW_ANONYMOUS)")
    metrics_port = start_metrics_server(settings.metrics_host, edge.metrics_port_for(settings))
    log.info("edge metrics", extra={"metrics_port": metrics_port})
    clients = Clients(settings, EDGE_ACCOUNT)
    gateway = clients.stub(GatewayServiceStub)
    app = create_app(
        # Webhooks arriving together go to the gateway in one call (one transaction).
        Coalescer(gateway.SubmitAlerts, max_in_flight=edge.max_gateway_calls),
        authenticator,
        max_body_bytes=edge.max_body_bytes,
        rate_limiter=edge.rate_limiter(),
        max_concurrent=edge.max_concurrent,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=edge.host, port=edge.port, log_config=None, access_log=False)
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was there before it; a no-op one lets the edge exit 0 like the services.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    freeze_startup_heap()
    try:
        await server.serve()
    finally:
        await clients.close()
        if reviewer is not None:
            await reviewer.close()
    return 0
