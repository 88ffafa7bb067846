"""KubeDeploymentReplicasMismatch is answered by evidence read from a real control plane:
replicas the scheduler cannot place scale the Deployment to what runs; pods that run but
never turn Ready restart it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.stages import PodSimulation, simulate
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.ai_analysis.rules import RulesSettings, analyze
from tests.fixtures.cluster import create_deployment, eventually, one_pod_per_node

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def deploy(
    cluster: LocalCluster,
    *,
    replicas: int,
    pod_spec: dict[str, Any] | None = None,
    pod_annotations: dict[str, str] | None = None,
) -> alert_pb2.ResourceRef:
    namespace = f"evidence-{uuid.uuid4().hex[:8]}"
    await create_deployment(
        cluster,
        namespace,
        "web",
        replicas=replicas,
        # Opted in: a workload that is not Kubernaut's to change is declined up front.
        namespace_labels={"kubernaut.ai/managed": "true"},
        pod_spec=pod_spec,
        pod_annotations=pod_annotations,
    )
    return alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")


async def evidence_once(
    clients: Clients, subject: alert_pb2.ResourceRef, settled: Any
) -> context_api_pb2.ResourceContext:
    context_api = clients.stub(ContextAPIServiceStub)

    async def read() -> context_api_pb2.ResourceContext | None:
        found = await context_api.GetResourceContext(
            context_api_pb2.GetResourceContextRequest(resource=subject)
        )
        context: context_api_pb2.ResourceContext = found.context
        return context if settled(context) else None

    return await eventually(read, f"the pods of {subject.namespace}/web to settle", timeout=60)


def replicas_mismatch(subject: alert_pb2.ResourceRef) -> alert_pb2.Alert:
    started = Timestamp()
    started.GetCurrentTime()
    return alert_pb2.Alert(
        name="KubeDeploymentReplicasMismatch",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": subject.namespace, "deployment": subject.name},
        starts_at=started,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


@pytest.fixture
async def analysis_clients(
    runtime_settings: RuntimeSettings, cluster_context_api: str
) -> AsyncIterator[Clients]:
    """Calls the module's context_api (reading the cluster) as ai_analysis does."""
    clients = Clients(
        runtime_settings,
        ServiceName.AI_ANALYSIS.account,
        addresses={ServiceName.CONTEXT_API: cluster_context_api},
    )
    try:
        yield clients
    finally:
        await clients.close()


async def test_replicas_the_scheduler_cannot_place_scale_the_deployment_to_what_runs(
    kube: LocalCluster, analysis_clients: Clients
) -> None:
    # One node, and no two pods on one node: one replica runs, two can never be placed.
    one_per_node = {"affinity": one_pod_per_node({"app": "web"})}
    subject = await deploy(kube, replicas=3, pod_spec=one_per_node)
    evidence = await evidence_once(
        analysis_clients,
        subject,
        lambda c: (
            c.rollout.available_replicas == 1 and sum(bool(p.unschedulable) for p in c.pods) == 2
        ),
    )
    pending = [pod for pod in evidence.pods if pod.unschedulable]
    assert all(pod.phase == "Pending" and not pod.node for pod in pending)
    assert "anti-affinity" in pending[0].unschedulable

    analysis = analyze(replicas_mismatch(subject), subject, None, RulesSettings(), evidence)
    assert analysis.decision == remediation_pb2.DECISION_REMEDIATE
    assert analysis.recommendation.action.WhichOneof("params") == "scale_deployment"
    assert analysis.recommendation.action.scale_deployment.replicas == 1
    assert any("anti-affinity" in reason for reason in analysis.reasons)


async def test_pods_that_run_but_never_turn_ready_restart_the_deployment(
    kube: LocalCluster, analysis_clients: Clients
) -> None:
    subject = await deploy(kube, replicas=2, pod_annotations=simulate(PodSimulation.UNREADY))
    evidence = await evidence_once(
        analysis_clients,
        subject,
        lambda c: len(c.pods) == 2 and all(p.phase == "Running" and not p.ready for p in c.pods),
    )
    assert not any(pod.unschedulable for pod in evidence.pods)

    analysis = analyze(replicas_mismatch(subject), subject, None, RulesSettings(), evidence)
    assert analysis.recommendation.action.WhichOneof("params") == "restart_deployment"
    assert any("run but are not Ready" in reason for reason in analysis.reasons)


async def test_the_alert_processor_tells_a_gone_object_from_an_unreadable_one(
    kube: LocalCluster, runtime_settings: RuntimeSettings, cluster_context_api: str
) -> None:
    """Against the real cluster: an alert about a Deployment that does not exist is a
    recorded drop (SubjectGone), one about a kind context_api does not read goes on
    without context (None), one that exists gives its owner."""
    from kubernaut.ai_analysis.v1.ai_analysis_pb2_grpc import AIAnalysisServiceStub
    from kubernaut.notification.v1.notification_pb2_grpc import NotificationServiceStub
    from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

    from kubernaut.services.alert_processor.pipeline import SubjectGone
    from kubernaut.services.alert_processor.server import GrpcDownstream

    clients = Clients(
        runtime_settings,
        ServiceName.ALERT_PROCESSOR.account,
        addresses={ServiceName.CONTEXT_API: cluster_context_api},
    )
    try:
        downstream = GrpcDownstream(
            clients.stub(ContextAPIServiceStub),
            clients.stub(StorageServiceStub),
            clients.stub(AIAnalysisServiceStub),
            clients.stub(NotificationServiceStub),
        )
        subject = await deploy(kube, replicas=1)
        found = await downstream.resource_context(subject)
        assert found is not None and found.workload == subject
        gone = alert_pb2.ResourceRef(namespace=subject.namespace, kind="Deployment", name="nope")
        with pytest.raises(SubjectGone, match="does not exist"):
            await downstream.resource_context(gone)
        unread = alert_pb2.ResourceRef(namespace=subject.namespace, kind="ConfigMap", name="x")
        assert await downstream.resource_context(unread) is None
    finally:
        await clients.close()
