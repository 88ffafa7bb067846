"""workflow over gRPC in the in-process stack: request validation, NOT_FOUND, a created
workflow that waits for approval (so that nothing needs a cluster), and a person's decision
on it."""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.incidents import show_incident
from kubernaut.cli.workflows import decide_workflow, show_workflow
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.executor import NOWHERE, Admin
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
    approver: str = "",
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
        # Who the caller says they are, and is: the dev stack's shared operator.
        " operator ",
        "not during the sale",
        workflow_pb2.STEP_STATE_FAILED,
    )
    assert decided == "rejected by operator: not during the sale"
    assert done.state == workflow_pb2.WORKFLOW_STATE_REFUSED
    assert "rejected by operator: not during the sale" in done.message
    for step in _steps(done, ACTING):
        # Never started: the executor was not called.
        assert step.state == workflow_pb2.STEP_STATE_SKIPPED, step
        assert step.attempts == 0, step
    (notify,) = _steps(done, (workflow_pb2.STEP_KIND_NOTIFY,))
    assert notify.attempts == 1
    incident = await _incident(stack, incident_id)
    assert incident.status == storage_pb2.INCIDENT_STATUS_NO_ACTION
    assert "rejected by operator" in incident.status_reason

    # A repeat is answered as it was; the other decision comes too late.
    again = await operator.DecideApproval(
        _decide(done.workflow_id, workflow_pb2.APPROVAL_DECISION_REJECT)
    )
    assert not again.decided
    assert again.workflow.state == workflow_pb2.WORKFLOW_STATE_REFUSED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operator.DecideApproval(
            _decide(done.workflow_id, workflow_pb2.APPROVAL_DECISION_APPROVE)
        )
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "operator rejected workflow" in (caught.value.details() or "")
    # A typed name is no identity: one that differs from the caller's is refused.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operator.DecideApproval(
            _decide(done.workflow_id, workflow_pb2.APPROVAL_DECISION_APPROVE, "alice")
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "authenticated as operator; approver 'alice' differs" in (caught.value.details() or "")


async def test_an_approved_workflow_goes_on_to_act(
    stack: InProcessStack, ai_analysis: WorkflowServiceStub, operator: WorkflowServiceStub
) -> None:
    done, incident_id, decided = await _decided_and_ended(
        stack,
        ai_analysis,
        operator,
        workflow_pb2.APPROVAL_DECISION_APPROVE,
        "",
        "checked the dashboards",
        workflow_pb2.STEP_STATE_DONE,
    )
    assert decided == "approved by operator: checked the dashboards"
    # The in-process stack has no cluster: the executor, asked to act, answers that it
    # cannot. What matters here is that the workflow asked it: the first acting step ran
    # and failed, the others never started.
    dry_run, *others = _steps(done, ACTING)
    assert dry_run.attempts == 1, dry_run
    assert dry_run.state == workflow_pb2.STEP_STATE_FAILED, dry_run
    assert "rejected" not in dry_run.message
    for step in others:
        assert (step.state, step.attempts) == (workflow_pb2.STEP_STATE_SKIPPED, 0), step
    assert done.state == workflow_pb2.WORKFLOW_STATE_FAILED, done.message
    assert done.message.startswith("ExecuteAction: "), done.message
    assert "not configured" in done.message
    assert (await _incident(stack, incident_id)).status == storage_pb2.INCIDENT_STATUS_FAILED
    again = await operator.DecideApproval(
        _decide(done.workflow_id, workflow_pb2.APPROVAL_DECISION_APPROVE)
    )
    assert not again.decided
    (approval,) = again.workflow.approvals
    assert approval.approver == "operator:operator"
    assert approval.decision == workflow_pb2.APPROVAL_DECISION_APPROVE
    assert approval.reason == "checked the dashboards"
    assert again.workflow.requested_by == "service:ai-analysis"


