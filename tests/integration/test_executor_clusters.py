"""The named clusters (kubernaut.runtime.clusters: the executor's and context_api's) against
two real control planes (`kube` and `second_kube` in tests/fixtures/cluster.py), reached
through ONE kubeconfig with a context for each, as an operator would configure them; each
cluster's own admin access checks where things landed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from kubernaut.devstack.kube import LocalCluster
from kubernaut.runtime.clusters import ClusterConfig, ClusterRegistry
from kubernaut.runtime.settings import KubeSettings
from tests.fixtures.cluster import kube_api

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

DEAD_SERVER = "https://127.0.0.1:9"  # the discard port: nothing listens there


def _only(entries: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(entries) == 1, entries
    return entries[0]


@pytest.fixture(scope="module")
def kubeconfig(
    kube: LocalCluster, second_kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One kubeconfig with contexts "one" and "two" (each cluster's admin), and "dead": a
    server nobody answers on, with cluster one's credentials."""
    clusters, users, contexts = [], [], []
    for name, local in (("one", kube), ("two", second_kube)):
        admin = json.loads(local.kubeconfig.read_text())
        clusters.append({"name": name, "cluster": _only(admin["clusters"])["cluster"]})
        users.append({"name": f"{name}-admin", "user": _only(admin["users"])["user"]})
        contexts.append({"name": name, "context": {"cluster": name, "user": f"{name}-admin"}})
    clusters.append({"name": "dead", "cluster": {**clusters[0]["cluster"], "server": DEAD_SERVER}})
    contexts.append({"name": "dead", "context": {"cluster": "dead", "user": "one-admin"}})
    merged = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
        "current-context": "one",
    }
    path: Path = tmp_path_factory.mktemp("clusters") / "kubeconfig"
    path.write_text(json.dumps(merged, indent=2))
    path.chmod(0o600)
    return path


def _settings(kubeconfig: Path, *contexts: str) -> KubeSettings:
    return KubeSettings(
        clusters={c: ClusterConfig(kubeconfig=str(kubeconfig), context=c) for c in contexts},
        default_cluster="one",
    )


@pytest.fixture
async def registry(kubeconfig: Path) -> AsyncIterator[ClusterRegistry]:
    registry = ClusterRegistry(_settings(kubeconfig, "one", "two"))
    try:
        yield registry
    finally:
        await registry.close()


async def _namespace_exists(cluster: LocalCluster, name: str) -> bool:
    """Asked with the cluster's own admin access, not through the registry."""
    status, answer = await asyncio.to_thread(cluster.api, "GET", f"/api/v1/namespaces/{name}")
    assert status in (200, 404), (status, answer)
    return status == 200


async def test_each_named_cluster_is_its_own_api_server(
    registry: ClusterRegistry, kube: LocalCluster, second_kube: LocalCluster
) -> None:
    assert registry.names == ("one", "two")
    assert registry.resolve("") == "one"
    assert registry.configured
    in_two = f"clusters-two-{uuid.uuid4().hex[:8]}"
    in_one = f"clusters-one-{uuid.uuid4().hex[:8]}"

    two = client.CoreV1Api(await registry.connection("two").api())
    await two.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=in_two)))
    default = client.CoreV1Api(await registry.connection("").api())
    await default.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=in_one)))

    try:
        assert await _namespace_exists(second_kube, in_two)
        assert not await _namespace_exists(kube, in_two)
        assert await _namespace_exists(kube, in_one)
        assert not await _namespace_exists(second_kube, in_one)
    finally:
        await kube_api(second_kube, "DELETE", f"/api/v1/namespaces/{in_two}")
        await kube_api(kube, "DELETE", f"/api/v1/namespaces/{in_one}")


async def test_ready_while_every_cluster_answers(registry: ClusterRegistry) -> None:
    assert await registry.ready()


async def test_a_cluster_that_does_not_answer_makes_the_registry_not_ready(
    kubeconfig: Path,
) -> None:
    registry = ClusterRegistry(_settings(kubeconfig, "one", "two", "dead"))
    try:
        assert registry.connection("dead").configured  # configured, yet nobody answers
        assert await registry.connection("one").ready()
        assert await registry.connection("two").ready()
        assert not await registry.connection("dead").ready()

        assert not await registry.ready()
    finally:
        await registry.close()
