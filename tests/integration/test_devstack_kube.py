"""A real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler),
KWOK fake nodes and kube-state-metrics, from `kubernaut.devstack.kube`.

The session fixture builds the binaries when they are missing (scripts/build-k8s.sh: seconds
when built, several minutes cold, hence the long timeout below) and starts one cluster for
the session, under the session's temporary directory, stopped at the end.
`KUBERNAUT_KUBE_STATE_DIR=DIR` runs it in DIR instead and leaves it running, so the next
session reuses it and starts in about a second.

Each test works in a namespace of its own.
"""

from __future__ import annotations

import os
import signal
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import kubernetes  # type: ignore[import-untyped]
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubernaut.devstack.kube import (
    COMPONENTS,
    ClusterInfo,
    KubeClusterError,
    LocalCluster,
    build_binaries,
)
from tests.fixtures.cluster import deployment_body
from tests.fixtures.waiting import eventually_sync

# A cold build of the binaries runs inside the first test's fixture setup.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

STATE_DIR_ENV = "KUBERNAUT_KUBE_STATE_DIR"
NODES = 3
REVISION = "deployment.kubernetes.io/revision"
T = TypeVar("T")


# -- fixtures (to move to tests/fixtures/) --------------------------------------------------


@pytest.fixture(scope="session")
def kube_local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A started LocalCluster; stopped at the end unless KUBERNAUT_KUBE_STATE_DIR is set."""
    bin_dir = build_binaries(timeout=1500)
    explicit = os.environ.get(STATE_DIR_ENV)
    state_dir = Path(explicit) if explicit else tmp_path_factory.mktemp("kube")
    cluster = LocalCluster(state_dir, nodes=NODES, bin_dir=bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        if not explicit:
            cluster.stop()
            leftover = [c.name for c in cluster.status().components if c.running]
            assert not leftover, f"still running after stop(): {leftover}"


@pytest.fixture(scope="session")
def kube_cluster(kube_local_cluster: LocalCluster) -> ClusterInfo:
    return kube_local_cluster.info


@pytest.fixture(scope="session")
def kube_api(kube_cluster: ClusterInfo) -> Iterator[Any]:
    """A `kubernetes.client.ApiClient` with the admin kubeconfig."""
    client = kubernetes.config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(kube_api: Any) -> Iterator[str]:
    core = kubernetes.client.CoreV1Api(kube_api)
    name = f"test-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


# -- helpers ------------------------------------------------------------------------------


def eventually(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """`tests.fixtures.waiting.eventually_sync`, for 60 s by default."""
    return eventually_sync(check, what, timeout)


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return deployment_body(
        name,
        "registry.invalid/kubernaut/demo-app:1.0",
        replicas=replicas,
        container={"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
    )


def live_pods(core: Any, namespace: str, app: str) -> list[Any]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def is_running_and_ready(pod: Any) -> bool:
    if pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def wait_for_ready_pods(core: Any, namespace: str, app: str, count: int) -> list[Any]:
    def check() -> list[Any] | None:
        pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
        if len(pods) != count:  # terminating pods included: they must be gone too
            return None
        return pods if all(is_running_and_ready(p) for p in pods) else None

    return eventually(check, f"{count} Running and Ready pods of {namespace}/{app}")


def ready_series(metrics_url: str, namespace: str) -> dict[str, dict[str, float]]:
    """kube_pod_status_ready samples in `namespace`: {pod: {condition: value}}."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=10).raise_for_status().text
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "kube_pod_status_ready":
            continue
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace:
                pod = sample.labels["pod"]
                found.setdefault(pod, {})[sample.labels["condition"]] = sample.value
    return found


# -- tests --------------------------------------------------------------------------------


