"""The ten services: their names, service accounts and default local ports."""

from __future__ import annotations

import enum

# Locally, service i listens on gRPC port base+i and serves metrics on base+100+i.
DEFAULT_PORT_BASE = 9080
METRICS_PORT_OFFSET = 100


class ServiceName(enum.StrEnum):
    """A Kubernaut service, named as in `proto/kubernaut/<name>/v1/`."""

    GATEWAY = "gateway"
    ALERT_PROCESSOR = "alert_processor"
    AI_ANALYSIS = "ai_analysis"
    WORKFLOW = "workflow"
    EXECUTOR = "executor"
    STORAGE = "storage"
    INTELLIGENCE = "intelligence"
    EFFECTIVENESS = "effectiveness"
    CONTEXT_API = "context_api"
    NOTIFICATION = "notification"

    @property
    def account(self) -> str:
        """The Kubernetes ServiceAccount (and SPIFFE `sa`) name: DNS-1123, so hyphens."""
        return self.value.replace("_", "-")

    @property
    def position(self) -> int:
        """The service's place in the spec's table, which orders the local ports."""
        return list(ServiceName).index(self)

    @property
    def default_grpc_port(self) -> int:
        return DEFAULT_PORT_BASE + self.position

    @classmethod
    def parse(cls, text: str) -> ServiceName:
        """Accept `alert_processor` or `alert-processor`."""
        return cls(text.replace("-", "_"))


# Identities that are not services: operators (grpcurl, the kubernaut CLI) and the HTTP
# edge that turns webhooks into gateway calls.
OPERATOR_ACCOUNT = "operator"
EDGE_ACCOUNT = "gateway-http"
# The grpc.health.v1 service name that answers SERVING while a service's process answers
# at all (its event loop runs), whatever its dependencies: what a liveness probe asks.
# "" and the service's own name answer readiness: SERVING once its dependencies answer.
LIVENESS_HEALTH_SERVICE = "liveness"


def all_accounts() -> list[str]:
    """Every identity `kubernaut certs init` issues a certificate for."""
    return [*(service.account for service in ServiceName), OPERATOR_ACCOUNT, EDGE_ACCOUNT]
