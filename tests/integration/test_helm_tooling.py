"""The tooling the Helm chart is proven with (issue 18): Helm built from its Go module, and
the CRDs of Istio, prometheus-operator, cert-manager and CloudNativePG taken from theirs
(scripts/build-helm.sh, pinned in tools/helm/), applied to the local control plane by
`kubernaut.devstack.crds`.

Helm builds in the module fixture when it is missing (~5 minutes cold, well under a second
when built); the cluster is the session's (tests/fixtures/cluster.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubernaut.devstack.crds import (
    PINS_FILE,
    ApiServer,
    CrdError,
    build_helm,
    cached_crd_files,
    load_crds,
    read_pins,
)
from kubernaut.devstack.kube import LocalCluster
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.settings import KubeSettings
from tests.fixtures.helm import Helm

# A cold build of Helm runs inside the first test's fixture setup.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

HELM_GO_MOD = PINS_FILE.parent / "go.mod"


def _pinned_helm_version() -> str:
    for line in HELM_GO_MOD.read_text().splitlines():
        fields = line.split()
        if "helm.sh/helm/v4" in fields:
            return fields[fields.index("helm.sh/helm/v4") + 1]
    raise AssertionError(f"{HELM_GO_MOD} pins no helm.sh/helm/v4")


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(build_helm(timeout=1100) / "helm", tmp_path_factory.mktemp("helm-home"))


# -- Helm ----------------------------------------------------------------------------------


def test_helm_version_is_the_pinned_release(helm: Helm) -> None:
    pinned = _pinned_helm_version()
    assert pinned == "v4.3.2"
    assert helm("version", "--template", "{{.Version}}").stdout == pinned
    # The default output too (what a person sees), and the client-go it was built with.
    out = helm("version").stdout
    assert f'Version:"{pinned}"' in out, out
    assert 'KubeClientVersion:"v1.' in out, out


def _write_chart(root: Path, template: str) -> Path:
    chart = root / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: tiny\ndescription: A throwaway chart\n"
        "version: 0.1.0\nappVersion: '1.0'\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\nextra: {}\n")
    (chart / "templates" / "configmap.yaml").write_text(template)
    return chart


CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-greeting
  labels:
    app.kubernetes.io/name: {{ .Chart.Name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
data:
  greeting: {{ .Values.greeting | quote }}
  {{- range $k, $v := .Values.extra }}
  {{ $k }}: {{ $v | quote }}
  {{- end }}
"""


def test_helm_lint_and_template_a_chart(helm: Helm, tmp_path: Path) -> None:
    chart = _write_chart(tmp_path, CONFIGMAP)
    lint = helm("lint", "--strict", str(chart))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout, lint.stdout

    out = helm(
        "template",
        "demo",
        str(chart),
        "--namespace",
        "ns1",
        "--set",
        "greeting=hi there",
        "--set",
        "extra.colour=blue",
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs == [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "demo-greeting",
                "labels": {
                    "app.kubernetes.io/name": "tiny",
                    "app.kubernetes.io/instance": "demo",
                },
            },
            "data": {"greeting": "hi there", "colour": "blue"},
        }
    ]


def test_helm_lint_fails_a_broken_chart(helm: Helm, tmp_path: Path) -> None:
    # An unclosed action: lint must catch it, or its passing above proves nothing.
    chart = _write_chart(tmp_path, CONFIGMAP.replace("{{ .Release.Name }}-greeting", "{{ .Oops"))
    lint = helm("lint", str(chart), check=False)
    assert lint.returncode != 0
    assert "1 chart(s) failed" in lint.stdout + lint.stderr, (lint.stdout, lint.stderr)


# -- CRDs ----------------------------------------------------------------------------------

