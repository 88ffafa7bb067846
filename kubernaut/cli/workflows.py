"""`kubernaut workflows show|watch|approve|reject`: a workflow's steps (now, or live as they
change), and a person's decision on one that waits for approval, over gRPC with the
operator's identity."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import remediation_pb2
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.tables import print_table, when_text
from kubernaut.runtime.clients import Clients
from kubernaut.services.alerts import subject_text
from kubernaut.services.workflow.watch import FINAL_STATES

DECISIONS = {
    "approve": workflow_pb2.APPROVAL_DECISION_APPROVE,
    "reject": workflow_pb2.APPROVAL_DECISION_REJECT,
}


def _name(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def state_of(workflow: workflow_pb2.Workflow) -> str:
    return _name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")


def acting(workflow: workflow_pb2.Workflow) -> bool:
    """Whether the workflow is acting now: a DRY_RUN to VERIFY step runs, or a runbook's
    ACTION, CHECK or COMPENSATE step."""
    kinds = (
        workflow_pb2.STEP_KIND_DRY_RUN,
        workflow_pb2.STEP_KIND_SNAPSHOT,
        workflow_pb2.STEP_KIND_APPLY,
        workflow_pb2.STEP_KIND_VERIFY,
        workflow_pb2.STEP_KIND_ACTION,
        workflow_pb2.STEP_KIND_CHECK,
        workflow_pb2.STEP_KIND_COMPENSATE,
    )
    return workflow.state == workflow_pb2.WORKFLOW_STATE_RUNNING and any(
        step.kind in kinds and step.state == workflow_pb2.STEP_STATE_RUNNING
        for step in workflow.steps
    )


def print_reasons(workflow: workflow_pb2.Workflow, label: str = "analysis") -> None:
    """Why the analysis recommended the action: its confidence and reasons."""
    recommendation = workflow.recommendation
    print(f"{label:<10} confidence {recommendation.confidence:.2f}")
    for reason in recommendation.reasons:
        print(f"  - {reason}")


def print_steps(workflow: workflow_pb2.Workflow) -> None:
    """The steps with when each started and finished; a running one says what it does
    ("applied 18:41:19, verifying, 45 s of 120 s")."""
    rows = [["STEP", "STATE", "ATTEMPTS", "STARTED (UTC)", "FINISHED (UTC)", "MESSAGE"]]
    rows += [
        [
            f"{_name(workflow_pb2.StepKind, step.kind, 'STEP_KIND_')} {step.node}".strip(),
            _name(workflow_pb2.StepState, step.state, "STEP_STATE_"),
            str(step.attempts),
            when_text(step.started_at),
            when_text(step.finished_at),
            step.message,
        ]
        for step in workflow.steps
    ]
    print_table(rows)


def print_workflow(workflow: workflow_pb2.Workflow) -> None:
    plan = workflow.plan
    print(f"workflow   {workflow.workflow_id}")
    print(f"incident   {workflow.incident_id}")
    print(f"state      {state_of(workflow)}  {workflow.message}")
    risk = _name(remediation_pb2.RiskLevel, plan.risk, "RISK_LEVEL_")
    print(f"action     {plan.action} on {subject_text(plan.target)} (risk {risk})")
    print_reasons(workflow)
    approval = "needed" if plan.requires_approval else "not needed"
    if plan.approvals_required > 1:
        approval += f" from {plan.approvals_required} different people"
    print(f"approval   {approval}: {plan.approval_reason or '-'}")
    if plan.runbook.name:
        print(
            f"runbook    {plan.runbook.name} {plan.runbook.version} ({len(plan.nodes)} steps,"
            f" at most {plan.max_parallel} at once)"
        )
    if plan.policy.rule:
        outcome = _name(workflow_pb2.PolicyOutcome, plan.policy.outcome, "POLICY_OUTCOME_")
        print(f"policy     {outcome} by rule {plan.policy.rule} of {plan.policy.policy}")
    if workflow.requested_by:
        print(f"requested  by {workflow.requested_by}")
    for decision in workflow.approvals:
        verb = _name(workflow_pb2.ApprovalDecision, decision.decision, "APPROVAL_DECISION_")
        why = f": {decision.reason}" if decision.reason else ""
        print(f"decided    {verb} by {decision.approver} {when_text(decision.decided_at)}{why}")
    print_steps(workflow)


async def workflow_of_incident(
    stub: WorkflowServiceStub, incident_id: str
) -> workflow_pb2.Workflow | None:
    """The incident's workflow; None when it has none (nothing was recommended)."""
    try:
        reply = await stub.GetWorkflow(workflow_pb2.GetWorkflowRequest(incident_id=incident_id))
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise
    found: workflow_pb2.Workflow = reply.workflow
    return found


