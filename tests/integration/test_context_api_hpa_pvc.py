"""context_api reads HorizontalPodAutoscalers and PersistentVolumeClaims on the real local
cluster, with its own read-only identity, and the rules act on what it reads: an autoscaler
at its maxReplicas gets more room, a filling claim grows where its StorageClass allows it
and not where it does not. The alert's labels name the subject, as the alert processor
resolves them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernetes_asyncio import client, config

from kubernaut.devstack.kube import LocalCluster
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.kube import MANAGED_LABEL
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.ai_analysis.rules import RulesSettings, analyze
from kubernaut.services.alerts import subject_of
from kubernaut.services.context_api import rbac
from kubernaut.services.context_api.resources import ResourceContextReader
from tests.fixtures.cluster import context_api_identity, create_deployment, eventually, kube_api

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MANAGED = {MANAGED_LABEL: "true"}
Settled = Callable[[context_api_pb2.ResourceContext], bool]


@pytest.fixture(scope="module")
async def reader(
    kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ResourceContextReader]:
    """A ResourceContextReader (uncached) with context_api's own identity: a ServiceAccount
    bound to exactly `rbac.policy_rules()` (a role of this module's, so that no other
    test's role is replaced)."""
    async with context_api_identity(kube, tmp_path_factory.mktemp("context-api")) as kubeconfig:
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
        api = client.ApiClient(configuration)
        try:
            yield ResourceContextReader(api, ttl=0.0, timeout=20.0)
        finally:
            await api.close()


async def settled(
    reader: ResourceContextReader, subject: alert_pb2.ResourceRef, ready: Settled, what: str
) -> context_api_pb2.ResourceContext:
    async def read() -> context_api_pb2.ResourceContext | None:
        found = await reader.context(subject)
        return found if ready(found) else None

    return await eventually(read, what, timeout=90)


def firing(name: str, **labels: str) -> alert_pb2.Alert:
    started = Timestamp()
    started.GetCurrentTime()
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"severity": "warning", **labels},
        starts_at=started,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


def hpa_body(name: str, target: str, *, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": MANAGED},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50},
                    },
                }
            ],
        },
    }


async def test_an_autoscaler_at_its_max_is_read_and_given_more_room(
    kube: LocalCluster, reader: ResourceContextReader
) -> None:
    namespace = f"ctx-hpa-{uuid.uuid4().hex[:8]}"
    await create_deployment(kube, namespace, "web", replicas=3)
    hpas = f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
    await kube_api(kube, "POST", hpas, hpa_body("web", "web", min_replicas=1, max_replicas=3))
    await kube_api(kube, "POST", hpas, hpa_body("orphan", "nope", min_replicas=1, max_replicas=3))

    alert = firing("KubeHpaMaxedOut", namespace=namespace, horizontalpodautoscaler="web")
    subject = subject_of(alert)
    assert subject == alert_pb2.ResourceRef(
        namespace=namespace, kind="HorizontalPodAutoscaler", name="web"
    )
    # The autoscaler controller records the Deployment's 3 replicas in its status (it
    # cannot read CPU metrics here, which changes nothing about its bounds).
    evidence = await settled(
        reader, subject, lambda c: c.hpa.current_replicas == 3, "the autoscaler's status"
    )
    hpa = evidence.hpa
    assert (hpa.min_replicas, hpa.max_replicas, hpa.current_replicas) == (1, 3, 3)
    assert (hpa.target_api_version, hpa.target_kind, hpa.target_name) == (
        "apps/v1",
        "Deployment",
        "web",
    )
    assert hpa.target_found and hpa.at_max
    assert evidence.workload == subject  # so the evidence travels with the incident
    assert evidence.managed
    assert evidence.managed_reason.startswith(f"HorizontalPodAutoscaler {namespace}/web")
    assert not evidence.HasField("pvc") and not evidence.HasField("rollout")

    analysis = analyze(alert, subject, None, RulesSettings(), evidence)
    assert analysis.decision == remediation_pb2.DECISION_REMEDIATE, analysis.reasons
    assert analysis.recommendation.action.update_hpa.max_replicas == 5  # 3 x 1.5, rounded up
    assert analysis.recommendation.target == subject

    orphan = alert_pb2.ResourceRef(
        namespace=namespace, kind="HorizontalPodAutoscaler", name="orphan"
    )
    unscaled = await reader.context(orphan)
    assert unscaled.hpa.target_name == "nope" and not unscaled.hpa.target_found
    declined = analyze(
        firing("KubeHpaMaxedOut", namespace=namespace, horizontalpodautoscaler="orphan"),
        orphan,
        None,
        RulesSettings(),
        unscaled,
    )
    assert declined.decision == remediation_pb2.DECISION_NO_ACTION
    assert "does not exist" in declined.reasons[0]


