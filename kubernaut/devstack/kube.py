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
                            picks a failure instead (kubernaut/devstack/stages.py)
  kube-state-metrics        plain HTTP /metrics, read-only RBAC identity

and creates `nodes` fake Nodes (`kwok-node-0`, ...). Identities are client certificates
signed by a CA generated on first start (Python `cryptography`): the admin is in
`system:masters`; the controller manager and scheduler use their built-in RBAC users;
KWOK is in `system:masters` (it writes node and pod status and leases); kube-state-metrics
gets a ClusterRole with get/list/watch on everything.

Not like a real cluster: nothing runs in the pods (no kubelet, no container runtime, no
logs or exec), pod and node IPs are made up, there is no DNS, and the `kubernetes` Service
has no endpoints (its only address would be loopback, which Endpoints may not hold).

Layout of `state_dir`: `cluster.json` (ports, node count), `kubeconfig` (admin),
`pki/`, `kubeconfigs/` (one per component), `etcd/` (data), `logs/<component>.log`,
`run/<component>.pid`. A later `start()` on the same directory reuses the processes still
running (identified by pid, start time and command line) and starts the others, so a warm
start takes well under a second and a fresh one about four. `stop()` stops them all by
pid, whoever started them. Nothing is written outside `state_dir`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import http.client
import ipaddress
import json
import logging
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubernaut.devstack.daemon import Lifecycle
from kubernaut.devstack.processes import (
    LOOPBACK,
    free_ports,
    is_zombie,
    spawn_logged,
    start_time,
    tail,
)
from kubernaut.devstack.stages import kwok_config
from kubernaut.runtime.certs import create_ca, write_private_key
from kubernaut.runtime.settings import RuntimeSettings

