"""Failure scenarios on the dev stack: KWOK Stages (kubernaut/devstack/stages.py) make chosen
pods and nodes misbehave, and the real kube-state-metrics, Prometheus (kubernetes-mixin
rules, `for:` shortened to 5 s) and AlertManager turn that into the upstream alerts.

Pods and nodes pick a failure with the `kubernaut.dev/simulate` annotation. Each test
works in a namespace of its own; the node test puts its node back. The last test starts a
small second DevStack of its own and checks that `down()` leaves no process behind.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from kubernetes_asyncio import client, config

from kubernaut.devstack.kube import LocalCluster, default_bin_dir
from kubernaut.devstack.monitoring import KUBE_STATE_METRICS_JOB, fetch_alerts, fetch_rules
from kubernaut.devstack.stack import DevStack, StackInfo
from kubernaut.devstack.stages import (
    CRASHLOOP_RESTART_INTERVAL,
    SIMULATE_ANNOTATION,
    STAGE_WEIGHT,
    NodeSimulation,
    PodSimulation,
    kwok_config,
    simulate,
    simulation_stages,
)
from tests.fixtures import waiting
from tests.fixtures.cluster import deployment_body
from tests.fixtures.devstack import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T = TypeVar("T")
GOOD_IMAGE = "registry.invalid/kubernaut/shop:1.0"
BAD_IMAGE = "registry.invalid/kubernaut/shop:1.1"
# Scrape and evaluation every 5 s, `for: 5s`, AlertManager group_wait 1 s: about 20 s.
ALERT_TIMEOUT = 90.0


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def kube(dev_stack: StackInfo) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=dev_stack.detail("kubernetes", "kubeconfig"),
        client_configuration=configuration,
    )
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def namespace(kube: client.ApiClient) -> AsyncIterator[str]:
    core = client.CoreV1Api(kube)
    name = f"scenario-{uuid.uuid4().hex[:8]}"
    body: Any = {"metadata": {"name": name}}
    await core.create_namespace(body)
    try:
        yield name
    finally:
        await core.delete_namespace(name)


# -- helpers ------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 60.0
) -> T:
    """`tests.fixtures.waiting.eventually`, polling every 0.5 s for 60 s by default."""
    return await waiting.eventually(check, what, timeout, interval=0.5)


def deployment(
    name: str, image: str, replicas: int, annotations: dict[str, str] | None = None
) -> Any:
    return deployment_body(name, image, replicas=replicas, pod_annotations=annotations)


async def pods_of(kube: client.ApiClient, namespace: str, app: str) -> list[Any]:
    """The pods of `app` that are not being deleted."""
    listed = await client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"app={app}"
    )
    return [p for p in listed.items if p.metadata.deletion_timestamp is None]


def is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def waiting_reason(pod: Any) -> str | None:
    statuses = pod.status.container_statuses or []
    if statuses and statuses[0].state.waiting is not None:
        reason: str = statuses[0].state.waiting.reason
        return reason
    return None


async def prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/api/v1/query", params={"query": expr})
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


async def firing(url: str, alertname: str, **labels: str) -> dict[str, str] | None:
    """The labels of a firing `alertname` in Prometheus that include `labels`."""
    for alert in await fetch_alerts(url):
        if (
            alert.name == alertname
            and alert.state == "firing"
            and all(alert.labels.get(k) == v for k, v in labels.items())
        ):
            return alert.labels
    return None


# -- scenarios ------------------------------------------------------------------------------


async def test_bad_rollout_crash_loops_fires_kube_pod_crash_looping_and_undo_heals(
    dev_stack: StackInfo, webhook_receiver: WebhookReceiver, kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    await apps.create_namespaced_deployment(namespace, deployment("shop", GOOD_IMAGE, 2))
    await eventually(
        lambda: _all_ready(kube, namespace, "shop", 2, GOOD_IMAGE), "2 Ready pods of shop:1.0"
    )

    # The bad rollout: a new image, and a template annotation that makes its pods crash.
    bad_template: Any = {
        "spec": {
            "template": {
                "metadata": {"annotations": simulate(PodSimulation.CRASHLOOP)},
                "spec": {"containers": [{"name": "app", "image": BAD_IMAGE}]},
            }
        }
    }
    await apps.patch_namespaced_deployment("shop", namespace, bad_template)

    async def crash_looping() -> list[Any] | None:
        pods = [
            p
            for p in await pods_of(kube, namespace, "shop")
            if p.spec.containers[0].image == BAD_IMAGE
        ]
        ok = pods and all(waiting_reason(p) == "CrashLoopBackOff" for p in pods)
        return pods if ok else None

    pods = await eventually(crash_looping, "the new pods to wait in CrashLoopBackOff")
    pod = pods[0]
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Running"
    assert not is_ready(pod)
    assert not status.ready
    assert status.last_state.terminated.reason == "Error"
    assert status.last_state.terminated.exit_code == 1
    first = status.restart_count
    assert first >= 1
    # The old ReplicaSet's pods keep serving: the rollout is stuck, as on a real cluster.
    assert len(await pods_of(kube, namespace, "shop")) == 3

    async def restarted_again() -> Any:
        again = await client.CoreV1Api(kube).read_namespaced_pod(pod.metadata.name, namespace)
        return again if again.status.container_statuses[0].restart_count > first else None

    # A restart every CRASHLOOP_RESTART_INTERVAL seconds; a busy machine may lag behind.
    again = await eventually(
        restarted_again, "the pod to restart again", 10 * CRASHLOOP_RESTART_INTERVAL
    )
    assert waiting_reason(again) == "CrashLoopBackOff"

    prometheus = dev_stack.url("prometheus")
    name = pod.metadata.name
    labels = await eventually(
        lambda: firing(prometheus, "KubePodCrashLooping", namespace=namespace, pod=name),
        "KubePodCrashLooping firing in Prometheus",
        ALERT_TIMEOUT,
    )
    assert labels["container"] == "app"
    assert labels["severity"] == "warning"
    assert labels["job"] == KUBE_STATE_METRICS_JOB
    assert labels["reason"] == "CrashLoopBackOff"

    alert = await webhook_receiver.wait_for(
        ALERT_TIMEOUT, alertname="KubePodCrashLooping", namespace=namespace, pod=name
    )
    assert alert["status"] == "firing"
    for key in ("namespace", "pod", "container", "severity", "job", "reason", "uid"):
        assert alert["labels"][key] == labels[key], key
    assert "CrashLoopBackOff" in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"].endswith("#alert-name-kubepodcrashlooping")

    # `kubectl rollout undo`: the template of the previous revision's ReplicaSet, whole.
    await rollout_undo(kube, namespace, "shop")
    await eventually(
        lambda: _all_ready(kube, namespace, "shop", 2, GOOD_IMAGE),
        "the undo to bring back 2 Ready pods of shop:1.0 and no others",
    )
    template = (await apps.read_namespaced_deployment("shop", namespace)).spec.template
    assert SIMULATE_ANNOTATION not in (template.metadata.annotations or {})


async def rollout_undo(kube: client.ApiClient, namespace: str, name: str) -> None:
    """Put the previous revision's pod template back, as `kubectl rollout undo` does."""
    apps = client.AppsV1Api(kube)
    owned = [
        rs
        for rs in (
            await apps.list_namespaced_replica_set(namespace, label_selector=f"app={name}")
        ).items
        if any(o.kind == "Deployment" and o.name == name for o in rs.metadata.owner_references)
    ]
    owned.sort(key=lambda rs: int(rs.metadata.annotations["deployment.kubernetes.io/revision"]))
    assert len(owned) >= 2, "no previous revision to go back to"
    template = kube.sanitize_for_serialization(owned[-2].spec.template)
    template["metadata"]["labels"].pop("pod-template-hash", None)
    patch: Any = [{"op": "replace", "path": "/spec/template", "value": template}]
    await apps.patch_namespaced_deployment(name, namespace, patch)


