"""Kubernaut as a whole on the dev stack: the ten services and the HTTP edge, each in its
own process, wired to the dev stack's PostgreSQL, cluster (each cluster-facing service
with its own least-privilege identity), AlertManager, SMTP server and, when the dev stack
runs them, the local model (ai_analysis' one provider) and Jaeger (every service's spans).

`kubernaut up`, the demo and the end-to-end tests all start it this way.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from kubernaut.devstack.model import provider_settings
from kubernaut.devstack.stack import StackInfo
from kubernaut.edge.urls import edge_url as edge_url
from kubernaut.edge.urls import edge_webhook_url as edge_webhook_url
from kubernaut.runtime.certs import init_dev_pki
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import Fleet, wait_serving
from kubernaut.runtime.names import ServiceName, all_accounts
from kubernaut.runtime.settings import RuntimeSettings, Transport

EDGE = "gateway-http"
DEFAULT_RECIPIENT = "sre@example.com"


@dataclass(frozen=True)
class Tuning:
    """What demos and tests shorten; production keeps the defaults."""

    # e.g. "30s,2m,30m" (None: the service's default)
    assessment_delays: str | None = None
    verify_timeout_seconds: float | None = None
    recipients: str = DEFAULT_RECIPIENT
    extra_env: Mapping[str, str] = field(default_factory=dict)


# Where the demo and the end-to-end tests deploy the sample app.
SAMPLE_APP_NAMESPACES = ("shop", "shop-*")


def service_env(
    info: StackInfo, tuning: Tuning
) -> tuple[dict[str, str], dict[ServiceName, dict[str, str]]]:
    """(environment of every service, extra environment per service)."""
    common = {
        "KUBERNAUT_DATABASE_URL": info.detail("postgres", "dsn"),
        # The dev stack's one operator certificate stands for whoever uses the CLI here; a
        # shared install gives people their own identities (README: People and roles).
        "KUBERNAUT_ACCESS_SHARED_OPERATOR": "true",
    }
    oidc = info.components.get("oidc")
    if oidc is not None and oidc.url:
        # People sign in to the console (and present tokens to the CLI) through the dev
        # stack's issuer, as its people: approver, operator, viewer.
        common["KUBERNAUT_ACCESS_OIDC_ISSUER"] = oidc.details["issuer"]
        common["KUBERNAUT_ACCESS_OIDC_AUDIENCE"] = oidc.details["audience"]
        common["KUBERNAUT_ACCESS_ROLE_BINDINGS"] = oidc.details["role_bindings"]
    jaeger = info.components.get("jaeger")
    if jaeger is not None and jaeger.url:
        # Every service exports its spans to the dev stack's Jaeger (a batch exporter: an
        # unreachable Jaeger costs dropped spans, never a slower call), and the trace link
        # of `incidents show` points at its UI.
        common["KUBERNAUT_OTLP_ENDPOINT"] = jaeger.details["otlp_endpoint"]
        common["KUBERNAUT_TRACE_UI_URL"] = jaeger.details["ui_url"]
    common.update(tuning.extra_env)
    kube = info.components["kubernetes"].details
    prometheus = info.url("prometheus") if "prometheus" in info.components else ""
    per_service: dict[ServiceName, dict[str, str]] = {
        ServiceName.EXECUTOR: {"KUBECONFIG": kube["executor_kubeconfig"]},
        ServiceName.CONTEXT_API: {
            "KUBECONFIG": kube["context-api_kubeconfig"],
            # GetWorkloadMetrics reads the workload's golden signals there.
            **({"KUBERNAUT_CONTEXT_PROMETHEUS_URL": prometheus} if prometheus else {}),
        },
        ServiceName.NOTIFICATION: {
            "KUBERNAUT_NOTIFICATION_SMTP_HOST": info.detail("smtp", "host"),
            "KUBERNAUT_NOTIFICATION_SMTP_PORT": info.detail("smtp", "port"),
            "KUBERNAUT_NOTIFICATION_EMAIL_TO": tuning.recipients,
            # The shipped rules' runbooks (the kubernetes-mixin's, on github.com) and the
            # local Prometheus behind each alert's generator URL are links in the dev
            # stack's mail; any other host in an alert stays plain text.
            "KUBERNAUT_NOTIFICATION_LINK_HOSTS": "github.com,127.0.0.1",
        },
        ServiceName.EFFECTIVENESS: {
            "KUBERNAUT_EFFECTIVENESS_ALERTMANAGER_URL": info.url("alertmanager"),
            # The metrics before and after each action: Prometheus scrapes kube-state-metrics.
            **({"KUBERNAUT_EFFECTIVENESS_PROMETHEUS_URL": prometheus} if prometheus else {}),
        },
    }
    weaviate = info.components.get("weaviate")
    if weaviate is not None and weaviate.url:
        # Storage searches similar incidents in the stack's Weaviate (`up --vector-store
        # weaviate`); PostgreSQL still keeps every embedding (`kubernaut storage reindex`).
        per_service[ServiceName.STORAGE] = {
            "KUBERNAUT_VECTOR_STORE": "weaviate",
            "KUBERNAUT_VECTOR_WEAVIATE_URL": weaviate.details["url"],
            "KUBERNAUT_VECTOR_WEAVIATE_GRPC_PORT": weaviate.details["grpc_port"],
        }
    if tuning.assessment_delays:
        per_service[ServiceName.EFFECTIVENESS]["KUBERNAUT_EFFECTIVENESS_DELAYS"] = (
            tuning.assessment_delays
        )
    if tuning.verify_timeout_seconds:
        per_service[ServiceName.EXECUTOR]["KUBERNAUT_EXECUTOR_VERIFY_TIMEOUT_SECONDS"] = str(
            tuning.verify_timeout_seconds
        )
    model = info.components.get("model")
    # Providers a caller sets itself win over the dev stack's model.
    if model is not None and model.url and "KUBERNAUT_AI_PROVIDERS" not in tuning.extra_env:
        per_service[ServiceName.AI_ANALYSIS] = {
            "KUBERNAUT_AI_PROVIDERS": provider_settings(model.url),
            # The sample app's namespaces (the demo's shop-N, the e2e's shop): a 135M model
            # disagrees with the rules often, and the demo must run unattended. The guard's
            # verdict is still on the record; every other namespace waits for a person.
            "KUBERNAUT_AI_UNGUARDED_NAMESPACES": json.dumps(list(SAMPLE_APP_NAMESPACES)),
        }
        if prometheus:
            per_service[ServiceName.AI_ANALYSIS]["KUBERNAUT_AI_PROMETHEUS_URL"] = prometheus
    return common, per_service


def ensure_certs(settings: RuntimeSettings) -> None:
    certs_dir = settings.resolved_certs_dir
    if not (certs_dir / "ca.crt").exists():
        init_dev_pki(
            certs_dir,
            all_accounts(),
            trust_domain=settings.trust_domain,
            namespace=settings.namespace,
        )


@dataclass
class System:
    settings: RuntimeSettings
    dev: StackInfo
    fleet: Fleet
    statuses: dict[ServiceName, str]
    edge_url: str
    # The web console's address ("": the edge serves none).
    console_url: str = ""

    @property
    def ready(self) -> bool:
        return all(v == "SERVING" for v in self.statuses.values()) and not self.fleet.exited()

    def clients(self) -> Clients:
        """Operator clients for the running services."""
        return Clients(self.settings)


def webhook_token_file(dev: StackInfo) -> str:
    """The file of the bearer token AlertManager presents to the edge."""
    token_file = dev.components["alertmanager"].details.get("webhook_token_file", "")
    if not token_file:
        raise RuntimeError(
            "the running dev stack predates webhook tokens: run `kubernaut dev-stack down`, "
            "then start it again"
        )
    return token_file


def edge_env(dev: StackInfo, common: Mapping[str, str]) -> dict[str, str]:
    """The edge's own environment: it accepts the token the dev stack gave AlertManager, and
    serves the web console at its own URL when people can sign in (an OIDC issuer)."""
    env = {"KUBERNAUT_HTTP_TOKENS_FILE": webhook_token_file(dev)}
    if common.get("KUBERNAUT_ACCESS_OIDC_ISSUER") and "KUBERNAUT_HTTP_CONSOLE_URL" not in common:
        env["KUBERNAUT_HTTP_CONSOLE_URL"] = edge_url()
        oidc = dev.components.get("oidc")
        if oidc is not None and "console_secret_file" in oidc.details:
            env["KUBERNAUT_HTTP_CONSOLE_SECRET_FILE"] = oidc.details["console_secret_file"]
    return env


@contextlib.asynccontextmanager
async def running_system(
    settings: RuntimeSettings,
    dev: StackInfo,
    tuning: Tuning | None = None,
    *,
    timeout: float = 120.0,
) -> AsyncIterator[System]:
    """Start the ten services and the edge against `dev`; stop them on exit (by pid)."""
    tuning = tuning or Tuning()
    if settings.transport is Transport.MTLS:
        ensure_certs(settings)
    common, per_service = service_env(dev, tuning)
    fleet = Fleet(settings.state_dir / "logs", env=common)
    try:
        for service in ServiceName:
            fleet.start_service(service, env=per_service.get(service))
        edge = edge_env(dev, common)
        fleet.start(EDGE, "serve", EDGE, env=edge)
        clients = Clients(settings)
        try:
            statuses = await wait_serving(clients, list(ServiceName), timeout, fleet)
        finally:
            await clients.close()
        console = edge.get("KUBERNAUT_HTTP_CONSOLE_URL", "")
        yield System(settings, dev, fleet, statuses, edge_url(), console and f"{console}/ui")
    finally:
        fleet.stop()
