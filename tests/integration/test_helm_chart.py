"""The Helm chart (helm/kubernaut), first cut: it lints and renders for several value sets,
every object it renders is accepted by a server-side dry-run on the session's local
kube-apiserver with the real CRDs installed, and what it renders agrees with its sources:
the Istio policies with istio/ (one renderer), the ClusterRoles with the executor's
catalogue and context_api's reads, the environment with the settings the components read;
with Istio off, the NetworkPolicies with the call table and the cert-manager Certificates
with what the runtime's mTLS reads; the CloudNativePG cluster's Secret as the database URL;
the monitoring rules and dashboard with the metrics the code defines; the Secrets it creates
from values with those values, read where the components read them."""

from __future__ import annotations

import base64
import importlib
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubernaut.cli import render_chart
from kubernaut.cli.settings_reference import known_variables
from kubernaut.devstack.crds import ApiServer, build_helm, cached_crd_files, load_crds
from kubernaut.devstack.kube import LocalCluster
from kubernaut.edge.app import ALERTMANAGER_PATH, GRAFANA_PATH
from kubernaut.edge.settings import EdgeSettings
from kubernaut.runtime.certs import CertPaths, spiffe_id
from kubernaut.runtime.clusters import ClusterRegistry
from kubernaut.runtime.edges import CONSOLE_CALLS, EDGE_ALLOWED, EDGE_FOR_PEOPLE, EDGES
from kubernaut.runtime.istio import render as render_istio
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.names import EDGE_ACCOUNT, LIVENESS_HEALTH_SERVICE, ServiceName
from kubernaut.runtime.registry import protocol
from kubernaut.runtime.settings import KubeSettings
from kubernaut.services.context_api import rbac as context_rbac
from kubernaut.services.executor import rbac as executor_rbac
from kubernaut.services.notification.routing import load_routing
from kubernaut.services.notification.settings import NotificationSettings
from kubernaut.services.storage.audit import WRITER_ROLE
from kubernaut.services.workflow.policy import ApprovalPolicy
from kubernaut.services.workflow.runbooks import default_runbook_dir, load_runbooks
from tests.fixtures.helm import CHART, Helm

# A cold build of Helm runs inside the first test's fixture setup.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "istio" / "kubernaut-authz.yaml"

SECRETS = {
    "database": {"existingSecret": "kubernaut-db"},
    "secretEnv": {"existingSecret": "kubernaut-env"},
}
# What the chart cannot default (test_required_values_are_asked_for).
REQUIRED = {
    "database": {"existingSecret": "kubernaut-db"},
    "edge": {"tokens": {"existingSecret": "kubernaut-webhook-tokens"}},
}
EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "docs/examples/approval-policy.yaml"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": REQUIRED,
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
        "database": {"existingSecret": "kubernaut-db"},
        "istio": {"enabled": False},
        "mtls": {"existingSecret": "kubernaut-certs"},
        "edge": {"enabled": False},
        "defaults": {"podDisruptionBudget": {"enabled": False}},
    },
    # Istio off, certificates from cert-manager, NetworkPolicies with egress restricted.
    "istio-off-cert-manager": {
        **SECRETS,
        "istio": {"enabled": False},
        "mtls": {
            "certManager": {
                "enabled": True,
                "issuerRef": {"name": "kubernaut-ca", "kind": "ClusterIssuer"},
            }
        },
        "edge": {"tokens": {"existingSecret": "kubernaut-webhook-tokens"}},
        "networkPolicy": {
            "operators": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}
            ],
            "edgeCIDRs": ["10.0.0.0/8", "fd00::/8"],
            "egress": {
                "restrict": True,
                "extra": [
                    {"to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}], "ports": [{"port": 443}]}
                ],
            },
        },
    },
    "cloudnativepg": {
        "secretEnv": {"existingSecret": "kubernaut-env"},
        "edge": {"tokens": {"existingSecret": "kubernaut-webhook-tokens"}},
        "postgresql": {
            "cloudnativepg": {"enabled": True, "instances": 3, "storage": {"size": "20Gi"}}
        },
    },
    "monitoring": {
        **SECRETS,
        "edge": {"tokens": {"existingSecret": "kubernaut-webhook-tokens"}},
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Kubernaut"}},
        },
    },
    # Named clusters: the one it runs in, and one reached by each component's own kubeconfig.
    "clusters": {
        **SECRETS,
        "edge": {"tokens": {"existingSecret": "kubernaut-webhook-tokens"}},
        "clusters": {
            "named": {"local": {"in_cluster": True}, "prod-eu": {"context": "prod-eu"}},
            "default": "local",
            "kubeconfigSecrets": {
                "context_api": "kubernaut-context-api-kubeconfig",
                "executor": "kubernaut-executor-kubeconfig",
            },
        },
    },
    # Routed notifications: the routing file and a channel's Secret, for the notification pod.
    "notifications": {
        **SECRETS,
        "edge": {"tokens": {"existingSecret": "kubernaut-webhook-tokens"}},
        "notifications": {
            "routes": {
                "channels": {
                    "mail": {"type": "email", "to": ["sre@example.com"]},
                    "ops": {
                        "type": "slack",
                        "bot_token_file": "/secrets/slack-bot/token",
                        "channel": "C0123456789",
                    },
                },
                "route": {
                    "channels": ["mail"],
                    "routes": [{"match": {"severity": ["critical"]}, "channels": ["ops"]}],
                },
            },
            "secrets": ["slack-bot"],
        },
        "approvals": {
            "externalUrl": "https://kubernaut.example.com",
            "linkSecret": "kubernaut-approval-links",
            "slackSecret": "slack-app",
        },
        "console": {"url": "https://kubernaut.example.com", "secret": "kubernaut-console"},
        # One's own runbooks and approval policy, for the workflow pod.
        "workflow": {
            "runbooks": {
                "node-not-ready.yaml": yaml.safe_load(
                    (default_runbook_dir() / "node-not-ready.yaml").read_text()
                )
            },
            "policy": yaml.safe_load(EXAMPLE_POLICY.read_text()),
        },
        "config": {
            "KUBERNAUT_ACCESS_OIDC_ISSUER": "https://dex.example.com",
            "KUBERNAUT_ACCESS_OIDC_AUDIENCE": "kubernaut",
        },
    },
    # Every secret given as a value: the chart creates the Secrets.
    "created-secrets": {
        "database": {"url": "postgresql://kubernaut:pa55@db.example.com:5432/kubernaut"},
        "secretEnv": {
            "values": {
                "KUBERNAUT_NOTIFICATION_SMTP_PASSWORD": "smtp-pa55",
                "KUBERNAUT_HTTP_HMAC_SECRET": "hm4c",
            }
        },
        "edge": {"tokens": {"values": ["t0k3n-old", "t0k3n-new"]}},
    },
}


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