async def storage(
    kube: LocalCluster, namespace: str, name: str, *, expandable: bool, cleanup: list[str]
) -> alert_pb2.ResourceRef:
    """A StorageClass (expansion allowed or not), a 10Gi PersistentVolume and a claim
    `name` bound to it (both named for each other: no provisioner is needed)."""
    storage_class = f"{namespace}-{name}"
    await kube_api(
        kube,
        "POST",
        "/apis/storage.k8s.io/v1/storageclasses",
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": storage_class},
            "provisioner": "kubernetes.io/no-provisioner",
            "allowVolumeExpansion": expandable,
        },
    )
    cleanup.append(f"/apis/storage.k8s.io/v1/storageclasses/{storage_class}")
    await kube_api(
        kube,
        "POST",
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": storage_class},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "hostPath": {"path": f"/tmp/{storage_class}"},
                "claimRef": {"namespace": namespace, "name": name},
            },
        },
    )
    cleanup.append(f"/api/v1/persistentvolumes/{storage_class}")
    await kube_api(
        kube,
        "POST",
        f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "volumeName": storage_class,
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    )
    return alert_pb2.ResourceRef(namespace=namespace, kind="PersistentVolumeClaim", name=name)


async def test_a_filling_claim_grows_only_where_its_storage_class_allows(
    kube: LocalCluster, reader: ResourceContextReader
) -> None:
    namespace = f"ctx-pvc-{uuid.uuid4().hex[:8]}"
    await kube_api(
        kube, "POST", "/api/v1/namespaces", {"metadata": {"name": namespace, "labels": MANAGED}}
    )
    cleanup: list[str] = []
    try:
        grows = await storage(kube, namespace, "grows", expandable=True, cleanup=cleanup)
        fixed = await storage(kube, namespace, "fixed", expandable=False, cleanup=cleanup)
        settings = RulesSettings()
        for claim, allowed in ((grows, True), (fixed, False)):
            alert = firing(
                "KubePersistentVolumeFillingUp",
                namespace=namespace,
                persistentvolumeclaim=claim.name,
            )
            assert subject_of(alert) == claim
            evidence = await settled(
                reader, claim, lambda c: c.pvc.phase == "Bound", f"claim {claim.name} bound"
            )
            pvc = evidence.pvc
            assert (pvc.requested, pvc.capacity) == ("10Gi", "10Gi")
            assert pvc.storage_class == f"{namespace}-{claim.name}"
            assert pvc.expansion_allowed is allowed
            assert not pvc.resize_condition
            assert evidence.workload == claim
            assert evidence.managed and "its namespace carries" in evidence.managed_reason

            analysis = analyze(alert, claim, None, settings, evidence)
            if allowed:
                assert analysis.decision == remediation_pb2.DECISION_REMEDIATE, analysis.reasons
                assert analysis.recommendation.action.expand_pvc.size == "15Gi"
                assert analysis.recommendation.target == claim
            else:
                assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
                assert "does not allow volume expansion" in analysis.reasons[0]
    finally:
        for path in reversed(cleanup):
            await kube_api(kube, "DELETE", path)


async def test_the_served_context_api_describes_both_kinds(
    kube: LocalCluster, runtime_settings: RuntimeSettings, cluster_context_api: str
) -> None:
    """Over gRPC, as the alert processor and ai_analysis call it: HPAs and PVCs are kinds
    it reads now (they were INVALID_ARGUMENT), and one that is gone is NOT_FOUND."""
    namespace = f"ctx-served-{uuid.uuid4().hex[:8]}"
    await create_deployment(kube, namespace, "web", replicas=1)
    hpas = f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
    await kube_api(kube, "POST", hpas, hpa_body("web", "web", min_replicas=1, max_replicas=2))
    clients = Clients(
        runtime_settings,
        ServiceName.ALERT_PROCESSOR.account,
        addresses={ServiceName.CONTEXT_API: cluster_context_api},
    )
    try:
        stub = clients.stub(ContextAPIServiceStub)
        ref = alert_pb2.ResourceRef(namespace=namespace, kind="HorizontalPodAutoscaler", name="web")
        found = await stub.GetResourceContext(
            context_api_pb2.GetResourceContextRequest(resource=ref)
        )
        assert found.context.workload == ref
        assert found.context.hpa.max_replicas == 2 and found.context.hpa.target_found
        gone = alert_pb2.ResourceRef(namespace=namespace, kind="PersistentVolumeClaim", name="x")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetResourceContext(context_api_pb2.GetResourceContextRequest(resource=gone))
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    finally:
        await clients.close()


