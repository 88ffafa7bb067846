"""Each shipped runbook template (kubernaut/runbooks/*.yaml) end to end on the session's
local cluster (KWOK nodes): an incident opened in storage with the alert, CreateWorkflow as
ai_analysis with the recommendation the rules give for it, a person's approval when the
plan waits for one, then the plan graph run by a real workflow service and a real executor
(in-process, on a database of their own) until it ends; then the plan's runbook, every
step, the incident in storage and the cluster's final state.

One failure case: the scale guard whose rollback cannot roll out is undone, last first.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.stages import SIMULATE_ANNOTATION
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.workflow.runbooks import default_runbook_dir, load_runbooks
from tests.fixtures.cluster import deployment_body, kube_api, prefers_node
from tests.fixtures.executor import NOWHERE, TOLERATE_DEDICATED, Admin, dedicated_node
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.postgres import fresh_database
from tests.fixtures.waiting import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.usefixtures("cleanup"),
]

W = workflow_pb2
MANAGED = {"kubernaut.ai/managed": "true"}
FINAL = (
    W.WORKFLOW_STATE_SUCCEEDED,
    W.WORKFLOW_STATE_FAILED,
    W.WORKFLOW_STATE_ROLLED_BACK,
    W.WORKFLOW_STATE_REFUSED,
)
NODE_KINDS = (W.STEP_KIND_ACTION, W.STEP_KIND_CHECK)
SHIPPED = load_runbooks(default_runbook_dir())


# -- the services under test --------------------------------------------------------------------


@dataclass
class Services:
    analysis: WorkflowServiceStub  # as ai_analysis calls it
    workflows: WorkflowServiceStub  # as the operator (a person) calls it
    storage: StorageServiceStub


@pytest.fixture(scope="module")
async def services(
    stack: InProcessStack,
    admin: Admin,
    runtime_settings: RuntimeSettings,
    postgres_dsn: str,
) -> AsyncIterator[Services]:
    """An executor and a workflow service of the module's own, on a database of their own
    (the stack's workflow runners must not take these workflows), acting on the session's
    cluster, with the stack's storage, effectiveness and notification."""
    async with fresh_database(postgres_dsn) as dsn:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("KUBERNAUT_DATABASE_URL", dsn)
            patch.setenv("KUBECONFIG", str(admin.info.kubeconfig))
            patch.setenv("KUBERNAUT_KUBE_KUBECONFIG", str(admin.info.kubeconfig))
            patch.delenv("KUBERNAUT_EXECUTOR_DATABASE_URL", raising=False)
            patch.setenv("KUBERNAUT_EXECUTOR_VERIFY_TIMEOUT_SECONDS", "60")
            patch.setenv("KUBERNAUT_EXECUTOR_POLL_INTERVAL_SECONDS", "0.2")
            patch.setenv("KUBERNAUT_WORKFLOW_PROGRESS_POLL_SECONDS", "0.3")
            patch.setenv("KUBERNAUT_WORKFLOW_POLL_SECONDS", "0.5")
            base = stack.beside(
                runtime_settings,
                ServiceName.STORAGE,
                ServiceName.EFFECTIVENESS,
                ServiceName.NOTIFICATION,
            )
            executor = await start_service(ServiceName.EXECUTOR, base, serve_metrics=False)
            try:
                settings = base.model_copy(update={"executor_address": executor.address})
                workflow = await start_service(ServiceName.WORKFLOW, settings, serve_metrics=False)
                here = {
                    ServiceName.EXECUTOR: executor.address,
                    ServiceName.WORKFLOW: workflow.address,
                }
                analysis = Clients(settings, ServiceName.AI_ANALYSIS.account, addresses=here)
                operator = stack.clients(settings=settings)
                operator.addresses.update(here)
                try:
                    await wait_serving(
                        operator, [ServiceName.EXECUTOR, ServiceName.WORKFLOW], timeout=60
                    )
                    yield Services(
                        analysis.stub(WorkflowServiceStub),
                        operator.stub(WorkflowServiceStub),
                        operator.stub(StorageServiceStub),
                    )
                finally:
                    await analysis.close()
                    await operator.close()
                    await workflow.shutdown()
            finally:
                await executor.shutdown()


# -- from the alert to the end ------------------------------------------------------------------


def firing(name: str, **labels: str) -> alert_pb2.Alert:
    alert = alert_pb2.Alert(name=name, status=alert_pb2.ALERT_STATUS_FIRING, labels=labels)
    alert.starts_at.GetCurrentTime()
    return alert


def ref(kind: str, namespace: str, name: str) -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(kind=kind, namespace=namespace, name=name)


@dataclass
class Run:
    incident_id: str
    created: W.Workflow
    done: W.Workflow

    def nodes(self) -> list[W.StepRun]:
        return [s for s in self.done.steps if s.kind in NODE_KINDS]

    def step(self, node: str, kind: int | None = None) -> W.StepRun:
        (found,) = [
            s
            for s in self.done.steps
            if s.node == node and (s.kind in NODE_KINDS if kind is None else s.kind == kind)
        ]
        return found

    def compensations(self) -> list[W.StepRun]:
        return [s for s in self.done.steps if s.kind == W.STEP_KIND_COMPENSATE]


async def remediate(
    services: Services,
    runbook: str,
    alert: alert_pb2.Alert,
    action: remediation_pb2.ActionParams,
    target: alert_pb2.ResourceRef,
    confidence: float,
    *,
    approve: bool = False,
    timeout: float = 300,
) -> Run:
    """Open the incident, create the workflow as ai_analysis would, approve it as a person
    when it waits (and only when `approve` says it must), and follow it to its end."""
    opened = await services.storage.OpenIncident(
        storage_pb2.OpenIncidentRequest(fingerprint=uuid.uuid4().hex, alert=alert, subject=target)
    )
    incident_id = opened.incident.incident_id
    created = (
        await services.analysis.CreateWorkflow(
            W.CreateWorkflowRequest(
                incident_id=incident_id,
                alert=alert,
                recommendation=remediation_pb2.Recommendation(
                    action=action,
                    target=target,
                    confidence=confidence,
                    reasons=[f"the rules' answer to {alert.name}"],
                ),
            )
        )
    ).workflow
    plan = created.plan
    shipped = SHIPPED.latest(runbook)
    assert shipped is not None
    # The template chosen and recorded: name, version and the digest of the shipped file.
    assert (plan.runbook.name, plan.runbook.version) == (shipped.name, shipped.version), plan
    assert plan.runbook.digest == shipped.digest
    assert [n.name for n in plan.nodes] == [str(s["name"]) for s in shipped.steps]
    assert plan.requires_approval == approve, plan.approval_reason
    workflow_id = created.workflow_id

    async def get() -> W.Workflow:
        got = await services.workflows.GetWorkflow(W.GetWorkflowRequest(workflow_id=workflow_id))
        found: W.Workflow = got.workflow
        return found

    if approve:

        async def waiting() -> W.Workflow | None:
            got = await get()
            assert got.state not in FINAL, got
            return got if got.state == W.WORKFLOW_STATE_WAITING_APPROVAL else None

        await eventually(waiting, "the workflow to wait for approval", 60, 0.2)
        # Nothing acted before the approval.
        assert all(s.attempts == 0 for s in (await get()).steps if s.kind in NODE_KINDS)
        decided = await services.workflows.DecideApproval(
            W.DecideApprovalRequest(
                workflow_id=workflow_id,
                decision=W.APPROVAL_DECISION_APPROVE,
                reason="checked the node",
            )
        )
        assert decided.decided

    async def ended() -> W.Workflow | None:
        got = await get()
        return got if got.state in FINAL else None

    done = await eventually(ended, f"the {runbook} workflow to end", timeout, 0.3)
    return Run(incident_id, created, done)


async def incident_status(
    services: Services, incident_id: str
) -> storage_pb2.IncidentStatus.ValueType:
    got = await services.storage.GetIncident(
        storage_pb2.GetIncidentRequest(incident_id=incident_id)
    )
    status: storage_pb2.IncidentStatus.ValueType = got.incident.status
    return status


def describe(run: Run) -> str:
    lines = [f"{W.WorkflowState.Name(run.done.state)}: {run.done.message}"]
    for s in run.done.steps:
        kind = W.StepKind.Name(s.kind).removeprefix("STEP_KIND_")
        state = W.StepState.Name(s.state).removeprefix("STEP_STATE_")
        lines.append(f"  {kind} {s.node} {state} x{s.attempts}: {s.message}")
    return "\n".join(lines)


async def assert_succeeded(services: Services, run: Run, runbook: str) -> None:
    """The workflow succeeded: every node step DONE, in the template's order; every
    compensation SKIPPED; the incident REMEDIATED."""
    shipped = SHIPPED.latest(runbook)
    assert shipped is not None
    why = describe(run)
    assert run.done.state == W.WORKFLOW_STATE_SUCCEEDED, why
    assert run.done.plan.runbook.name == runbook, why
    assert run.done.plan.runbook.version == shipped.version, why
    assert [s.node for s in run.nodes()] == [str(s["name"]) for s in shipped.steps], why
    for step in run.nodes():
        assert step.state == W.STEP_STATE_DONE, why
        assert step.started_at.ByteSize() and step.finished_at.ByteSize(), why
    compensated = [str(s["name"]) for s in reversed(shipped.steps) if "compensation" in s]
    assert [s.node for s in run.compensations()] == compensated, why
    for step in run.compensations():
        assert step.state == W.STEP_STATE_SKIPPED, why
        assert step.attempts == 0, why
    status = await incident_status(services, run.incident_id)
    assert status == storage_pb2.INCIDENT_STATUS_REMEDIATED, (
        storage_pb2.IncidentStatus.Name(status),
        why,
    )


def at(stamp: Any) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)  # type: ignore[no-any-return]