def test_control_plane_is_real_and_nodes_are_ready(
    kube_cluster: ClusterInfo, kube_api: Any
) -> None:
    version = kubernetes.client.VersionApi(kube_api).get_code()
    assert version.git_version == kube_cluster.versions["KUBERNETES_VERSION"]
    assert version.git_version.startswith("v1.")

    core = kubernetes.client.CoreV1Api(kube_api)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert set(kube_cluster.nodes) <= set(nodes)
    assert len(kube_cluster.nodes) == NODES
    for name in kube_cluster.nodes:
        ready = [c for c in nodes[name].status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", f"node {name} is not Ready"

    assert set(kube_cluster.pids) == set(COMPONENTS)
    assert kube_cluster.apiserver_url.startswith("https://127.0.0.1:")
    assert kube_cluster.kube_state_metrics_url.startswith("http://127.0.0.1:")


def test_apiserver_rejects_unauthenticated_writes(kube_cluster: ClusterInfo) -> None:
    context = ssl.create_default_context(cafile=str(kube_cluster.ca_file))
    with httpx.Client(verify=context, timeout=10) as anonymous:
        response = anonymous.get(f"{kube_cluster.apiserver_url}/api/v1/namespaces")
    assert response.status_code in (401, 403)


def test_deployment_gets_replicaset_and_ready_pods_on_kwok_nodes(
    kube_cluster: ClusterInfo, kube_api: Any, namespace: str
) -> None:
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, deployment("web", 3))

    replica_sets = eventually(
        lambda: apps.list_namespaced_replica_set(namespace, label_selector="app=web").items,
        "the Deployment's ReplicaSet",
    )
    assert len(replica_sets) == 1
    owner = replica_sets[0].metadata.owner_references[0]
    assert (owner.kind, owner.name) == ("Deployment", "web")

    pods = wait_for_ready_pods(core, namespace, "web", 3)
    for pod in pods:
        assert pod.spec.node_name in kube_cluster.nodes
        assert pod.metadata.owner_references[0].name == replica_sets[0].metadata.name
        assert pod.status.pod_ip, f"{pod.metadata.name} has no pod IP"
        assert all(cs.ready for cs in pod.status.container_statuses)

    def available() -> Any:
        status = apps.read_namespaced_deployment(name="web", namespace=namespace).status
        return status if status.ready_replicas == 3 and status.available_replicas == 3 else None

    status = eventually(available, "the Deployment to report 3 available replicas")
    assert status.replicas == 3


def test_scaling_changes_the_pod_count(kube_api: Any, namespace: str) -> None:
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, deployment("api", 2))
    wait_for_ready_pods(core, namespace, "api", 2)

    apps.patch_namespaced_deployment_scale("api", namespace, {"spec": {"replicas": 5}})
    assert len(wait_for_ready_pods(core, namespace, "api", 5)) == 5

    apps.patch_namespaced_deployment_scale("api", namespace, {"spec": {"replicas": 1}})
    pods = wait_for_ready_pods(core, namespace, "api", 1)
    assert len(live_pods(core, namespace, "api")) == 1
    assert pods[0].metadata.deletion_timestamp is None


def rollout_complete(apps: Any, namespace: str, name: str) -> Any:
    """The Deployment once its controller saw the latest spec and every replica is updated,
    ready and available, with no old pods left (`kubectl rollout status`)."""

    def check() -> Any:
        d = apps.read_namespaced_deployment(name=name, namespace=namespace)
        s, want = d.status, d.spec.replicas
        done = (s.observed_generation or 0) >= d.metadata.generation and (
            s.replicas == s.updated_replicas == s.ready_replicas == s.available_replicas == want
        )
        return d if done else None

    return eventually(check, f"the rollout of {namespace}/{name} to complete")


def owned_replica_sets(apps: Any, namespace: str, name: str) -> list[Any]:
    """The Deployment's ReplicaSets, oldest revision first."""
    found = [
        rs
        for rs in apps.list_namespaced_replica_set(namespace, label_selector=f"app={name}").items
        if any(o.kind == "Deployment" and o.name == name for o in rs.metadata.owner_references)
    ]
    return sorted(found, key=lambda rs: int(rs.metadata.annotations[REVISION]))


def test_rollout_to_a_new_image_then_undo(kube_api: Any, namespace: str) -> None:
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, deployment("shop", 2))
    rollout_complete(apps, namespace, "shop")
    old_image = "registry.invalid/kubernaut/demo-app:1.0"
    new_image = "registry.invalid/kubernaut/demo-app:2.0"

    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": new_image}]}}}}
    apps.patch_namespaced_deployment("shop", namespace, patch)
    rolled = rollout_complete(apps, namespace, "shop")
    assert rolled.metadata.annotations[REVISION] == "2"
    first, second = owned_replica_sets(apps, namespace, "shop")
    assert first.spec.template.spec.containers[0].image == old_image
    assert second.spec.template.spec.containers[0].image == new_image
    pods = wait_for_ready_pods(core, namespace, "shop", 2)
    assert {p.spec.containers[0].image for p in pods} == {new_image}

    # `kubectl rollout undo`: the previous ReplicaSet's template, without its hash label,
    # replaces the Deployment's; the controller scales that ReplicaSet back up.
    template = kube_api.sanitize_for_serialization(first.spec.template)
    template["metadata"]["labels"].pop("pod-template-hash")
    apps.patch_namespaced_deployment(
        "shop", namespace, [{"op": "replace", "path": "/spec/template", "value": template}]
    )
    undone = rollout_complete(apps, namespace, "shop")
    assert undone.spec.template.spec.containers[0].image == old_image
    assert undone.metadata.annotations[REVISION] == "3"
    replica_sets = owned_replica_sets(apps, namespace, "shop")
    # No third ReplicaSet: the first one is reused and becomes revision 3.
    assert [rs.metadata.name for rs in replica_sets] == [
        second.metadata.name,
        first.metadata.name,
    ]
    assert [rs.spec.replicas for rs in replica_sets] == [0, 2]
    pods = wait_for_ready_pods(core, namespace, "shop", 2)
    assert {p.spec.containers[0].image for p in pods} == {old_image}
    assert {p.metadata.owner_references[0].name for p in pods} == {first.metadata.name}


