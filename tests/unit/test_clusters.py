"""The shared named clusters (kubernaut.runtime.clusters), without a cluster: how the
registry names and configures its clusters from KUBERNAUT_KUBE_*, which one an empty name
means, and what it refuses. tests/integration/test_executor_clusters.py and
tests/integration/test_cluster_evidence.py connect to two real ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubernaut.cli.settings_reference import check_environment
from kubernaut.runtime.clusters import ClusterConfig, ClusterRegistry, UnknownCluster
from kubernaut.runtime.kube import ClusterNotConfigured
from kubernaut.runtime.settings import KubeSettings


@pytest.fixture
def kube_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No cluster settings from the environment the tests run in."""
    for variable in (
        "KUBERNAUT_KUBE_CLUSTERS",
        "KUBERNAUT_KUBE_DEFAULT_CLUSTER",
        "KUBERNAUT_KUBE_KUBECONFIG",
        "KUBERNAUT_KUBE_CONTEXT",
        "KUBERNAUT_KUBE_IN_CLUSTER",
    ):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_no_clusters_configured_is_one_default_cluster_from_kube_settings(
    kube_env: pytest.MonkeyPatch,
) -> None:
    kube_env.setenv("KUBERNAUT_KUBE_KUBECONFIG", "/etc/kubernaut/kubeconfig")
    kube_env.setenv("KUBERNAUT_KUBE_CONTEXT", "admin@prod")

    registry = ClusterRegistry(KubeSettings())

    assert registry.names == ("default",)
    assert registry.default == "default"
    assert registry.resolve("") == "default"
    assert registry.resolve("default") == "default"
    settings = registry.connection("").settings
    assert (settings.kubeconfig, settings.context, settings.in_cluster) == (
        "/etc/kubernaut/kubeconfig",
        "admin@prod",
        False,
    )
    assert registry.connection("") is registry.connection("default")
    assert registry.configured


def test_the_single_cluster_takes_the_configured_default_name(
    kube_env: pytest.MonkeyPatch,
) -> None:
    kube_env.setenv("KUBERNAUT_KUBE_DEFAULT_CLUSTER", "local")

    registry = ClusterRegistry(KubeSettings())

    assert registry.names == ("local",)
    assert registry.resolve("") == "local"
    with pytest.raises(UnknownCluster):
        registry.resolve("default")


def test_named_clusters_from_json_each_with_its_context(kube_env: pytest.MonkeyPatch) -> None:
    kube_env.setenv(
        "KUBERNAUT_KUBE_CLUSTERS",
        json.dumps(
            {
                "prod": {"context": "prod-admin"},
                "stage": {"kubeconfig": "/etc/kubernaut/stage.kubeconfig", "context": "stage"},
                "local": {"in_cluster": True},
            }
        ),
    )
    kube_env.setenv("KUBERNAUT_KUBE_DEFAULT_CLUSTER", "prod")
    kube_env.setenv("KUBERNAUT_KUBE_KUBECONFIG", "/etc/kubernaut/kubeconfig")
    kube_env.setenv("KUBERNAUT_KUBE_REQUEST_TIMEOUT_SECONDS", "3")

    registry = ClusterRegistry(KubeSettings())

    assert registry.names == ("local", "prod", "stage")
    assert registry.default == "prod"
    assert registry.resolve("") == "prod"
    assert registry.resolve("stage") == "stage"
    prod = registry.connection("prod").settings
    stage = registry.connection("stage").settings
    local = registry.connection("local").settings
    # An empty kubeconfig is the service's own; the context is the cluster's.
    assert (prod.kubeconfig, prod.context, prod.in_cluster) == (
        "/etc/kubernaut/kubeconfig",
        "prod-admin",
        False,
    )
    assert (stage.kubeconfig, stage.context) == ("/etc/kubernaut/stage.kubeconfig", "stage")
    assert local.in_cluster
    assert {s.request_timeout_seconds for s in (prod, stage, local)} == {3.0}
    assert registry.connection("prod") is registry.connection("")
    assert len({id(registry.connection(name)) for name in registry.names}) == 3