async def _all_ready(
    kube: client.ApiClient, namespace: str, app: str, count: int, image: str
) -> bool:
    listed = await client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"app={app}"
    )
    pods = listed.items  # terminating pods count: they must be gone too
    return len(pods) == count and all(
        is_ready(p) and p.status.phase == "Running" and p.spec.containers[0].image == image
        for p in pods
    )


async def test_oomkilled_pod_shows_oomkilled_in_kube_state_metrics(
    dev_stack: StackInfo, kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    body = deployment("hungry", GOOD_IMAGE, 1, simulate(PodSimulation.OOMKILLED))
    await apps.create_namespaced_deployment(namespace, body)

    async def oom_killed() -> Any:
        pods = await pods_of(kube, namespace, "hungry")
        if not pods or not pods[0].status.container_statuses:
            return None
        terminated = pods[0].status.container_statuses[0].last_state.terminated
        return pods[0] if terminated is not None and terminated.reason == "OOMKilled" else None

    pod = await eventually(oom_killed, "the pod's last state to be OOMKilled")
    status = pod.status.container_statuses[0]
    assert status.last_state.terminated.exit_code == 137
    assert waiting_reason(pod) == "CrashLoopBackOff"
    assert status.restart_count >= 1

    selector = f'namespace="{namespace}",pod="{pod.metadata.name}",container="app"'
    prometheus = dev_stack.url("prometheus")

    async def scraped() -> list[dict[str, Any]]:
        return await prometheus_query(
            prometheus,
            f'kube_pod_container_status_last_terminated_reason{{{selector},reason="OOMKilled"}}'
            " == 1",
        )

    series = await eventually(scraped, "kube-state-metrics' OOMKilled series in Prometheus")
    assert series[0]["metric"]["job"] == KUBE_STATE_METRICS_JOB
    exit_codes = await prometheus_query(
        prometheus, f"kube_pod_container_status_last_terminated_exitcode{{{selector}}}"
    )
    assert [s["value"][1] for s in exit_codes] == ["137"]


async def test_unready_pod_runs_but_is_not_ready_and_heals_when_unannotated(
    dev_stack: StackInfo, kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    body = deployment("slow", GOOD_IMAGE, 1, simulate(PodSimulation.UNREADY))
    await apps.create_namespaced_deployment(namespace, body)

    async def running_unready() -> Any:
        pods = await pods_of(kube, namespace, "slow")
        if len(pods) == 1 and pods[0].status.phase == "Running" and not is_ready(pods[0]):
            return pods[0]
        return None

    pod = await eventually(running_unready, "a Running pod that is not Ready")
    name = pod.metadata.name
    status = pod.status.container_statuses[0]
    assert status.state.running is not None
    assert not status.ready
    assert status.restart_count == 0

    prometheus = dev_stack.url("prometheus")
    selector = f'namespace="{namespace}",pod="{name}"'

    async def not_ready_series() -> list[dict[str, Any]]:
        return await prometheus_query(
            prometheus, f'kube_pod_status_ready{{{selector},condition="false"}} == 1'
        )

    await eventually(not_ready_series, "kube_pod_status_ready{condition=false} == 1")
    # KubePodNotReady only counts Pending and Unknown pods: its expression has nothing for
    # a Running pod, however unready (so it cannot fire for this one).
    rule = next(r for r in await fetch_rules(prometheus) if r.name == "KubePodNotReady")
    assert "Pending|Unknown" in rule.query
    assert not [
        s
        for s in await prometheus_query(prometheus, rule.query)
        if s["metric"].get("namespace") == namespace
    ]
    phase = await prometheus_query(
        prometheus, f'kube_pod_status_phase{{{selector},phase="Running"}} == 1'
    )
    assert phase, "kube_pod_status_phase says the pod is not Running"

    # Removing the annotation heals the pod where it stands.
    patch: Any = {"metadata": {"annotations": {SIMULATE_ANNOTATION: None}}}
    await client.CoreV1Api(kube).patch_namespaced_pod(name, namespace, patch)

    async def healed() -> bool:
        pod = await client.CoreV1Api(kube).read_namespaced_pod(name, namespace)
        return is_ready(pod) and bool(pod.status.container_statuses[0].ready)

    await eventually(healed, "the pod to turn Ready once unannotated", 15)


async def test_pending_pod_stays_pending_and_fires_kube_pod_not_ready(
    dev_stack: StackInfo, webhook_receiver: WebhookReceiver, kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    body = deployment("stuck", GOOD_IMAGE, 1, simulate(PodSimulation.PENDING))
    await apps.create_namespaced_deployment(namespace, body)

    async def scheduled() -> Any:
        pods = await pods_of(kube, namespace, "stuck")
        if len(pods) == 1 and pods[0].spec.node_name:
            return pods[0]
        return None

    pod = await eventually(scheduled, "the pod to be scheduled")
    name = pod.metadata.name
    prometheus = dev_stack.url("prometheus")
    labels = await eventually(
        lambda: firing(prometheus, "KubePodNotReady", namespace=namespace, pod=name),
        "KubePodNotReady firing in Prometheus",
        ALERT_TIMEOUT,
    )
    assert labels["severity"] == "warning"

    pod = await client.CoreV1Api(kube).read_namespaced_pod(name, namespace)
    assert pod.status.phase == "Pending"
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    assert conditions == {"PodScheduled": "True"}
    assert not pod.status.container_statuses
    assert not pod.status.pod_ip

    alert = await webhook_receiver.wait_for(
        ALERT_TIMEOUT, alertname="KubePodNotReady", namespace=namespace, pod=name
    )
    assert alert["status"] == "firing"
    assert alert["labels"]["severity"] == "warning"


async def test_notready_node_fires_kube_node_not_ready(
    dev_stack: StackInfo, webhook_receiver: WebhookReceiver, kube: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube)
    node = dev_stack.detail("kubernetes", "nodes").split(",")[-1]

    async def ready_status() -> str:
        found = await core.read_node(node)
        return next(c.status for c in found.status.conditions if c.type == "Ready")

    assert await ready_status() == "True"
    annotate: Any = {"metadata": {"annotations": simulate(NodeSimulation.NOTREADY)}}
    await core.patch_node(node, annotate)
    try:

        async def not_ready() -> bool:
            return await ready_status() in ("False", "Unknown")

        await eventually(not_ready, f"node {node} to turn NotReady", 15)
        prometheus = dev_stack.url("prometheus")
        labels = await eventually(
            lambda: firing(prometheus, "KubeNodeNotReady", node=node),
            "KubeNodeNotReady firing in Prometheus",
            ALERT_TIMEOUT,
        )
        assert labels["severity"] == "warning"
        assert labels["job"] == KUBE_STATE_METRICS_JOB
        alert = await webhook_receiver.wait_for(
            ALERT_TIMEOUT, alertname="KubeNodeNotReady", node=node
        )
        assert alert["status"] == "firing"
        assert await ready_status() == "False"  # kept so, not flipped back by KWOK
    finally:
        heal: Any = {"metadata": {"annotations": {SIMULATE_ANNOTATION: None}}}
        await core.patch_node(node, heal)

    async def ready_again() -> bool:
        found = await core.read_node(node)
        taints = [t.key for t in found.spec.taints or []]
        return await ready_status() == "True" and "node.kubernetes.io/not-ready" not in taints

    await eventually(ready_again, f"node {node} to be Ready and untainted again", 30)


# -- teardown ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and _alive(int(entry.name)):
            found.append((int(entry.name), cmdline))
    return found


def test_down_leaves_no_process_alive(tmp_path: Path) -> None:
    stack = DevStack(tmp_path, nodes=1, alert_for="5s", k8s_bin_dir=default_bin_dir())
    cluster = LocalCluster(stack.root / "kubernetes", nodes=1, bin_dir=default_bin_dir())
    pids: dict[str, int] = {}
    try:
        info = stack.up(lambda line: None)
        # What stack.json records, and the cluster's processes (its own pid files).
        pids.update({name: c.pid for name, c in info.components.items() if c.pid is not None})
        assert set(pids) >= {"smtp", "oidc", "alertmanager", "prometheus"}, pids
        components = cluster.status().components
        assert all(c.pid is not None for c in components), components
        pids.update({c.name: c.pid for c in components if c.pid is not None})
        assert all(_alive(pid) for pid in pids.values()), pids
    finally:
        stack.down(lambda line: None)

    alive = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not alive, f"still running after down(): {alive}"
    leftover = _processes_mentioning(str(tmp_path))
    assert not leftover, f"processes still use the stack's directory: {leftover}"
    assert cluster.status().stopped


# -- the Stage definitions themselves (no cluster) ------------------------------------------


def test_simulation_stages_outweigh_the_defaults_and_spare_deleted_pods() -> None:
    stages = simulation_stages()
    assert all(s["spec"]["weight"] == STAGE_WEIGHT > 0 for s in stages)
    claims = set()
    for stage in stages:
        spec = stage["spec"]
        selector = spec["selector"]
        expressions = [e["jq"] for e in selector["matchExpressions"]]
        if spec["resourceRef"]["kind"] == "Pod":
            # KWOK's pod-delete must stay the only Stage for a pod being deleted.
            assert {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"} in (
                expressions
            ), stage["metadata"]["name"]
        value = selector.get("matchAnnotations", {}).get(SIMULATE_ANNOTATION)
        state = [e for e in expressions if e["key"] != ".metadata.deletionTimestamp"]
        claim = (spec["resourceRef"]["kind"], value, repr(state))
        assert claim not in claims, f"two Stages select {claim}"
        claims.add(claim)
    selected = {
        s["spec"]["selector"].get("matchAnnotations", {}).get(SIMULATE_ANNOTATION) for s in stages
    }
    assert {v.value for v in (*PodSimulation, *NodeSimulation)} <= selected


def test_kwok_config_refuses_weighted_default_stages() -> None:
    weighted = (
        "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata:\n  name: pod-ready\n"
        "spec:\n  resourceRef:\n    kind: Pod\n  selector: {}\n  weight: 5\n"
    )
    with pytest.raises(ValueError, match="pod-ready"):
        kwok_config(weighted)
    config = kwok_config(weighted.replace("  weight: 5\n", ""))
    documents = [d for d in yaml.safe_load_all(config) if d]
    assert [d["metadata"]["name"] for d in documents] == ["pod-ready"] + [
        s["metadata"]["name"] for s in simulation_stages()
    ]
