"""Settings every service shares, read once from KUBERNAUT_* environment variables."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubernaut.runtime.names import DEFAULT_PORT_BASE, METRICS_PORT_OFFSET, ServiceName


class Transport(enum.StrEnum):
    """How services secure their calls to each other."""

    # Kubernaut does mutual TLS itself with certificates from `certs_dir`.
    MTLS = "mtls"
    # An Istio sidecar does mutual TLS; the pod serves plaintext on the pod network and
    # reads the caller from the x-forwarded-client-cert header the sidecar sets.
    MESH = "mesh"
    # No transport security, the caller named by a header: local experiments only.
    INSECURE = "insecure"


# The database every service keeps its own schema in, unless told otherwise.
DEFAULT_DATABASE_URL: Final = "postgresql://kubernaut@127.0.0.1:5432/kubernaut"


def database_url_field(
    service_prefix: str = "", *, default: str | None = DEFAULT_DATABASE_URL
) -> Any:
    """A settings field for a service's database URL, read from
    KUBERNAUT_<service_prefix>_DATABASE_URL (when `service_prefix` is given), else from the
    shared KUBERNAUT_DATABASE_URL, whatever the settings' env_prefix. Set it by its field
    name in code only where the settings' config has populate_by_name."""
    names = [f"KUBERNAUT_{service_prefix}_DATABASE_URL"] if service_prefix else []
    return Field(default=default, validation_alias=AliasChoices(*names, "KUBERNAUT_DATABASE_URL"))


def blank_is_unset(value: str | None) -> str | None:
    """None for None or a blank string; the string stripped otherwise."""
    return value.strip() or None if value is not None else None


def http_base_url(value: str) -> str:
    """An optional http(s) base URL (another system's API): "" stays unset; otherwise it
    must name a scheme and a host, and loses its trailing slash."""
    value = value.strip()
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} must be http(s)://host[:port]")
    return value.rstrip("/")


# The base URL of another system's HTTP API (Prometheus, AlertManager, HolmesGPT); "" unset.
HttpBaseUrl = Annotated[str, AfterValidator(http_base_url)]

# A database URL that may be unset; a blank variable counts as unset.
OptionalDatabaseUrl = Annotated[str | None, AfterValidator(blank_is_unset)]


class DatabaseSettings(BaseSettings):
    """The shared database, KUBERNAUT_DATABASE_URL, where a service keeps its own schema."""

    model_config = SettingsConfigDict(
        env_prefix="KUBERNAUT_", frozen=True, extra="ignore", populate_by_name=True
    )

    database_url: str = database_url_field()


class ClusterConfig(BaseModel):
    """How a service reaches one named cluster: a context of a kubeconfig, or the pod's own
    ServiceAccount (`in_cluster`). An empty `kubeconfig` is the service's own
    (KUBERNAUT_KUBE_KUBECONFIG, else $KUBECONFIG ...), so that each service reaches every
    cluster as its own least-privileged identity; an empty `context` is its current one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kubeconfig: str = ""
    context: str = ""
    in_cluster: bool = False


class KubeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_KUBE_", frozen=True, extra="ignore")

    # Empty: $KUBECONFIG, else ~/.kube/config, else in-cluster.
    kubeconfig: str = ""
    context: str = ""
    # The pod's own ServiceAccount even when KUBECONFIG or ~/.kube/config is there: a
    # cluster configured `in_cluster` next to others reached by kubeconfig.
    in_cluster: bool = False
    request_timeout_seconds: float = 10.0
    # The clusters by name (a ResourceRef's `cluster`, from an alert's `cluster` label), the
    # same for every service that reads or changes them (context_api, executor), as JSON:
    # {"prod": {"context": "prod"}, "local": {"in_cluster": true}}. Empty: one cluster,
    # `default_cluster`, reached by the settings above.
    clusters: dict[str, ClusterConfig] = Field(default_factory=dict)
    # The cluster an empty ResourceRef.cluster means (with one named cluster, that one).
    default_cluster: str = "default"


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "kubernaut"


class RuntimeSettings(BaseSettings):
    """Read once per process; the defaults run everything on one machine."""

    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_", frozen=True, extra="ignore")

    state_dir: Path = Field(default_factory=default_state_dir)
    transport: Transport = Transport.MTLS
    # Empty means `<state_dir>/certs`.
    certs_dir: Path | None = None
    trust_domain: str = "cluster.local"
    namespace: str = "kubernaut"

    # Where this process listens. Port None means port_base + the service's index (and
    # port_base + 100 + index for metrics); 0 means any free port.
    port_base: int = DEFAULT_PORT_BASE
    grpc_host: str = "127.0.0.1"
    grpc_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None

    # Where the other services are; None means localhost on their port_base ports.
    gateway_address: str | None = None
    alert_processor_address: str | None = None
    ai_analysis_address: str | None = None
    workflow_address: str | None = None
    executor_address: str | None = None
    storage_address: str | None = None
    intelligence_address: str | None = None
    effectiveness_address: str | None = None
    context_api_address: str | None = None
    notification_address: str | None = None

    # Deadline of an outgoing call that sets none itself.
    call_timeout_seconds: float = 10.0
    # How often credential files (ca.crt, <account>.crt/.key in certs_dir; the edge's
    # tokens file and TLS certificate) are looked at for a rotation: a stat() round, a
    # re-read only when one changed. New handshakes and calls use the new files after at
    # most this long; files that are not usable keep the last good ones.
    credentials_check_seconds: float = Field(default=1.0, gt=0)
    # After the client certificate or CA bundle changed, calls still running on the old
    # channel get up to this long to finish before it closes (new calls take a new one).
    credentials_retire_grace_seconds: float = Field(default=600.0, ge=0)
    # After SIGTERM: health says NOT_SERVING for drain_seconds so that load balancers
    # stop sending, then in-flight calls get up to grace_seconds to finish.
    shutdown_drain_seconds: float = 1.0
    shutdown_grace_seconds: float = 10.0
    # How often readiness re-checks the service's dependencies; a check that takes longer
    # than twice this (and at least 1 s) counts as failing.
    health_interval_seconds: float = 2.0

    log_level: str = "INFO"
    # OTLP/gRPC endpoint for spans; empty keeps spans in-process (ids still propagate).
    otlp_endpoint: str = ""
    # The trace UI's base URL (Jaeger's), for the trace link `kubernaut incidents show`
    # prints (<url>/trace/<trace id>); empty: the dev stack's Jaeger when it runs, else none.
    trace_ui_url: str = ""

    @property
    def resolved_certs_dir(self) -> Path:
        return self.certs_dir or self.state_dir / "certs"

    def address_of(self, service: ServiceName) -> str:
        configured: str | None = getattr(self, f"{service.value}_address")
        return configured or f"localhost:{self.port_base + service.position}"

    def grpc_port_of(self, service: ServiceName) -> int:
        return self.port_base + service.position if self.grpc_port is None else self.grpc_port

    def metrics_port_of(self, service: ServiceName) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return self.port_base + METRICS_PORT_OFFSET + service.position