def in_order(steps: Sequence[W.StepRun]) -> bool:
    """Each step started once the one before it finished."""
    return all(at(a.finished_at) <= at(b.started_at) for a, b in itertools.pairwise(steps))


# -- the cluster --------------------------------------------------------------------------------


def is_ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def live(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


async def get(kube: LocalCluster, path: str) -> dict[str, Any]:
    found: dict[str, Any] = await kube_api(kube, "GET", path)
    return found


async def pods(kube: LocalCluster, ns: str, query: str = "") -> list[dict[str, Any]]:
    listed = await get(kube, f"/api/v1/namespaces/{ns}/pods{query}")
    return live(listed["items"])


def deployments(ns: str, name: str = "") -> str:
    return f"/apis/apps/v1/namespaces/{ns}/deployments" + (f"/{name}" if name else "")


def rolled_out(deployment: dict[str, Any]) -> bool:
    status, spec = deployment.get("status") or {}, deployment["spec"]
    counts = [
        status.get(k) or 0
        for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
    ]
    observed = status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
    return observed and all(c == spec["replicas"] for c in counts)


async def simulate(admin: Admin, kind: str, namespace: str, name: str, how: str) -> None:
    """Have KWOK play `how` on a live pod or node (kubernaut/devstack/stages.py)."""
    obj = await admin.raw.get(kind, namespace, name)
    op: dict[str, Any]
    if obj["metadata"].get("annotations"):
        key = SIMULATE_ANNOTATION.replace("~", "~0").replace("/", "~1")
        op = {"op": "add", "path": f"/metadata/annotations/{key}", "value": how}
    else:
        op = {"op": "add", "path": "/metadata/annotations", "value": {SIMULATE_ANNOTATION: how}}
    await admin.raw.patch(kind, namespace, name, [op], dry_run=False)


# -- node-not-ready -----------------------------------------------------------------------------


async def test_node_not_ready_cordons_drains_and_relocates(
    services: Services, admin: Admin, kube: LocalCluster
) -> None:
    ns = await admin.namespace(managed=True)
    node = await dedicated_node(admin, ns)
    # Two pods that prefer the test's node (and tolerate its taint); the session's node
    # can take them once it is cordoned.
    prefer = prefers_node(node)
    body = deployment_body(
        "web",
        "registry.invalid/app:v1",
        replicas=2,
        labels=MANAGED,
        pod_spec={
            "tolerations": [TOLERATE_DEDICATED],
            "affinity": prefer,
        },
    )
    await kube_api(kube, "POST", deployments(ns), body)
    await admin.rolled_out(ns)

    async def both_on_node() -> list[dict[str, Any]] | None:
        found = await pods(kube, ns, f"?fieldSelector=spec.nodeName%3D{node}")
        return found if len(found) == 2 else None

    before = await eventually(both_on_node, f"both pods on {node}", 30)
    # The node stops reporting Ready (KWOK keeps its heartbeat).
    await simulate(admin, "Node", "", node, "notready")

    async def not_ready() -> bool:
        return not is_ready(await get(kube, f"/api/v1/nodes/{node}"))

    await eventually(not_ready, f"node {node} to be NotReady", 60)

    run = await remediate(
        services,
        "node-not-ready",
        firing("KubeNodeNotReady", node=node, severity="warning"),
        remediation_pb2.ActionParams(cordon_node=remediation_pb2.CordonNodeParams()),
        ref("Node", "", node),
        0.6,
        # The cordon grows into a drain here: high risk, a person approves.
        approve=True,
    )
    await assert_succeeded(services, run, "node-not-ready")
    assert in_order([run.step("cordon"), run.step("drain"), run.step("relocated")])

    final = await get(kube, f"/api/v1/nodes/{node}")
    assert final["spec"].get("unschedulable") is True
    assert await pods(kube, ns, f"?fieldSelector=spec.nodeName%3D{node}") == []
    moved = await pods(kube, ns)
    assert len(moved) == 2, moved
    old = {p["metadata"]["uid"] for p in before}
    for pod in moved:
        assert pod["metadata"]["uid"] not in old
        assert pod["spec"]["nodeName"] != node
        assert is_ready(pod), pod["status"]
    assert rolled_out(await get(kube, deployments(ns, "web")))


# -- statefulset-one-at-a-time ------------------------------------------------------------------


def _created(pod: dict[str, Any]) -> str:
    stamp: str = pod["metadata"]["creationTimestamp"]
    return stamp


async def test_statefulset_pods_restart_one_at_a_time_lowest_ordinal_first(
    services: Services, admin: Admin, kube: LocalCluster
) -> None:
    ns = await admin.namespace(managed=True)
    labels = {"app": "pg"}
    await kube_api(
        kube,
        "POST",
        f"/apis/apps/v1/namespaces/{ns}/statefulsets",
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "pg", "labels": {**labels, **MANAGED}},
            "spec": {
                "serviceName": "pg",
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "pg", "image": "registry.invalid/pg:16"}]},
                },
            },
        },
    )

    async def three_ready() -> list[dict[str, Any]] | None:
        found = await pods(kube, ns, "?labelSelector=app%3Dpg")
        return found if len(found) == 3 and all(is_ready(p) for p in found) else None

    before = {p["metadata"]["name"]: p for p in await eventually(three_ready, "pg's pods", 60)}
    assert sorted(before) == ["pg-0", "pg-1", "pg-2"]
    # pg-1 runs but is not Ready: the StatefulSet's mismatch, and the rules' answer is to
    # delete its lowest stuck pod.
    await simulate(admin, "Pod", ns, "pg-1", "unready")

    async def pg_1_unready() -> bool:
        return not is_ready(await get(kube, f"/api/v1/namespaces/{ns}/pods/pg-1"))

    await eventually(pg_1_unready, "pg-1 to turn unready", 30)

    run = await remediate(
        services,
        "statefulset-one-at-a-time",
        firing("KubeStatefulSetReplicasMismatch", namespace=ns, statefulset="pg"),
        remediation_pb2.ActionParams(delete_pod=remediation_pb2.DeletePodParams()),
        ref("Pod", ns, "pg-1"),
        0.55,
    )
    await assert_succeeded(services, run, "statefulset-one-at-a-time")
    order = [
        run.step(name)
        for name in (
            "delete_pod_0",
            "pod_0_ready",
            "delete_pod_1",
            "pod_1_ready",
            "delete_pod_2",
            "pod_2_ready",
        )
    ]
    assert in_order(order), describe(run)

    after = {p["metadata"]["name"]: p for p in await pods(kube, ns, "?labelSelector=app%3Dpg")}
    assert sorted(after) == ["pg-0", "pg-1", "pg-2"]
    for name, pod in after.items():
        assert pod["metadata"]["uid"] != before[name]["metadata"]["uid"], name
        assert is_ready(pod), (name, pod["status"])
    # Recreated in order: each after the one before it was Ready again (creation times
    # are whole seconds, so the order of the steps says the rest).
    created = [_created(after[f"pg-{i}"]) for i in range(3)]
    assert created == sorted(created), created
    for i, check in ((1, "pod_0_ready"), (2, "pod_1_ready")):
        then = at(run.step(check).finished_at).replace(microsecond=0)
        assert dt.datetime.fromisoformat(created[i]) >= then, (i, created, then)


