"""workflow over gRPC in the in-process stack: request validation, NOT_FOUND, a created
workflow that waits for approval (so that nothing needs a cluster), and a person's decision
on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from services.runtime.names import ServiceName
from services.workflows import decide_workflow, show_workflow
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually
from tests.fixtures.workflows import restart_workflow

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


_TARGET = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web")


def _recommendation(confidence: float) -> remediation_pb2.Recommendation:
    return remediation_pb2.Recommendation(
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=_TARGET,
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


# -- approval decisions -------------------------------------------------------------------------

ACTING = (
    workflow_pb2.STEP_KIND_DRY_RUN,
    workflow_pb2.STEP_KIND_SNAPSHOT,
    workflow_pb2.STEP_KIND_APPLY,
    workflow_pb2.STEP_KIND_VERIFY,
)
FINAL = (
    workflow_pb2.WORKFLOW_STATE_SUCCEEDED,
    workflow_pb2.WORKFLOW_STATE_FAILED,
    workflow_pb2.WORKFLOW_STATE_ROLLED_BACK,
    workflow_pb2.WORKFLOW_STATE_REFUSED,
)


def _steps(workflow: workflow_pb2.Workflow, kinds: tuple[int, ...]) -> list[workflow_pb2.StepRun]:
    return [step for step in workflow.steps if step.kind in kinds]


async def _workflow_in(
    operator: WorkflowServiceStub, workflow_id: str, states: tuple[int, ...], what: str
) -> workflow_pb2.Workflow:
    async def reached() -> workflow_pb2.Workflow | None:
        request = workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id)
        got = (await operator.GetWorkflow(request)).workflow
        return got if got.state in states else None

    return await eventually(reached, what, 30)


async def _waiting_workflow(
    stack: InProcessStack, ai_analysis: WorkflowServiceStub, operator: WorkflowServiceStub
) -> tuple[workflow_pb2.Workflow, str]:
    """A workflow waiting for approval, on an incident open in storage: (it, incident id)."""
    clients = stack.clients()
    try:
        incident_id, created = await restart_workflow(
            clients.stub(StorageServiceStub), ai_analysis, _alert(), _TARGET, confidence=0.2
        )
    finally:
        await clients.close()
    waiting = await _workflow_in(
        operator,
        created.workflow_id,
        (workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL,),
        "the workflow to wait for approval",
    )
    return waiting, incident_id


async def _incident(stack: InProcessStack, incident_id: str) -> storage_pb2.Incident:
    clients = stack.clients()
    try:
        got = await clients.stub(StorageServiceStub).GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=incident_id)
        )
    finally:
        await clients.close()
    incident: storage_pb2.Incident = got.incident
    return incident


def _decide(
    workflow_id: str,
    decision: workflow_pb2.ApprovalDecision.ValueType,
    approver: str = "bob",
    reason: str = "",
) -> workflow_pb2.DecideApprovalRequest:
    return workflow_pb2.DecideApprovalRequest(
        workflow_id=workflow_id, decision=decision, approver=approver, reason=reason
    )


async def _decided_and_ended(
    stack: InProcessStack,
    ai_analysis: WorkflowServiceStub,
    operator: WorkflowServiceStub,
    decision: workflow_pb2.ApprovalDecision.ValueType,
    approver: str,
    reason: str,
    approval_state: workflow_pb2.StepState.ValueType,
) -> tuple[workflow_pb2.Workflow, str, str]:
    """A waiting workflow decided on: its approval step finished in `approval_state` at
    once; then (the ended workflow, its incident id, the approval step's message)."""
    waiting, incident_id = await _waiting_workflow(stack, ai_analysis, operator)
    answer = await operator.DecideApproval(_decide(waiting.workflow_id, decision, approver, reason))
    assert answer.decided
    (approval,) = _steps(answer.workflow, (workflow_pb2.STEP_KIND_APPROVAL,))
    assert approval.state == approval_state
    done = await _workflow_in(operator, waiting.workflow_id, FINAL, "the workflow to end")
    return done, incident_id, approval.message


async def test_a_rejected_workflow_never_acts_closes_its_incident_and_stays_rejected(
    stack: InProcessStack, ai_analysis: WorkflowServiceStub, operator: WorkflowServiceStub
) -> None:
    done, incident_id, decided = await _decided_and_ended(
        stack,
        ai_analysis,
        operator,
        workflow_pb2.APPROVAL_DECISION_REJECT,
        " bob ",
        "not during the sale",
        workflow_pb2.STEP_STATE_FAILED,
    )
    assert decided == "rejected by bob: not during the sale"
    assert done.state == workflow_pb2.WORKFLOW_STATE_REFUSED
    assert "rejected by bob: not during the sale" in done.message
    for step in _steps(done, ACTING):
        # Never started: the executor was not called.
        assert step.state == workflow_pb2.STEP_STATE_SKIPPED, step
        assert step.attempts == 0, step
    (notify,) = _steps(done, (workflow_pb2.STEP_KIND_NOTIFY,))
    assert notify.attempts == 1
    incident = await _incident(stack, incident_id)
    assert incident.status == storage_pb2.INCIDENT_STATUS_NO_ACTION
    assert "rejected by bob" in incident.status_reason

    # A repeat is answered as it was; the other decision comes too late.
    again = await operator.DecideApproval(
        _decide(done.workflow_id, workflow_pb2.APPROVAL_DECISION_REJECT)
    )
    assert not again.decided
    assert again.workflow.state == workflow_pb2.WORKFLOW_STATE_REFUSED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operator.DecideApproval(
            _decide(done.workflow_id, workflow_pb2.APPROVAL_DECISION_APPROVE, "alice")
        )
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "decided already: rejected by bob" in (caught.value.details() or "")


async def test_an_approved_workflow_goes_on_to_act(
    stack: InProcessStack, ai_analysis: WorkflowServiceStub, operator: WorkflowServiceStub
) -> None:
    done, incident_id, decided = await _decided_and_ended(
        stack,
        ai_analysis,
        operator,
        workflow_pb2.APPROVAL_DECISION_APPROVE,
        "alice",
        "checked the dashboards",
        workflow_pb2.STEP_STATE_DONE,
    )
    assert decided == "approved by alice: checked the dashboards"
    # The in-process stack has no cluster: the executor, asked to act, answers that it
    # cannot. What matters here is that the workflow asked it.
    for step in _steps(done, ACTING):
        assert step.attempts == 1, step
        assert "rejected" not in step.message
    assert done.state == workflow_pb2.WORKFLOW_STATE_FAILED, done.message
    assert done.message.startswith("ExecuteAction: "), done.message
    assert "not configured" in done.message
    assert (await _incident(stack, incident_id)).status == storage_pb2.INCIDENT_STATUS_FAILED
    again = await operator.DecideApproval(
        _decide(done.workflow_id, workflow_pb2.APPROVAL_DECISION_APPROVE, "carol")
    )
    assert not again.decided


async def test_decide_approval_refuses_what_it_cannot_decide(
    ai_analysis: WorkflowServiceStub, operator: WorkflowServiceStub
) -> None:
    malformed = [
        (_decide("wf-1", workflow_pb2.APPROVAL_DECISION_APPROVE), "workflow_id"),
        (_decide(str(uuid.uuid4()), workflow_pb2.APPROVAL_DECISION_UNSPECIFIED), "decision"),
        (_decide(str(uuid.uuid4()), workflow_pb2.APPROVAL_DECISION_APPROVE, ""), "approver"),
        (_decide(str(uuid.uuid4()), workflow_pb2.APPROVAL_DECISION_APPROVE, "  "), "approver"),
    ]
    for request, field in malformed:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await operator.DecideApproval(request)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(caught.value)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operator.DecideApproval(
            _decide(str(uuid.uuid4()), workflow_pb2.APPROVAL_DECISION_APPROVE)
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    # Confident enough to need no approval: nothing to decide.
    created = await ai_analysis.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(
            incident_id=str(uuid.uuid4()), alert=_alert(), recommendation=_recommendation(0.95)
        )
    )
    assert not created.workflow.plan.requires_approval
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operator.DecideApproval(
            _decide(created.workflow.workflow_id, workflow_pb2.APPROVAL_DECISION_APPROVE)
        )
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "never needed approval" in (caught.value.details() or "")

    # Only people (operators) decide; the service that recommended the action does not.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ai_analysis.DecideApproval(
            _decide(created.workflow.workflow_id, workflow_pb2.APPROVAL_DECISION_APPROVE)
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_operators_decide_from_the_cli(
    stack: InProcessStack,
    ai_analysis: WorkflowServiceStub,
    operator: WorkflowServiceStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    waiting, incident_id = await _waiting_workflow(stack, ai_analysis, operator)
    clients = stack.clients()
    try:
        # `kubernaut workflows show` finds a workflow by its incident too.
        assert await show_workflow(clients, incident_id) == 0
        shown = capsys.readouterr().out
        assert waiting.workflow_id in shown
        assert "waiting_approval" in shown
        assert "approval   needed" in shown

        # By the incident's id, as the approval email names it.
        decided = await decide_workflow(clients, incident_id, "reject", "dana", "the change freeze")
        assert decided == 0
        printed = capsys.readouterr().out
        assert printed.startswith("rejected\n")
        assert "rejected by dana: the change freeze" in printed

        assert await decide_workflow(clients, waiting.workflow_id, "reject", "dana", "") == 0
        assert capsys.readouterr().out.startswith("already rejected before\n")

        assert await decide_workflow(clients, waiting.workflow_id, "approve", "erin", "") == 1
        assert "FAILED_PRECONDITION" in capsys.readouterr().err
        assert await show_workflow(clients, str(uuid.uuid4())) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
    finally:
        await clients.close()
