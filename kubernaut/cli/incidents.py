"""`kubernaut incidents list|show`: what Kubernaut saw and did, read over gRPC from
storage with the operator's identity."""

from __future__ import annotations

import sys

import grpc
from kubernaut.common.v1 import remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.tables import print_table, subject_text, when_text
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.settings import RuntimeSettings


def _status(value: storage_pb2.IncidentStatus.ValueType) -> str:
    return str(storage_pb2.IncidentStatus.Name(value).removeprefix("INCIDENT_STATUS_").lower())


async def list_incidents(settings: RuntimeSettings, limit: int) -> int:
    clients = Clients(settings)
    try:
        reply = await clients.stub(StorageServiceStub).ListIncidents(
            storage_pb2.ListIncidentsRequest(page_size=limit)
        )
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut incidents: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    finally:
        await clients.close()
    rows = [["INCIDENT", "STATUS", "ALERT", "SUBJECT", "ALERTS", "OPENED (UTC)"]]
    rows += [
        [
            i.incident_id,
            _status(i.status),
            i.alert_name,
            subject_text(i.subject),
            str(i.occurrences),
            when_text(i.opened_at),
        ]
        for i in reply.incidents
    ]
    print_table(rows)
    return 0


async def show_incident(settings: RuntimeSettings, incident_id: str) -> int:
    """The incident as storage records it, with its workflow when it has one: why the
    action was chosen, and its steps as they run."""
    from kubernaut.cli.workflows import (
        acting,
        print_reasons,
        print_steps,
        state_of,
        workflow_of_incident,
    )

    clients = Clients(settings)
    try:
        reply = await clients.stub(StorageServiceStub).GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=incident_id)
        )
        try:
            workflow = await workflow_of_incident(clients.stub(WorkflowServiceStub), incident_id)
            unreadable = ""
        except grpc.aio.AioRpcError as error:
            # The record stands on its own; say why the workflow part is missing.
            workflow, unreadable = None, f"{error.code().name}: {error.details()}"
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut incidents: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    finally:
        await clients.close()
    incident = reply.incident
    print(f"incident   {incident.incident_id}")
    print(f"status     {_status(incident.status)}  {incident.status_reason}")
    if incident.after_close:
        print(f"after close {incident.after_close}")
    print(f"alert      {incident.alert_name} ({incident.occurrences} alerts)")
    print(f"subject    {subject_text(incident.subject)}")
    print(f"opened     {when_text(incident.opened_at)}   closed {when_text(incident.closed_at)}")
    print(f"trace      {incident.trace_id or '-'}")
    if workflow is not None:
        plan = workflow.plan
        print(f"analysis   recommended {plan.action} on {subject_text(plan.target)}")
        print_reasons(workflow, "")
        print(f"workflow   {workflow.workflow_id}  {state_of(workflow)}  {workflow.message}")
        print_steps(workflow)
    elif unreadable:
        print(f"analysis   - (the workflow could not be read: {unreadable})")
    else:
        # Nothing recommended: the status reason is the analysis' decline.
        print(f"analysis   no action recommended: {incident.status_reason or '-'}")
    if not reply.actions and workflow is not None and acting(workflow):
        print("actions: in progress (see workflow)")
        return _print_assessments(reply)
    print("actions")
    for action in reply.actions:
        outcome = storage_pb2.ActionOutcome.Name(action.outcome).removeprefix("ACTION_OUTCOME_")
        when = when_text(action.started_at)
        print(f"  {when}  {action.action}  {outcome.lower()}  {action.message}")
    if not reply.actions:
        print("  none")
    return _print_assessments(reply)


def _print_assessments(reply: storage_pb2.GetIncidentResponse) -> int:
    print("assessments")
    for assessment in reply.assessments:
        verdict = remediation_pb2.Verdict.Name(assessment.verdict).removeprefix("VERDICT_")
        delay = assessment.delay.ToTimedelta().total_seconds()
        print(f"  +{delay:g}s  {verdict.lower()}  {'; '.join(assessment.evidence)}")
    if not reply.assessments:
        print("  none yet")
    return 0