_log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s.sh"

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
"""The `kubernetes` Service's ClusterIP: the first address of SERVICE_CIDR."""
POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
NODE_LABEL = "kubernaut.dev/devstack-node"
"""Label on the fake nodes this module creates (value `kwok`)."""

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
_PORTS = (
    "etcd_client",
    "etcd_peer",
    "apiserver",
    "controller_manager",
    "scheduler",
    "kube_state_metrics",
    "kube_state_metrics_telemetry",
)
_LOG_TAIL_LINES = 30
_KSM_ROLE = "kubernaut:kube-state-metrics"


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
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._info: ClusterInfo | None = None
        # Per client certificate; cleared whenever ensure_pki() may have replaced the PKI.
        self._ssl_contexts: dict[str, ssl.SSLContext] = {}
        # KWOK's config, made once per LocalCluster (it runs the multi-call binary).
        self._stages_text: str | None = None

        self.pki = self.state_dir / "pki"
        self.log_dir = self.state_dir / "logs"
        self.run_dir = self.state_dir / "run"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self._kubeconfigs = self.state_dir / "kubeconfigs"
        self._config_file = self.state_dir / "cluster.json"

    # -- public API -----------------------------------------------------------------------

    @property
    def info(self) -> ClusterInfo:
        """The last `start()`'s result."""
        if self._info is None:
            raise RuntimeError("LocalCluster is not started")
        return self._info

    def log_file(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    def start(self) -> ClusterInfo:
        """Start what is not running, wait for /readyz and Ready nodes; return how to connect.

        Raises KubeClusterError naming the component that failed and its log file. Processes
        started by a failed call keep running (their logs help); `stop()` ends them.
        """
        self._check_binaries()
        for d in (self.state_dir, self.pki, self.log_dir, self.run_dir, self._kubeconfigs):
            d.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        with self._locked():
            config = self._load_config()
            ports: dict[str, int] = config["ports"]
            ensure_pki(self.pki)
            self._ssl_contexts.clear()
            self._write_kubeconfigs(ports)
            self._restart_kwok_if_stages_changed()
            started: list[str] = []
            for name in COMPONENTS:
                if self._running_pid(name) is not None:
                    continue
                t0 = time.monotonic()
                self._launch(name, ports)
                started.append(name)
                self._wait_ready(name, ports)
                _log.info("%s ready in %.1fs", name, time.monotonic() - t0)
                if name == "kube-apiserver":
                    self._bootstrap_rbac(ports)
                if name == "kwok":
                    # Before kube-state-metrics, whose readiness check wants nodes.
                    self._ensure_nodes(ports)
            if "kube-apiserver" not in started:
                # Reused: it must still answer; then make sure of what start() creates.
                self._wait(
                    "kube-apiserver", lambda: self._apiserver_ready(ports), self.start_timeout
                )
                self._bootstrap_rbac(ports)
            if "kwok" not in started:
                self._ensure_nodes(ports)
            self._wait("kwok", lambda: self._nodes_not_ready(ports), self.start_timeout)
            self._wait(
                "kube-controller-manager",
                lambda: self._default_service_account_missing(ports),
                self.start_timeout,
            )
            pids = {name: pid for name in COMPONENTS if (pid := self._running_pid(name))}
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
        with self._locked():
            # Strays first: one of our binaries running on this state dir under no pid file
            # (its starter died between launch and pid file, or the file was overwritten).
            # A client left connected holds the API server's shutdown for up to a minute.
            known = {pid for name in COMPONENTS if (pid := self._running_pid(name))}
            self._stop_pids([pid for pid in self._strays() if pid not in known], timeout)
            # The clients of the API server, together; then the API server; then etcd.
            for group in (COMPONENTS[2:], ("kube-apiserver",), ("etcd",)):
                self._stop_group(list(reversed(group)), timeout)
            self._stop_pids(self._strays(), timeout)
        self._info = None

    def status(self) -> ClusterStatus:
        components = []
        for name in COMPONENTS:
            pid = self._running_pid(name)
            components.append(ComponentStatus(name, pid, pid is not None))
        ready = False
        nodes_ready: tuple[str, ...] = ()
        ports = self._saved_ports()
        if ports is not None and components[1].running:
            ready = self._apiserver_ready(ports) is None
            if ready:
                with contextlib.suppress(OSError, KubeClusterError):
                    nodes_ready = tuple(sorted(self._ready_nodes(ports)))
        return ClusterStatus(tuple(components), ready, nodes_ready)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(f"kwok-node-{i}" for i in range(self.nodes))

    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """One admin request to the API server: (HTTP status, decoded JSON or text)."""
        ports = self._saved_ports()
        if ports is None:
            raise RuntimeError("LocalCluster has never been started in this state directory")
        return self._api(ports, method, path, body)

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
            ports: dict[str, int] = json.loads(self._config_file.read_text())["ports"]
        except (OSError, ValueError, KeyError):
            return None
        return ports

    def _load_config(self) -> dict[str, Any]:
        ports = self._saved_ports()
        if ports is None or set(ports) != set(_PORTS):
            # A fresh cluster: nothing of ours can be running on these.
            ports = dict(zip(_PORTS, free_ports(len(_PORTS)), strict=True))
        config = {"ports": ports, "nodes": self.nodes}
        tmp = self._config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(self._config_file)
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

    def _write_kubeconfigs(self, ports: Mapping[str, int]) -> None:
        server = f"https://{LOOPBACK}:{ports['apiserver']}"
        _write_kubeconfig(self.kubeconfig, server, self.pki, "admin", "kubernaut-admin")
        for user in ("controller-manager", "scheduler", "kwok", "kube-state-metrics"):
            _write_kubeconfig(self._kubeconfigs / f"{user}.kubeconfig", server, self.pki, user)

    def _restart_kwok_if_stages_changed(self) -> None:
        """A KWOK running with other Stages than this code's is stopped (start() relaunches
        it with the new ones): KWOK reads its config file only when it starts."""
        if self._running_pid("kwok") is None:
            return
        stages = self.state_dir / "kwok.yaml"
        with contextlib.suppress(OSError):
            if stages.read_text() == self._stages_config():
                return
        _log.info("KWOK's Stages changed: restarting kwok")
        self._stop_group(["kwok"], 20.0)

    def _stages_config(self) -> str:
        if self._stages_text is None:
            self._stages_text = _kwok_stages(self.bin_dir / MULTICALL)
        return self._stages_text

    # -- processes --------------------------------------------------------------------------

    def _argv(self, name: str, ports: Mapping[str, int]) -> tuple[list[str], dict[str, str]]:
        pki = self.pki
        binary = str(self.bin_dir / name)
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "HOME")}
        env["HOME"] = str(self.state_dir)
        etcd_url = f"https://{LOOPBACK}:{ports['etcd_client']}"
        peer_url = f"https://{LOOPBACK}:{ports['etcd_peer']}"
        kc = self._kubeconfigs
        if name == "etcd":
            return [
                binary,
                "--name=kubernaut",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kubernaut={peer_url}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=kubernaut-devstack",
                f"--cert-file={pki / 'etcd.crt'}",
                f"--key-file={pki / 'etcd.key'}",
                f"--trusted-ca-file={pki / 'ca.crt'}",
                "--client-cert-auth=true",
                f"--peer-cert-file={pki / 'etcd.crt'}",
                f"--peer-key-file={pki / 'etcd.key'}",
                f"--peer-trusted-ca-file={pki / 'ca.crt'}",
                "--peer-client-cert-auth=true",
                "--auto-compaction-retention=1",
                # A throwaway development store: durability is not worth the fsyncs.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ], env
        if name == "kube-apiserver":
            return [
                binary,
                f"--etcd-servers={etcd_url}",
                f"--etcd-cafile={pki / 'ca.crt'}",
                f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
                f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={ports['apiserver']}",
                f"--cert-dir={self.state_dir / 'apiserver'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Front proxy (request-header authentication): aggregated API servers, and
                # the delegated authentication of the controller manager and scheduler.
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # The only address is loopback, which Endpoints may not hold: the
                # `kubernetes` Service keeps its ClusterIP but gets no endpoints.
                "--endpoint-reconciler-type=none",
                # On SIGTERM, give open watches 2s instead of --request-timeout (60s).
                "--shutdown-send-retry-after=true",
                "--profiling=false",
            ], env
        serving = [
            f"--bind-address={LOOPBACK}",
            f"--tls-cert-file={pki / 'serving.crt'}",
            f"--tls-private-key-file={pki / 'serving.key'}",
        ]
        if name == "kube-controller-manager":
            kubeconfig = kc / "controller-manager.kubeconfig"
            return [
                binary,
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                *serving,
                f"--secure-port={ports['controller_manager']}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Its default is /usr/libexec/kubernetes/..., which it creates.
                f"--flex-volume-plugin-dir={self.state_dir / 'controller-manager' / 'flexvolume'}",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
            ], env
        if name == "kube-scheduler":
            kubeconfig = kc / "scheduler.kubeconfig"
            config = self.state_dir / "scheduler.json"
            config.write_text(
                json.dumps(
                    {
                        "apiVersion": "kubescheduler.config.k8s.io/v1",
                        "kind": "KubeSchedulerConfiguration",
                        "clientConnection": {
                            "kubeconfig": str(kubeconfig),
                            "qps": 100,
                            "burst": 200,
                        },
                        "leaderElection": {"leaderElect": False},
                        "enableProfiling": False,
                    },
                    indent=2,
                )
            )
            return [
                binary,
                f"--config={config}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                *serving,
                f"--secure-port={ports['scheduler']}",
            ], env
        if name == "kwok":
            stages = self.state_dir / "kwok.yaml"
            stages.write_text(self._stages_config())
            return [
                binary,
                f"--kubeconfig={kc / 'kwok.kubeconfig'}",
                f"--config={stages}",
                "--manage-all-nodes=true",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
            ], env
        if name == "kube-state-metrics":
            return [
                binary,
                f"--kubeconfig={kc / 'kube-state-metrics.kubeconfig'}",
                f"--host={LOOPBACK}",
                f"--port={ports['kube_state_metrics']}",
                f"--telemetry-host={LOOPBACK}",
                f"--telemetry-port={ports['kube_state_metrics_telemetry']}",
            ], env
        raise AssertionError(name)

    def _launch(self, name: str, ports: Mapping[str, int]) -> None:
        argv, env = self._argv(name, ports)
        log_path = self.log_file(name)
        with open(log_path, "ab") as log:
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            header = f"\n=== {stamp} kube.py starting: {' '.join(argv)}\n"
            try:
                process = spawn_logged(argv, log, header, cwd=self.state_dir, env=env)
            except OSError as exc:
                raise KubeClusterError(name, f"could not run {argv[0]}: {exc}", log_path) from exc
        self._children[name] = process
        record = {"pid": process.pid, "start_time": start_time(process.pid), "argv": argv}
        (self.run_dir / f"{name}.pid").write_text(json.dumps(record) + "\n")

    def _running_pid(self, name: str) -> int | None:
        """The pid of this state dir's `name` when it is alive (not a zombie), else None."""
        child = self._children.get(name)
        if child is not None:
            # Our own child: poll() reaps it when it exits. (Right after the fork its
            # /proc entry still shows this interpreter's command line, so no /proc checks.)
            if child.poll() is None:
                return child.pid
            # Dead; another LocalCluster may have started a new one since: see the pid file.
            del self._children[name]
        try:
            record = json.loads((self.run_dir / f"{name}.pid").read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if start_time(pid) != record.get("start_time") or is_zombie(pid):
            return None
        # The same pid and start time cannot be another process; the command line check
        # guards against a pid file copied from elsewhere.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if str(self.state_dir).encode() not in b" ".join(cmdline):
            return None
        return pid

    def _stop_pids(self, pids: list[int], timeout: float) -> None:
        for pid in pids:
            _log.warning("stopping stray pid %d running on %s", pid, self.state_dir)
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [p for p in pids if not is_zombie(p)]
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)

    def _strays(self) -> list[int]:
        """Pids of processes running one of our binaries with this state dir in its args."""
        marker = str(self.state_dir).encode() + b"/"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                argv
                and os.path.basename(argv[0].decode(errors="replace")) in COMPONENTS
                and any(marker in arg for arg in argv[1:])
                and not is_zombie(int(entry.name))
            ):
                found.append(int(entry.name))
        return found

    def _stop_group(self, names: list[str], timeout: float) -> None:
        targets: dict[str, int] = {}
        for name in names:
            pid = self._running_pid(name)
            if pid is not None:
                targets[name] = pid
                _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while targets and time.monotonic() < deadline:
            targets = {n: p for n, p in targets.items() if self._running_pid(n) == p}
            if targets:
                time.sleep(0.1)
        for name, pid in targets.items():
            _log.warning("%s (pid %d) ignored SIGTERM for %.0fs: SIGKILL", name, pid, timeout)
            _signal_group(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10
        while targets and time.monotonic() < kill_deadline:
            targets = {n: p for n, p in targets.items() if self._running_pid(n) == p}
            if targets:
                time.sleep(0.1)
        for name in names:
            child = self._children.pop(name, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(1)
            if name not in targets:
                (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        if targets:
            name = next(iter(targets))
            raise KubeClusterError(
                name, f"pid {targets[name]} survived SIGKILL", self.log_file(name)
            )

    # -- readiness --------------------------------------------------------------------------

    def _wait(self, name: str, check: Callable[[], str | None], timeout: float) -> None:
        """Poll `check` (None: ready, else why not) while `name`'s process lives."""
        deadline = time.monotonic() + timeout
        reason = "not checked yet"
        while True:
            child = self._children.get(name)
            if self._running_pid(name) is None:
                code = (
                    ""
                    if child is None or child.returncode is None
                    else f" (exit {child.returncode})"
                )
                raise KubeClusterError(
                    name, f"exited{code}; last check: {reason}", self.log_file(name)
                )
            try:
                outcome = check()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            if outcome is None:
                return
            reason = outcome
            if time.monotonic() > deadline:
                raise KubeClusterError(
                    name, f"not ready after {timeout:.0f}s: {reason}", self.log_file(name)
                )
            time.sleep(0.2)

    def _wait_ready(self, name: str, ports: Mapping[str, int]) -> None:
        checks: dict[str, Callable[[], str | None]] = {
            "etcd": lambda: self._etcd_healthy(ports),
            "kube-apiserver": lambda: self._apiserver_ready(ports),
            "kube-controller-manager": lambda: _https_health(
                ports["controller_manager"], self._ssl_context()
            ),
            "kube-scheduler": lambda: _https_health(ports["scheduler"], self._ssl_context()),
            # KWOK has no health endpoint of its own here: its nodes turning Ready is the check.
            "kwok": lambda: None,
            "kube-state-metrics": lambda: self._kube_state_metrics_ready(ports),
        }
        self._wait(name, checks[name], self.start_timeout)

    def _ssl_context(self, client: str = "admin") -> ssl.SSLContext:
        context = self._ssl_contexts.get(client)
        if context is None:
            context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            context.load_cert_chain(self.pki / f"{client}.crt", self.pki / f"{client}.key")
            self._ssl_contexts[client] = context
        return context

    def _etcd_healthy(self, ports: Mapping[str, int]) -> str | None:
        context = self._ssl_context("apiserver-etcd-client")
        status, body = _request(LOOPBACK, ports["etcd_client"], "GET", "/health", context)
        if status == 200 and isinstance(body, dict) and body.get("health") == "true":
            return None
        return f"/health answered {status}: {body}"

    def _apiserver_ready(self, ports: Mapping[str, int]) -> str | None:
        try:
            status, body = self._api(ports, "GET", "/readyz?verbose")
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        if status == 200:
            return None
        failing = [ln for ln in str(body).splitlines() if "failed" in ln]
        return f"/readyz answered {status}: {'; '.join(failing) or body}"

    def _kube_state_metrics_ready(self, ports: Mapping[str, int]) -> str | None:
        status, body = _request(
            LOOPBACK, ports["kube_state_metrics"], "GET", "/metrics", None, timeout=10
        )
        if status != 200:
            return f"/metrics answered {status}"
        if "kube_node_info" not in str(body):
            return "/metrics has no kube_node_info yet"
        return None

    def _api(
        self,
        ports: Mapping[str, int],
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
    ) -> tuple[int, Any]:
        return _request(LOOPBACK, ports["apiserver"], method, path, self._ssl_context(), body)

    def _ready_nodes(self, ports: Mapping[str, int]) -> set[str]:
        status, body = self._api(ports, "GET", f"/api/v1/nodes?labelSelector={NODE_LABEL}%3Dkwok")
        if status != 200:
            raise KubeClusterError("kube-apiserver", f"listing nodes answered {status}: {body}")
        ready = set()
        for node in body.get("items", []):
            for cond in node.get("status", {}).get("conditions") or []:
                if cond.get("type") == "Ready" and cond.get("status") == "True":
                    ready.add(node["metadata"]["name"])
        return ready

    def _nodes_not_ready(self, ports: Mapping[str, int]) -> str | None:
        missing = sorted(set(self.node_names) - self._ready_nodes(ports))
        return f"nodes not Ready: {', '.join(missing)}" if missing else None

    def _default_service_account_missing(self, ports: Mapping[str, int]) -> str | None:
        status, _ = self._api(ports, "GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return None if status == 200 else f"ServiceAccount default/default: HTTP {status}"

    # -- cluster objects --------------------------------------------------------------------

    def _create(self, ports: Mapping[str, int], path: str, obj: Mapping[str, Any]) -> None:
        status, body = self._api(ports, "POST", path, obj)
        if status not in (200, 201, 409):
            kind = obj.get("kind", "object")
            raise KubeClusterError(
                "kube-apiserver",
                f"creating {kind} {obj['metadata']['name']} answered {status}: {body}",
                self.log_file("kube-apiserver"),
            )

    def _bootstrap_rbac(self, ports: Mapping[str, int]) -> None:
        self._create(
            ports,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": _KSM_ROLE},
                "rules": [
                    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}
                ],
            },
        )
        self._create(
            ports,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": _KSM_ROLE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": _KSM_ROLE,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": "kube-state-metrics",
                    }
                ],
            },
        )

    def _ensure_nodes(self, ports: Mapping[str, int]) -> None:
        wanted = self.node_names
        for index, name in enumerate(wanted):
            self._create(ports, "/api/v1/nodes", _node_manifest(name, index))
        status, body = self._api(ports, "GET", f"/api/v1/nodes?labelSelector={NODE_LABEL}%3Dkwok")
        if status == 200:
            for node in body.get("items", []):
                name = node["metadata"]["name"]
                if name not in wanted:
                    self._api(ports, "DELETE", f"/api/v1/nodes/{name}")


