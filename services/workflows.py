"""`kubernaut workflows show|approve|reject`: a workflow's steps, and a person's decision on
one that waits for approval, over gRPC with the operator's identity."""

from __future__ import annotations

import sys

import grpc
from kubernaut.common.v1 import remediation_pb2
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from services.incidents import _subject, _when
from services.runtime.clients import Clients

DECISIONS = {
    "approve": workflow_pb2.APPROVAL_DECISION_APPROVE,
    "reject": workflow_pb2.APPROVAL_DECISION_REJECT,
}


def _name(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def print_workflow(workflow: workflow_pb2.Workflow) -> None:
    from services.cli import print_table

    plan = workflow.plan
    state = _name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")
    print(f"workflow   {workflow.workflow_id}")
    print(f"incident   {workflow.incident_id}")
    print(f"state      {state}  {workflow.message}")
    risk = _name(remediation_pb2.RiskLevel, plan.risk, "RISK_LEVEL_")
    print(f"action     {plan.action} on {_subject(plan.target)} (risk {risk})")
    approval = "needed" if plan.requires_approval else "not needed"
    print(f"approval   {approval}: {plan.approval_reason or '-'}")
    rows = [["STEP", "STATE", "ATTEMPTS", "FINISHED (UTC)", "MESSAGE"]]
    rows += [
        [
            _name(workflow_pb2.StepKind, step.kind, "STEP_KIND_"),
            _name(workflow_pb2.StepState, step.state, "STEP_STATE_"),
            str(step.attempts),
            _when(step.finished_at),
            step.message,
        ]
        for step in workflow.steps
    ]
    print_table(rows)


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