async def test_decide_approval_refuses_what_it_cannot_decide(
    ai_analysis: WorkflowServiceStub, operator: WorkflowServiceStub
) -> None:
    malformed = [
        (_decide("wf-1", workflow_pb2.APPROVAL_DECISION_APPROVE), "workflow_id"),
        (_decide(str(uuid.uuid4()), workflow_pb2.APPROVAL_DECISION_UNSPECIFIED), "decision"),
        (_decide(str(uuid.uuid4()), workflow_pb2.APPROVAL_DECISION_APPROVE, "a" * 201), "approver"),
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
        decided = await decide_workflow(clients, incident_id, "reject", "", "the change freeze")
        assert decided == 0
        printed = capsys.readouterr().out
        assert printed.startswith("rejected\n")
        assert "rejected by operator: the change freeze" in printed

        assert await decide_workflow(clients, waiting.workflow_id, "reject", "", "") == 0
        assert capsys.readouterr().out.startswith("already rejected before\n")

        # `--by` someone else is refused, not recorded.
        assert await decide_workflow(clients, waiting.workflow_id, "reject", "erin", "") == 1
        assert "PERMISSION_DENIED" in capsys.readouterr().err
        assert await decide_workflow(clients, waiting.workflow_id, "approve", "", "") == 1
        assert "FAILED_PRECONDITION" in capsys.readouterr().err
        assert await show_workflow(clients, str(uuid.uuid4())) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
    finally:
        await clients.close()


# -- what `kubernaut incidents show` tells --------------------------------------------------------

_STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def _cli_settings(stack: InProcessStack, **addresses: str) -> RuntimeSettings:
    """The operator's settings with where the stack's services (or `addresses`) listen."""
    where = {f"{name.value}_address": address for name, address in stack.addresses.items()}
    return stack.settings.model_copy(update={**where, **addresses})


async def test_incidents_show_gives_the_reasons_and_each_steps_times(
    stack: InProcessStack,
    ai_analysis: WorkflowServiceStub,
    operator: WorkflowServiceStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clients = stack.clients()
    try:
        storage = clients.stub(StorageServiceStub)
        incident_id, created = await restart_workflow(
            storage,
            ai_analysis,
            _alert(),
            _TARGET,
            confidence=0.2,
            reasons=["the pods crash-loop since 18:02", "a restart fixed this alert 3 times"],
        )
        await _workflow_in(
            operator,
            created.workflow_id,
            (workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL,),
            "the workflow to wait for approval",
        )
        # An incident nothing was recommended for: its status reason is the decline.
        declined = await storage.OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=uuid.uuid4().hex, alert=_alert(), subject=_TARGET
            )
        )
        await storage.UpdateIncident(
            storage_pb2.UpdateIncidentRequest(
                incident_id=declined.incident.incident_id,
                status=storage_pb2.INCIDENT_STATUS_NO_ACTION,
                status_reason="No rule handles alert KubeNodeNotReady",
            )
        )
    finally:
        await clients.close()

    assert await show_incident(_cli_settings(stack), incident_id) == 0
    shown = capsys.readouterr().out
    assert "analysis   recommended restart_deployment on Deployment shop/web" in shown
    assert "confidence 0.20" in shown
    assert "  - the pods crash-loop since 18:02\n" in shown
    assert "  - a restart fixed this alert 3 times\n" in shown
    assert f"workflow   {created.workflow_id}  waiting_approval" in shown
    assert re.search(r"STARTED \(UTC\)\s+FINISHED \(UTC\)", shown), shown
    # A finished step shows when it started and ended; one not started yet, neither.
    assert re.search(rf"validate\s+done\s+1\s+{_STAMP}\s+{_STAMP}\s+checked when planned", shown)
    assert re.search(rf"approval\s+running\s+1\s+{_STAMP}\s+-\s+waiting for approval", shown)
    assert re.search(r"apply\s+pending\s+0\s+-\s+-", shown), shown
    assert "actions\n  none\n" in shown  # not acting: waiting for a person

    assert await show_incident(_cli_settings(stack), declined.incident.incident_id) == 0
    shown = capsys.readouterr().out
    assert "analysis   no action recommended: No rule handles alert KubeNodeNotReady" in shown
    assert "workflow " not in shown


# -- progress while the real executor acts on the local cluster -----------------------------------


class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _by_kind(workflow: workflow_pb2.Workflow) -> dict[int, workflow_pb2.StepRun]:
    return {step.kind: step for step in workflow.steps}