def test_required_values_are_asked_for(helm: Helm) -> None:
    """The chart's bare defaults cannot run (no database, an edge nobody can authenticate
    to): rendering them fails, naming what to set, instead of installing pods that never
    become ready."""
    bare = helm.template({}, check=False)
    assert bare.returncode != 0, bare.stdout
    # Each way of giving the URL is named: by reference, by value, or CloudNativePG.
    for way in ("database.existingSecret", "database.url", "postgresql.cloudnativepg"):
        assert way in bare.stderr, bare.stderr
    no_tokens = helm.template({"database": REQUIRED["database"]}, check=False)
    assert no_tokens.returncode != 0, no_tokens.stdout
    for way in ("edge.tokens.existingSecret", "edge.tokens.values", "edge.tokenReview"):
        assert way in no_tokens.stderr, no_tokens.stderr
    without_edge = {"database": REQUIRED["database"], "edge": {"enabled": False}}
    assert helm.template(without_edge, check=False).returncode == 0
    assert helm.template(REQUIRED, check=False).returncode == 0
    # The values the chart makes Secrets of do as well as the Secrets themselves.
    by_value = {
        "database": {"url": "postgresql://kubernaut@db:5432/kubernaut"},
        "edge": {"tokens": {"values": ["t0k3n"]}},
    }
    assert helm.template(by_value, check=False).returncode == 0


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
    off = helm.template({**REQUIRED, "istio": {"enabled": False}}, check=False)
    assert off.returncode != 0 and "mtls.existingSecret" in off.stderr, off.stderr
    review = helm.template({**REQUIRED, "edge": {"tokenReview": {"enabled": True}}}, check=False)
    assert review.returncode != 0 and "allowedUsers" in review.stderr, review.stderr
    more: list[tuple[dict[str, Any], str]] = [
        ({"networkPolicy": {"egress": {"allow": True}}}, "allow"),
        ({"networkPolicy": {"edgeCIDRs": ["anywhere"]}}, "edgeCIDRs"),
        ({"mtls": {"certManager": {"issuerRef": {"kind": "Signer"}}}}, "kind"),
        ({"postgresql": {"cloudnativepg": {"storage": {"size": "lots"}}}}, "size"),
        ({"monitoring": {"grafana": {"enabled": True}}}, "grafana"),
        # cert-manager without an issuer; two sources of the database URL.
        (
            {
                **REQUIRED,
                "istio": {"enabled": False},
                "mtls": {"certManager": {"enabled": True}},
            },
            "mtls.certManager.issuerRef.name",
        ),
        (
            {
                "database": {"existingSecret": "db"},
                "postgresql": {"cloudnativepg": {"enabled": True}},
            },
            "choose one source of the database URL",
        ),
        # A secret by reference and by value at once: which one wins would be a guess.
        (
            {**REQUIRED, "database": {"existingSecret": "db", "url": "postgresql://a@db/k"}},
            "database.existingSecret and database.url: choose one source of the database URL",
        ),
        (
            {
                **REQUIRED,
                "database": {"url": "postgresql://a@db/k"},
                "postgresql": {"cloudnativepg": {"enabled": True}},
            },
            "database.url and postgresql.cloudnativepg.enabled: choose one source",
        ),
        (
            {
                **REQUIRED,
                "secretEnv": {
                    "existingSecret": "env",
                    "values": {"KUBERNAUT_NOTIFICATION_SMTP_PASSWORD": "x"},
                },
            },
            "secretEnv.existingSecret and secretEnv.values: choose one source",
        ),
        (
            {**REQUIRED, "edge": {"tokens": {"existingSecret": "tokens", "values": ["t0k3n"]}}},
            "edge.tokens.existingSecret and edge.tokens.values: choose one source",
        ),
        # What the created Secrets would hold must be usable as it is.
        ({**REQUIRED, "secretEnv": {"values": {"SMTP_PASSWORD": "x"}}}, "SMTP_PASSWORD"),
        (
            {**REQUIRED, "secretEnv": {"values": {"KUBERNAUT_NOTIFICATION_SMTP_PORT": 587}}},
            "KUBERNAUT_NOTIFICATION_SMTP_PORT",
        ),
        ({**REQUIRED, "database": {"url": "db.example.com"}}, "url"),
        ({"edge": {"tokens": {"values": ["two\nlines"]}}}, "values"),
    ]
    for values, word in more:
        result = helm.template(values, check=False)
        assert result.returncode != 0 and word in result.stderr, (values, result.stderr)


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
            paths = {item["path"] for item in volumes["certs"]["secret"]["items"]}
            assert paths == {"ca.crt", f"{service.account}.crt", f"{service.account}.key"}
        if istio:
            assert container["livenessProbe"]["grpc"] == {
                "port": ports["grpc"],
                "service": LIVENESS_HEALTH_SERVICE,
            }
        else:
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
                # A Secret the chart creates: its keys are environment names too.
                secret = _of_kind(docs, "Secret").get(source.get("secretRef", {}).get("name"))
                names |= set(secret["data"]) if secret else set()
    assert all(n.startswith("KUBERNAUT_") for n in names), names
    return names - known_variables()


