"""The local control plane's components (see `kubernaut.devstack.kube`): each one's command
line, and its process (launched, found again by pid file, waited for, stopped).

Each component runs as a separate process in its own session, listening on 127.0.0.1 only,
its output appended to `logs/<component>.log`. A pid file (`run/<component>.pid`: pid,
start time and command line) lets any later `Processes` on the same state directory find it
again, or stop it, whoever started it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kubernaut.devstack.kube_layout import (
    COMPONENTS,
    POD_CIDR,
    SA_ISSUER,
    SERVICE_CIDR,
    KubeClusterError,
    StateLayout,
)
from kubernaut.devstack.processes import LOOPBACK, is_zombie, spawn_logged, start_time
from kubernaut.devstack.stages import kwok_config

_log = logging.getLogger(__name__)

Ports = Mapping[str, int]
Check = Callable[[], str | None]
"""A readiness check: None when ready, else why not."""

KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_CRDS = {"Logs": "logs", "ClusterLogs": "clusterlogs"}
"""The KWOK kinds read from the API server (kind: plural): which pod's logs are which file."""
KUBELET_ADDRESS_TYPES = "InternalDNS,InternalIP,Hostname,ExternalDNS,ExternalIP"
KUBELET_DNS = "localhost"
"""Every node's InternalDNS address: where KWOK's kubelet API listens (its certificate
names it)."""


# -- command lines -------------------------------------------------------------------------