# The kinds the chart will render, by the project whose CRDs define them.
NEEDED_KINDS = {
    "istio": {"AuthorizationPolicy", "PeerAuthentication"},
    "prometheus-operator": {"ServiceMonitor", "PrometheusRule"},
    "cert-manager": {"Certificate", "Issuer"},
    "cloudnative-pg": {"Cluster"},
}


@pytest.fixture(scope="module")
async def crds(helm: Helm) -> list[dict[str, Any]]:
    """Every cached CRD (build-helm.sh gathered them beside Helm)."""
    return load_crds(cached_crd_files())


@pytest.fixture(scope="module")
async def api_server(kube: LocalCluster) -> AsyncIterator[ApiServer]:
    connection = KubeConnection(KubeSettings(kubeconfig=str(kube.kubeconfig)))
    try:
        yield ApiServer(await connection.api())
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def applied(api_server: ApiServer, crds: list[dict[str, Any]]) -> list[str]:
    """Every cached CRD applied to the session's cluster, each Established."""
    return await api_server.apply_crds(crds, timeout=180)


async def test_cached_crds_are_the_pinned_ones(crds: list[dict[str, Any]]) -> None:
    pins = {source.name: source for source in read_pins()}
    assert set(pins) == set(NEEDED_KINDS)
    assert pins["istio"].module == "istio.io/api" and pins["istio"].version == "v1.32.0"
    files = cached_crd_files()
    for name, source in pins.items():
        of_source = [f for f in files if f.parent.name == source.dir_name]
        kinds = {c["spec"]["names"]["kind"] for c in load_crds(of_source)}
        assert NEEDED_KINDS[name] <= kinds, (name, kinds)
        assert f"MODULE={source.module}\n" in (of_source[0].parent / "source.env").read_text()
    # Istio's one generated file holds all of its CRDs.
    assert sum(c["spec"]["group"].endswith("istio.io") for c in crds) >= 10