def _at(stamp: Any) -> dt.datetime:
    assert stamp.ByteSize(), "unset"
    return stamp.ToDatetime(tzinfo=dt.UTC)  # type: ignore[no-any-return]


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("cleanup")
async def test_steps_advance_with_the_executor_and_a_long_action_is_no_outage(
    stack: InProcessStack,
    admin: Admin,
    runtime_settings: RuntimeSettings,
    database_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Scaling up pods that no node can take: verification runs its full timeout, then the
    # executor rolls back. 12 s is longer than the default call deadline (10 s), which
    # used to cut ExecuteAction short ("downstream unavailable; retrying").
    verify_timeout = 12
    ns = await admin.namespace()
    await admin.create(ns, replicas=0, node_selector=NOWHERE)
    target = alert_pb2.ResourceRef(namespace=ns, kind="Deployment", name="web")
    # A database of its own: the stack's workflow runners must not take this workflow.
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", database_dsn)
    monkeypatch.setenv("KUBECONFIG", str(admin.info.kubeconfig))
    # The rate guard has tests of its own: here the session's other actions on this
    # cluster (their executors share its database) would only couple the tests.
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_MAX_ACTIONS_PER_CLUSTER_PER_MINUTE", "0")
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_VERIFY_TIMEOUT_SECONDS", str(verify_timeout))
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_POLL_INTERVAL_SECONDS", "0.2")
    monkeypatch.setenv("KUBERNAUT_WORKFLOW_PROGRESS_POLL_SECONDS", "0.3")
    base = stack.beside(
        runtime_settings,
        ServiceName.STORAGE,
        ServiceName.EFFECTIVENESS,
        ServiceName.NOTIFICATION,
    )
    executor = await start_service(ServiceName.EXECUTOR, base, serve_metrics=False)
    settings = base.model_copy(update={"executor_address": executor.address})
    workflow_service = await start_service(ServiceName.WORKFLOW, settings, serve_metrics=False)
    here = {
        ServiceName.EXECUTOR: executor.address,
        ServiceName.WORKFLOW: workflow_service.address,
    }
    analysis = Clients(settings, ServiceName.AI_ANALYSIS.account, addresses=here)
    operator = stack.clients(settings=settings)
    operator.addresses.update(here)
    logs = _Logs()
    engine_log = logging.getLogger("kubernaut.services.workflow.engine")
    engine_log.addHandler(logs)
    level = engine_log.level
    engine_log.setLevel(logging.INFO)
    try:
        await wait_serving(operator, [ServiceName.EXECUTOR, ServiceName.WORKFLOW], timeout=30)
        alert = _alert()
        alert.name = "KubeDeploymentReplicasMismatch"
        alert.labels["namespace"] = ns
        opened = await operator.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=uuid.uuid4().hex, alert=alert, subject=target
            )
        )
        incident_id = opened.incident.incident_id
        created = await analysis.stub(WorkflowServiceStub).CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(
                incident_id=incident_id,
                alert=alert,
                recommendation=remediation_pb2.Recommendation(
                    action=remediation_pb2.ActionParams(
                        scale_deployment=remediation_pb2.ScaleDeploymentParams(replicas=2)
                    ),
                    target=target,
                    confidence=0.95,
                    reasons=["2 replicas wanted, 0 available"],
                ),
            )
        )
        workflow_id = created.workflow.workflow_id
        assert not created.workflow.plan.requires_approval
        workflows = operator.stub(WorkflowServiceStub)

        async def verifying() -> workflow_pb2.Workflow | None:
            got = (
                await workflows.GetWorkflow(
                    workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id)
                )
            ).workflow
            steps = _by_kind(got)
            if got.state != workflow_pb2.WORKFLOW_STATE_RUNNING:
                raise AssertionError(f"the workflow ended before verifying: {got}")
            running = steps[workflow_pb2.STEP_KIND_VERIFY].state == workflow_pb2.STEP_STATE_RUNNING
            return got if running else None

        mid = await eventually(verifying, "the workflow to show verification running", 60, 0.1)
        steps = _by_kind(mid)
        done_kinds = (
            workflow_pb2.STEP_KIND_DRY_RUN,
            workflow_pb2.STEP_KIND_SNAPSHOT,
            workflow_pb2.STEP_KIND_APPLY,
        )
        for kind in done_kinds:
            assert steps[kind].state == workflow_pb2.STEP_STATE_DONE, steps[kind]
            assert steps[kind].attempts == 1, steps[kind]
            assert _at(steps[kind].started_at) <= _at(steps[kind].finished_at)
        finishes = [_at(steps[kind].finished_at) for kind in done_kinds]
        assert finishes == sorted(finishes) and len(set(finishes)) == 3, finishes
        verify = steps[workflow_pb2.STEP_KIND_VERIFY]
        assert _at(verify.started_at) >= finishes[-1]
        assert not verify.finished_at.ByteSize()
        assert re.fullmatch(
            rf"applied \d\d:\d\d:\d\d, verifying, \d+ s of {verify_timeout} s", verify.message
        ), verify.message
        assert steps[workflow_pb2.STEP_KIND_DRY_RUN].message.startswith("dry-run: ok")
        assert steps[workflow_pb2.STEP_KIND_APPLY].message.startswith("apply: ")

        # The executor names the verification and its timeout.
        progress = await operator.stub(ExecutorServiceStub).GetActionProgress(
            executor_pb2.GetActionProgressRequest(action_id=mid.action_id)
        )
        assert progress.state == executor_pb2.ACTION_STATE_APPLIED
        assert progress.running
        assert progress.verify_timeout.ToTimedelta() == dt.timedelta(seconds=verify_timeout)
        assert _at(progress.verify_started_at) >= _at(progress.applied_at)
        lines = [stage.line.split(":")[0] for stage in progress.stages]
        assert lines[-4:] == ["plan", "dry-run", "snapshot", "apply"], lines
        assert all(stage.at.ByteSize() for stage in progress.stages)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await operator.stub(ExecutorServiceStub).GetActionProgress(
                executor_pb2.GetActionProgressRequest(action_id=str(uuid.uuid4()))
            )
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND

        # `kubernaut incidents show` mid-action: the action is in progress, not "none".
        cli = _cli_settings(stack, workflow_address=workflow_service.address)
        assert await show_incident(cli, incident_id) == 0
        shown = capsys.readouterr().out
        assert "actions: in progress (see workflow)" in shown
        assert re.search(r"verify\s+running\s+1\s+.*applied \d\d:\d\d:\d\d, verifying", shown)
        assert "  - 2 replicas wanted, 0 available" in shown
        assert "confidence 0.95" in shown

        async def ended() -> workflow_pb2.Workflow | None:
            got = (
                await workflows.GetWorkflow(
                    workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id)
                )
            ).workflow
            return got if got.state in FINAL else None

        done = await eventually(ended, "the workflow to end", 120, 0.2)
        assert done.state == workflow_pb2.WORKFLOW_STATE_ROLLED_BACK, done.message
        steps = _by_kind(done)
        acting = [steps[kind] for kind in ACTING]
        assert [s.state for s in acting] == [workflow_pb2.STEP_STATE_DONE] * 3 + [
            workflow_pb2.STEP_STATE_FAILED
        ]
        assert [s.attempts for s in acting] == [1, 1, 1, 1]
        ends = [_at(s.finished_at) for s in acting]
        assert ends == sorted(ends) and len(set(ends)) == 4, ends
        # Verification ran its timeout before the executor rolled back.
        verify = steps[workflow_pb2.STEP_KIND_VERIFY]
        assert (_at(verify.finished_at) - _at(verify.started_at)).total_seconds() >= verify_timeout
        assert "timed out" in verify.message

        # A call longer than the default deadline is one call, not an outage.
        assert any(
            m.startswith("calling ExecuteAction; deadline 300 s (verification up to 120 s")
            for m in logs.messages
        ), logs.messages
        assert "downstream unavailable; retrying" not in logs.messages

        assert await show_workflow(operator, workflow_id) == 0
        shown = capsys.readouterr().out
        assert re.search(rf"verify\s+failed\s+1\s+{_STAMP}\s+{_STAMP}\s+verify: failed", shown)
        assert await show_incident(cli, incident_id) == 0
        assert "scale_deployment  rolled_back" in capsys.readouterr().out
    finally:
        engine_log.removeHandler(logs)
        engine_log.setLevel(level)
        await analysis.close()
        await operator.close()
        await workflow_service.shutdown()
        await executor.shutdown()
