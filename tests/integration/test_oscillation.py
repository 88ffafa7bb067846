"""Flapping is stopped after the threshold, through the real services: a workload that had
two successful fixes within the hour (beyond the settle time, so no other guard holds
them) gets a third plan, which waits for a person instead of acting, and the approval
request people receive says it oscillates. Storage's action records are the history."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually
from tests.fixtures.workflows import restart_workflow

pytestmark = pytest.mark.integration


def _at(minutes_ago: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago))
    return stamp


async def test_a_third_fix_within_the_hour_waits_for_a_person_and_people_are_told(
    stack: InProcessStack,
) -> None:
    namespace = f"flap-{uuid.uuid4().hex[:8]}"
    target = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="checkout")
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": namespace, "pod": "checkout-a-1"},
        starts_at=_at(1),
    )
    operator = stack.clients()
    executor = stack.clients("executor")
    analysis = stack.clients("ai-analysis")
    try:
        storage = operator.stub(StorageServiceStub)
        # Two restarts that worked, 40 and 15 minutes ago (each for an incident of its own).
        for minutes in (40, 15):
            opened = await storage.OpenIncident(
                storage_pb2.OpenIncidentRequest(
                    fingerprint=uuid.uuid4().hex, alert=alert, subject=target
                )
            )
            record = storage_pb2.ActionRecord(
                action_id=str(uuid.uuid4()),
                incident_id=opened.incident.incident_id,
                alert_name=alert.name,
                action="restart_deployment",
                target=target,
                outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED,
                started_at=_at(minutes + 0.5),
                finished_at=_at(minutes),
                params=remediation_pb2.ActionParams(
                    restart_deployment=remediation_pb2.RestartDeploymentParams()
                ),
            )
            await executor.stub(StorageServiceStub).RecordAction(
                storage_pb2.RecordActionRequest(record=record)
            )
        mails_before = len(stack.mail.messages())
        # A third, confident plan: it would run on its own, but the workload oscillates.
        _, created = await restart_workflow(
            storage, analysis.stub(WorkflowServiceStub), alert, target, confidence=0.95
        )
        assert created.plan.requires_approval, created.plan
        reason = created.plan.approval_reason
        assert f"Deployment {namespace}/checkout oscillates: 2 actions within 1.0h" in reason
        assert "KUBERNAUT_WORKFLOW_OSCILLATION_ACTIONS" in reason
        workflows = operator.stub(WorkflowServiceStub)

        async def waiting() -> workflow_pb2.Workflow | None:
            got = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=created.workflow_id)
            )
            held = got.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
            return got.workflow if held else None

        await eventually(waiting, "the third plan to wait for a person", 60)

        async def told() -> str | None:
            for mail in stack.mail.messages()[mails_before:]:
                body = mail.message.get_body(("plain",))
                text = body.get_content() if body is not None else ""
                if "oscillates" in text and namespace in text:
                    return str(text)
            return None

        await eventually(told, "the approval request saying the workload oscillates", 60)
    finally:
        await operator.close()
        await executor.close()
        await analysis.close()