def test_a_misspelt_setting_is_caught(helm: Helm) -> None:
    # The schema accepts any KUBERNAUT_* name: the check above must catch a misspelling.
    docs = helm.render(
        {**REQUIRED, "components": {"gateway": {"env": {"KUBERNAUT_TRANSPROT": "mesh"}}}}
    )
    assert _unknown(docs) == {"KUBERNAUT_TRANSPROT"}


# -- Agreement with the sources ------------------------------------------------------------


def _istio_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d for d in docs if d["apiVersion"].startswith("security.istio.io/")
    }


def test_istio_policies_equal_istio_dir(rendered: dict[str, list[dict[str, Any]]]) -> None:
    committed = {d["metadata"]["name"]: d for d in yaml.safe_load_all(ISTIO.read_text())}
    for name in ("defaults", "istio-on", "cloudnativepg", "monitoring"):
        chart = _istio_objects(rendered[name])
        # The chart also lets webhooks reach the edge, which istio/ does not deploy.
        edge = chart.pop(f"kubernaut-{EDGE_ACCOUNT}")
        assert edge["spec"]["rules"] == [{"to": [{"operation": {"ports": ["8080"]}}]}]
        assert chart == committed
    for name in ("istio-off", "minimal", "istio-off-cert-manager"):
        assert _istio_objects(rendered[name]) == {}


def test_istio_policies_follow_namespace_and_trust_domain(helm: Helm) -> None:
    docs = helm.render({**REQUIRED, "trustDomain": "example.org"}, namespace="remediation")
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


# -- Istio off: NetworkPolicies and cert-manager certificates ------------------------------

ISTIO_OFF = ("istio-off", "minimal", "istio-off-cert-manager")


def _component(labels: dict[str, str]) -> str:
    assert labels["app.kubernetes.io/name"] == "kubernaut", labels
    return labels["app.kubernetes.io/component"]


def _call_table(edge: bool) -> set[tuple[str, str]]:
    """(caller account, callee account) of every edge of the call table."""
    pairs = {(e.caller.account, e.callee.account) for e in EDGES}
    if edge:
        relayed = EDGE_ALLOWED | EDGE_FOR_PEOPLE | CONSOLE_CALLS
        pairs |= {(EDGE_ACCOUNT, callee.account) for callee, _ in relayed}
    return pairs


def _ports(rule: dict[str, Any]) -> set[int]:
    assert all(p.get("protocol", "TCP") == "TCP" for p in rule["ports"]), rule
    return {p["port"] for p in rule["ports"]}