# -- fake nodes and KWOK -------------------------------------------------------------------


def _node_manifest(name: str, index: int) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                NODE_LABEL: "kwok",
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "node-role.kubernetes.io/agent": "",
            },
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
            # Addresses for the record only: nothing listens there, and nothing is sent.
            "addresses": [
                {"type": "InternalIP", "address": f"10.200.{index // 250}.{index % 250 + 1}"},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def _kwok_stages(multicall: Path) -> str:
    """KWOK's config: its default Stages (what kwokctl configures, printed by the binary
    that embeds them) and the `kubernaut.dev/simulate` Stages of kubernaut.devstack.stages."""
    result = subprocess.run(
        [str(multicall), "kwok-stages"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0 or b"kind: Stage" not in result.stdout:
        raise KubeClusterError(
            "kwok",
            f"`{multicall} kwok-stages` failed (exit {result.returncode}): "
            f"{result.stderr.decode(errors='replace')[-2000:]}",
        )
    try:
        return kwok_config(result.stdout.decode())
    except ValueError as exc:
        raise KubeClusterError("kwok", str(exc)) from exc


# -- PKI -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cert:
    cn: str
    org: str | None = None
    server: bool = False
    client: bool = False
    ca: str = "ca"
    """The file name (without .crt) of the CA that signs it."""


# Two CAs, as kubeadm has: `ca` for the cluster, `front-proxy-ca` for the request-header
# authentication of aggregated API servers (and the controller manager's and scheduler's
# delegated authentication), so no cluster client certificate can pose as the front proxy.
_CAS = {"ca": "kubernaut-devstack-ca", "front-proxy-ca": "kubernaut-devstack-front-proxy-ca"}
_CERTS = {
    "apiserver": _Cert("kube-apiserver", server=True),
    "etcd": _Cert("etcd", server=True, client=True),
    "serving": _Cert("kubernaut-devstack-serving", server=True),
    "apiserver-etcd-client": _Cert("kube-apiserver-etcd-client", client=True),
    "admin": _Cert("kubernaut-admin", "system:masters", client=True),
    "controller-manager": _Cert("system:kube-controller-manager", client=True),
    "scheduler": _Cert("system:kube-scheduler", client=True),
    "kwok": _Cert("kwok", "system:masters", client=True),
    "kube-state-metrics": _Cert("kube-state-metrics", client=True),
    "front-proxy-client": _Cert("front-proxy-client", client=True, ca="front-proxy-ca"),
}
_SANS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
_SANS_IP = ("127.0.0.1", "::1", SERVICE_IP)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ensure_ca(pki: Path, file_name: str, cn: str) -> bool:
    """Create the CA `file_name` when missing; True when it was created."""
    if (pki / f"{file_name}.crt").exists() and (pki / f"{file_name}.key").exists():
        return False
    create_ca(pki, common_name=cn, name=file_name, path_length=None)
    return True


def ensure_pki(pki: Path) -> None:
    """Create what is missing in `pki`: the CAs, every certificate, the ServiceAccount keys.

    EC P-256 for the CAs and certificates, RSA 2048 for ServiceAccount tokens (RS256); keys
    are written 0600 in a 0700 directory. A new CA replaces the certificates it signs.
    """
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    now = dt.datetime.now(dt.UTC)
    cas: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}
    for ca_name, ca_cn in _CAS.items():
        if _ensure_ca(pki, ca_name, ca_cn):
            for file_name, spec in _CERTS.items():
                if spec.ca == ca_name:
                    (pki / f"{file_name}.crt").unlink(missing_ok=True)
        ca_key = serialization.load_pem_private_key(
            (pki / f"{ca_name}.key").read_bytes(), password=None
        )
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise KubeClusterError(None, f"{pki / ca_name}.key is not an EC private key")
        cas[ca_name] = (
            x509.load_pem_x509_certificate((pki / f"{ca_name}.crt").read_bytes()),
            ca_key,
        )
    for file_name, spec in _CERTS.items():
        cert_path, key_path = pki / f"{file_name}.crt", pki / f"{file_name}.key"
        if cert_path.exists() and key_path.exists():
            continue
        ca_cert, ca_key = cas[spec.ca]
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, spec.cn)]
        if spec.org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec.org))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if spec.server:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in _SANS_DNS]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _SANS_IP]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        write_private_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    sa_key_path, sa_pub_path = pki / "sa.key", pki / "sa.pub"
    if not (sa_key_path.exists() and sa_pub_path.exists()):
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private_key(sa_key_path, sa_key)
        sa_pub_path.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def _write_kubeconfig(
    path: Path, server: str, pki: Path, cert: str, user: str | None = None
) -> None:
    """A kubeconfig (JSON, which YAML readers accept) with the certificates embedded."""

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    user = user or cert
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubernaut-devstack",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(f"{cert}.crt"),
                    "client-key-data": b64(f"{cert}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "kubernaut-devstack",
                "context": {"cluster": "kubernaut-devstack", "user": user},
            }
        ],
        "current-context": "kubernaut-devstack",
        "preferences": {},
    }
    data = json.dumps(config, indent=2) + "\n"
    with contextlib.suppress(OSError):
        if path.read_text() == data:
            return
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    path.with_suffix(".tmp").replace(path)


# -- small helpers -------------------------------------------------------------------------


def _request(
    host: str,
    port: int,
    method: str,
    path: str,
    context: ssl.SSLContext | None,
    body: Mapping[str, Any] | None = None,
    *,
    timeout: float = 5.0,
) -> tuple[int, Any]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    text = raw.decode(errors="replace")
    # etcd's /health says text/plain for its JSON body.
    if text.lstrip().startswith(("{", "[")):
        with contextlib.suppress(ValueError):
            return response.status, json.loads(text)
    return response.status, text


def _https_health(port: int, context: ssl.SSLContext) -> str | None:
    status, body = _request(LOOPBACK, port, "GET", "/healthz", context)
    return None if status == 200 else f"/healthz answered {status}: {str(body)[:300]}"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group that `pid` leads (we start each with its own session)."""
    with contextlib.suppress(ProcessLookupError):
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return
        if pgid == pid:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