def command(
    layout: StateLayout, name: str, ports: Ports, kwok_stages: Callable[[], str]
) -> tuple[list[str], dict[str, str]]:
    """`name`'s argv and environment. Writes the config file it reads, if it has one
    (the scheduler's; KWOK's, whose text `kwok_stages` gives)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "HOME")}
    env["HOME"] = str(layout.state_dir)
    binary = str(layout.binary(name))
    if name == "etcd":
        return [binary, *_etcd_flags(layout, ports)], env
    if name == "kube-apiserver":
        return [binary, *_apiserver_flags(layout, ports)], env
    if name == "kube-controller-manager":
        return [binary, *_controller_manager_flags(layout, ports)], env
    if name == "kube-scheduler":
        return [binary, *_scheduler_flags(layout, ports)], env
    if name == "kwok":
        return [binary, *_kwok_flags(layout, kwok_stages(), ports)], env
    if name == "kube-state-metrics":
        return [binary, *_kube_state_metrics_flags(layout, ports)], env
    raise AssertionError(name)


def _etcd_url(ports: Ports) -> str:
    return f"https://{LOOPBACK}:{ports['etcd_client']}"


def _etcd_flags(layout: StateLayout, ports: Ports) -> list[str]:
    pki = layout.pki
    etcd_url = _etcd_url(ports)
    peer_url = f"https://{LOOPBACK}:{ports['etcd_peer']}"
    return [
        "--name=kubernaut",
        f"--data-dir={layout.state_dir / 'etcd'}",
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
    ]


def _apiserver_flags(layout: StateLayout, ports: Ports) -> list[str]:
    pki = layout.pki
    return [
        f"--etcd-servers={_etcd_url(ports)}",
        f"--etcd-cafile={pki / 'ca.crt'}",
        f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
        f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--secure-port={ports['apiserver']}",
        f"--cert-dir={layout.state_dir / 'apiserver'}",
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
        # The kubelet API (pod logs) is KWOK's server: every node's InternalDNS address
        # is localhost and its kubelet port KWOK's (kube.LocalCluster sets both), and
        # KWOK serves with the `serving` certificate, which the cluster CA signed.
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        f"--kubelet-preferred-address-types={KUBELET_ADDRESS_TYPES}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        # The only address is loopback, which Endpoints may not hold: the
        # `kubernetes` Service keeps its ClusterIP but gets no endpoints.
        "--endpoint-reconciler-type=none",
        # On SIGTERM, give open watches 2s instead of --request-timeout (60s).
        "--shutdown-send-retry-after=true",
        "--profiling=false",
    ]


def _serving_flags(layout: StateLayout) -> list[str]:
    """The controller manager's and scheduler's own HTTPS endpoint (for /healthz)."""
    return [
        f"--bind-address={LOOPBACK}",
        f"--tls-cert-file={layout.pki / 'serving.crt'}",
        f"--tls-private-key-file={layout.pki / 'serving.key'}",
    ]


def _controller_manager_flags(layout: StateLayout, ports: Ports) -> list[str]:
    pki = layout.pki
    kubeconfig = layout.kubeconfigs / "controller-manager.kubeconfig"
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        *_serving_flags(layout),
        f"--secure-port={ports['controller_manager']}",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # Its default is /usr/libexec/kubernetes/..., which it creates.
        f"--flex-volume-plugin-dir={layout.state_dir / 'controller-manager' / 'flexvolume'}",
        "--kube-api-qps=100",
        "--kube-api-burst=200",
        "--profiling=false",
    ]


def _scheduler_flags(layout: StateLayout, ports: Ports) -> list[str]:
    kubeconfig = layout.kubeconfigs / "scheduler.kubeconfig"
    config = layout.state_dir / "scheduler.json"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 100, "burst": 200},
                "leaderElection": {"leaderElect": False},
                "enableProfiling": False,
            },
            indent=2,
        )
    )
    return [
        f"--config={config}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        *_serving_flags(layout),
        f"--secure-port={ports['scheduler']}",
    ]


def kwok_config_file(layout: StateLayout) -> Path:
    return layout.state_dir / "kwok.yaml"


def _kwok_flags(layout: StateLayout, stages: str, ports: Ports) -> list[str]:
    config = kwok_config_file(layout)
    config.write_text(stages)
    return [
        f"--kubeconfig={layout.kubeconfigs / 'kwok.kubeconfig'}",
        f"--config={config}",
        "--manage-all-nodes=true",
        f"--cidr={POD_CIDR}",
        "--node-lease-duration-seconds=40",
        # KWOK's kubelet API (what kwokctl runs): pod logs from the files that Logs and
        # ClusterLogs objects name, over HTTPS on loopback; the Stages put the port in
        # each node's status (daemonEndpoints), where the API server looks for it.
        f"--server-address={LOOPBACK}:{ports['kwok_server']}",
        f"--node-port={ports['kwok_server']}",
        f"--tls-cert-file={layout.pki / 'serving.crt'}",
        f"--tls-private-key-file={layout.pki / 'serving.key'}",
        f"--enable-crds={','.join(KWOK_CRDS)}",
    ]


def kwok_crds(version: str) -> list[dict[str, Any]]:
    """KWOK's own CustomResourceDefinitions of KWOK_CRDS, unchanged from its Go module at
    `version` (the module cache has it once scripts/build-k8s.sh built KWOK; else the Go
    module proxy)."""
    try:
        result = subprocess.run(
            ["go", "mod", "download", "-json", f"{KWOK_MODULE}@{version}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=120,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KubeClusterError("kwok", f"`go mod download {KWOK_MODULE}@{version}`: {exc}") from exc
    try:
        directory = Path(json.loads(result.stdout)["Dir"])
    except (ValueError, KeyError) as exc:
        raise KubeClusterError(
            "kwok",
            f"`go mod download {KWOK_MODULE}@{version}` failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).decode(errors='replace')[-1000:]}",
        ) from exc
    crds = []
    for plural in KWOK_CRDS.values():
        path = directory / "kustomize" / "crd" / "bases" / f"kwok.x-k8s.io_{plural}.yaml"
        try:
            crds.append(yaml.safe_load(path.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise KubeClusterError("kwok", f"{path}: {exc}") from exc
    return crds


def _kube_state_metrics_flags(layout: StateLayout, ports: Ports) -> list[str]:
    return [
        f"--kubeconfig={layout.kubeconfigs / 'kube-state-metrics.kubeconfig'}",
        f"--host={LOOPBACK}",
        f"--port={ports['kube_state_metrics']}",
        f"--telemetry-host={LOOPBACK}",
        f"--telemetry-port={ports['kube_state_metrics_telemetry']}",
    ]


def kwok_stages(multicall: Path) -> str:
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


# -- processes -----------------------------------------------------------------------------


class Processes:
    """The components' processes of one state directory: ours (children we started) and
    those another `Processes` started (found by pid file)."""

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def launch(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        """Start `name` as our child and write its pid file."""
        log_path = self.layout.log_file(name)
        with open(log_path, "ab") as log:
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            header = f"\n=== {stamp} kube.py starting: {' '.join(argv)}\n"
            try:
                process = spawn_logged(argv, log, header, cwd=self.layout.state_dir, env=env)
            except OSError as exc:
                raise KubeClusterError(name, f"could not run {argv[0]}: {exc}", log_path) from exc
        self._children[name] = process
        record = {"pid": process.pid, "start_time": start_time(process.pid), "argv": argv}
        self.layout.pid_file(name).write_text(json.dumps(record) + "\n")

    def running_pid(self, name: str) -> int | None:
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
            record = json.loads(self.layout.pid_file(name).read_text())
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
        if str(self.layout.state_dir).encode() not in b" ".join(cmdline):
            return None
        return pid

    def wait(self, name: str, check: Check, timeout: float) -> None:
        """Poll `check` (None: ready, else why not) while `name`'s process lives."""
        deadline = time.monotonic() + timeout
        reason = "not checked yet"
        while True:
            child = self._children.get(name)
            if self.running_pid(name) is None:
                code = (
                    ""
                    if child is None or child.returncode is None
                    else f" (exit {child.returncode})"
                )
                raise KubeClusterError(
                    name, f"exited{code}; last check: {reason}", self.layout.log_file(name)
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
                    name, f"not ready after {timeout:.0f}s: {reason}", self.layout.log_file(name)
                )
            time.sleep(0.2)

    def strays(self) -> list[int]:
        """Pids of processes running one of our binaries with this state dir in its args."""
        marker = str(self.layout.state_dir).encode() + b"/"
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

    def stop_pids(self, pids: list[int], timeout: float) -> None:
        """Stop processes no pid file names (SIGTERM, SIGKILL after `timeout`)."""
        for pid in pids:
            _log.warning("stopping stray pid %d running on %s", pid, self.layout.state_dir)
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [p for p in pids if not is_zombie(p)]
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)

    def stop_group(self, names: list[str], timeout: float) -> None:
        """Stop `names` together (SIGTERM, SIGKILL after `timeout`) and remove their pid
        files; raises KubeClusterError when one survives SIGKILL."""
        targets: dict[str, int] = {}
        for name in names:
            pid = self.running_pid(name)
            if pid is not None:
                targets[name] = pid
                _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while targets and time.monotonic() < deadline:
            targets = {n: p for n, p in targets.items() if self.running_pid(n) == p}
            if targets:
                time.sleep(0.1)
        for name, pid in targets.items():
            _log.warning("%s (pid %d) ignored SIGTERM for %.0fs: SIGKILL", name, pid, timeout)
            _signal_group(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10
        while targets and time.monotonic() < kill_deadline:
            targets = {n: p for n, p in targets.items() if self.running_pid(n) == p}
            if targets:
                time.sleep(0.1)
        for name in names:
            child = self._children.pop(name, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(1)
            if name not in targets:
                self.layout.pid_file(name).unlink(missing_ok=True)
        if targets:
            name = next(iter(targets))
            raise KubeClusterError(
                name, f"pid {targets[name]} survived SIGKILL", self.layout.log_file(name)
            )


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