def test_the_cluster_settings_are_known_settings_and_unknown_fields_are_refused(
    kube_env: pytest.MonkeyPatch,
) -> None:
    environment = {
        "KUBERNAUT_KUBE_CLUSTERS": "{}",
        "KUBERNAUT_KUBE_DEFAULT_CLUSTER": "prod",
    }
    check_environment(environment)  # no UnknownSettings
    kube_env.setenv("KUBERNAUT_KUBE_CLUSTERS", json.dumps({"prod": {"contxt": "prod"}}))
    with pytest.raises(ValidationError, match="contxt"):
        KubeSettings()


def test_one_named_cluster_is_the_default_whatever_default_cluster_says(
    kube_env: pytest.MonkeyPatch,
) -> None:
    registry = ClusterRegistry(KubeSettings(clusters={"prod": ClusterConfig(context="prod")}))

    assert registry.default == "prod"
    assert registry.resolve("") == "prod"


def test_a_default_that_is_not_a_configured_cluster_is_refused(
    kube_env: pytest.MonkeyPatch,
) -> None:
    settings = KubeSettings(
        clusters={"prod": ClusterConfig(context="prod"), "stage": ClusterConfig(context="s")},
        default_cluster="production",
    )

    with pytest.raises(ValueError) as refused:
        ClusterRegistry(settings)

    message = str(refused.value)
    assert "'production'" in message
    assert "KUBERNAUT_KUBE_DEFAULT_CLUSTER" in message
    assert "(prod, stage)" in message


@pytest.mark.parametrize(
    "settings",
    [{"clusters": {"": ClusterConfig(context="prod")}}, {"default_cluster": ""}],
    ids=["named", "default"],
)
def test_an_empty_cluster_name_is_refused(
    kube_env: pytest.MonkeyPatch, settings: dict[str, Any]
) -> None:
    # An empty ResourceRef.cluster means the default cluster: no cluster can be called that.
    with pytest.raises(ValueError, match="a cluster name must not be empty"):
        ClusterRegistry(KubeSettings(**settings))


def test_an_unknown_cluster_is_never_the_default_and_names_the_known_ones(
    kube_env: pytest.MonkeyPatch,
) -> None:
    settings = KubeSettings(
        clusters={"prod": ClusterConfig(context="prod"), "stage": ClusterConfig(context="s")},
        default_cluster="prod",
    )
    registry = ClusterRegistry(settings)

    with pytest.raises(UnknownCluster) as unknown:
        registry.connection("staging")

    assert str(unknown.value) == (
        "unknown cluster 'staging'; the configured clusters are prod, stage"
        " (KUBERNAUT_KUBE_CLUSTERS)"
    )
    assert (unknown.value.cluster, unknown.value.known) == ("staging", ("prod", "stage"))
    with pytest.raises(LookupError):
        registry.resolve("staging")
    # Names are exact: no case folding onto a configured one.
    with pytest.raises(UnknownCluster):
        registry.resolve("Prod")


async def test_an_in_cluster_cluster_ignores_kubeconfig_outside_a_pod(
    kube_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    kube_env.setenv("KUBECONFIG", str(kubeconfig))
    kube_env.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = KubeSettings(
        clusters={"local": ClusterConfig(in_cluster=True), "prod": ClusterConfig()},
        default_cluster="local",
    )
    registry = ClusterRegistry(settings)

    assert not registry.configured  # not in a pod: the kubeconfig does not stand in
    assert registry.connection("prod").configured
    with pytest.raises(ClusterNotConfigured, match="not run in a pod"):
        await registry.connection("local").api()
    # In a pod (as read when the service starts), the in-cluster cluster is configured.
    kube_env.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert not registry.configured  # read once, at start
    assert ClusterRegistry(settings).configured


async def test_not_ready_while_a_configured_cluster_does_not_answer(
    kube_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A kubeconfig whose server nobody listens on (the discard port).
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "dead", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "nobody"}}],
                "current-context": "dead",
            }
        )
    )
    registry = ClusterRegistry(KubeSettings(kubeconfig=str(kubeconfig)))
    try:
        assert registry.configured
        assert not await registry.ready()
    finally:
        await registry.close()
