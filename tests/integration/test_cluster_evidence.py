"""Every cluster's evidence comes from that cluster. Two real control planes (`kube` as
cluster "a", `second_kube` as "b", tests/fixtures/cluster.py) run the same Deployment
(namespace and name): 3 healthy replicas on a, 2 on b whose rollout crash-loops
(kubernaut/devstack/scenario.py's BadRollout). context_api, with its own read-only
identity on each cluster, describes and tails each cluster's own pods and caches them
apart; an unknown cluster is refused, never read as the default one. Then an alert from
b goes through the whole loop (gateway, alert_processor, context_api, ai_analysis,
workflow, executor, effectiveness, storage; in-process, sharing KUBERNAUT_KUBE_CLUSTERS):
the rollback lands on b only, and its assessment reads b."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.gateway.v1 import gateway_pb2
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.scenario import BAD_IMAGE, GOOD_IMAGE, BadRollout
from kubernaut.devstack.smtp import MailSink
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.kube import ACTION_ID_ANNOTATION
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import EDGE_ACCOUNT, ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.cluster import (
    context_api_identity,
    contexts_kubeconfig,
    eventually,
    kube_api,
    running_context_api,
)
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.kubernaut import stack_env, start_stack
from tests.fixtures.postgres import fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Both services get the same names; each reaches them with its own kubeconfig.
CLUSTERS = json.dumps({"a": {"context": "a"}, "b": {"context": "b"}})
CRASH_LOOP = "CrashLoopBackOff"
STAMP = "2026-12-07T01:00:00.000000000Z"


@dataclass
class Twins:
    """The same Deployment `checkout` in `namespace` on both clusters, broken on b only."""

    namespace: str
    a: BadRollout
    b: BadRollout


@pytest.fixture
async def twins(kube: LocalCluster, second_kube: LocalCluster) -> AsyncIterator[Twins]:
    namespace = f"twins-{uuid.uuid4().hex[:8]}"
    # Different sizes, so that whose pods a description counts shows which cluster it read.
    twins = Twins(
        namespace,
        BadRollout(kube.kubeconfig, namespace, replicas=3),
        BadRollout(second_kube.kubeconfig, namespace, replicas=2),
    )
    try:
        await asyncio.gather(twins.a.deploy(), twins.b.deploy())
        await twins.b.break_it()
        yield twins
    finally:
        await twins.a.close()
        await twins.b.close()
        for cluster in (kube, second_kube):
            await asyncio.to_thread(cluster.api, "DELETE", f"/api/v1/namespaces/{namespace}")


async def pods_of(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    """The app's pods as the cluster's own admin sees them."""
    found = await kube_api(
        cluster, "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Dcheckout"
    )
    pods: list[dict[str, Any]] = found["items"]
    return pods


def crash_looping(pod: dict[str, Any]) -> bool:
    return any(
        (status.get("state") or {}).get("waiting", {}).get("reason") == CRASH_LOOP
        for status in pod["status"].get("containerStatuses") or []
    )


async def crash_looping_pod(cluster: LocalCluster, namespace: str) -> str:
    """The name of a crash-looping pod of the app, once one is."""

    async def found() -> str | None:
        looping = [p for p in await pods_of(cluster, namespace) if crash_looping(p)]
        return str(looping[0]["metadata"]["name"]) if looping else None

    return await eventually(found, "a crash-looping pod", timeout=90)


def checkout(cluster: str, namespace: str) -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(
        cluster=cluster, namespace=namespace, kind="Deployment", name="checkout"
    )


# -- context_api ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def two_cluster_context_api(
    kube: LocalCluster,
    second_kube: LocalCluster,
    runtime_settings: RuntimeSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ContextAPIServiceStub]:
    """A context_api server with clusters a and b (default a), each reached as a
    ServiceAccount bound to exactly context_api's rules on that cluster, answers cached for
    10 minutes; called as ai_analysis."""
    directory = tmp_path_factory.mktemp("two-cluster-context-api")
    (directory / "a").mkdir()
    (directory / "b").mkdir()
    async with (
        context_api_identity(kube, directory / "a") as identity_a,
        context_api_identity(second_kube, directory / "b") as identity_b,
    ):
        kubeconfig = contexts_kubeconfig(
            directory / "kubeconfig", {"a": identity_a, "b": identity_b}
        )
        async with running_context_api(
            runtime_settings,
            kubeconfig,
            KUBERNAUT_KUBE_CLUSTERS=CLUSTERS,
            KUBERNAUT_KUBE_DEFAULT_CLUSTER="a",
            KUBERNAUT_CONTEXT_CACHE_SECONDS="600",
        ) as running:
            clients = Clients(
                runtime_settings,
                ServiceName.AI_ANALYSIS.account,
                addresses={ServiceName.CONTEXT_API: running.address},
            )
            try:
                # Ready: every configured cluster answers.
                assert [name for name, _ in running.spec.readiness] == ["kubernetes"]
                statuses = await wait_serving(clients, [ServiceName.CONTEXT_API], timeout=30)
                assert statuses == {ServiceName.CONTEXT_API: "SERVING"}, statuses
                yield clients.stub(ContextAPIServiceStub)
            finally:
                await clients.close()


async def describe(
    context_api: ContextAPIServiceStub, ref: alert_pb2.ResourceRef
) -> context_api_pb2.ResourceContext:
    found = await context_api.GetResourceContext(
        context_api_pb2.GetResourceContextRequest(resource=ref)
    )
    context: context_api_pb2.ResourceContext = found.context
    return context


async def test_each_clusters_context_describes_its_own_pods_and_is_cached_apart(
    kube: LocalCluster,
    second_kube: LocalCluster,
    twins: Twins,
    two_cluster_context_api: ContextAPIServiceStub,
) -> None:
    namespace = twins.namespace
    # Read nothing before b crash-loops: the answers are then cached for 10 minutes.
    await crash_looping_pod(second_kube, namespace)
    in_b = await describe(two_cluster_context_api, checkout("b", namespace))
    # Asked right after, for the same namespace/kind/name: b's answer is cached, a's is not
    # it.
    in_a = await describe(two_cluster_context_api, checkout("a", namespace))
    a_pods = {p["metadata"]["name"] for p in await pods_of(kube, namespace)}
    b_pods = {p["metadata"]["name"] for p in await pods_of(second_kube, namespace)}
    assert a_pods.isdisjoint(b_pods)

    # b: its own pods, its crash loop, its bad revision.
    assert {p.name for p in in_b.pods} == b_pods
    assert any(p.waiting_reason == CRASH_LOOP for p in in_b.pods), in_b.pods
    assert in_b.rollout.desired_replicas == 2
    revisions = {r.number: list(r.images) for r in in_b.rollout.revisions}
    assert revisions == {1: [GOOD_IMAGE], 2: [BAD_IMAGE]}
    assert (in_b.resource.cluster, in_b.workload.cluster) == ("b", "b")
    # a: its own pods, every one Ready, its one revision.
    assert {p.name for p in in_a.pods} == a_pods
    assert all(p.ready and not p.waiting_reason for p in in_a.pods), in_a.pods
    assert in_a.rollout.desired_replicas == 3
    assert [list(r.images) for r in in_a.rollout.revisions] == [[GOOD_IMAGE]]
    assert (in_a.resource.cluster, in_a.workload.cluster) == ("a", "a")

    # Both answers are cached (the same observation comes back), each for its own cluster.
    assert await describe(two_cluster_context_api, checkout("b", namespace)) == in_b
    assert await describe(two_cluster_context_api, checkout("a", namespace)) == in_a
    # No cluster named: the default one, a.
    by_default = await describe(two_cluster_context_api, checkout("", namespace))
    assert {p.name for p in by_default.pods} == a_pods
    assert by_default.rollout.desired_replicas == 3


async def serve_log(cluster: LocalCluster, namespace: str, pod: str, log: Path) -> None:
    """KWOK serves `log` as the log of the pod's container `app`."""
    await kube_api(
        cluster,
        "POST",
        f"/apis/kwok.x-k8s.io/v1alpha1/namespaces/{namespace}/logs",
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"logs": [{"containers": ["app"], "logsFile": str(log)}]},
        },
    )


