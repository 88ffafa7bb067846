"""The Helm chart (helm/kubernaut), first cut: it lints and renders for several value sets,
every object it renders is accepted by a server-side dry-run on the session's local
kube-apiserver with the real CRDs installed, and what it renders agrees with its sources:
the Istio policies with istio/ (one renderer), the ClusterRoles with the executor's
catalogue and context_api's reads, the environment with the settings the components read.
`helm install`, the image and SelfSubjectAccessReviews come later (issue 18)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubernaut.cli import render_chart
from kubernaut.cli.settings_reference import known_variables
from kubernaut.devstack.crds import ApiServer, build_helm, cached_crd_files, load_crds
from kubernaut.devstack.kube import LocalCluster
from kubernaut.runtime.istio import render as render_istio
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.names import EDGE_ACCOUNT, ServiceName
from kubernaut.runtime.settings import KubeSettings
from kubernaut.services.context_api import rbac as context_rbac
from kubernaut.services.executor import rbac as executor_rbac

# A cold build of Helm runs inside the first test's fixture setup.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kubernaut"
ISTIO = ROOT / "istio" / "kubernaut-authz.yaml"

SECRETS = {
    "database": {"existingSecret": "kubernaut-db"},
    "secretEnv": {"existingSecret": "kubernaut-env"},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "istio-on": {
        **SECRETS,
        "istio": {"enabled": True},
        "defaults": {"replicas": 2, "autoscaling": {"enabled": True}},
        "components": {"executor": {"env": {"KUBERNAUT_EXECUTOR_DRY_RUN": "true"}}},
        "edge": {
            "tokens": {"existingSecret": "kubernaut-webhook-tokens"},
            "tokenReview": {
                "enabled": True,
                "allowedUsers": ["system:serviceaccount:monitoring:alertmanager"],
            },
        },
        "config": {"KUBERNAUT_NOTIFICATION_LINK_HOSTS": "github.com"},
    },
    "istio-off": {
        **SECRETS,
        "istio": {"enabled": False},
        "mtls": {"existingSecret": "kubernaut-certs"},
        "edge": {"tokens": {"existingSecret": "kubernaut-webhook-tokens"}},
    },
    "minimal": {
        "istio": {"enabled": False},
        "mtls": {"existingSecret": "kubernaut-certs"},
        "edge": {"enabled": False},
        "defaults": {"podDisruptionBudget": {"enabled": False}},
    },
}


class Helm:
    """The built `helm`, its config, cache and data dirs kept out of $HOME."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), *args]
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, check=False, env=self.env
        )
        if check:
            assert result.returncode == 0, (cmd, result.stdout, result.stderr)
        return result

    def values_file(self, values: dict[str, Any]) -> Path:
        path = self.home / f"values-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def template(
        self, values: dict[str, Any], namespace: str = "kubernaut", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self(
            "template",
            "kubernaut",
            str(CHART),
            "--namespace",
            namespace,
            "-f",
            str(self.values_file(values)),
            check=check,
        )

    def render(self, values: dict[str, Any], namespace: str = "kubernaut") -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.template(values, namespace).stdout) if d]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(build_helm(timeout=1100) / "helm", tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    return {name: helm.render(values) for name, values in VALUE_SETS.items()}


def _of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _accounts(edge: bool = True) -> set[str]:
    return {s.account for s in ServiceName} | ({EDGE_ACCOUNT} if edge else set())


# -- Rendering -----------------------------------------------------------------------------


def test_the_generated_part_is_up_to_date() -> None:
    generated = CHART / "generated" / "components.yaml"
    assert generated.read_text() == render_chart.render(), "run `make generate`"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_and_template_pass(helm: Helm, name: str) -> None:
    values = helm.values_file(VALUE_SETS[name])
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout, lint.stdout
    assert helm.template(VALUE_SETS[name]).stdout.strip()


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_one_loop_renders_every_component(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    docs = rendered[name]
    edge = name != "minimal"
    names = {f"kubernaut-{account}" for account in _accounts(edge)}
    assert set(_of_kind(docs, "Deployment")) == names
    assert set(_of_kind(docs, "Service")) == names
    assert set(_of_kind(docs, "ServiceAccount")) == _accounts(edge)
    assert set(_of_kind(docs, "PodDisruptionBudget")) == (set() if name == "minimal" else names)
    assert set(_of_kind(docs, "HorizontalPodAutoscaler")) == (
        names if name == "istio-on" else set()
    )
    for deployment in _of_kind(docs, "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        account = container["name"]
        service = EDGE_ACCOUNT if account == EDGE_ACCOUNT else ServiceName.parse(account).value
        assert container["command"] == ["kubernaut"]
        assert container["args"] == ["serve", service]


def test_values_outside_the_schema_are_refused(helm: Helm) -> None:
    refused: list[tuple[dict[str, Any], str]] = [
        ({"components": {"gatewy": {"replicas": 2}}}, "gatewy"),
        ({"config": {"LOG_LEVEL": "DEBUG"}}, "LOG_LEVEL"),
        ({"edge": {"port": 0}}, "port"),
    ]
    for values, word in refused:
        result = helm.template(values, check=False)
        assert result.returncode != 0 and word in result.stderr, (values, result.stderr)
    # Istio off without certificates, TokenReview without allowed users: a clear refusal.
    off = helm.template({"istio": {"enabled": False}}, check=False)
    assert off.returncode != 0 and "mtls.existingSecret" in off.stderr, off.stderr
    review = helm.template({"edge": {"tokenReview": {"enabled": True}}}, check=False)
    assert review.returncode != 0 and "allowedUsers" in review.stderr, review.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pods_are_locked_down_and_probed(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    istio = VALUE_SETS[name].get("istio", {}).get("enabled", True)
    for deployment in _of_kind(rendered[name], "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert len(pod["topologySpreadConstraints"]) == 2
        (container,) = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert container["resources"]["requests"] and container["resources"]["limits"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if container["name"] == EDGE_ACCOUNT:
            assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
            continue
        service = ServiceName.parse(container["name"])
        assert ports["grpc"] == service.default_grpc_port
        if istio:
            assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"]}
        else:  # mTLS on the gRPC port: the kubelet has no client certificate
            assert container["readinessProbe"]["tcpSocket"] == {"port": "grpc"}
            volumes = {v["name"]: v for v in pod["volumes"]}
            keys = {item["key"] for item in volumes["certs"]["secret"]["items"]}
            assert keys == {"ca.crt", f"{service.account}.crt", f"{service.account}.key"}
        assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
        # Only the components that call the Kubernetes API get a token.
        expected = service in (ServiceName.EXECUTOR, ServiceName.CONTEXT_API)
        assert pod["automountServiceAccountToken"] is expected


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_environment_variable_is_a_known_setting(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    docs = rendered[name]
    config = _of_kind(docs, "ConfigMap")["kubernaut-config"]["data"]
    assert config["KUBERNAUT_TRANSPORT"] == (
        "mesh" if VALUE_SETS[name].get("istio", {}).get("enabled", True) else "mtls"
    )
    assert _unknown(docs) == set()


def _unknown(docs: list[dict[str, Any]]) -> set[str]:
    """The KUBERNAUT_* names a rendered Deployment gets that no setting reads (which would
    make `kubernaut serve` refuse to start)."""
    config = _of_kind(docs, "ConfigMap")["kubernaut-config"]["data"]
    names = set(config)
    for deployment in _of_kind(docs, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] == "kubernaut-config"
    assert all(n.startswith("KUBERNAUT_") for n in names), names
    return names - known_variables()


def test_a_misspelt_setting_is_caught(helm: Helm) -> None:
    # The schema accepts any KUBERNAUT_* name: the check above must catch a misspelling.
    docs = helm.render({"components": {"gateway": {"env": {"KUBERNAUT_TRANSPROT": "mesh"}}}})
    assert _unknown(docs) == {"KUBERNAUT_TRANSPROT"}


# -- Agreement with the sources ------------------------------------------------------------


def _istio_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d for d in docs if d["apiVersion"].startswith("security.istio.io/")
    }


def test_istio_policies_equal_istio_dir(rendered: dict[str, list[dict[str, Any]]]) -> None:
    committed = {d["metadata"]["name"]: d for d in yaml.safe_load_all(ISTIO.read_text())}
    for name in ("defaults", "istio-on"):
        chart = _istio_objects(rendered[name])
        # The chart also lets webhooks reach the edge, which istio/ does not deploy.
        edge = chart.pop(f"kubernaut-{EDGE_ACCOUNT}")
        assert edge["spec"]["rules"] == [{"to": [{"operation": {"ports": ["8080"]}}]}]
        assert chart == committed
    for name in ("istio-off", "minimal"):
        assert _istio_objects(rendered[name]) == {}


def test_istio_policies_follow_namespace_and_trust_domain(helm: Helm) -> None:
    docs = helm.render({"trustDomain": "example.org"}, namespace="remediation")
    chart = _istio_objects(docs)
    chart.pop(f"kubernaut-{EDGE_ACCOUNT}")
    expected = yaml.safe_load_all(render_istio("remediation", "example.org"))
    assert chart == {d["metadata"]["name"]: d for d in expected}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_policies_select_the_pods_the_chart_labels(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in _of_kind(rendered[name], "Deployment").values()
    ]
    for policy in _istio_objects(rendered[name]).values():
        selector = policy["spec"].get("selector")
        if policy["kind"] == "PeerAuthentication" or selector is None:
            continue
        matched = [p for p in pods if selector["matchLabels"].items() <= p.items()]
        assert len(matched) == 1, (policy["metadata"]["name"], selector)
        component = policy["metadata"]["name"].removeprefix("kubernaut-")
        assert matched[0]["app.kubernetes.io/component"] == component


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_cluster_roles_are_the_generated_ones(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    roles = _of_kind(rendered[name], "ClusterRole")
    bindings = _of_kind(rendered[name], "ClusterRoleBinding")
    executor = roles["kubernaut-executor-kubernaut"]
    context = roles["kubernaut-context-api-kubernaut"]
    assert set(roles) == {"kubernaut-executor-kubernaut", "kubernaut-context-api-kubernaut"}
    assert executor["rules"] == executor_rbac.policy_rules()
    assert context["rules"] == context_rbac.policy_rules()
    assert {v for rule in context["rules"] for v in rule["verbs"]} <= {"get", "list", "watch"}
    for role, account in [(executor, "executor"), (context, "context-api")]:
        binding = bindings[role["metadata"]["name"]]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "kubernaut"}
        ]
    delegator = {n for n, b in bindings.items() if b["roleRef"]["name"] == "system:auth-delegator"}
    assert len(delegator) == (1 if name == "istio-on" else 0)


# -- Server-side dry-run -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def api_server(kube: LocalCluster) -> AsyncIterator[ApiServer]:
    connection = KubeConnection(KubeSettings(kubeconfig=str(kube.kubeconfig)))
    try:
        api = ApiServer(await connection.api())
        await api.apply_crds(load_crds(cached_crd_files()), timeout=180)
        yield api
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def namespace(api_server: ApiServer) -> str:
    name = f"helm-chart-{uuid.uuid4().hex[:8]}"
    status, answer = await api_server.call(
        "POST", "/api/v1/namespaces", body={"metadata": {"name": name}}
    )
    assert status == 201, answer
    return name


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
async def test_every_rendered_object_passes_a_server_side_dry_run(
    helm: Helm, api_server: ApiServer, namespace: str, name: str
) -> None:
    docs = helm.render(VALUE_SETS[name], namespace=namespace)
    assert len(docs) > 30
    for obj in docs:
        result = await api_server.dry_run_apply(obj, namespace)
        assert result["kind"] == obj["kind"]
        assert result["metadata"]["name"] == obj["metadata"]["name"]
