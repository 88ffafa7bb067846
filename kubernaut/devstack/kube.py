"""A real local Kubernetes control plane with fake nodes, for development and tests.

The binaries come from `scripts/build-k8s.sh` (Go modules in tools/k8s, no downloads):
etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK in the multi-call
`kubernaut-k8s`, and kube-state-metrics. `LocalCluster(state_dir).start()` runs them as
separate processes, in dependency order, each listening on 127.0.0.1 only:

  etcd                      TLS with client certificates (client and peer ports)
  kube-apiserver            TLS; client certificates from the cluster CA authenticate;
                            authorization Node,RBAC; default admission plugins;
                            ServiceAccount tokens signed with an RSA key made here;
                            front-proxy (request-header) CA for delegated authentication
  kube-controller-manager   every default controller, each with its own ServiceAccount
                            credentials (--use-service-account-credentials)
  kube-scheduler            default profile
  kwok                      manages every Node; KWOK's default Stages (node-initialize,
                            node-heartbeat-with-lease, pod-ready, pod-complete,
                            pod-delete) make nodes Ready and pods Running and Ready;
                            the `kubernaut.dev/simulate` annotation on a pod or node
                            picks a failure instead (kubernaut/devstack/stages.py);
                            it also serves the kubelet API on loopback (HTTPS), so
                            pods/log works: a kwok.x-k8s.io Logs (or ClusterLogs)
                            object names the file that is a container's log (CRI format)
  kube-state-metrics        plain HTTP /metrics, read-only RBAC identity

and creates `nodes` fake Nodes (`kwok-node-0`, ...). Identities are client certificates
signed by a CA generated on first start (Python `cryptography`): the admin is in
`system:masters`; the controller manager and scheduler use their built-in RBAC users;
KWOK is in `system:masters` (it writes node and pod status and leases); kube-state-metrics
gets a ClusterRole with get/list/watch on everything.

Not like a real cluster: nothing runs in the pods (no kubelet, no container runtime, no
exec; logs only from files a Logs object names), pod and node IPs are made up, there is no
DNS, and the `kubernetes` Service has no endpoints (its only address would be loopback,
which Endpoints may not hold).

Layout of `state_dir`: `cluster.json` (ports, node count), `kubeconfig` (admin),
`pki/`, `kubeconfigs/` (one per component), `etcd/` (data), `logs/<component>.log`,
`run/<component>.pid`. A later `start()` on the same directory reuses the processes still
running (identified by pid, start time and command line) and starts the others, so a warm
start takes well under a second and a fresh one about four. `stop()` stops them all by
pid, whoever started them. Nothing is written outside `state_dir`.

`LocalCluster` orchestrates; the parts are readable on their own: `kube_layout` (components,
ports, file layout, the error), `kube_pki` (certificates, kubeconfigs), `kube_components`
(command lines, processes) and `kube_bootstrap` (readiness checks, RBAC, fake nodes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernaut.devstack.daemon import Lifecycle
from kubernaut.devstack.kube_bootstrap import ControlPlane
from kubernaut.devstack.kube_components import (
    KUBELET_DNS,
    KWOK_CRDS,
    Processes,
    command,
    kwok_config_file,
    kwok_crds,
    kwok_stages,
)
from kubernaut.devstack.kube_layout import (
    BUILD_SCRIPT,
    COMPONENTS,
    MULTICALL,
    NODE_LABEL,
    PORTS,
    REPO_ROOT,
    KubeClusterError,
    StateLayout,
)
from kubernaut.devstack.kube_pki import ensure_pki, write_kubeconfigs
from kubernaut.devstack.processes import LOOPBACK, free_ports
from kubernaut.runtime.settings import RuntimeSettings

__all__ = [
    "COMPONENTS",
    "NODE_LABEL",
    "ClusterInfo",
    "ClusterStatus",
    "ComponentStatus",
    "KubeClusterError",
    "LocalCluster",
    "build_binaries",
    "default_bin_dir",
    "ensure_pki",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    """How to reach a started cluster."""

    state_dir: Path
    kubeconfig: Path
    """Admin kubeconfig (`system:masters`), certificates embedded."""
    apiserver_url: str
    """`https://127.0.0.1:PORT`"""
    ca_file: Path
    """The cluster CA (PEM): it signed every serving and client certificate."""
    kube_state_metrics_url: str
    """`http://127.0.0.1:PORT`; metrics at `/metrics`."""
    nodes: tuple[str, ...]
    pids: Mapping[str, int]
    log_dir: Path
    versions: Mapping[str, str]
    """From the binaries' versions.env: KUBERNETES_VERSION, ETCD_VERSION, ..."""
    reused: bool
    """True when every component was already running (nothing was started)."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool


@dataclass(frozen=True)
class ClusterStatus:
    components: tuple[ComponentStatus, ...]
    apiserver_ready: bool
    nodes_ready: tuple[str, ...] = field(default=())

    @property
    def running(self) -> bool:
        """Every component's process is alive and the API server answers /readyz."""
        return self.apiserver_ready and all(c.running for c in self.components)

    @property
    def stopped(self) -> bool:
        return not any(c.running for c in self.components)