def test_server_side_dry_run_patch_changes_nothing(kube_api: Any, namespace: str) -> None:
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, deployment("cart", 2))
    before = rollout_complete(apps, namespace, "cart")
    pods_before = {p.metadata.name for p in wait_for_ready_pods(core, namespace, "cart", 2)}
    image = "registry.invalid/kubernaut/demo-app:9.9"

    patch = {
        "spec": {
            "replicas": 5,
            "template": {"spec": {"containers": [{"name": "app", "image": image}]}},
        }
    }
    answer = apps.patch_namespaced_deployment("cart", namespace, patch, dry_run="All")
    # The answer is what the object would be (admission and defaulting ran) ...
    assert answer.spec.replicas == 5
    assert answer.spec.template.spec.containers[0].image == image
    assert answer.metadata.generation == before.metadata.generation + 1

    # ... but nothing was stored, so no controller can react. No pause to see whether one
    # does: the API server stores before it answers, and controllers act only on stored
    # changes; an unchanged resourceVersion now means none will ever come of this patch.
    after = apps.read_namespaced_deployment(name="cart", namespace=namespace)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.metadata.generation == before.metadata.generation
    assert after.spec.replicas == 2
    assert (
        after.spec.template.spec.containers[0].image
        == before.spec.template.spec.containers[0].image
    )
    assert len(owned_replica_sets(apps, namespace, "cart")) == 1
    assert {p.metadata.name for p in live_pods(core, namespace, "cart")} == pods_before

    with pytest.raises(kubernetes.client.ApiException) as invalid:
        apps.patch_namespaced_deployment(
            "cart", namespace, {"spec": {"replicas": -1}}, dry_run="All"
        )
    assert invalid.value.status == 422


def test_kube_state_metrics_reports_pod_readiness(
    kube_cluster: ClusterInfo, kube_api: Any, namespace: str
) -> None:
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, deployment("worker", 2))
    pods = {p.metadata.name for p in wait_for_ready_pods(core, namespace, "worker", 2)}

    def all_ready() -> dict[str, dict[str, float]] | None:
        series = ready_series(kube_cluster.kube_state_metrics_url, namespace)
        ok = set(series) == pods and all(series[p].get("true") == 1.0 for p in pods)
        return series if ok else None

    series = eventually(all_ready, f"kube_pod_status_ready=1 for {sorted(pods)}")
    for pod in pods:
        assert series[pod]["false"] == 0.0


def test_service_account_tokens_authenticate(
    kube_cluster: ClusterInfo, kube_api: Any, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(kube_api)
    eventually(
        lambda: (
            core.list_namespaced_service_account(
                namespace, field_selector="metadata.name=default"
            ).items
        ),
        "the namespace's default ServiceAccount (token controller)",
    )
    request = core.create_namespaced_service_account_token(
        "default", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}}
    )
    token = request.status.token
    context = ssl.create_default_context(cafile=str(kube_cluster.ca_file))
    with httpx.Client(verify=context, timeout=10) as client:
        response = client.post(
            f"{kube_cluster.apiserver_url}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            headers={"Authorization": f"Bearer {token}"},
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    assert response.status_code == 201, response.text
    username = response.json()["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{namespace}:default"


def test_start_restarts_only_a_dead_component(kube_local_cluster: LocalCluster) -> None:
    before = kube_local_cluster.info.pids
    os.kill(before["kube-scheduler"], signal.SIGKILL)
    again = LocalCluster(
        kube_local_cluster.state_dir, nodes=NODES, bin_dir=kube_local_cluster.bin_dir
    )
    eventually(lambda: not again.status().components[3].running, "the scheduler to die", 10)
    info = again.start()
    assert not info.reused
    assert info.pids["kube-scheduler"] != before["kube-scheduler"]
    assert {k: v for k, v in info.pids.items() if k != "kube-scheduler"} == {
        k: v for k, v in before.items() if k != "kube-scheduler"
    }
    kube_local_cluster.start()  # its info picks up the new pid


def test_second_start_reuses_the_running_cluster(kube_local_cluster: LocalCluster) -> None:
    again = LocalCluster(
        kube_local_cluster.state_dir, nodes=NODES, bin_dir=kube_local_cluster.bin_dir
    )
    t0 = time.monotonic()
    info = again.start()
    elapsed = time.monotonic() - t0
    assert info.reused
    assert info.pids == kube_local_cluster.info.pids
    assert elapsed < 15, f"warm start took {elapsed:.1f}s"
    status = again.status()
    assert status.running
    assert set(status.nodes_ready) == set(info.nodes)


def test_missing_binaries_name_the_build_script(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "state", bin_dir=tmp_path / "no-bin")
    with pytest.raises(KubeClusterError, match=r"build-k8s\.sh"):
        cluster.start()
