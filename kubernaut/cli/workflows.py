"""`kubernaut workflows show|approve|reject`: a workflow's steps, and a person's decision on
one that waits for approval, over gRPC with the operator's identity."""

from __future__ import annotations

import sys

import grpc
from kubernaut.common.v1 import remediation_pb2
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.tables import print_table, when_text
from kubernaut.runtime.clients import Clients
from kubernaut.services.alerts import subject_text

DECISIONS = {
    "approve": workflow_pb2.APPROVAL_DECISION_APPROVE,
    "reject": workflow_pb2.APPROVAL_DECISION_REJECT,
}


def _name(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def state_of(workflow: workflow_pb2.Workflow) -> str:
    return _name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")


def acting(workflow: workflow_pb2.Workflow) -> bool:
    """Whether the workflow is running its action now (a DRY_RUN to VERIFY step runs)."""
    kinds = (
        workflow_pb2.STEP_KIND_DRY_RUN,
        workflow_pb2.STEP_KIND_SNAPSHOT,
        workflow_pb2.STEP_KIND_APPLY,
        workflow_pb2.STEP_KIND_VERIFY,
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
            _name(workflow_pb2.StepKind, step.kind, "STEP_KIND_"),
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