# -- bad-rollout-with-scale-guard ---------------------------------------------------------------


async def two_revisions(
    admin: Admin, kube: LocalCluster, ns: str, *, first_pod_spec: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A 2-replica Deployment `web` at revision 1 (image v1), then updated to revision 2
    (image v2), rolled out: (revision 1's pod template, revision 2's)."""
    body = deployment_body(
        "web",
        "registry.invalid/app:v1",
        replicas=2,
        labels=MANAGED,
        pod_spec=first_pod_spec,
    )
    await kube_api(kube, "POST", deployments(ns), body)
    if first_pod_spec is None:
        await admin.rolled_out(ns)
    first = (await get(kube, deployments(ns, "web")))["spec"]["template"]
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/image",
              "value": "registry.invalid/app:v2"}]  # fmt: skip
    if first_pod_spec is not None:
        patch.append({"op": "remove", "path": "/spec/template/spec/nodeSelector"})
    await admin.patch(ns, "web", patch)
    second = (await admin.rolled_out(ns, timeout=60))["spec"]["template"]
    return first, second


def image(template: dict[str, Any]) -> str:
    found: str = template["spec"]["containers"][0]["image"]
    return found


def rollback_alert(ns: str) -> alert_pb2.Alert:
    return firing("KubeDeploymentRolloutStuck", namespace=ns, deployment="web")


ROLLBACK = remediation_pb2.ActionParams(
    rollback_deployment=remediation_pb2.RollbackDeploymentParams(to_revision=0)
)


async def test_bad_rollout_with_scale_guard_scales_up_rolls_back_and_scales_down(
    services: Services, admin: Admin, kube: LocalCluster
) -> None:
    ns = await admin.namespace(managed=True)
    first, second = await two_revisions(admin, kube, ns)
    assert (image(first), image(second)) == ("registry.invalid/app:v1", "registry.invalid/app:v2")

    run = await remediate(
        services,
        "bad-rollout-with-scale-guard",
        rollback_alert(ns),
        ROLLBACK,
        ref("Deployment", ns, "web"),
        0.8,
    )
    # The guard's replicas are the ones read when the plan was made.
    nodes = {n.name: n for n in run.created.plan.nodes}
    assert nodes["scale_up"].action.scale_deployment.replicas == 3
    assert nodes["scale_down"].action.scale_deployment.replicas == 2
    await assert_succeeded(services, run, "bad-rollout-with-scale-guard")
    steps = [run.step(name) for name in ("scale_up", "rollback", "ready", "scale_down")]
    assert [s.kind for s in steps] == [W.STEP_KIND_ACTION] * 2 + [W.STEP_KIND_CHECK] + [
        W.STEP_KIND_ACTION
    ]
    assert in_order(steps), describe(run)

    final = await get(kube, deployments(ns, "web"))
    assert final["spec"]["replicas"] == 2
    assert image(final["spec"]["template"]) == image(first)
    assert final["spec"]["template"]["spec"] == first["spec"]
    assert rolled_out(final), final["status"]
    running = await pods(kube, ns, "?labelSelector=app%3Dweb")
    assert len(running) == 2 and all(is_ready(p) for p in running)
    assert {image(p) for p in running} == {image(first)}


async def test_scale_guard_whose_rollback_cannot_roll_out_is_undone_last_first(
    services: Services, admin: Admin, kube: LocalCluster
) -> None:
    ns = await admin.namespace(managed=True)
    # Revision 1's pods can never be scheduled; revision 2 runs. A short progress deadline
    # makes the rollback to revision 1 fail in seconds instead of the step's 10 minutes.
    _, second = await two_revisions(admin, kube, ns, first_pod_spec={"nodeSelector": NOWHERE})
    await admin.patch(ns, "web", [{"op": "add", "path": "/spec/progressDeadlineSeconds",
                                   "value": 10}])  # fmt: skip
    before = await admin.rolled_out(ns, timeout=60)
    assert before["spec"]["template"]["spec"].get("nodeSelector") is None

    run = await remediate(
        services,
        "bad-rollout-with-scale-guard",
        rollback_alert(ns),
        ROLLBACK,
        ref("Deployment", ns, "web"),
        0.8,
    )
    why = describe(run)
    assert run.done.state == W.WORKFLOW_STATE_ROLLED_BACK, why
    assert run.step("scale_up").state == W.STEP_STATE_DONE, why
    # The rollback's own verification saw it never roll out; the executor put the
    # template back. What ran after it never started.
    rollback = run.step("rollback")
    assert rollback.state == W.STEP_STATE_FAILED, why
    assert rollback.message.startswith("rolled back: "), why
    for name in ("ready", "scale_down"):
        assert run.step(name).state == W.STEP_STATE_SKIPPED, why
    # The compensations, last first: the rollback's was not needed (the executor undid
    # it), the extra replica's ran.
    assert [s.node for s in run.compensations()] == ["rollback", "scale_up"], why
    undo_rollback, undo_scale_up = run.compensations()
    assert undo_rollback.state == W.STEP_STATE_SKIPPED, why
    assert undo_scale_up.state == W.STEP_STATE_DONE, why
    assert at(undo_scale_up.started_at) >= at(rollback.finished_at)
    status = await incident_status(services, run.incident_id)
    assert status == storage_pb2.INCIDENT_STATUS_FAILED, why

    async def as_before() -> dict[str, Any] | None:
        found = await get(kube, deployments(ns, "web"))
        return found if rolled_out(found) else None

    final = await eventually(as_before, "the Deployment to be as before the plan", 60)
    assert final["spec"]["replicas"] == 2
    assert final["spec"]["template"]["spec"] == before["spec"]["template"]["spec"]
    assert image(final["spec"]["template"]) == image(second)


# -- oom-raise-limit-and-verify -----------------------------------------------------------------


async def test_oom_raises_the_memory_limit_and_the_pods_run_on_it(
    services: Services, admin: Admin, kube: LocalCluster
) -> None:
    ns = await admin.namespace(managed=True)
    await admin.create(ns, replicas=2, memory="64Mi")
    run = await remediate(
        services,
        "oom-raise-limit-and-verify",
        firing("KubeContainerOOMKilled", namespace=ns, deployment="web", container="app"),
        remediation_pb2.ActionParams(
            increase_memory_limit=remediation_pb2.IncreaseMemoryLimitParams(
                container="app", factor=2.0, max_limit="4Gi"
            )
        ),
        ref("Deployment", ns, "web"),
        0.7,
    )
    await assert_succeeded(services, run, "oom-raise-limit-and-verify")
    assert in_order([run.step("raise_limit"), run.step("ready")])

    final = await get(kube, deployments(ns, "web"))
    container = final["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "128Mi"
    assert rolled_out(final), final["status"]
    running = await pods(kube, ns, "?labelSelector=app%3Dweb")
    assert len(running) == 2 and all(is_ready(p) for p in running)
    for pod in running:
        assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "128Mi"


# -- hpa-maxed ----------------------------------------------------------------------------------


async def test_hpa_maxed_raises_max_replicas_and_its_target_is_ready(
    services: Services, admin: Admin, kube: LocalCluster
) -> None:
    ns = await admin.namespace(managed=True)
    await admin.create(ns, "api", replicas=3)
    await kube_api(
        kube,
        "POST",
        f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "api", "labels": MANAGED},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 80},
                        },
                    }
                ],
            },
        },
    )
    run = await remediate(
        services,
        "hpa-maxed",
        firing(
            "KubeHpaMaxedOut",
            namespace=ns,
            horizontalpodautoscaler="api",
            scaletargetref_kind="Deployment",
            scaletargetref_name="api",
        ),
        remediation_pb2.ActionParams(update_hpa=remediation_pb2.UpdateHpaParams(max_replicas=6)),
        ref("HorizontalPodAutoscaler", ns, "api"),
        0.55,
    )
    nodes = {n.name: n for n in run.created.plan.nodes}
    assert (nodes["scale_target_ready"].target.kind, nodes["scale_target_ready"].target.name) == (
        "Deployment",
        "api",
    )
    await assert_succeeded(services, run, "hpa-maxed")
    assert in_order([run.step("raise_max"), run.step("scale_target_ready")])

    hpa = await get(kube, f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/api")
    assert hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["minReplicas"] == 1
    assert rolled_out(await get(kube, deployments(ns, "api")))


# -- job-failed-rerun ---------------------------------------------------------------------------


def _condition(obj: dict[str, Any], kind: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


async def test_a_failed_job_is_rerun_and_the_rerun_completes(
    services: Services, admin: Admin, kube: LocalCluster
) -> None:
    ns = await admin.namespace(managed=True)
    jobs = f"/apis/batch/v1/namespaces/{ns}/jobs"
    # A quota that admits no pod: the Job cannot start one before its deadline and fails
    # (DeadlineExceeded). Then the quota goes (the cause is fixed): a rerun can run.
    quotas = f"/api/v1/namespaces/{ns}/resourcequotas"
    await kube_api(
        kube, "POST", quotas, {"metadata": {"name": "none"}, "spec": {"hard": {"pods": "0"}}}
    )

    async def quota_counted() -> bool:
        quota = await get(kube, f"{quotas}/none")
        return "pods" in ((quota.get("status") or {}).get("hard") or {})

    await eventually(quota_counted, "the quota to be in force", 30)
    await kube_api(
        kube,
        "POST",
        jobs,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "migrate", "labels": MANAGED},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 15,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "migrate", "image": "registry.invalid/m:1"}],
                    }
                },
            },
        },
    )

    async def failed() -> bool:
        return _condition(await get(kube, f"{jobs}/migrate"), "Failed")

    await eventually(failed, "the Job to fail", 90)
    await kube_api(kube, "DELETE", f"{quotas}/none")

    run = await remediate(
        services,
        "job-failed-rerun",
        firing("KubeJobFailed", namespace=ns, job_name="migrate"),
        remediation_pb2.ActionParams(rerun_failed_job=remediation_pb2.RerunFailedJobParams()),
        ref("Job", ns, "migrate"),
        0.6,
    )
    await assert_succeeded(services, run, "job-failed-rerun")
    assert in_order([run.step("rerun"), run.step("succeeded")])

    listed = (await get(kube, jobs))["items"]
    reruns = [
        j
        for j in listed
        if (j["metadata"].get("annotations") or {}).get("kubernaut.ai/rerun-of") == "migrate"
    ]
    assert len(reruns) == 1, [j["metadata"]["name"] for j in listed]
    assert reruns[0]["metadata"]["name"].startswith("migrate-rerun-")
    assert _condition(reruns[0], "Complete"), reruns[0]["status"]
    assert (reruns[0]["status"].get("succeeded") or 0) == 1
    # The failed Job stays for inspection.
    assert _condition(await get(kube, f"{jobs}/migrate"), "Failed")
