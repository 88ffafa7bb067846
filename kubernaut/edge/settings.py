"""The HTTP edge's settings: KUBERNAUT_HTTP_* (listening, authentication, limits) and
KUBERNAUT_HTTP_TOKEN_REVIEW_* (Kubernetes TokenReview for in-cluster senders)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubernaut.edge.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT
from kubernaut.edge.approvals import Approvals, Decide
from kubernaut.edge.security import Authenticator, TokenReview, WebhookTokenFile
from kubernaut.runtime.chat_approvals import LinkVerifier, read_link_secret
from kubernaut.runtime.names import METRICS_PORT_OFFSET, ServiceName
from kubernaut.runtime.ratelimit import RateLimiter
from kubernaut.runtime.rotation import DEFAULT_CHECK_SECONDS
from kubernaut.runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from kubernaut.edge.console.app import ConsoleApp


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_HTTP_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # Bearer tokens the senders present, comma-separated; two at once let a token be
    # rotated without dropping alerts. Never logged.
    tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # A file with one token per line (a mounted Kubernetes Secret), read again when it
    # changes (see KUBERNAUT_CREDENTIALS_CHECK_SECONDS): tokens added work at once, removed
    # ones stop working. An empty file keeps the last tokens (it is taken for one being
    # rewritten).
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
    # The edge speaks TLS itself with this certificate (PEM, its chain after it) and key,
    # for installs with neither a mesh nor an ingress in front of it. Both or neither.
    # Re-read when they change: new connections get the new certificate.
    tls_cert_file: Path | None = None
    # The private key of that certificate (PEM).
    tls_key_file: Path | None = None
    # Approvals from chat. The Slack app's signing secret (a file): turns on
    # /api/v1/approvals/slack, the app's interactivity request URL.
    slack_signing_secret_file: Path | None = None
    # The secret of the signed approve/reject links (a file, the same as the notification
    # service's KUBERNAUT_NOTIFICATION_APPROVAL_LINK_SECRET_FILE): turns on
    # /api/v1/approvals/links/<token>.
    approval_link_secret_file: Path | None = None
    # The web console: its URL as people's browsers reach it (https://kubernaut.example.com)
    # turns on /ui, where people sign in with the OIDC issuer of KUBERNAUT_ACCESS_OIDC_*
    # (register <this URL>/ui/callback as a redirect URI of client KUBERNAUT_ACCESS_OIDC_AUDIENCE).
    console_url: str = ""
    # The console's secret (a file, at least 32 bytes; the same for every edge replica): it
    # signs the sign-in state and the forms' CSRF tokens. Unset: a random one per process,
    # so a sign-in must come back to the replica that started it.
    console_secret_file: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> EdgeSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "KUBERNAUT_HTTP_TLS_CERT_FILE and KUBERNAUT_HTTP_TLS_KEY_FILE go together"
            )
        return self

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(token.strip() for token in value.split(",") if token.strip())
        return value

    def authenticator(
        self,
        reviewer: TokenReview | None = None,
        *,
        check_seconds: float = DEFAULT_CHECK_SECONDS,
    ) -> Authenticator | None:
        """The configured authentication; None for anonymous. ValueError when neither
        tokens, nor a token reviewer, nor anonymous access are configured (an open door is
        never a default). The tokens file is looked at every check_seconds."""
        tokens = [token.get_secret_value() for token in self.tokens]
        token_file = None
        if self.tokens_file is not None:
            token_file = WebhookTokenFile(self.tokens_file, check_seconds=check_seconds)
        if not tokens and not (token_file and token_file.tokens()) and reviewer is None:
            if self.allow_anonymous:
                return None
            raise ValueError(
                "no webhook tokens: set KUBERNAUT_HTTP_TOKENS or KUBERNAUT_HTTP_TOKENS_FILE, "
                "or enable KUBERNAUT_HTTP_TOKEN_REVIEW_ENABLED (or "
                "KUBERNAUT_HTTP_ALLOW_ANONYMOUS=true on a loopback-only demo)"
            )
        secret = self.hmac_secret.get_secret_value() if self.hmac_secret else None
        return Authenticator.of(
            tokens, secret, self.signature_header, reviewer=reviewer, token_file=token_file
        )

    def approvals(self, decide: Decide) -> Approvals | None:
        """The approval routes these settings turn on, their secrets read now (ValueError
        naming the file); None when neither is set."""
        if self.slack_signing_secret_file is None and self.approval_link_secret_file is None:
            return None
        links = None
        if self.approval_link_secret_file is not None:
            links = LinkVerifier(read_link_secret(self.approval_link_secret_file))
        slack_secret = None
        if self.slack_signing_secret_file is not None:
            try:
                slack_secret = self.slack_signing_secret_file.read_text().strip()
            except OSError as error:
                raise ValueError(
                    f"KUBERNAUT_HTTP_SLACK_SIGNING_SECRET_FILE: cannot read"
                    f" {self.slack_signing_secret_file}: {error.strerror}"
                ) from error
            if not slack_secret:
                raise ValueError(
                    f"KUBERNAUT_HTTP_SLACK_SIGNING_SECRET_FILE: {self.slack_signing_secret_file}"
                    " is empty"
                )
        return Approvals(decide, links=links, slack_signing_secret=slack_secret)

    def console(
        self, storage: Any, workflows: Any, effectiveness: Any, trace_ui_url: str = ""
    ) -> ConsoleApp | None:
        """The console these settings turn on (KUBERNAUT_ACCESS_* read now; ValueError for
        a console without an OIDC issuer, or a bad secret file); None without
        KUBERNAUT_HTTP_CONSOLE_URL. Imported only then: the console's libraries stay out of
        an edge without it."""
        if not self.console_url:
            return None
        from kubernaut.edge.console.app import ConsoleApp
        from kubernaut.edge.console.session import Sessions
        from kubernaut.edge.console.views import Console
        from kubernaut.runtime.access import Access, AccessSettings

        access = AccessSettings()
        if not access.oidc_issuer or not access.oidc_audience:
            raise ValueError(
                "KUBERNAUT_HTTP_CONSOLE_URL: the console signs people in with OIDC: set"
                " KUBERNAUT_ACCESS_OIDC_ISSUER and KUBERNAUT_ACCESS_OIDC_AUDIENCE"
            )
        if self.console_secret_file is not None:
            secret = read_link_secret(self.console_secret_file)
        else:
            secret = secrets.token_bytes(32)
        return ConsoleApp(
            Console(storage, workflows, effectiveness, trace_ui_url),
            Sessions(access, self.console_url, secret),
            Access(access),
        )

    def rate_limiter(self) -> RateLimiter:
        return RateLimiter(self.rate_per_second, self.rate_burst)

    def metrics_port_for(self, settings: RuntimeSettings) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return settings.port_base + METRICS_PORT_OFFSET + len(ServiceName)


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class TokenReviewSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KUBERNAUT_HTTP_TOKEN_REVIEW_", frozen=True, extra="ignore"
    )

    # Off by default: then only the static tokens of EdgeSettings are accepted.
    enabled: bool = False
    # Comma-separated. When set, a token must have been issued for one of these audiences
    # (e.g. a projected token with `audience: kubernaut`); empty: the API server's own.
    audiences: Annotated[tuple[str, ...], NoDecode] = ()
    # Comma-separated usernames, e.g. system:serviceaccount:monitoring:alertmanager.
    # Required when enabled: any ServiceAccount in the cluster can get a valid token.
    allowed_users: Annotated[tuple[str, ...], NoDecode] = ()
    # How long the API server's verdict on a token is reused.
    cache_seconds: float = Field(default=60.0, ge=0)
    negative_cache_seconds: float = Field(default=5.0, ge=0)

    @field_validator("audiences", "allowed_users", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return _split(value)