async def test_each_clusters_logs_are_its_own_pods_logs(
    kube: LocalCluster,
    second_kube: LocalCluster,
    twins: Twins,
    two_cluster_context_api: ContextAPIServiceStub,
    tmp_path: Path,
) -> None:
    namespace = twins.namespace
    chosen: dict[str, str] = {}
    for name, local in {"a": kube, "b": second_kube}.items():
        chosen[name] = str((await pods_of(local, namespace))[0]["metadata"]["name"])
        log = tmp_path / f"{name}.log"
        log.write_text(f"{STAMP} stdout F written in cluster {name}\n")
        await serve_log(local, namespace, chosen[name], log)

    async def tail(cluster: str) -> context_api_pb2.PodLogs | None:
        request = context_api_pb2.GetPodLogsRequest(
            scope=checkout(cluster, namespace), pod=chosen[cluster]
        )
        try:
            answer = await two_cluster_context_api.GetPodLogs(request)
        except grpc.aio.AioRpcError as error:
            # KWOK picks up the Logs object through its watch: the first reads find none.
            if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise
        logs: context_api_pb2.PodLogs = answer.logs
        return logs

    for cluster in ("a", "b"):
        logs = await eventually(
            functools.partial(tail, cluster), f"cluster {cluster}'s log", timeout=30
        )
        assert list(logs.lines) == [f"written in cluster {cluster}"]
        assert (logs.pod.cluster, logs.pod.name) == (cluster, chosen[cluster])
    # a's pod is not one of b's: asked in b's scope, it does not exist there.
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await two_cluster_context_api.GetPodLogs(
            context_api_pb2.GetPodLogsRequest(scope=checkout("b", namespace), pod=chosen["a"])
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


async def test_an_unknown_cluster_is_refused_naming_the_field_and_the_known_ones(
    two_cluster_context_api: ContextAPIServiceStub,
) -> None:
    ref = checkout("c", "shop")
    for field in ("resource.cluster", "scope.cluster"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            if field == "resource.cluster":
                await describe(two_cluster_context_api, ref)
            else:
                await two_cluster_context_api.GetPodLogs(
                    context_api_pb2.GetPodLogsRequest(scope=ref)
                )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        violations = field_violations(refused.value)
        assert list(violations) == [field]
        assert "unknown cluster 'c'" in violations[field]
        assert "the configured clusters are a, b" in violations[field]


# -- the whole loop ---------------------------------------------------------------------------


def crash_loop_alert(cluster: str, namespace: str, pod: str) -> alert_pb2.Alert:
    started = Timestamp()
    started.FromDatetime(dt.datetime.now(dt.UTC))
    name = "KubePodCrashLooping"
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={
            "alertname": name,
            "cluster": cluster,
            "namespace": namespace,
            "pod": pod,
            "container": "app",
            "severity": "warning",
        },
        starts_at=started,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


async def test_an_alert_from_b_is_fixed_on_b_only_and_its_assessment_reads_b(
    kube: LocalCluster,
    second_kube: LocalCluster,
    twins: Twins,
    runtime_settings: RuntimeSettings,
    postgres_dsn: str,
    session_mail: MailSink,
    tmp_path: Path,
) -> None:
    namespace = twins.namespace
    kubeconfig = contexts_kubeconfig(
        tmp_path / "kubeconfig", {"a": kube.kubeconfig, "b": second_kube.kubeconfig}
    )
    a_before = await kube_api(
        kube, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/checkout"
    )
    broken = await crash_looping_pod(second_kube, namespace)
    async with fresh_database(postgres_dsn) as dsn:
        env = stack_env(
            dsn,
            session_mail,
            KUBERNAUT_KUBE_KUBECONFIG=str(kubeconfig),
            KUBERNAUT_KUBE_CLUSTERS=CLUSTERS,
            KUBERNAUT_KUBE_DEFAULT_CLUSTER="a",
            # Assessed soon after the action; the final checkpoint is out of the test's time.
            KUBERNAUT_EFFECTIVENESS_DELAYS="2s,4s,30m",
            KUBERNAUT_EFFECTIVENESS_POLL_INTERVAL_SECONDS="0.2",
            KUBERNAUT_EXECUTOR_POLL_INTERVAL_SECONDS="0.2",
        )
        async with start_stack(runtime_settings, session_mail, env) as stack:
            edge = stack.clients(EDGE_ACCOUNT)
            operator = stack.clients()
            try:
                await edge.stub(GatewayServiceStub).SubmitAlerts(
                    gateway_pb2.SubmitAlertsRequest(
                        alerts=[crash_loop_alert("b", namespace, broken)]
                    )
                )
                await eventually(twins.b.healed, "b rolled back to its good revision", 180, 1)
                storage = operator.stub(StorageServiceStub)

                async def assessed() -> storage_pb2.GetIncidentResponse | None:
                    listed = await storage.ListIncidents(
                        storage_pb2.ListIncidentsRequest(page_size=100)
                    )
                    ours = [i for i in listed.incidents if i.subject.namespace == namespace]
                    if not ours:
                        return None
                    found: storage_pb2.GetIncidentResponse = await storage.GetIncident(
                        storage_pb2.GetIncidentRequest(incident_id=ours[0].incident_id)
                    )
                    return found if found.assessments else None

                found = await eventually(assessed, "an assessment of the rollback", 90, 0.5)
            finally:
                await edge.close()
                await operator.close()

    # The incident and the action are b's.
    assert found.incident.subject == checkout("b", namespace)
    (action,) = found.actions
    assert action.target == checkout("b", namespace)
    assert action.action == "rollback_deployment"
    assert action.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED, action.message
    # The assessment looked at b's Deployment (2 replicas), not a's (3).
    for assessment in found.assessments:
        evidence = "\n".join(assessment.evidence)
        assert f"Deployment {namespace}/checkout on cluster b" in evidence, evidence
        assert "of 2 desired replicas" in evidence, evidence
        assert "of 3 desired replicas" not in evidence, evidence
    # b was rolled back; a was not touched at all.
    b_state = await twins.b.state()
    assert b_state.image == GOOD_IMAGE and b_state.ready == 2
    a_after = await kube_api(
        kube, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/checkout"
    )
    assert a_after["metadata"]["generation"] == a_before["metadata"]["generation"]
    assert a_after["spec"] == a_before["spec"]
    assert ACTION_ID_ANNOTATION not in (a_after["metadata"].get("annotations") or {})
    assert (await twins.a.state()).healed