def default_bin_dir() -> Path:
    """`$KUBERNAUT_K8S_BIN_DIR`, else `<state_dir>/bin` of the runtime settings
    (`$KUBERNAUT_STATE_DIR`; build-k8s.sh links there)."""
    explicit = os.environ.get("KUBERNAUT_K8S_BIN_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return RuntimeSettings().state_dir.expanduser() / "bin"


def build_binaries(timeout: float | None = None) -> Path:
    """Run scripts/build-k8s.sh (seconds when built, ~15 minutes cold) and return its bin dir.

    Its progress goes to this process's stderr.
    """
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-bin-dir"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
            timeout=timeout,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        raise KubeClusterError(None, f"{BUILD_SCRIPT} did not finish in {timeout}s") from exc
    if result.returncode != 0:
        raise KubeClusterError(
            None, f"{BUILD_SCRIPT} failed (exit {result.returncode}); its errors are above"
        )
    return Path(result.stdout.strip().splitlines()[-1])


class LocalCluster(Lifecycle):
    """A local control plane and `nodes` KWOK nodes, state and logs in `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        nodes: int = 3,
        *,
        bin_dir: Path | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        """`bin_dir` holds the binaries (default: `default_bin_dir()`); `start_timeout` is
        the most any one component may take to become ready."""
        if not 1 <= nodes <= 500:
            raise ValueError(f"nodes must be within 1..500, not {nodes}")
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.nodes = nodes
        self.bin_dir = (bin_dir if bin_dir is not None else default_bin_dir()).expanduser()
        self.start_timeout = start_timeout
        self._layout = StateLayout(self.state_dir, self.bin_dir)
        self._processes = Processes(self._layout)
        self._control_plane = ControlPlane(self._layout)
        self._info: ClusterInfo | None = None
        # KWOK's config, made once per LocalCluster (it runs the multi-call binary).
        self._stages_text: str | None = None

        self.pki = self._layout.pki
        self.log_dir = self._layout.log_dir
        self.run_dir = self._layout.run_dir
        self.kubeconfig = self._layout.kubeconfig

    # -- public API -----------------------------------------------------------------------

    @property
    def info(self) -> ClusterInfo:
        """The last `start()`'s result."""
        if self._info is None:
            raise RuntimeError("LocalCluster is not started")
        return self._info

    def log_file(self, component: str) -> Path:
        return self._layout.log_file(component)

    def start(self) -> ClusterInfo:
        """Start what is not running, wait for /readyz and Ready nodes; return how to connect.

        Raises KubeClusterError naming the component that failed and its log file. Processes
        started by a failed call keep running (their logs help); `stop()` ends them.
        """
        self._check_binaries()
        layout, processes, plane = self._layout, self._processes, self._control_plane
        for d in (self.state_dir, self.pki, self.log_dir, self.run_dir, layout.kubeconfigs):
            d.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        with self._locked():
            config = self._load_config()
            ports: dict[str, int] = config["ports"]
            ensure_pki(self.pki)
            plane.forget_credentials()
            write_kubeconfigs(layout, ports)
            self._restart_kwok_if_stages_changed()
            self._restart_if_command_changed(ports)
            started: list[str] = []
            for name in COMPONENTS:
                if processes.running_pid(name) is not None:
                    continue
                t0 = time.monotonic()
                if name == "kwok":
                    # KWOK reads its Logs objects from the API server: their CRDs first.
                    self._ensure_kwok_crds(ports)
                argv, env = command(layout, name, ports, self._stages_config)
                processes.launch(name, argv, env)
                started.append(name)
                processes.wait(name, plane.readiness_check(name, ports), self.start_timeout)
                _log.info("%s ready in %.1fs", name, time.monotonic() - t0)
                if name == "kube-apiserver":
                    plane.bootstrap_rbac(ports)
                    # Established while the controller manager and scheduler start.
                    self._ensure_kwok_crds(ports, wait=False)
                if name == "kwok":
                    # Before kube-state-metrics, whose readiness check wants nodes.
                    plane.ensure_nodes(ports, self.node_names)
            if "kube-apiserver" not in started:
                # Reused: it must still answer; then make sure of what start() creates.
                processes.wait(
                    "kube-apiserver", lambda: plane.apiserver_ready(ports), self.start_timeout
                )
                plane.bootstrap_rbac(ports)
            if "kwok" not in started:
                plane.ensure_nodes(ports, self.node_names)
            processes.wait(
                "kwok", lambda: plane.nodes_not_ready(ports, self.node_names), self.start_timeout
            )
            self._serve_kubelet_api(ports)
            processes.wait(
                "kube-controller-manager",
                lambda: plane.default_service_account_missing(ports),
                self.start_timeout,
            )
            pids = {name: pid for name in COMPONENTS if (pid := processes.running_pid(name))}
            missing = [name for name in COMPONENTS if name not in pids]
            if missing:
                raise KubeClusterError(
                    missing[0], "exited during startup", self.log_file(missing[0])
                )
            self._info = ClusterInfo(
                state_dir=self.state_dir,
                kubeconfig=self.kubeconfig,
                apiserver_url=f"https://{LOOPBACK}:{ports['apiserver']}",
                ca_file=self.pki / "ca.crt",
                kube_state_metrics_url=f"http://{LOOPBACK}:{ports['kube_state_metrics']}",
                nodes=self.node_names,
                pids=pids,
                log_dir=self.log_dir,
                versions=self._versions(),
                reused=not started,
            )
            return self._info

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every component by pid (SIGTERM, then SIGKILL after `timeout`), newest first.

        Also stops components that another LocalCluster (or process) started from the same
        state directory. Each runs in its own process group, which is signalled as a whole.
        """
        processes = self._processes
        with self._locked():
            # Strays first: one of our binaries running on this state dir under no pid file
            # (its starter died between launch and pid file, or the file was overwritten).
            # A client left connected holds the API server's shutdown for up to a minute.
            known = {pid for name in COMPONENTS if (pid := processes.running_pid(name))}
            processes.stop_pids([pid for pid in processes.strays() if pid not in known], timeout)
            # The clients of the API server, together; then the API server; then etcd.
            for group in (COMPONENTS[2:], ("kube-apiserver",), ("etcd",)):
                processes.stop_group(list(reversed(group)), timeout)
            processes.stop_pids(processes.strays(), timeout)
        self._info = None

    def status(self) -> ClusterStatus:
        components = []
        for name in COMPONENTS:
            pid = self._processes.running_pid(name)
            components.append(ComponentStatus(name, pid, pid is not None))
        ready = False
        nodes_ready: tuple[str, ...] = ()
        ports = self._saved_ports()
        if ports is not None and components[1].running:
            ready = self._control_plane.apiserver_ready(ports) is None
            if ready:
                with contextlib.suppress(OSError, KubeClusterError):
                    nodes_ready = tuple(sorted(self._control_plane.ready_nodes(ports)))
        return ClusterStatus(tuple(components), ready, nodes_ready)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(f"kwok-node-{i}" for i in range(self.nodes))

    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """One admin request to the API server: (HTTP status, decoded JSON or text)."""
        ports = self._saved_ports()
        if ports is None:
            raise RuntimeError("LocalCluster has never been started in this state directory")
        return self._control_plane.api(ports, method, path, body)

    # -- configuration ----------------------------------------------------------------------

    def _check_binaries(self) -> None:
        needed = [MULTICALL, *COMPONENTS]
        missing = [n for n in needed if not os.access(self.bin_dir / n, os.X_OK)]
        if missing:
            raise KubeClusterError(
                None,
                f"missing binaries in {self.bin_dir}: {', '.join(missing)}; "
                f"build them with {BUILD_SCRIPT} (or pass bin_dir=)",
            )

    def _versions(self) -> dict[str, str]:
        env_file = (self.bin_dir / MULTICALL).resolve().parent.parent / "versions.env"
        versions: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for line in env_file.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    versions[key.strip()] = value.strip()
        return versions

    def _saved_ports(self) -> dict[str, int] | None:
        try:
            ports: dict[str, int] = json.loads(self._layout.config_file.read_text())["ports"]
        except (OSError, ValueError, KeyError):
            return None
        return ports

    def _load_config(self) -> dict[str, Any]:
        ports = self._saved_ports()
        if ports is None:
            # A fresh cluster: nothing of ours can be running on these.
            ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        else:
            # A cluster from an older version keeps its ports; a new one gets one (its
            # component is restarted: its command line changed).
            missing = [name for name in PORTS if name not in ports]
            fresh = free_ports(len(missing)) if missing else []
            ports = {name: ports[name] for name in PORTS if name in ports}
            ports.update(zip(missing, fresh, strict=True))
        config = {"ports": ports, "nodes": self.nodes}
        config_file = self._layout.config_file
        tmp = config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(config_file)
        return config

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _restart_kwok_if_stages_changed(self) -> None:
        """A KWOK running with other Stages than this code's is stopped (start() relaunches
        it with the new ones): KWOK reads its config file only when it starts."""
        if self._processes.running_pid("kwok") is None:
            return
        with contextlib.suppress(OSError):
            if kwok_config_file(self._layout).read_text() == self._stages_config():
                return
        _log.info("KWOK's Stages changed: restarting kwok")
        self._processes.stop_group(["kwok"], 20.0)

    def _restart_if_command_changed(self, ports: Mapping[str, int]) -> None:
        """A component running with another command line than this code's (an older
        version's flags) is stopped: start() relaunches it."""
        for name in COMPONENTS:
            if self._processes.running_pid(name) is None:
                continue
            try:
                record = json.loads(self._layout.pid_file(name).read_text())
            except (OSError, ValueError):
                continue
            argv, _ = command(self._layout, name, ports, self._stages_config)
            if record.get("argv") != argv:
                _log.info("%s's command line changed: restarting it", name)
                self._processes.stop_group([name], 20.0)

    def _ensure_kwok_crds(self, ports: Mapping[str, int], *, wait: bool = True) -> None:
        """KWOK's Logs and ClusterLogs CRDs exist (and, with `wait`, are established)."""
        plane = self._control_plane
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        names = [f"{plural}.kwok.x-k8s.io" for plural in KWOK_CRDS.values()]
        missing = [n for n in names if plane.api(ports, "GET", f"{base}/{n}")[0] == 404]
        if missing:
            version = self._versions().get("KWOK_VERSION", "")
            if not version:
                raise KubeClusterError("kwok", f"no KWOK_VERSION in {self.bin_dir}'s versions.env")
            for crd in kwok_crds(version):
                if crd["metadata"]["name"] in missing:
                    status, body = plane.api(ports, "POST", base, crd)
                    if status not in (201, 409):
                        raise KubeClusterError(
                            "kube-apiserver",
                            f"creating CRD {crd['metadata']['name']} answered {status}: {body}",
                        )
        if not wait:
            return

        def established() -> str | None:
            for name in names:
                _, body = plane.api(ports, "GET", f"{base}/{name}")
                conditions = (body.get("status") or {}).get("conditions") or []
                if not any(
                    c["type"] == "Established" and c["status"] == "True" for c in conditions
                ):
                    return f"CRD {name} not established"
            return None

        self._processes.wait("kube-apiserver", established, self.start_timeout)

    def _serve_kubelet_api(self, ports: Mapping[str, int]) -> None:
        """Point every fake node's kubelet endpoint at KWOK's server: an InternalDNS
        address (localhost) beside its made-up InternalIP, and KWOK's port. KWOK's Stages
        keep both (they write addresses only when a node has none)."""
        plane = self._control_plane
        for name in self.node_names:
            for _ in range(10):
                status, node = plane.api(ports, "GET", f"/api/v1/nodes/{name}")
                if status != 200:
                    raise KubeClusterError("kube-apiserver", f"node {name}: HTTP {status}")
                node_status = node.setdefault("status", {})
                addresses = node_status.setdefault("addresses", [])
                endpoint = node_status.setdefault("daemonEndpoints", {}).setdefault(
                    "kubeletEndpoint", {}
                )
                has_dns = any(
                    a.get("type") == "InternalDNS" and a.get("address") == KUBELET_DNS
                    for a in addresses
                )
                if has_dns and endpoint.get("Port") == ports["kwok_server"]:
                    break
                if not has_dns:
                    addresses.append({"type": "InternalDNS", "address": KUBELET_DNS})
                endpoint["Port"] = ports["kwok_server"]
                status, body = plane.api(ports, "PUT", f"/api/v1/nodes/{name}/status", node)
                if status == 200:
                    break
                if status != 409:  # 409: KWOK wrote the status meanwhile; read it again
                    raise KubeClusterError(
                        "kube-apiserver", f"node {name}'s status: HTTP {status}: {body}"
                    )
            else:
                raise KubeClusterError("kube-apiserver", f"node {name}'s status kept changing")

    def _stages_config(self) -> str:
        if self._stages_text is None:
            self._stages_text = kwok_stages(self.bin_dir / MULTICALL)
        return self._stages_text