@pytest.mark.parametrize("name", ISTIO_OFF)
def test_network_policies_allow_exactly_the_call_table(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    values = VALUE_SETS[name]
    np_values = values.get("networkPolicy", {})
    edge = values.get("edge", {}).get("enabled", True)
    docs = rendered[name]
    policies = _of_kind(docs, "NetworkPolicy")
    deployments = _of_kind(docs, "Deployment")
    # One per component, selecting exactly its pods.
    assert set(policies) == set(deployments)
    grpc_port = {s.account: s.default_grpc_port for s in ServiceName}
    metrics_port = {
        d["spec"]["template"]["spec"]["containers"][0]["name"]: {
            p["containerPort"]
            for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]
            if p["name"] == "metrics"
        }
        for d in deployments.values()
    }
    ingress_pairs: set[tuple[str, str]] = set()
    egress_pairs: set[tuple[str, str]] = set()
    restrict = np_values.get("egress", {}).get("restrict", False)
    for policy_name, policy in policies.items():
        spec = policy["spec"]
        callee = _component(spec["podSelector"]["matchLabels"])
        assert policy_name == f"kubernaut-{callee}"
        assert spec["policyTypes"] == (["Ingress", "Egress"] if restrict else ["Ingress"])
        for rule in spec["ingress"]:
            ports = _ports(rule)
            peers = rule.get("from")
            if ports == metrics_port[callee]:
                assert peers == [{"namespaceSelector": {}}]
            elif callee == EDGE_ACCOUNT:
                # The webhook port: from anywhere, or from the configured CIDRs only.
                assert ports == {8080}
                cidrs = np_values.get("edgeCIDRs")
                assert peers == ([{"ipBlock": {"cidr": c}} for c in cidrs] if cidrs else None)
            else:
                assert ports == {grpc_port[callee]}, (policy_name, rule)
                assert peers, (policy_name, rule)  # never an open gRPC port
                for peer in peers:
                    if "podSelector" in peer:
                        assert set(peer) == {"podSelector"}  # this namespace's pods only
                        caller = _component(peer["podSelector"]["matchLabels"])
                        ingress_pairs.add((caller, callee))
                    else:
                        assert peers == np_values["operators"], (policy_name, rule)
        if restrict:
            dns, *rest = spec["egress"]
            assert {p["port"] for p in dns["ports"]} == {53}
            extra = np_values["egress"]["extra"]
            assert rest[len(rest) - len(extra) :] == extra
            for rule in rest[: len(rest) - len(extra)]:
                (peer,) = rule["to"]
                target = _component(peer["podSelector"]["matchLabels"])
                assert _ports(rule) == {grpc_port[target]}
                egress_pairs.add((callee, target))
        else:
            assert "egress" not in spec
    assert ingress_pairs == _call_table(edge)
    if restrict:
        assert egress_pairs == _call_table(edge)


