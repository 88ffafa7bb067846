"""What every part of the local control plane (`kubernaut.devstack.kube`) agrees on: the
components in start order, their ports, the cluster's address ranges, where each file lives
in the state directory, and the error they all raise.

The parts: `kube_pki` (certificates and kubeconfigs), `kube_components` (each component's
command line and its process), `kube_bootstrap` (readiness checks and the objects a start
creates); `kube.LocalCluster` puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubernaut.devstack.processes import tail

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s.sh"

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
"""The `kubernetes` Service's ClusterIP: the first address of SERVICE_CIDR."""
POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
NODE_LABEL = "kubernaut.dev/devstack-node"
"""Label on the fake nodes the cluster creates (value `kwok`)."""

MULTICALL = "kubernaut-k8s"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kube-state-metrics",
)
"""In start order; `stop()` goes the other way."""
PORTS = (
    "etcd_client",
    "etcd_peer",
    "apiserver",
    "controller_manager",
    "scheduler",
    "kube_state_metrics",
    "kube_state_metrics_telemetry",
    "kwok_server",
)
"""The names of the loopback ports a cluster keeps in `cluster.json`."""
_LOG_TAIL_LINES = 30


class KubeClusterError(RuntimeError):
    """A component could not be started, became unhealthy, or could not be stopped.

    `component` names it (None for the cluster as a whole) and `log_file` is its log.
    """

    def __init__(self, component: str | None, message: str, log_file: Path | None = None):
        self.component = component
        self.log_file = log_file
        text = f"{component}: {message}" if component else message
        if log_file is not None:
            text += f"\n  log: {log_file}"
            last = tail(log_file, _LOG_TAIL_LINES, indent="    ")
            if last:
                text += f"\n  last lines:\n{last}"
        super().__init__(text)


@dataclass(frozen=True)
class StateLayout:
    """Where a cluster's files are: everything under `state_dir`, the binaries in `bin_dir`."""

    state_dir: Path
    bin_dir: Path

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """One pid file per component."""
        return self.state_dir / "run"

    @property
    def kubeconfig(self) -> Path:
        """The admin's."""
        return self.state_dir / "kubeconfig"

    @property
    def kubeconfigs(self) -> Path:
        """One per component that talks to the API server."""
        return self.state_dir / "kubeconfigs"

    @property
    def config_file(self) -> Path:
        """`cluster.json`: the ports and node count."""
        return self.state_dir / "cluster.json"

    def log_file(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.run_dir / f"{component}.pid"

    def binary(self, component: str) -> Path:
        return self.bin_dir / component
