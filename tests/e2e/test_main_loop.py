"""Kubernaut's main job end to end, through the real AlertManager: a bad rollout
crash-loops, the alert arrives (several times), exactly one rollback fixes it, the action
and its assessment are stored, one email goes out, and the incident is one trace. And a
workflow held for approval acts on the cluster once a person approves it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.workflows import decide_workflow
from kubernaut.devstack.kube import default_bin_dir
from kubernaut.devstack.model import LlamaBuild
from kubernaut.devstack.processes import free_port, free_port_base
from kubernaut.devstack.scenario import GOOD_IMAGE, BadRollout
from kubernaut.devstack.smtp import read_mailbox
from kubernaut.devstack.stack import DevStack, StackInfo
from kubernaut.devstack.system import System, Tuning, running_system, webhook_token_file
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.waiting import eventually
from tests.fixtures.workflows import restart_workflow

pytestmark = pytest.mark.e2e


@dataclass
class Loop:
    system: System
    dev: StackInfo
    state_dir: Path
    clients: Clients

    def storage(self) -> StorageServiceStub:
        return self.clients.stub(StorageServiceStub)

    def log_lines(self, service: str) -> list[dict[str, object]]:
        path = self.state_dir / "logs" / f"{service}.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
async def loop(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Loop]:
    state_dir = tmp_path_factory.mktemp("e2e")
    edge_port = free_port()
    bin_dir = default_bin_dir()  # before KUBERNAUT_STATE_DIR points elsewhere
    llama_build = LlamaBuild.default()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBERNAUT_STATE_DIR", str(state_dir))
        env.setenv("KUBERNAUT_PORT_BASE", str(free_port_base()))
        env.setenv("KUBERNAUT_HTTP_PORT", str(edge_port))
        settings = RuntimeSettings()
        stack = DevStack(
            state_dir,
            webhook_url=f"http://127.0.0.1:{edge_port}/api/v1/alerts/alertmanager",
            alert_for="5s",
            group_interval="2s",
            # AlertManager re-sends the firing alert every few seconds: each must be
            # counted on the incident, never acted on again.
            repeat_interval="4s",
            k8s_bin_dir=bin_dir,
            # The local model on, as in `make demo`: ai_analysis asks it about every
            # incident, and the guard weighs its answer against the rules'.
            model=True,
            llama_build=llama_build,
        )
        dev = await asyncio.to_thread(stack.up, lambda line: None)
        tuning = Tuning(assessment_delays="3s,6s,30m", verify_timeout_seconds=60)
        try:
            async with running_system(settings, dev, tuning) as system:
                assert system.ready, (system.statuses, system.fleet.exited())
                clients = system.clients()
                yield Loop(system, dev, state_dir, clients)
                await clients.close()
        finally:
            await asyncio.to_thread(stack.down, lambda line: None)


async def _incident_for(loop: Loop, namespace: str) -> storage_pb2.GetIncidentResponse | None:
    storage = loop.storage()
    listed = await storage.ListIncidents(storage_pb2.ListIncidentsRequest(page_size=100))
    for incident in listed.incidents:
        if incident.subject.namespace == namespace:
            found: storage_pb2.GetIncidentResponse = await storage.GetIncident(
                storage_pb2.GetIncidentRequest(incident_id=incident.incident_id)
            )
            return found
    return None


async def test_a_bad_rollout_is_rolled_back_once_recorded_assessed_and_reported(loop: Loop) -> None:
    scenario = BadRollout(Path(loop.dev.detail("kubernetes", "kubeconfig")), "shop")
    mail_dir = Path(loop.dev.detail("smtp", "mail_dir"))
    mails_before = len(read_mailbox(mail_dir)) if mail_dir.exists() else 0
    try:
        await scenario.deploy()
        await scenario.break_it()
        # Fixed by Kubernaut alone: the good revision, every pod Ready.
        await eventually(scenario.healed, "the rollback", 240, interval=1)
        state = await scenario.state()
        assert state.image == GOOD_IMAGE and state.ready == state.replicas

        async def assessed() -> storage_pb2.GetIncidentResponse | None:
            found = await _incident_for(loop, "shop")
            return found if found is not None and found.assessments else None

        found = await eventually(assessed, "an assessment", 120, interval=1)

        # AlertManager re-sent the alert while it fired; it was counted, not re-acted on.
        async def resent() -> storage_pb2.GetIncidentResponse | None:
            again = await _incident_for(loop, "shop")
            return again if again is not None and again.incident.occurrences > 1 else None

        found = await eventually(resent, "a re-sent alert", 60, interval=1)
        # Every alert (one per crashing pod, re-sent, some after their pod was gone) is
        # the same problem: one incident on the Deployment.
        listed = await loop.storage().ListIncidents(storage_pb2.ListIncidentsRequest())
        assert [i.subject.namespace for i in listed.incidents].count("shop") == 1
        rollbacks = [a for a in found.actions if a.action == "rollback_deployment"]
        assert len(rollbacks) == 1, found.actions
        assert rollbacks[0].outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED
        assert GOOD_IMAGE in rollbacks[0].spec_after_json
        assert found.incident.subject.kind == "Deployment"
        assert found.assessments[0].action_id == rollbacks[0].action_id
        # The analysis acted on is the rules': shop is unguarded in the dev stack, so no
        # answer of the model could change the plan and the fix did not wait for it.
        acted_on = found.analyses[0].analysis
        assert acted_on.recommendation.action.HasField("rollback_deployment")
        assert acted_on.reasoning.guard == "rules first", acted_on.reasoning
        assert acted_on.reasoning.provider == "local"

        # The model's view follows on the record, within its time-out: either its answer
        # (validation and the guard's verdict) or, on this shared machine, why it had none.
        async def model_view() -> remediation_pb2.Analysis | None:
            again = await _incident_for(loop, "shop")
            assert again is not None
            views = [
                a.analysis for a in again.analyses if a.analysis.reasoning.asked_after_the_plan
            ]
            return views[0] if views else None

        view = await eventually(model_view, "the model's view", 120, interval=1)
        reasoning = view.reasoning
        assert reasoning.provider == "local" and reasoning.model == "smollm2-135m", reasoning
        assert "KubePodCrashLooping" in reasoning.prompt
        # Whatever it said, the plan it is weighed into is the one that ran.
        assert view.recommendation.action.HasField("rollback_deployment")
        if not reasoning.fallback_reason:
            assert reasoning.input_tokens > 0 and reasoning.answer, reasoning
            assert reasoning.validation == "valid"
            assert "no approval" in reasoning.guard or reasoning.guard == "agreed", reasoning

        async def one_mail() -> list[object]:
            mails = read_mailbox(mail_dir)[mails_before:] if mail_dir.exists() else []
            return [m for m in mails if found.incident.incident_id in str(m)]

        mails = await eventually(one_mail, "the email", 60, interval=1)
        await asyncio.sleep(3)  # a second one would come now
        assert len(await one_mail()) == 1, mails
        # One trace id on every hop of the incident.
        trace_id = found.incident.trace_id
        assert trace_id
        for service in (
            "gateway",
            "alert_processor",
            "ai_analysis",
            "context_api",
            "workflow",
            "executor",
            "storage",
            "notification",
        ):
            assert any(line.get("trace_id") == trace_id for line in loop.log_lines(service)), (
                service
            )
    finally:
        await scenario.close()


async def test_a_resolved_only_webhook_causes_no_action(loop: Loop) -> None:
    body = {
        "version": "4",
        "status": "resolved",
        "receiver": "kubernaut",
        "alerts": [
            {
                "status": "resolved",
                "labels": {"alertname": "KubePodCrashLooping", "namespace": "quiet", "pod": "x-1"},
                "annotations": {},
                "startsAt": "2026-11-26T10:00:00Z",
                "endsAt": "2026-11-26T10:05:00Z",
            }
        ],
    }
    token = Path(webhook_token_file(loop.dev)).read_text().strip()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        reply = await http.post(f"{loop.system.edge_url}/api/v1/alerts/alertmanager", json=body)
        # Without the token the edge refuses, before looking at the body.
        stranger = await http.post(
            f"{loop.system.edge_url}/api/v1/alerts/alertmanager",
            json=body,
            headers={"Authorization": "Bearer not-the-token"},
        )
    assert stranger.status_code == 401
    assert reply.status_code == 200
    assert reply.json()["outcomes"][0]["disposition"] == "ALERT_DISPOSITION_IGNORED_RESOLVED"
    assert await _incident_for(loop, "quiet") is None


async def test_a_namespace_not_opted_in_is_left_alone_and_the_incident_says_why(loop: Loop) -> None:
    scenario = BadRollout(
        Path(loop.dev.detail("kubernetes", "kubeconfig")), "untouched", opted_in=False
    )
    try:
        await scenario.deploy()
        await scenario.break_it()

        async def closed() -> storage_pb2.GetIncidentResponse | None:
            found = await _incident_for(loop, "untouched")
            return found if found is not None and found.incident.closed_at.ByteSize() else None

        found = await eventually(closed, "the incident to be closed", 180, interval=1)
        assert found.incident.status == storage_pb2.INCIDENT_STATUS_NO_ACTION
        assert "kubernaut.ai/managed" in found.incident.status_reason
        assert all(a.outcome == storage_pb2.ACTION_OUTCOME_REFUSED for a in found.actions)
        state = await scenario.state()
        assert state.simulate, "the deployment must not have been changed"
    finally:
        await scenario.close()


async def test_a_workflow_held_for_approval_acts_once_a_person_approves(loop: Loop) -> None:
    scenario = BadRollout(Path(loop.dev.detail("kubernetes", "kubeconfig")), "approvals")
    target = alert_pb2.ResourceRef(namespace="approvals", kind="Deployment", name=scenario.name)
    alert = alert_pb2.Alert(
        name="KubeDeploymentReplicasMismatch",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": "approvals", "deployment": scenario.name},
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    alert.starts_at.GetCurrentTime()
    analysis = Clients(loop.system.settings, ServiceName.AI_ANALYSIS.account)
    try:
        await scenario.deploy()
        # What ai_analysis does with a recommendation it is unsure of.
        _, created = await restart_workflow(
            loop.storage(), analysis.stub(WorkflowServiceStub), alert, target, confidence=0.2
        )
        workflows = loop.clients.stub(WorkflowServiceStub)

        async def in_state(*states: int) -> workflow_pb2.Workflow | None:
            got = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=created.workflow_id)
            )
            return got.workflow if got.workflow.state in states else None

        await eventually(
            lambda: in_state(workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL), "waiting", 60
        )
        # Nothing acted while it waited.
        waiting = await _incident_for(loop, "approvals")
        assert waiting is not None and not waiting.actions

        decided = await decide_workflow(
            loop.clients, created.workflow_id, "approve", "alice", "restart is safe"
        )
        assert decided == 0
        done = await eventually(
            lambda: in_state(
                workflow_pb2.WORKFLOW_STATE_SUCCEEDED,
                workflow_pb2.WORKFLOW_STATE_FAILED,
                workflow_pb2.WORKFLOW_STATE_ROLLED_BACK,
                workflow_pb2.WORKFLOW_STATE_REFUSED,
            ),
            "the approved workflow to end",
            180,
            interval=1,
        )
        assert done.state == workflow_pb2.WORKFLOW_STATE_SUCCEEDED, done.message
        found = await _incident_for(loop, "approvals")
        assert found is not None
        (restart,) = found.actions
        assert restart.action == "restart_deployment"
        assert restart.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED
        assert "kubectl.kubernetes.io/restartedAt" in restart.spec_after_json
        assert found.incident.status == storage_pb2.INCIDENT_STATUS_REMEDIATED
        assert (await scenario.state()).healthy
    finally:
        await analysis.close()
        await scenario.close()