def test_network_policies_only_without_istio_and_when_enabled(
    helm: Helm, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    for name in set(VALUE_SETS) - set(ISTIO_OFF):
        assert _of_kind(rendered[name], "NetworkPolicy") == {}
    off = {**VALUE_SETS["istio-off"], "networkPolicy": {"enabled": False}}
    assert _of_kind(helm.render(off), "NetworkPolicy") == {}


def test_cert_manager_certificates_are_what_the_runtime_reads(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["istio-off-cert-manager"]
    certificates = _of_kind(docs, "Certificate")
    deployments = _of_kind(docs, "Deployment")
    config = _of_kind(docs, "ConfigMap")["kubernaut-config"]["data"]
    assert set(certificates) == set(deployments)
    certs_dir = Path(config["KUBERNAUT_CERTS_DIR"])
    # The name each client dials (host of KUBERNAUT_<SERVICE>_ADDRESS) must be a SAN.
    dialled = {
        s.account: config[f"KUBERNAUT_{s.name}_ADDRESS"].rsplit(":", 1)[0] for s in ServiceName
    }
    for name, certificate in certificates.items():
        spec = certificate["spec"]
        account = spec["commonName"]
        assert spec["uris"] == [spiffe_id("cluster.local", "kubernaut", account)]
        assert spec["issuerRef"] == {
            "name": "kubernaut-ca",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }
        # Like `kubernaut certs init`: EC P-256, PKCS#8, for both ends of a connection.
        assert spec["privateKey"]["algorithm"] == "ECDSA" and spec["privateKey"]["size"] == 256
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert "localhost" in spec["dnsNames"]
        if account in dialled:
            assert dialled[account] in spec["dnsNames"], (account, spec["dnsNames"])
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "certs"]
        assert Path(mount["mountPath"]) == certs_dir
        (volume,) = [v for v in pod["volumes"] if v["name"] == "certs"]
        assert volume["secret"]["secretName"] == spec["secretName"]
        # cert-manager's keys, at the paths the runtime opens (CertPaths).
        paths = CertPaths(certs_dir, account)
        items = {i["key"]: certs_dir / i["path"] for i in volume["secret"]["items"]}
        assert items == {"ca.crt": paths.ca, "tls.crt": paths.cert, "tls.key": paths.key}
    assert _of_kind(rendered["istio-off"], "Certificate") == {}


def test_the_clusters_are_the_same_for_context_api_and_the_executor_each_with_its_own_kubeconfig(
    rendered: dict[str, list[dict[str, Any]]], helm: Helm, tmp_path: Path
) -> None:
    values = VALUE_SETS["clusters"]["clusters"]
    readers = {ServiceName.CONTEXT_API, ServiceName.EXECUTOR}
    for deployment in _of_kind(rendered["clusters"], "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        kube_env = {name: value for name, value in env.items() if "_KUBE_" in name}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        reader = next((s for s in readers if s.account == container["name"]), None)
        if reader is None:
            assert kube_env == {} and "kubeconfig" not in volumes, container["name"]
            continue
        assert json.loads(kube_env["KUBERNAUT_KUBE_CLUSTERS"]) == values["named"]
        assert kube_env["KUBERNAUT_KUBE_DEFAULT_CLUSTER"] == "local"
        # Its own kubeconfig, no other component's, where KUBERNAUT_KUBE_KUBECONFIG says.
        secret = volumes["kubeconfig"]["secret"]
        assert secret["secretName"] == values["kubeconfigSecrets"][reader.value]
        assert secret["items"] == [{"key": "kubeconfig", "path": "kubeconfig"}]
        assert mounts["kubeconfig"]["readOnly"]
        kubeconfig = Path(kube_env["KUBERNAUT_KUBE_KUBECONFIG"])
        assert kubeconfig.parent == Path(mounts["kubeconfig"]["mountPath"])
        assert kubeconfig.name == "kubeconfig"
        # What the service makes of it: the two clusters, the default, each reached as
        # the chart says.
        mounted = tmp_path / reader.value / "kubeconfig"
        with pytest.MonkeyPatch.context() as patch:
            for name, value in kube_env.items():
                patch.setenv(name, value)
            patch.setenv("KUBERNAUT_KUBE_KUBECONFIG", str(mounted))
            registry = ClusterRegistry(KubeSettings())
        assert (registry.names, registry.default) == (("local", "prod-eu"), "local")
        prod = registry.connection("prod-eu").settings
        assert (prod.kubeconfig, prod.context, prod.in_cluster) == (str(mounted), "prod-eu", False)
        assert registry.connection("").settings.in_cluster
    # Without clusters the components read the cluster they run in, as before.
    for deployment in _of_kind(rendered["defaults"], "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert not any("_KUBE_" in e["name"] for e in container.get("env", []))
    # What the components could not tell apart is refused, naming what to set.
    refused: list[tuple[dict[str, Any], str]] = [
        (
            {"named": {"a": {"in_cluster": True}, "b": {"in_cluster": True}}},
            "clusters.default is required with several clusters: one of a, b",
        ),
        (
            {"named": {"a": {"in_cluster": True}}, "default": "b"},
            'clusters.default "b" is not one of clusters.named (a)',
        ),
        (
            {"named": {"a": {"context": "a"}}, "kubeconfigSecrets": {"executor": "k"}},
            "clusters.kubeconfigSecrets.context_api is required: cluster a is reached by a context",
        ),
        # A path of its own for every component would be the same identity for both.
        ({"named": {"a": {"kubeconfig": "/etc/kubeconfig"}}}, "kubeconfig"),
    ]
    for clusters, words in refused:
        result = helm.template({**REQUIRED, "clusters": clusters}, check=False)
        assert result.returncode != 0 and words in result.stderr, (clusters, result.stderr)


def test_the_routing_file_and_channel_secrets_reach_the_notification_pod_alone(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = rendered["notifications"]
    maps = _of_kind(docs, "ConfigMap")
    routes_text = maps["kubernaut-notification-routes"]["data"]["routes.yaml"]
    assert yaml.safe_load(routes_text) == VALUE_SETS["notifications"]["notifications"]["routes"]
    routes_file = maps["kubernaut-config"]["data"]["KUBERNAUT_NOTIFICATION_ROUTES_FILE"]
    for deployment in _of_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if container["name"] != ServiceName.NOTIFICATION.account:
            assert not {"notification-routes", "channel-slack-bot"} & set(volumes)
            continue
        assert Path(routes_file).parent == Path(mounts["notification-routes"]["mountPath"])
        assert volumes["notification-routes"]["configMap"]["name"] == (
            "kubernaut-notification-routes"
        )
        assert mounts["channel-slack-bot"]["mountPath"] == "/secrets/slack-bot"
        assert mounts["channel-slack-bot"]["readOnly"]
        assert volumes["channel-slack-bot"]["secret"]["secretName"] == "slack-bot"
    # What the service makes of the mounted file: both channels, the two routes.
    token = tmp_path / "token"
    token.write_text("xoxb-1-2-abc\n")
    mounted = tmp_path / "routes.yaml"
    mounted.write_text(routes_text.replace("/secrets/slack-bot/token", str(token)))
    router = load_routing(mounted, httpx.AsyncClient(), NotificationSettings())
    assert sorted(router.channels) == ["mail", "ops"] and len(router.describe()) == 2
    # Without routes, no routing file and no ConfigMap.
    assert "kubernaut-notification-routes" not in _of_kind(rendered["defaults"], "ConfigMap")
    assert (
        "KUBERNAUT_NOTIFICATION_ROUTES_FILE"
        not in (_of_kind(rendered["defaults"], "ConfigMap")["kubernaut-config"]["data"])
    )


def test_runbooks_and_the_approval_policy_reach_the_workflow_pod_alone(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = rendered["notifications"]
    maps = _of_kind(docs, "ConfigMap")
    config = maps["kubernaut-config"]["data"]
    runbook_dir = Path(config["KUBERNAUT_WORKFLOW_RUNBOOK_DIR"])
    policy_file = Path(config["KUBERNAUT_WORKFLOW_POLICY_FILE"])
    for deployment in _of_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if container["name"] != ServiceName.WORKFLOW.account:
            assert not {"runbooks", "approval-policy"} & set(volumes)
            continue
        assert Path(mounts["runbooks"]["mountPath"]) == runbook_dir
        assert Path(mounts["approval-policy"]["mountPath"]) == policy_file.parent
        assert volumes["runbooks"]["configMap"]["name"] == "kubernaut-runbooks"
        assert volumes["approval-policy"]["configMap"]["name"] == "kubernaut-approval-policy"
    # What the workflow service makes of the mounted files: they load as they would at start.
    mounted = tmp_path / "runbooks"
    mounted.mkdir()
    for name, text in maps["kubernaut-runbooks"]["data"].items():
        (mounted / name).write_text(text)
    assert [r.name for r in load_runbooks(mounted).list()] == ["node-not-ready"]
    policy = ApprovalPolicy.parse(
        maps["kubernaut-approval-policy"]["data"][policy_file.name], policy_file.name
    )
    assert policy.rules
    # Without them, the shipped runbooks and the thresholds: nothing mounted.
    defaults = _of_kind(rendered["defaults"], "ConfigMap")
    assert not {"kubernaut-runbooks", "kubernaut-approval-policy"} & set(defaults)
    assert "KUBERNAUT_WORKFLOW_RUNBOOK_DIR" not in defaults["kubernaut-config"]["data"]


def test_approval_secrets_reach_the_edge_and_the_notification_pod_alone(
    rendered: dict[str, list[dict[str, Any]]], helm: Helm
) -> None:
    docs = rendered["notifications"]
    config = _of_kind(docs, "ConfigMap")["kubernaut-config"]["data"]
    assert config["KUBERNAUT_NOTIFICATION_APPROVAL_LINK_BASE_URL"] == (
        "https://kubernaut.example.com"
    )
    links_file = Path(config["KUBERNAUT_NOTIFICATION_APPROVAL_LINK_SECRET_FILE"])
    assert config["KUBERNAUT_HTTP_APPROVAL_LINK_SECRET_FILE"] == str(links_file)
    slack_file = Path(config["KUBERNAUT_HTTP_SLACK_SIGNING_SECRET_FILE"])
    for deployment in _of_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        name = container["name"]
        with_links = name in (EDGE_ACCOUNT, ServiceName.NOTIFICATION.account)
        assert ("approval-links" in volumes) is with_links, name
        assert ("slack" in volumes) is (name == EDGE_ACCOUNT), name
        if with_links:
            assert links_file.parent == Path(mounts["approval-links"])
            secret = volumes["approval-links"]["secret"]
            assert secret["secretName"] == "kubernaut-approval-links"
            assert secret["items"] == [{"key": "secret", "path": links_file.name}]
        if name == EDGE_ACCOUNT:
            assert slack_file.parent == Path(mounts["slack"])
            assert volumes["slack"]["secret"]["items"][0]["path"] == slack_file.name
    # The console's secret reaches the edge alone.
    for deployment in _of_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert ("console" in volumes) is (container["name"] == EDGE_ACCOUNT)
    assert config["KUBERNAUT_HTTP_CONSOLE_URL"] == "https://kubernaut.example.com"
    # Links need both the URL they point to and the secret they are signed with.
    half = {**VALUE_SETS["notifications"], "approvals": {"externalUrl": "https://k.example"}}
    refused = helm.template(half, check=False)
    assert refused.returncode != 0
    assert "approvals.linkSecret is required" in refused.stderr


def test_the_database_url_comes_from_cloudnativepg(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["cloudnativepg"]
    (cluster,) = [d for d in docs if d["kind"] == "Cluster"]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == 3 and spec["storage"]["size"] == "20Gi"
    assert "standard" in spec["imageName"]  # CloudNativePG's standard images carry pgvector
    assert (
        "CREATE EXTENSION IF NOT EXISTS vector"
        in spec["bootstrap"]["initdb"]["postInitApplicationSQL"]
    )
    # The audit trail's insert-only writer role, which the database's owner (storage's
    # login) may not create itself, made by the superuser and granted to that owner.
    assert spec["bootstrap"]["initdb"]["postInitApplicationSQL"][1:3] == [
        f"CREATE ROLE {WRITER_ROLE} NOLOGIN",
        f"GRANT {WRITER_ROLE} TO {spec['bootstrap']['initdb']['owner']}",
    ]
    assert cluster["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    expected = {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}
    for deployment in _of_kind(docs, "Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        if container["name"] == EDGE_ACCOUNT:
            assert "KUBERNAUT_DATABASE_URL" not in env
            continue
        assert env["KUBERNAUT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == expected
    for name in set(VALUE_SETS) - {"cloudnativepg"}:
        assert not [d for d in rendered[name] if d["kind"] == "Cluster"]


# -- Secrets created from values -----------------------------------------------------------


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def _template_annotations(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        n: d["spec"]["template"]["metadata"]["annotations"]
        for n, d in _of_kind(docs, "Deployment").items()
    }


def test_created_secrets_hold_the_values_and_are_read_where_the_components_read(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    values = VALUE_SETS["created-secrets"]
    docs = rendered["created-secrets"]
    secrets = _of_kind(docs, "Secret")
    tokens = values["edge"]["tokens"]["values"]
    assert {name: _decoded(s) for name, s in secrets.items()} == {
        "kubernaut-database": {"url": values["database"]["url"]},
        "kubernaut-env": values["secretEnv"]["values"],
        "kubernaut-webhook-tokens": {"tokens": "\n".join(tokens)},
    }
    for secret in secrets.values():
        labels = secret["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "kubernaut"
        assert labels["app.kubernetes.io/part-of"] == "kubernaut"
        # They belong to the release: `helm uninstall` deletes them.
        assert "helm.sh/resource-policy" not in secret["metadata"].get("annotations", {})
    for deployment in _of_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert {"secretRef": {"name": "kubernaut-env"}} in container["envFrom"]
        if container["name"] != EDGE_ACCOUNT:
            assert env["KUBERNAUT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
                "name": "kubernaut-database",
                "key": "url",
            }
            assert "tokens" not in {v["name"] for v in pod["volumes"]}
            continue
        assert "KUBERNAUT_DATABASE_URL" not in env
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tokens"]
        assert volume["secret"]["secretName"] == "kubernaut-webhook-tokens"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tokens"]
        tokens_file = Path(env["KUBERNAUT_HTTP_TOKENS_FILE"]["value"])
        assert tokens_file.parent == Path(mount["mountPath"])
        # The edge's own reading of the mounted file finds exactly the tokens given.
        mounted = tmp_path / tokens_file.name
        mounted.write_text(_decoded(secrets["kubernaut-webhook-tokens"])[tokens_file.name])
        authenticator = EdgeSettings(tokens_file=mounted).authenticator()
        assert authenticator is not None
        assert authenticator.tokens == tuple(t.encode() for t in tokens)
    # By reference, the chart creates no Secret and the pods carry no checksum of one.
    for name in set(VALUE_SETS) - {"created-secrets"}:
        assert _of_kind(rendered[name], "Secret") == {}, name
        for pod_annotations in _template_annotations(rendered[name]).values():
            assert "checksum/secrets" not in pod_annotations


def test_a_changed_created_secret_rolls_the_pods_that_read_it(helm: Helm) -> None:
    values = VALUE_SETS["created-secrets"]
    before = _template_annotations(helm.render(values))
    edge = f"kubernaut-{EDGE_ACCOUNT}"
    services = set(before) - {edge}

    def changed(**change: Any) -> set[str]:
        after = _template_annotations(helm.render({**values, **change}))
        assert set(after) == set(before)
        return {n for n in before if after[n]["checksum/secrets"] != before[n]["checksum/secrets"]}

    # The URL is read by the services, the tokens by the edge, secretEnv by all.
    assert changed(database={"url": "postgresql://kubernaut:n3w@db.example.com/kubernaut"}) == (
        services
    )
    assert changed(edge={"tokens": {"values": ["t0k3n-new"]}}) == {edge}
    assert changed(secretEnv={"values": {"KUBERNAUT_NOTIFICATION_SMTP_PASSWORD": "n3w"}}) == (
        services | {edge}
    )


# -- Monitoring ----------------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_WORDS |= {"and", "or", "unless", "offset", "le", "inf", "nan"}


def _metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are neither functions,
    label names (inside braces or a by/without list), keywords, durations nor strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group()
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function
        if word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def _defined_metrics() -> set[str]:
    """Every sample name the code's prometheus_client metrics expose (counters' _total,
    histograms' _bucket/_sum/_count ...): the modules that import prometheus_client,
    imported, then the default registry read."""
    from prometheus_client import REGISTRY

    package = ROOT / "kubernaut"
    for path in sorted(package.rglob("*.py")):
        if re.search(
            r"^from prometheus_client import .*\b(Counter|Gauge|Histogram|Summary)\b",
            path.read_text(),
            re.M,
        ):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            importlib.import_module(module)
    # prometheus_client has no public list of the names it exposes.
    names = set(REGISTRY._names_to_collectors)
    return {n for n in names if n.startswith(("kubernaut_", "grpc_server_"))}


def _monitoring(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    (rule,) = _of_kind(docs, "PrometheusRule").values()
    (monitor,) = _of_kind(docs, "ServiceMonitor").values()
    dashboard = _of_kind(docs, "ConfigMap")["kubernaut-dashboard"]
    return rule, monitor, dashboard


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    board = json.loads(dashboard["data"]["kubernaut.json"])
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def test_monitoring_objects_only_when_enabled(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in set(VALUE_SETS) - {"monitoring"}:
        docs = rendered[name]
        assert not _of_kind(docs, "PrometheusRule") and not _of_kind(docs, "ServiceMonitor")
        assert "kubernaut-dashboard" not in _of_kind(docs, "ConfigMap")


def test_rules_and_dashboard_read_only_metrics_the_code_defines(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    rule, _, dashboard = _monitoring(rendered["monitoring"])
    defined = _defined_metrics()
    # The check itself: the metrics the README names are found, a made-up one is not.
    assert {"kubernaut_ai_requests_total", "kubernaut_executor_circuit_open"} <= defined
    assert _metric_names('rate(kubernaut_made_up_total{a="b"}[5m])') == {"kubernaut_made_up_total"}
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) >= {
        "KubernautForwardingStuck",
        "KubernautNotificationsUndelivered",
        "KubernautClusterBreakerOpen",
        "KubernautAnalysisFailing",
    }
    exprs = [r["expr"] for r in alerts.values()] + _dashboard_exprs(dashboard)
    for expr in exprs:
        used = _metric_names(expr)
        assert used and used <= defined, (expr, used - defined)
        # Scoped to the release's namespace (several installs, one Prometheus).
        assert 'namespace="kubernaut"' in expr or 'namespace="$namespace"' in expr, expr
    # The analysis alert selects the RPC by the label values the interceptor records.
    analysis = protocol(ServiceName.AI_ANALYSIS).full_name
    assert f'grpc_service="{analysis}"' in alerts["KubernautAnalysisFailing"]["expr"]
    assert 'grpc_method="AnalyzeIncident"' in alerts["KubernautAnalysisFailing"]["expr"]


def test_rules_and_dashboard_pass_promtool(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package has it)")
    rule, _, dashboard = _monitoring(rendered["monitoring"])
    groups = rule["spec"]["groups"] + [
        {
            "name": "dashboard",
            "rules": [
                {"record": f"kubernaut:dashboard_{i}", "expr": e.replace("$namespace", "x")}
                for i, e in enumerate(_dashboard_exprs(dashboard))
            ],
        }
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_scrapes_every_components_metrics_port(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["monitoring"]
    _, monitor, dashboard = _monitoring(docs)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Kubernaut"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    services = _of_kind(docs, "Service")
    selected = {
        n for n, s in services.items() if selector.items() <= s["metadata"]["labels"].items()
    }
    assert selected == set(services) == {f"kubernaut-{a}" for a in _accounts()}
    for name, deployment in _of_kind(docs, "Deployment").items():
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
        assert {p["name"]: p["port"] for p in services[name]["spec"]["ports"]}["metrics"] == port
        # Under Istio STRICT the metrics port stays out of the sidecar, so Prometheus
        # (without a sidecar of its own) can scrape it.
        annotations = template["metadata"]["annotations"]
        assert annotations["traffic.sidecar.istio.io/excludeInboundPorts"] == str(port)
    for name in ("defaults", "istio-on"):
        for deployment in _of_kind(rendered[name], "Deployment").values():
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert "traffic.sidecar.istio.io/excludeInboundPorts" not in annotations


# -- NOTES ---------------------------------------------------------------------------------


def test_notes_say_how_to_check_and_give_an_alertmanager_receiver(helm: Helm) -> None:
    for name in ("istio-on", "istio-off-cert-manager"):
        result = helm(
            "install",
            "kubernaut",
            str(CHART),
            "--dry-run=client",
            "--namespace",
            "kubernaut",
            "-f",
            str(helm.values_file(VALUE_SETS[name])),
        )
        notes = result.stdout.split("NOTES:", 1)[1]
        edge = "http://kubernaut-gateway-http.kubernaut.svc:8080"
        assert f"url: {edge}{ALERTMANAGER_PATH}" in notes, notes
        assert f"{edge}{GRAFANA_PATH}" in notes
        assert "webhook_configs:" in notes and "credentials_file:" in notes
        assert "grpc.health.v1.Health/Check" in notes
        assert "kubectl -n kubernaut wait deployment" in notes
        # The receiver snippet is valid YAML an AlertManager config can take.
        snippet = notes.split("(alertmanager.yml):", 1)[1].split("\n\n", 2)[1]
        receiver = yaml.safe_load(snippet)["receivers"][0]
        (webhook,) = receiver["webhook_configs"]
        assert webhook["url"] == f"{edge}{ALERTMANAGER_PATH}"
        assert webhook["http_config"]["authorization"]["type"] == "Bearer"


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