async def test_a_workloads_context_has_its_nodes_services_autoscaler_and_completeness(
    kube: LocalCluster, reader: ResourceContextReader
) -> None:
    """Read with context_api's own least-privilege identity: the nodes its pods run on
    (Ready, no pressure), the Service that selects its pods with their endpoints, the
    autoscaler that scales it; every part read, completeness 1."""
    namespace = f"depth-{uuid.uuid4().hex[:8]}"
    uses_secrets = {
        "imagePullSecrets": [{"name": "registry-pull"}],
        "volumes": [{"name": "tls", "secret": {"secretName": "web-tls"}}],
    }
    labels = await create_deployment(kube, namespace, "web", replicas=2, pod_spec=uses_secrets)
    await kube_api(
        kube,
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "web-settings"}, "data": {"password": "hunter2"}},
    )
    await kube_api(
        kube,
        "POST",
        f"/api/v1/namespaces/{namespace}/services",
        {
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    # A Service that selects other pods is not the workload's.
    await kube_api(
        kube,
        "POST",
        f"/api/v1/namespaces/{namespace}/services",
        {
            "metadata": {"name": "other"},
            "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]},
        },
    )
    await kube_api(
        kube,
        "POST",
        f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers",
        hpa_body("web", "web", min_replicas=2, max_replicas=5),
    )
    subject = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")

    def complete(found: context_api_pb2.ResourceContext) -> bool:
        ready = [s for s in found.services if s.ready_endpoints == 2]
        placed = bool(found.pods) and all(pod.node for pod in found.pods)
        return placed and bool(ready) and found.HasField("autoscaler")

    found = await settled(reader, subject, complete, "the pods' nodes, endpoints and autoscaler")
    assert [s.name for s in found.services] == ["web"]
    assert found.services[0].type == "ClusterIP" and found.services[0].not_ready_endpoints == 0
    pod_nodes = {pod.node for pod in found.pods}
    assert {node.name for node in found.nodes} == pod_nodes
    assert all(node.ready and not node.pressure for node in found.nodes), found.nodes
    assert (found.autoscaler.target_name, found.autoscaler.max_replicas) == ("web", 5)
    assert found.completeness.score == 1.0 and not found.completeness.missing
    assert set(found.completeness.read) >= {"workload", "pods", "events", "nodes", "services"}
    # What changed in the namespace lately: the rollout, the ConfigMap by name and version
    # (never its data), and the Secrets the pods use by name only.
    changes = [(c.kind, c.name, c.what.split(" ")[0]) for c in found.recent_changes]
    assert ("Deployment", "web", "revision") in changes, changes
    assert ("ConfigMap", "web-settings", "resourceVersion") in changes, changes
    assert "hunter2" not in str(found)
    assert list(found.secrets_used) == ["registry-pull", "web-tls"]


async def test_a_part_the_identity_may_not_read_is_missing_and_said_why(
    kube: LocalCluster, tmp_path: Path
) -> None:
    """An identity without the Services' and endpoints' rule (an older chart's role): the
    context is still answered, with those parts missing and why, and a lower score."""
    namespace = f"depth-{uuid.uuid4().hex[:8]}"
    await create_deployment(kube, namespace, "web", replicas=1)
    short = [
        {**rule, "resources": [r for r in rule["resources"] if r != "services"]}
        for rule in rbac.policy_rules()
        if rule["apiGroups"] != ["discovery.k8s.io"]
    ]
    async with context_api_identity(kube, tmp_path, short) as kubeconfig:
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
        api = client.ApiClient(configuration)
        try:
            reader = ResourceContextReader(api, ttl=0.0, timeout=20.0)
            subject = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")
            found = await settled(reader, subject, lambda c: bool(c.pods), "the pods")
        finally:
            await api.close()
    assert not found.services
    (missing,) = found.completeness.missing
    assert missing.startswith("services: forbidden (403)"), missing
    assert 0.5 < found.completeness.score < 1.0
