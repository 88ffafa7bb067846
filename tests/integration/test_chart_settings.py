"""Chart and settings agree (issue 18, point 4): each of the ten services and the HTTP edge,
started as a local process with exactly the command, environment and files its rendered
Deployment gives it, reaches SERVING (the edge: its /healthz) on the ports the Deployment
declares, Istio on (KUBERNAUT_TRANSPORT=mesh) and off (mtls); a misspelt KUBERNAUT_*
variable in a Deployment stops the component at start-up, naming it.

A small kubelet stands in for the cluster (`Kubelet`): it resolves each container's
envFrom and env from the chart's ConfigMap and from Secrets the test makes (pointing at the
local stack), writes the volumes the container mounts (those Secrets' items, emptyDirs)
into a directory per pod, and runs the container's command. Only what cannot be the same
on one machine is mapped (`Local`, each rule explained there). So a variable the chart
sets that no setting reads fails start-up, and a setting the chart forgets shows as a
component that is not SERVING, warns at start, or keeps no schema in the database the
chart's Secret names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubernaut.devstack.crds import build_helm
from kubernaut.devstack.identities import write_token_kubeconfig
from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.processes import LOOPBACK, free_port, free_port_base, stop_child, tail
from kubernaut.devstack.smtp import MailSink
from kubernaut.edge.app import ALERTMANAGER_PATH
from kubernaut.runtime.names import (
    DEFAULT_PORT_BASE,
    EDGE_ACCOUNT,
    METRICS_PORT_OFFSET,
    OPERATOR_ACCOUNT,
    ServiceName,
)
from tests.fixtures.helm import Helm
from tests.integration.test_http_edge import AUTH, TOKEN, webhook

# A cold build of Helm or of the control plane runs inside the first test's fixtures.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

TRUST_DOMAIN = "cluster.local"

# The Secrets the values below name; the test makes them (`_secrets`).
DB_SECRET = "kubernaut-db"
ENV_SECRET = "kubernaut-env"
TOKENS_SECRET = "kubernaut-webhook-tokens"
CERTS_SECRET = "kubernaut-certs"

SECRETS = {
    "database": {"existingSecret": DB_SECRET},
    "secretEnv": {"existingSecret": ENV_SECRET},
}
# What an install sets: the database and further settings by Secret, the senders' tokens,
# Istio or the certificates for mTLS, and its AlertManager (without it effectiveness warns
# that it cannot judge; it is first asked at an assessment, so the cluster-side address
# stays as it is). Nothing here is there to make the test pass locally.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "istio-on": {
        **SECRETS,
        "istio": {"enabled": True},
        "edge": {
            "tokens": {"existingSecret": TOKENS_SECRET},
            "tokenReview": {
                "enabled": True,
                "allowedUsers": ["system:serviceaccount:monitoring:alertmanager"],
            },
        },
        "config": {
            "KUBERNAUT_EFFECTIVENESS_ALERTMANAGER_URL": "http://alertmanager.monitoring:9093",
            "KUBERNAUT_EFFECTIVENESS_PROMETHEUS_URL": "http://prometheus.monitoring:9090",
        },
    },
    "istio-off": {
        **SECRETS,
        "istio": {"enabled": False},
        "mtls": {"existingSecret": CERTS_SECRET},
        "edge": {"tokens": {"existingSecret": TOKENS_SECRET}},
        "config": {
            "KUBERNAUT_EFFECTIVENESS_ALERTMANAGER_URL": "http://alertmanager.monitoring:9093",
            "KUBERNAUT_EFFECTIVENESS_PROMETHEUS_URL": "http://prometheus.monitoring:9090",
        },
    },
}

# Where the components that keep state record their migrations in the chart's database
# (they run at start): one that never saw the chart's database URL leaves its schema out.
# Storage's tables predate per-service schemas and live in `public`.
MIGRATED_SCHEMAS = {"gateway", "workflow", "executor", "effectiveness", "notification", "public"}

# Start-up is slow on two shared cores: eleven Python processes, storage loads its model.
SERVING_TIMEOUT = 180.0


def _of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# -- The local stack in place of the cluster -----------------------------------------------


@dataclass(frozen=True)
class Local:
    """The mapping from the cluster to this machine: only addresses and paths differ.

    - Ports: a pod has the pod network to itself; here eleven processes share loopback
      with other tests and a possible dev stack. The chart gives no port (each component
      listens on the registry's defaults, KUBERNAUT_PORT_BASE 9080 + its index, metrics
      +100), so the processes get one added variable, KUBERNAUT_PORT_BASE, shifting all of
      them by `shift`; the edge's HTTP port (a setting the chart gives) is mapped to a free
      port. The probes go to the Deployment's containerPorts, mapped the same way, so a
      containerPort that is not where the component listens fails the test.
    - Hosts: the pod listens on 0.0.0.0 (the pod's own network); here 127.0.0.1. The
      Services' DNS names (kubernaut-<account>[.<namespace>.svc...]) resolve to the pod;
      here 127.0.0.1 on the mapped port.
    - Files: a path under a volumeMount's mountPath is the same path under the local
      directory holding that volume's files (`Kubelet.mount`).
    - Kubernetes: a pod with a ServiceAccount token uses the in-cluster config
      (KUBERNETES_SERVICE_HOST and the token, CA and namespace mounted at
      /var/run/secrets/kubernetes.io/serviceaccount), which cannot exist off a pod. Its
      equivalent here is a kubeconfig (KUBECONFIG, which is not a KUBERNAUT_* setting)
      holding a token of the same ServiceAccount, bound to the chart's own ClusterRoles,
      the local API server's address and its CA. Pods without a token get none.
    - HOME is an empty directory of the pod's, PATH the image's (this virtualenv's
      `kubernaut`), as a pod has no ~/.kube/config or ~/.local/state of a developer's.
    """

    port_base: int
    edge_port: int
    edge_chart_port: int
    service_hosts: frozenset[str]
    kubeconfigs: dict[str, Path] = field(default_factory=dict)

    @property
    def shift(self) -> int:
        return self.port_base - DEFAULT_PORT_BASE

    def port(self, chart_port: int) -> int:
        if chart_port == self.edge_chart_port:
            return self.edge_port
        last = DEFAULT_PORT_BASE + METRICS_PORT_OFFSET + len(ServiceName)
        assert DEFAULT_PORT_BASE <= chart_port <= last, f"port {chart_port} is not mapped"
        return chart_port + self.shift

    def value(self, value: str, mounts: dict[str, Path], container_ports: set[int]) -> str:
        for mount_path, directory in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(directory) + value[len(mount_path.rstrip("/")) :]
        if value == "0.0.0.0":
            return LOOPBACK
        host, colon, port = value.rpartition(":")
        if colon and host in self.service_hosts and port.isdigit():
            return f"{LOOPBACK}:{self.port(int(port))}"
        if value.isdigit() and int(value) in container_ports:
            return str(self.port(int(value)))
        return value


def _service_hosts(docs: list[dict[str, Any]], namespace: str) -> frozenset[str]:
    names = set(_of_kind(docs, "Service"))
    suffixes = ("", f".{namespace}", f".{namespace}.svc", f".{namespace}.svc.{TRUST_DOMAIN}")
    return frozenset(name + suffix for name in names for suffix in suffixes)


def _image_path() -> str:
    # The image's `kubernaut` on PATH: this virtualenv's console script.
    return os.pathsep.join([str(Path(sys.executable).parent), os.defpath])


@dataclass
class Pod:
    account: str
    command: list[str]
    env: dict[str, str]
    # The Deployment's containerPorts by name (the chart's numbers) and readiness probe.
    ports: dict[str, int]
    readiness: dict[str, Any]
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "log"

    def start(self) -> None:
        executable = shutil.which(self.command[0], path=self.env["PATH"])
        assert executable, f"{self.command[0]} is not on the image's PATH"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [executable, *self.command[1:]],
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> int | None:
        if self.process is None:
            return None
        stop_child(self.process, timeout=20)
        return self.process.returncode

    def log_lines(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def tail(self) -> str:
        # Without the probes' own rpc lines, which would hide why it is not ready.
        lines = tail(self.log, 400).splitlines()
        kept = [line for line in lines if '"message": "rpc"' not in line]
        return "\n".join("    " + line for line in kept[-20:])


class Kubelet:
    """Runs a rendered Deployment's container as a local process, the way a kubelet would
    set it up: envFrom in order, then env (which wins); Secret and ConfigMap references
    resolved, a missing one refused (as CreateContainerConfigError); the mounted volumes
    written out. Anything else in a Deployment fails the test, so that a chart change this
    emulation does not follow cannot pass unnoticed."""

    def __init__(
        self,
        docs: list[dict[str, Any]],
        secrets: dict[str, dict[str, bytes]],
        local: Local,
        root: Path,
    ) -> None:
        self.config_maps = {
            name: {k: str(v) for k, v in (cm.get("data") or {}).items()}
            for name, cm in _of_kind(docs, "ConfigMap").items()
        }
        self.secrets = secrets
        self.local = local
        self.root = root
        self.deployments = _of_kind(docs, "Deployment")

    def _config_map(self, name: str) -> dict[str, str]:
        assert name in self.config_maps, f"the chart references ConfigMap {name} it does not make"
        return self.config_maps[name]

    def _secret(self, name: str) -> dict[str, str]:
        assert name in self.secrets, f"the pod needs Secret {name}, which the values do not name"
        return {k: v.decode() for k, v in self.secrets[name].items()}

    def environment(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self._config_map(source["configMapRef"]["name"]))
            elif "secretRef" in source:
                env.update(self._secret(source["secretRef"]["name"]))
            else:
                raise AssertionError(f"envFrom {source} is not emulated")
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = item["valueFrom"]
            if "secretKeyRef" in ref:
                data = self._secret(ref["secretKeyRef"]["name"])
                key = ref["secretKeyRef"]["key"]
            elif "configMapKeyRef" in ref:
                data = self._config_map(ref["configMapKeyRef"]["name"])
                key = ref["configMapKeyRef"]["key"]
            else:
                raise AssertionError(f"env {item} is not emulated")
            assert key in data, f"{item['name']}: the referenced key {key} does not exist"
            env[item["name"]] = data[key]
        return env

    def mount(
        self, pod: dict[str, Any], container: dict[str, Any], pod_root: Path
    ) -> dict[str, Path]:
        """Each mounted volume's files in a directory of its own; mountPath -> directory."""
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            directory = pod_root / "volumes" / mount["name"]
            directory.mkdir(parents=True)
            if "secret" in volume:
                source = volume["secret"]
                data = self.secrets.get(source["secretName"])
                assert data is not None, f"volume {mount['name']}: no Secret {source['secretName']}"
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    assert item["key"] in data, f"Secret {source['secretName']} lacks {item['key']}"
                    target = directory / item["path"]
                    target.write_bytes(data[item["key"]])
                    target.chmod(item.get("mode", source.get("defaultMode", 0o644)))
            elif "emptyDir" not in volume:
                raise AssertionError(f"volume {volume} is not emulated")
            mounts[mount["mountPath"]] = directory
        return mounts

    def pod(self, deployment: str) -> Pod:
        spec = self.deployments[deployment]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        account = spec["serviceAccountName"]
        pod_root = self.root / account
        (pod_root / "home").mkdir(parents=True)
        mounts = self.mount(spec, container, pod_root)
        ports = {p["name"]: int(p["containerPort"]) for p in container["ports"]}
        env = self.environment(container)
        assert "KUBERNAUT_PORT_BASE" not in env, "the chart sets the port base: map it instead"
        env = {
            name: self.local.value(value, mounts, set(ports.values()))
            for name, value in env.items()
        }
        env |= {
            "KUBERNAUT_PORT_BASE": str(self.local.port_base),
            "PATH": _image_path(),
            "HOME": str(pod_root / "home"),
        }
        if spec.get("automountServiceAccountToken") and account in self.local.kubeconfigs:
            env["KUBECONFIG"] = str(self.local.kubeconfigs[account])
        return Pod(
            account=account,
            command=[*container["command"], *container.get("args", [])],
            env=env,
            ports=ports,
            readiness=container["readinessProbe"],
            root=pod_root,
        )


def _secrets(
    database_url: str, mail: MailSink, certs_dir: Path | None
) -> dict[str, dict[str, bytes]]:
    """The Secrets the values name, as an operator makes them, pointing at the local stack."""
    secrets = {
        DB_SECRET: {"url": database_url.encode()},
        # Settings given by Secret: where mail goes (the local aiosmtpd).
        ENV_SECRET: {
            "KUBERNAUT_NOTIFICATION_SMTP_HOST": mail.host.encode(),
            "KUBERNAUT_NOTIFICATION_SMTP_PORT": str(mail.port).encode(),
            "KUBERNAUT_NOTIFICATION_EMAIL_TO": b"sre@example.com",
        },
        TOKENS_SECRET: {"tokens": f"{TOKEN}\n".encode()},
    }
    if certs_dir is not None:
        # What `kubernaut certs init` made, without the CA's key (which no pod needs).
        secrets[CERTS_SECRET] = {
            p.name: p.read_bytes() for p in sorted(certs_dir.iterdir()) if p.name != "ca.key"
        }
    return secrets


def _clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    return env | settings


def certs_init(certs_dir: Path, namespace: str) -> Path:
    """The certificates of an Istio-off install, made as the README says: `kubernaut certs
    init`, for the release's namespace and the chart's trust domain."""
    result = subprocess.run(
        [shutil.which("kubernaut", path=_image_path()) or "kubernaut", "certs", "init"],
        env=_clean_env(
            KUBERNAUT_CERTS_DIR=str(certs_dir),
            KUBERNAUT_NAMESPACE=namespace,
            KUBERNAUT_TRUST_DOMAIN=TRUST_DOMAIN,
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return certs_dir


# -- Fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(build_helm(timeout=1100) / "helm", tmp_path_factory.mktemp("helm-home"))


async def _api(cluster: LocalCluster, method: str, path: str, body: Any = None) -> Any:
    status, answer = await asyncio.to_thread(cluster.api, method, path, body)
    assert 200 <= status < 300, (method, path, status, answer)
    return answer


@contextlib.asynccontextmanager
async def cluster_identities(
    cluster: LocalCluster, docs: list[dict[str, Any]], namespace: str, out_dir: Path
) -> AsyncIterator[dict[str, Path]]:
    """The chart's ServiceAccounts, ClusterRoles and ClusterRoleBindings on the local
    cluster, and for each pod that mounts a token a kubeconfig with a token of its
    ServiceAccount (`Local`: the in-cluster config); all removed after."""
    out_dir.mkdir(parents=True)
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    created: list[str] = []
    namespace_body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    await _api(cluster, "POST", "/api/v1/namespaces", namespace_body)
    try:
        for account in _of_kind(docs, "ServiceAccount").values():
            await _api(cluster, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", account)
        for kind, plural in [
            ("ClusterRole", "clusterroles"),
            ("ClusterRoleBinding", "clusterrolebindings"),
        ]:
            for name, obj in _of_kind(docs, kind).items():
                await _api(cluster, "POST", f"{rbac}/{plural}", obj)
                created.append(f"{rbac}/{plural}/{name}")
        kubeconfigs: dict[str, Path] = {}
        for deployment in _of_kind(docs, "Deployment").values():
            pod = deployment["spec"]["template"]["spec"]
            if not pod.get("automountServiceAccountToken"):
                continue
            account = pod["serviceAccountName"]
            token = await _api(
                cluster,
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
            )
            kubeconfigs[account] = write_token_kubeconfig(
                out_dir / f"{account}.kubeconfig",
                cluster.info.apiserver_url,
                cluster.info.ca_file,
                account,
                token["status"]["token"],
            )
        yield kubeconfigs
    finally:
        for path in reversed(created):
            await asyncio.to_thread(cluster.api, "DELETE", path)
        await asyncio.to_thread(cluster.api, "DELETE", f"/api/v1/namespaces/{namespace}")


# -- Probes --------------------------------------------------------------------------------


def _operator_credentials(certs_dir: Path) -> grpc.ChannelCredentials:
    # The kubelet only connects (tcpSocket: it has no client certificate); the test asks
    # grpc.health.v1 as the operator, whose certificate `kubernaut certs init` made too.
    return grpc.ssl_channel_credentials(
        root_certificates=(certs_dir / "ca.crt").read_bytes(),
        private_key=(certs_dir / f"{OPERATOR_ACCOUNT}.key").read_bytes(),
        certificate_chain=(certs_dir / f"{OPERATOR_ACCOUNT}.crt").read_bytes(),
    )


async def _readiness(pod: Pod, local: Local, credentials: grpc.ChannelCredentials | None) -> str:
    """SERVING, or what the probe got instead. The edge: its readiness probe's httpGet;
    a service: grpc.health.v1 on the Deployment's gRPC containerPort."""
    if "httpGet" in pod.readiness:
        probe = pod.readiness["httpGet"]
        port = pod.ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
        url = f"http://{LOOPBACK}:{local.port(port)}{probe['path']}"
        try:
            async with httpx.AsyncClient() as client:
                reply = await client.get(url, timeout=2)
        except httpx.HTTPError as error:
            return type(error).__name__
        return "SERVING" if reply.status_code == 200 else f"HTTP {reply.status_code}"
    port = pod.ports["grpc"]
    if "grpc" in pod.readiness:
        assert pod.readiness["grpc"]["port"] == port
    target = f"{LOOPBACK}:{local.port(port)}"
    channel = (
        grpc.aio.secure_channel(target, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def wait_ready(
    pods: dict[str, Pod], local: Local, credentials: grpc.ChannelCredentials | None
) -> None:
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + SERVING_TIMEOUT
    while True:
        pending = [p for p in pods.values() if statuses.get(p.account) != "SERVING"]
        results = await asyncio.gather(*(_readiness(p, local, credentials) for p in pending))
        statuses |= {p.account: r for p, r in zip(pending, results, strict=True)}
        exited = {p.account: code for p in pods.values() if (code := p.exited()) is not None}
        if all(s == "SERVING" for s in statuses.values()):
            return
        if exited or time.monotonic() > deadline:
            logs = "\n".join(
                f"  {p.account} ({statuses[p.account]}):\n{p.tail()}"
                for p in pods.values()
                if statuses[p.account] != "SERVING"
            )
            raise AssertionError(f"not SERVING: {statuses}; exited: {exited}\n{logs}")
        await asyncio.sleep(0.5)


async def _migrated_schemas(dsn: str) -> set[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT table_schema AS nspname FROM information_schema.tables"
            " WHERE table_name = 'schema_migrations'"
        )
    finally:
        await connection.close()
    return {row["nspname"] for row in rows}


# -- The tests -----------------------------------------------------------------------------


def _http_port(docs: list[dict[str, Any]]) -> int:
    """The edge's HTTP containerPort (the one port the chart gives as a setting)."""
    (port,) = {
        p["containerPort"]
        for d in _of_kind(docs, "Deployment").values()
        for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "http"
    }
    return int(port)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
async def test_every_component_serves_with_what_its_deployment_gives_it(
    helm: Helm,
    kube: LocalCluster,
    database_dsn: str,
    mail_sink: MailSink,
    tmp_path: Path,
    name: str,
) -> None:
    values = VALUE_SETS[name]
    istio = values["istio"]["enabled"]
    namespace = f"chart-env-{uuid.uuid4().hex[:8]}"
    docs = helm.render(values, namespace=namespace)
    config = _of_kind(docs, "ConfigMap")["kubernaut-config"]["data"]
    assert config["KUBERNAUT_TRANSPORT"] == ("mesh" if istio else "mtls")
    certs_dir = None if istio else certs_init(tmp_path / "certs", namespace)
    credentials = None if certs_dir is None else _operator_credentials(certs_dir)

    async with cluster_identities(kube, docs, namespace, tmp_path / "kubeconfigs") as kubeconfigs:
        # Only the executor and context_api read the cluster; the edge too with TokenReview.
        expected = {ServiceName.EXECUTOR.account, ServiceName.CONTEXT_API.account}
        assert set(kubeconfigs) == expected | ({EDGE_ACCOUNT} if istio else set())
        local = Local(
            port_base=free_port_base(),
            edge_port=free_port(),
            edge_chart_port=_http_port(docs),
            service_hosts=_service_hosts(docs, namespace),
            kubeconfigs=kubeconfigs,
        )
        kubelet = Kubelet(
            docs, _secrets(database_dsn, mail_sink, certs_dir), local, tmp_path / "pods"
        )
        pods = {name: kubelet.pod(name) for name in kubelet.deployments}
        assert {p.account for p in pods.values()} == {
            *(s.account for s in ServiceName),
            EDGE_ACCOUNT,
        }
        codes: dict[str, int | None] = {}
        try:
            for pod in pods.values():
                pod.start()
            await wait_ready(pods, local, credentials)

            # Each serves its metrics on the Deployment's metrics port.
            async with httpx.AsyncClient() as client:
                for pod in pods.values():
                    url = f"http://{LOOPBACK}:{local.port(pod.ports['metrics'])}/metrics"
                    reply = await client.get(url, timeout=5)
                    assert reply.status_code == 200 and "process_" in reply.text, (pod.account, url)

            if not istio:
                # A webhook through the edge to the gateway: the address and the
                # certificate the edge got are the ones the gateway serves and accepts.
                # (Istio on, the sidecars do mTLS and name the caller: no sidecar here.)
                async with httpx.AsyncClient() as client:
                    reply = await client.post(
                        f"http://{LOOPBACK}:{local.edge_port}{ALERTMANAGER_PATH}",
                        json=webhook(namespace=f"chart-{name}"),
                        headers=AUTH,
                        timeout=30,
                    )
                assert reply.status_code == 200, reply.text
                disposition = reply.json()["outcomes"][0]["disposition"]
                assert disposition == "ALERT_DISPOSITION_ACCEPTED"

            # Every component that keeps state did so in the database of the chart's Secret.
            assert await _migrated_schemas(database_dsn) == MIGRATED_SCHEMAS
        finally:
            codes = {pod.account: pod.stop() for pod in pods.values()}

    # SIGTERM ends each gracefully, and nothing warned at start-up (a warning there is a
    # setting missing: "no database configured", "no Kubernetes cluster configured" ...).
    assert codes == dict.fromkeys(codes, 0), codes
    for pod in pods.values():
        warnings = [
            line
            for line in pod.log_lines()
            # Kubernaut's own: a library's (OpenTelemetry's "Failed to parse peer address
            # ''" on a probe's closed connection) says nothing about settings.
            if line.get("level") in ("warning", "error", "critical")
            and str(line.get("logger", "")).startswith("kubernaut")
        ]
        assert warnings == [], (pod.account, warnings)


@pytest.mark.parametrize(
    ("values", "deployment", "misspelt", "suggestion"),
    [
        # A component's own env (components.<name>.env).
        (
            {"components": {"executor": {"env": {"KUBERNAUT_EXECUTOR_DRYRUN": "true"}}}},
            "kubernaut-executor",
            "KUBERNAUT_EXECUTOR_DRYRUN",
            "KUBERNAUT_EXECUTOR_DRY_RUN",
        ),
        # The shared ConfigMap (config), here as the edge gets it.
        (
            {"config": {"KUBERNAUT_NOTIFICATION_LINKHOSTS": "github.com"}},
            f"kubernaut-{EDGE_ACCOUNT}",
            "KUBERNAUT_NOTIFICATION_LINKHOSTS",
            "KUBERNAUT_NOTIFICATION_LINK_HOSTS",
        ),
    ],
    ids=["component-env", "shared-config"],
)
def test_a_misspelt_setting_stops_the_component_at_start(
    helm: Helm,
    mail_sink: MailSink,
    tmp_path: Path,
    values: dict[str, Any],
    deployment: str,
    misspelt: str,
    suggestion: str,
) -> None:
    namespace = "kubernaut"
    full = {**VALUE_SETS["istio-off"], **values}
    docs = helm.render(full, namespace=namespace)
    local = Local(
        port_base=free_port_base(),
        edge_port=free_port(),
        edge_chart_port=_http_port(docs),
        service_hosts=_service_hosts(docs, namespace),
    )
    certs_dir = certs_init(tmp_path / "certs", namespace)
    # Nothing is reached before the check: the database URL may point nowhere.
    secrets = _secrets("postgresql://nobody@127.0.0.1:1/none", mail_sink, certs_dir)
    pod = Kubelet(docs, secrets, local, tmp_path / "pods").pod(deployment)
    assert misspelt in pod.env
    pod.start()
    assert pod.process is not None
    try:
        code = pod.process.wait(timeout=60)
    finally:
        pod.stop()
    output = pod.log.read_text()
    assert code == 2, output
    assert misspelt in output and f"did you mean {suggestion}?" in output, output


def test_each_certificate_names_the_host_the_chart_dials(helm: Helm, tmp_path: Path) -> None:
    """Istio off, a component dials another at the address the ConfigMap gives
    (its Service's name) and verifies the certificate against that host; `Local` maps the
    host to 127.0.0.1, which every certificate names, so this is checked here."""
    namespace = "remediation"
    docs = helm.render(VALUE_SETS["istio-off"], namespace=namespace)
    config = _of_kind(docs, "ConfigMap")["kubernaut-config"]["data"]
    certs_dir = certs_init(tmp_path / "certs", namespace)
    missing = {}
    for service in ServiceName:
        host = config[f"KUBERNAUT_{service.value.upper()}_ADDRESS"].rpartition(":")[0]
        cert = x509.load_pem_x509_certificate((certs_dir / f"{service.account}.crt").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = names.get_values_for_type(x509.DNSName)
        if host not in dns_names:
            missing[service.account] = (host, dns_names)
    assert missing == {}