async def _find(stub: WorkflowServiceStub, key: str) -> workflow_pb2.Workflow:
    """The workflow with id `key`, or the one of the incident `key` (emails name the
    incident). Raises the call's error when there is neither."""
    try:
        reply = await stub.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id=key))
    except grpc.aio.AioRpcError as error:
        if error.code() is not grpc.StatusCode.NOT_FOUND:
            raise
        reply = await stub.GetWorkflow(workflow_pb2.GetWorkflowRequest(incident_id=key))
    found: workflow_pb2.Workflow = reply.workflow
    return found


async def show_workflow(clients: Clients, key: str) -> int:
    """Print the workflow with id `key`, or the one of the incident `key`."""
    try:
        workflow = await _find(clients.stub(WorkflowServiceStub), key)
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut workflows: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print_workflow(workflow)
    return 0


async def decide_workflow(
    clients: Clients, key: str, decision: str, approver: str, reason: str
) -> int:
    """Approve or reject the workflow `key` (its id, or its incident's) that waits for
    approval; print what it became."""
    stub = clients.stub(WorkflowServiceStub)
    try:
        workflow = await _find(stub, key)
        reply = await stub.DecideApproval(
            workflow_pb2.DecideApprovalRequest(
                workflow_id=workflow.workflow_id,
                decision=DECISIONS[decision],
                approver=approver,
                reason=reason,
            )
        )
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut workflows: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    verb = "approved" if decision == "approve" else "rejected"
    print(f"{verb}" if reply.decided else f"already {verb} before")
    print_workflow(reply.workflow)
    return 0


# -- watch --------------------------------------------------------------------------------------

# A lost stream is opened again this many times in a row, after these waits (doubling).
WATCH_RECONNECTS = 5
WATCH_BACKOFF_SECONDS = 0.5
WATCH_BACKOFF_MAX_SECONDS = 8.0


def _clock(stamp: Timestamp) -> str:
    """HH:MM:SS in UTC."""
    return stamp.ToDatetime().strftime("%H:%M:%S")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def step_line(workflow: workflow_pb2.Workflow, event: workflow_pb2.StepEvent) -> str:
    """One step event as `workflows watch` prints it, at the time it happened (UTC):
    "12:01:03  step 4 apply (drain)  RUNNING  draining kwok-node-1"; the step's number
    counts from 1, its plan node (a runbook's) in brackets."""
    step = event.step
    finished = step.state in (
        workflow_pb2.STEP_STATE_DONE,
        workflow_pb2.STEP_STATE_FAILED,
        workflow_pb2.STEP_STATE_SKIPPED,
    )
    if finished and step.finished_at.ByteSize():
        at = step.finished_at
    elif step.state == workflow_pb2.STEP_STATE_RUNNING and step.started_at.ByteSize():
        at = step.started_at
    else:
        at = workflow.updated_at
    kind = _name(workflow_pb2.StepKind, step.kind, "STEP_KIND_")
    node = step.node
    if not node and event.index < len(workflow.plan.steps):
        node = workflow.plan.steps[event.index].node
    what = f"step {event.index + 1} {kind}" + (f" ({node})" if node else "")
    state = workflow_pb2.StepState.Name(step.state).removeprefix("STEP_STATE_")
    line = f"{_clock(at)}  {what}  {state}"
    if step.attempts > 1:
        line += f" (attempt {step.attempts})"
    message = _one_line(step.message)
    return f"{line}  {message}" if message else line


def state_line(workflow: workflow_pb2.Workflow) -> str:
    """The workflow's state and why: "12:01:05  workflow  WAITING_APPROVAL  waiting …"."""
    state = workflow_pb2.WorkflowState.Name(workflow.state).removeprefix("WORKFLOW_STATE_")
    message = _one_line(workflow.message)
    line = f"{_clock(workflow.updated_at)}  workflow  {state}"
    return f"{line}  {message}" if message else line


def final_line(workflow: workflow_pb2.Workflow) -> str:
    """What `workflows watch` ends with: the final state and why."""
    state = workflow_pb2.WorkflowState.Name(workflow.state).removeprefix("WORKFLOW_STATE_")
    message = _one_line(workflow.message)
    return f"workflow {workflow.workflow_id} {state}" + (f": {message}" if message else "")