async def test_every_cached_crd_is_established(
    api_server: ApiServer, crds: list[dict[str, Any]], applied: list[str]
) -> None:
    assert sorted(applied) == sorted(c["metadata"]["name"] for c in crds)
    for name in applied:
        status, crd = await api_server.call(
            "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        )
        assert status == 200, (name, crd)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", (name, conditions)
    # Applying again is a no-op that still answers (the fixture's apply is repeatable).
    again = await api_server.apply_crds(
        [c for c in crds if c["metadata"]["name"].startswith("peerauthentications.")]
    )
    assert again == ["peerauthentications.security.istio.io"]


@pytest.fixture(scope="module")
async def namespace(api_server: ApiServer, applied: list[str]) -> str:
    name = f"helm-tooling-{uuid.uuid4().hex[:8]}"
    status, answer = await api_server.call(
        "POST", "/api/v1/namespaces", body={"metadata": {"name": name}}
    )
    assert status == 201, answer
    return name


def _obj(api_version: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, "spec": spec}


CUSTOM_RESOURCES = {
    "authorization-policy": _obj(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "storage-allow",
        {
            "selector": {"matchLabels": {"app.kubernetes.io/component": "storage"}},
            "action": "ALLOW",
            "rules": [
                {
                    "from": [
                        {"source": {"principals": ["cluster.local/ns/kubernaut/sa/workflow"]}}
                    ],
                    "to": [{"operation": {"paths": ["/kubernaut.storage.v1.StorageService/*"]}}],
                }
            ],
        },
    ),
    "peer-authentication": _obj(
        "security.istio.io/v1", "PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}}
    ),
    "service-monitor": _obj(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        "kubernaut",
        {
            "selector": {"matchLabels": {"app.kubernetes.io/part-of": "kubernaut"}},
            "endpoints": [{"port": "metrics", "interval": "30s"}],
        },
    ),
    "prometheus-rule": _obj(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        "kubernaut",
        {
            "groups": [
                {
                    "name": "kubernaut",
                    "rules": [
                        {
                            "alert": "KubernautNotificationsUndelivered",
                            "expr": "kubernaut_notification_undelivered > 0",
                            "for": "15m",
                            "labels": {"severity": "warning"},
                        }
                    ],
                }
            ]
        },
    ),
    "issuer": _obj("cert-manager.io/v1", "Issuer", "kubernaut-ca", {"selfSigned": {}}),
    "certificate": _obj(
        "cert-manager.io/v1",
        "Certificate",
        "gateway",
        {
            "secretName": "gateway-tls",
            "dnsNames": ["gateway.kubernaut.svc"],
            "issuerRef": {"name": "kubernaut-ca", "kind": "Issuer"},
        },
    ),
    "cnpg-cluster": _obj(
        "postgresql.cnpg.io/v1",
        "Cluster",
        "kubernaut-db",
        {
            "instances": 1,
            "storage": {"size": "1Gi"},
            "bootstrap": {
                "initdb": {"database": "kubernaut", "postInitSQL": ["CREATE EXTENSION vector"]}
            },
        },
    ),
}


def _holds(actual: Any, sent: Any) -> bool:
    """Whether `actual` carries everything in `sent` (the API server may add defaults to
    any mapping, also inside lists)."""
    if isinstance(sent, dict):
        return isinstance(actual, dict) and all(
            k in actual and _holds(actual[k], v) for k, v in sent.items()
        )
    if isinstance(sent, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(sent)
            and all(_holds(a, b) for a, b in zip(actual, sent, strict=True))
        )
    return bool(actual == sent)


@pytest.mark.parametrize("key", sorted(CUSTOM_RESOURCES))
async def test_a_custom_resource_passes_a_server_side_dry_run(
    api_server: ApiServer, namespace: str, key: str
) -> None:
    obj = CUSTOM_RESOURCES[key]
    result = await api_server.dry_run_apply(obj, namespace)
    assert result["kind"] == obj["kind"]
    assert result["metadata"]["namespace"] == namespace
    # Validated against the schema (defaults added), pruned of nothing we sent, and
    # stored nowhere.
    assert _holds(result["spec"], obj["spec"]), (result["spec"], obj["spec"])
    path = await api_server.path_of(obj, namespace)
    status, _ = await api_server.call("GET", path)
    assert status == 404


# Each breaks a rule of its CRD's schema: the dry-runs above prove something only if
# these are refused.
INVALID = {
    "peer-authentication mode": (
        CUSTOM_RESOURCES["peer-authentication"],
        {"mtls": {"mode": "SOMETIMES"}},
        "SOMETIMES",
    ),
    "service-monitor without selector": (
        CUSTOM_RESOURCES["service-monitor"],
        {"endpoints": [{"port": "metrics"}]},
        "selector",
    ),
    "cnpg-cluster with no instances": (
        CUSTOM_RESOURCES["cnpg-cluster"],
        {"instances": 0, "storage": {"size": "1Gi"}},
        "instances",
    ),
    "certificate without issuer": (
        CUSTOM_RESOURCES["certificate"],
        {"secretName": "x", "dnsNames": ["a.example"]},
        "issuerRef",
    ),
}


@pytest.mark.parametrize("key", sorted(INVALID))
async def test_an_invalid_custom_resource_is_refused(
    api_server: ApiServer, namespace: str, key: str
) -> None:
    base, spec, word = INVALID[key]
    with pytest.raises(CrdError) as refused:
        await api_server.dry_run_apply({**base, "spec": spec}, namespace)
    assert word in str(refused.value), refused.value


async def test_an_unknown_kind_says_so(api_server: ApiServer, applied: list[str]) -> None:
    with pytest.raises(CrdError, match="serves no Telemetry"):
        await api_server.path_of(_obj("monitoring.coreos.com/v1", "Telemetry", "x", {}))


async def test_missing_cache_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(CrdError, match=r"build-helm\.sh --crds-only"):
        await asyncio.to_thread(cached_crd_files, tmp_path)
