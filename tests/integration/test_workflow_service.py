"""workflow over gRPC in the in-process stack: request validation, NOT_FOUND, and a created
workflow that waits for approval (so that nothing needs a cluster)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from services.runtime.names import ServiceName
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def ai_analysis(stack: InProcessStack) -> AsyncIterator[WorkflowServiceStub]:
    """WorkflowService as ai_analysis calls it."""
    clients = stack.clients(ServiceName.AI_ANALYSIS.account)
    try:
        yield clients.stub(WorkflowServiceStub)
    finally:
        await clients.close()


@pytest_asyncio.fixture
async def operator(stack: InProcessStack) -> AsyncIterator[WorkflowServiceStub]:
    clients = stack.clients()
    try:
        yield clients.stub(WorkflowServiceStub)
    finally:
        await clients.close()


def _alert() -> alert_pb2.Alert:
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": "shop"},
    )
    alert.starts_at.GetCurrentTime()
    return alert


def _recommendation(confidence: float) -> remediation_pb2.Recommendation:
    return remediation_pb2.Recommendation(
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web"),
        confidence=confidence,
    )


async def test_create_workflow_validates_the_request(ai_analysis: WorkflowServiceStub) -> None:
    resolved = _alert()
    resolved.status = alert_pb2.ALERT_STATUS_RESOLVED  # never starts a workflow
    malformed = [
        (
            workflow_pb2.CreateWorkflowRequest(
                incident_id="not-a-uuid", alert=_alert(), recommendation=_recommendation(0.9)
            ),
            "incident_id",
        ),
        (
            workflow_pb2.CreateWorkflowRequest(
                incident_id=str(uuid.uuid4()), recommendation=_recommendation(0.9)
            ),
            "alert",
        ),
        (
            workflow_pb2.CreateWorkflowRequest(incident_id=str(uuid.uuid4()), alert=_alert()),
            "recommendation",
        ),
        (
            workflow_pb2.CreateWorkflowRequest(
                incident_id=str(uuid.uuid4()),
                alert=resolved,
                recommendation=_recommendation(0.9),
            ),
            "alert.status",
        ),
    ]
    for request, field in malformed:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ai_analysis.CreateWorkflow(request)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)


async def test_get_workflow_not_found_and_malformed(operator: WorkflowServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operator.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id=str(uuid.uuid4())))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operator.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="wf-1"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "workflow_id" in field_violations(caught.value)


async def test_ai_analysis_may_not_read_workflows(ai_analysis: WorkflowServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ai_analysis.GetWorkflow(
            workflow_pb2.GetWorkflowRequest(workflow_id=str(uuid.uuid4()))
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_create_workflow_persists_once_and_waits_for_approval(
    ai_analysis: WorkflowServiceStub, operator: WorkflowServiceStub
) -> None:
    # Low confidence: the plan needs approval, so the workflow stops before acting.
    request = workflow_pb2.CreateWorkflowRequest(
        incident_id=str(uuid.uuid4()), alert=_alert(), recommendation=_recommendation(0.2)
    )
    first = await ai_analysis.CreateWorkflow(request)
    assert first.created
    workflow = first.workflow
    uuid.UUID(workflow.workflow_id)
    uuid.UUID(workflow.action_id)
    assert workflow.incident_id == request.incident_id
    assert workflow.plan.action == "restart_deployment"
    assert workflow.plan.requires_approval
    assert [s.kind for s in workflow.steps][:2] == [
        workflow_pb2.STEP_KIND_VALIDATE,
        workflow_pb2.STEP_KIND_APPROVAL,
    ]
    assert workflow.alert.name == "KubePodCrashLooping"

    again = await ai_analysis.CreateWorkflow(request)
    assert not again.created
    assert again.workflow.workflow_id == workflow.workflow_id
    assert again.workflow.action_id == workflow.action_id

    async def waiting_approval() -> workflow_pb2.Workflow | None:
        got = (
            await operator.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=workflow.workflow_id)
            )
        ).workflow
        return got if got.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL else None

    got = await eventually(waiting_approval, "the workflow to wait for approval", 30)
    assert got.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
    assert "waiting for approval" in got.message
    assert [s.state for s in got.steps][:3] == [
        workflow_pb2.STEP_STATE_DONE,
        workflow_pb2.STEP_STATE_RUNNING,
        workflow_pb2.STEP_STATE_PENDING,
    ]
    assert got.steps[0].attempts == 1
    assert got.updated_at.ToDatetime() >= got.created_at.ToDatetime()