def watch_exit_code(workflow: workflow_pb2.Workflow) -> int:
    return 0 if workflow.state == workflow_pb2.WORKFLOW_STATE_SUCCEEDED else 1


@dataclass
class WatchPrinter:
    """The lines `workflows watch` prints for each message of the stream: one for each step
    event not printed before (the first message of a stream, a reconnect's too, repeats
    every step as it stands; a step still pending is not news), and one when the workflow's
    state or message changes while it is not finished (the final state is printed last,
    by `final_line`). Pure: the messages in, the lines out."""

    steps: dict[int, workflow_pb2.StepRun] = field(default_factory=dict)
    headline: tuple[int, str] | None = None

    def lines(self, response: workflow_pb2.WatchWorkflowResponse) -> list[str]:
        workflow = response.workflow
        out: list[str] = []
        if self.headline is None:
            plan = workflow.plan
            out.append(
                f"workflow {workflow.workflow_id} (incident {workflow.incident_id}):"
                f" {plan.action} on {subject_text(plan.target)}; times UTC"
            )
        for event in sorted(response.events, key=lambda e: e.index):
            before = self.steps.get(event.index)
            if before == event.step:
                continue
            if before is None and event.step.state == workflow_pb2.STEP_STATE_PENDING:
                continue
            self.steps[event.index] = event.step
            out.append(step_line(workflow, event))
        headline = (workflow.state, workflow.message)
        if headline != self.headline and workflow.state not in FINAL_STATES:
            out.append(state_line(workflow))
        self.headline = headline
        return out


async def follow_workflow(
    stub: WorkflowServiceStub,
    key: str,
    emit: Callable[[str], None],
    *,
    reconnects: int = WATCH_RECONNECTS,
    backoff_seconds: float = WATCH_BACKOFF_SECONDS,
    backoff_max_seconds: float = WATCH_BACKOFF_MAX_SECONDS,
) -> workflow_pb2.Workflow:
    """Follow the workflow with id `key`, or the one of the incident `key`, until it
    finished, handing each line of WatchPrinter to `emit`; returns it as it ended. A stream
    lost (UNAVAILABLE, or one that ends before the workflow did) is opened again up to
    `reconnects` times in a row, with a doubling wait, and goes on printing only what is
    new. Raises the call's error otherwise (NOT_FOUND for neither, INVALID_ARGUMENT for a
    malformed id)."""
    printer = WatchPrinter()
    request = workflow_pb2.WatchWorkflowRequest(workflow_id=key)
    last: workflow_pb2.Workflow | None = None
    failures = 0
    while True:
        try:
            async for response in stub.WatchWorkflow(request):
                if last is None:
                    # From now on by its own id, whatever `key` was.
                    request = workflow_pb2.WatchWorkflowRequest(
                        workflow_id=response.workflow.workflow_id
                    )
                last = response.workflow
                failures = 0
                for line in printer.lines(response):
                    emit(line)
            if last is not None and last.state in FINAL_STATES:
                return last
            lost = "the stream ended before the workflow did"
        except grpc.aio.AioRpcError as error:
            if (
                error.code() is grpc.StatusCode.NOT_FOUND
                and last is None
                and request.HasField("workflow_id")
                and request.workflow_id == key
            ):
                request = workflow_pb2.WatchWorkflowRequest(incident_id=key)
                continue
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            lost = f"{error.code().name}: {error.details()}"
            if failures >= reconnects:
                raise
        if failures >= reconnects:
            raise ConnectionError(f"{lost}; gave up after {reconnects} reconnects")
        delay = min(backoff_seconds * 2**failures, backoff_max_seconds)
        failures += 1
        print(
            f"kubernaut workflows: stream lost ({lost}); reconnecting in {delay:g} s"
            f" ({failures}/{reconnects})",
            file=sys.stderr,
            flush=True,
        )
        await asyncio.sleep(delay)


async def watch_workflow(clients: Clients, key: str) -> int:
    """`kubernaut workflows watch KEY`: print each step as it changes, then the final
    state; 0 when the workflow succeeded, 1 otherwise."""

    def emit(line: str) -> None:
        print(line, flush=True)

    try:
        workflow = await follow_workflow(clients.stub(WorkflowServiceStub), key, emit)
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut workflows: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except ConnectionError as error:
        print(f"kubernaut workflows: {error}", file=sys.stderr)
        return 1
    print(final_line(workflow), flush=True)
    return watch_exit_code(workflow)
