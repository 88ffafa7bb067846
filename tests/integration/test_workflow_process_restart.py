"""Killing the workflow process mid-run: a new process resumes the workflow from PostgreSQL
without repeating a finished step, and the executor acts on the cluster once.

The workflow and executor run as real `kubernaut serve` processes against a local control
plane; storage, effectiveness and notification are the in-process stack's. The restart is
held mid-rollout by the cluster itself: one node, pods that may not share a node, and a
rolling update that must surge, so the executor is still verifying when the workflow dies.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernaut.common.v1 import alert_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.processes import free_port
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.kube import MANAGED_LABEL
from kubernaut.runtime.launcher import Fleet, wait_serving
from kubernaut.runtime.names import ServiceName
from tests.fixtures.cluster import create_deployment, eventually, kube_api, one_pod_per_node
from tests.fixtures.kubernaut import InProcessStack, subprocess_env
from tests.fixtures.workflows import restart_workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

VERIFY_TIMEOUT = 20.0
LEASE_SECONDS = 3.0
ACTING = ("DRY_RUN", "SNAPSHOT", "APPLY", "VERIFY")


async def stuck_restart_target(cluster: LocalCluster) -> alert_pb2.ResourceRef:
    """A managed one-replica Deployment, Ready, whose next rollout can never finish."""
    namespace = f"resume-{uuid.uuid4().hex[:8]}"
    await create_deployment(
        cluster,
        namespace,
        "web",
        replicas=1,
        namespace_labels={MANAGED_LABEL: "true"},
        pod_spec={"affinity": one_pod_per_node({"app": "web"})},
        # The new pod must start before the old one stops, and cannot share its node.
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    )

    async def available() -> bool:
        deployment = await kube_api(
            cluster, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
        )
        return bool(deployment["status"].get("availableReplicas", 0) == 1)

    await eventually(available, f"{namespace}/web to be available", timeout=60)
    return alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")


async def replica_sets(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    listed = await kube_api(cluster, "GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets")
    items: list[dict[str, Any]] = listed["items"]
    return items


class WorkflowProcesses:
    """The workflow and executor as processes; the workflow can be killed and restarted."""

    def __init__(
        self, fleet: Fleet, clients: Clients, ports: dict[ServiceName, int], env: dict[str, str]
    ) -> None:
        self.fleet = fleet
        self.clients = clients
        self.ports = ports
        self.env = env

    def start(self, service: ServiceName) -> None:
        self.fleet.start_service(
            service, env={**self.env, "KUBERNAUT_GRPC_PORT": str(self.ports[service])}
        )

    async def serving(self, *services: ServiceName) -> None:
        statuses = await wait_serving(self.clients, list(services), timeout=60, fleet=self.fleet)
        assert all(s == "SERVING" for s in statuses.values()), (statuses, self.fleet.exited())

    def kill_workflow(self) -> None:
        """SIGKILL: no drain, no lease release, as a crashed node would."""
        process = self.fleet.processes[ServiceName.WORKFLOW.value].popen
        process.kill()
        process.wait(10)


@pytest.fixture
async def processes(
    stack: InProcessStack, kube: LocalCluster, pki: Path, tmp_path: Path, database_dsn: str
) -> AsyncIterator[WorkflowProcesses]:
    ports = {ServiceName.WORKFLOW: free_port(), ServiceName.EXECUTOR: free_port()}
    # The stack's services for the rest; the workflow schema is this test's own database,
    # so the stack's in-process workflow engine never sees (or takes over) this workflow.
    addresses = {
        f"KUBERNAUT_{name.value.upper()}_ADDRESS": address
        for name, address in stack.addresses.items()
        if name not in ports
    }
    env = subprocess_env(
        tmp_path,
        pki,
        ports,
        **addresses,
        KUBERNAUT_DATABASE_URL=database_dsn,
        KUBERNAUT_METRICS_PORT="0",
        KUBERNAUT_KUBE_KUBECONFIG=str(kube.kubeconfig),
        KUBERNAUT_EXECUTOR_VERIFY_TIMEOUT_SECONDS=str(VERIFY_TIMEOUT),
        KUBERNAUT_EXECUTOR_POLL_INTERVAL_SECONDS="0.5",
        KUBERNAUT_WORKFLOW_LEASE_SECONDS=str(LEASE_SECONDS),
        KUBERNAUT_WORKFLOW_POLL_SECONDS="0.5",
        KUBERNAUT_WORKFLOW_PROGRESS_POLL_SECONDS="0.3",
    )
    fleet = Fleet(tmp_path / "logs")
    clients = Clients(stack.settings, addresses={n: f"localhost:{p}" for n, p in ports.items()})
    running = WorkflowProcesses(fleet, clients, {**ports}, env)
    try:
        running.start(ServiceName.EXECUTOR)
        running.start(ServiceName.WORKFLOW)
        await running.serving(ServiceName.EXECUTOR, ServiceName.WORKFLOW)
        yield running
    finally:
        await clients.close()
        await asyncio.to_thread(fleet.stop)


async def test_a_killed_workflow_process_resumes_without_repeating_a_finished_step(
    stack: InProcessStack, kube: LocalCluster, processes: WorkflowProcesses
) -> None:
    target = await stuck_restart_target(kube)
    operator = stack.clients()
    ai_analysis = Clients(
        stack.settings,
        ServiceName.AI_ANALYSIS.account,
        addresses={ServiceName.WORKFLOW: f"localhost:{processes.ports[ServiceName.WORKFLOW]}"},
    )
    try:
        alert = alert_pb2.Alert(
            name="KubePodCrashLooping",
            status=alert_pb2.ALERT_STATUS_FIRING,
            labels={"namespace": target.namespace, "pod": "web-1"},
            source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
        )
        alert.starts_at.GetCurrentTime()
        incident_id, created = await restart_workflow(
            operator.stub(StorageServiceStub),
            ai_analysis.stub(WorkflowServiceStub),
            alert,
            target,
            confidence=0.9,
            reasons=["a test restart that cannot finish rolling out"],
        )
        workflow_id = created.workflow_id

        # The restart is applied (a second ReplicaSet) and the executor is verifying it.
        async def restarted() -> bool:
            return len(await replica_sets(kube, target.namespace)) == 2

        await eventually(restarted, "the restart to be applied", timeout=60)
        workflows = processes.clients.stub(WorkflowServiceStub)

        async def verifying() -> bool:
            found = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id)
            )
            verify = next(
                s for s in found.workflow.steps if s.kind == workflow_pb2.STEP_KIND_VERIFY
            )
            return bool(verify.state == workflow_pb2.STEP_STATE_RUNNING)

        # The workflow follows the executor's progress: it shows the verification running.
        await eventually(verifying, "the workflow to show the verification", timeout=30)
        processes.kill_workflow()
        processes.start(ServiceName.WORKFLOW)
        await processes.serving(ServiceName.WORKFLOW)

        async def finished() -> workflow_pb2.Workflow | None:
            found = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id)
            )
            workflow: workflow_pb2.Workflow = found.workflow
            return None if workflow.state == workflow_pb2.WORKFLOW_STATE_RUNNING else workflow

        done = await eventually(finished, "the resumed workflow to finish", timeout=120)

        # Verification timed out, so the executor rolled the restart back, once.
        assert done.state == workflow_pb2.WORKFLOW_STATE_ROLLED_BACK, done
        steps = {
            workflow_pb2.StepKind.Name(s.kind).removeprefix("STEP_KIND_"): s for s in done.steps
        }
        # VALIDATE and the stages the executor had finished were done before the kill and
        # were not run again; VERIFY was in progress and resumed (a second attempt that
        # joined the executor's first).
        assert steps["VALIDATE"].attempts == 1
        assert {kind: steps[kind].attempts for kind in ACTING} == {
            "DRY_RUN": 1,
            "SNAPSHOT": 1,
            "APPLY": 1,
            "VERIFY": 2,
        }
        assert steps["NOTIFY"].attempts == 1
        states = {kind: workflow_pb2.StepState.Name(step.state) for kind, step in steps.items()}
        assert states == {
            **dict.fromkeys(["VALIDATE", "DRY_RUN", "SNAPSHOT", "APPLY"], "STEP_STATE_DONE"),
            "VERIFY": "STEP_STATE_FAILED",
            "NOTIFY": "STEP_STATE_DONE",
        }
        assert "roll" in steps["VERIFY"].message.lower()

        got = await operator.stub(StorageServiceStub).GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=incident_id)
        )
        assert [(a.action, a.outcome) for a in got.actions] == [
            ("restart_deployment", storage_pb2.ACTION_OUTCOME_ROLLED_BACK)
        ]
        assert got.incident.status == storage_pb2.INCIDENT_STATUS_FAILED
        # One restart (one new ReplicaSet), undone: the original template runs again.
        sets = await replica_sets(kube, target.namespace)
        assert len(sets) == 2
        deployment = await kube_api(
            kube, "GET", f"/apis/apps/v1/namespaces/{target.namespace}/deployments/web"
        )
        template = deployment["spec"]["template"]["metadata"]
        assert "kubectl.kubernetes.io/restartedAt" not in (template.get("annotations") or {})
    finally:
        await operator.close()
        await ai_analysis.close()
