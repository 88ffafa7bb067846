"""`kubernaut incidents list|show`: what Kubernaut saw and did, read over gRPC from
storage with the operator's identity."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc
from kubernaut.common.v1 import remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.identity import SHARED_OPERATOR, CliIdentity
from kubernaut.cli.tables import print_table, when_text
from kubernaut.devstack.jaeger import trace_url
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.alerts import subject_text


def trace_ui_url(settings: RuntimeSettings) -> str:
    """The trace UI to link to: KUBERNAUT_TRACE_UI_URL, else the dev stack's Jaeger while
    it runs (`kubernaut up` and the demo set the variable only for their own processes,
    and `incidents show` runs in another shell), else "" (no link)."""
    if settings.trace_ui_url:
        return settings.trace_ui_url
    from kubernaut.devstack.stack import DevStack

    jaeger = DevStack(settings.state_dir).running("jaeger")
    return jaeger.url if jaeger is not None else ""


def _status(value: storage_pb2.IncidentStatus.ValueType) -> str:
    return str(storage_pb2.IncidentStatus.Name(value).removeprefix("INCIDENT_STATUS_").lower())


async def list_incidents(
    settings: RuntimeSettings, limit: int, *, identity: CliIdentity = SHARED_OPERATOR
) -> int:
    clients = identity.clients(settings)
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


async def show_incident(
    settings: RuntimeSettings,
    incident_id: str,
    prompt: bool = False,
    *,
    identity: CliIdentity = SHARED_OPERATOR,
) -> int:
    """The incident as storage records it, with its workflow when it has one: why the
    action was chosen, and its steps as they run; and each analysis on the record, with
    the model's part in it (the redacted prompt too with `prompt`: it is long)."""
    from kubernaut.cli.workflows import (
        acting,
        print_reasons,
        print_steps,
        state_of,
        workflow_of_incident,
    )

    clients = identity.clients(settings)
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
    ui_url = trace_ui_url(settings)
    if incident.trace_id and ui_url:
        print(f"trace link {trace_url(ui_url, incident.trace_id)}")
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
    print_analyses(reply.analyses, prompt=prompt)
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


def print_analyses(
    analyses: Sequence[storage_pb2.RecordedAnalysis], *, prompt: bool = False
) -> None:
    """Each analysis on the record, oldest first: what it decided and why, and how a model
    took part (or why the rules decided without one)."""
    print("analyses")
    for recorded in analyses:
        analysis = recorded.analysis
        decision = remediation_pb2.Decision.Name(analysis.decision).removeprefix("DECISION_")
        what = ""
        if analysis.HasField("recommendation"):
            recommendation = analysis.recommendation
            action = recommendation.action.WhichOneof("params") or "-"
            what = f"  {action} on {subject_text(recommendation.target)}"
            what += f"  confidence {recommendation.confidence:.2f}"
        when = when_text(recorded.recorded_at)
        by = _line(analysis.analyzer) or "-"
        print(f"  {when}  {decision.lower().replace('_', ' ')} by {by}{what}")
        for reason in analysis.reasons:
            print(f"    - {_line(reason)}")
        if analysis.recommendation.approval_required:
            print(
                f"    approval   required: {_line(analysis.recommendation.approval_reason) or '-'}"
            )
        if analysis.HasField("reasoning"):
            _print_reasoning(analysis.reasoning, prompt=prompt)
    if not analyses:
        print("  none recorded")


# Control characters (ANSI escapes, carriage returns, newlines) shown escaped: the answer and
# the tool arguments are a model's words, which data it read may have steered, and must not
# rewrite the operator's terminal or forge lines of this output.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def _line(text: str) -> str:
    return text.translate(_CONTROL)


def _print_reasoning(reasoning: remediation_pb2.ModelReasoning, *, prompt: bool) -> None:
    # Labels indented under the analysis they belong to, aligned like the incident's own.
    if reasoning.provider:
        print(f"    model      {_line(reasoning.provider)}/{_line(reasoning.model) or '-'}")
    if reasoning.guard:
        print(f"    guard      {_line(reasoning.guard)}")
    if reasoning.asked_after_the_plan:
        print("    asked      after the plan went ahead: its view, for the record")
    if reasoning.validation:
        print(f"    validation {_line(reasoning.validation)}")
    if reasoning.provider or reasoning.input_tokens or reasoning.output_tokens:
        print(
            f"    usage      {reasoning.input_tokens} tokens in, {reasoning.output_tokens} out,"
            f" ${reasoning.cost_usd:.4f}, {reasoning.latency_seconds:.2f} s"
        )
    for use in reasoning.tool_uses:
        # A digest prefix is enough to match a result against the evidence it came from.
        digest = _line(use.result_sha256[:12]) or "-"
        print(
            f"    tool       {_line(use.name)} {_line(use.arguments) or '{}'}"
            f"  -> sha256 {digest} ({use.result_chars} chars)"
        )
    if reasoning.answer:
        print(f"    answer     {_line(reasoning.answer)}")
    if reasoning.fallback_reason:
        why = _line(reasoning.fallback_reason)
        if reasoning.guard == "rules first":
            print(f"    first      {why}")
        else:
            print(f"    fallback   the rules decided without the model: {why}")
    if prompt and reasoning.prompt:
        print("    prompt (redacted)")
        for line in reasoning.prompt.splitlines():
            print(f"      {_line(line)}".rstrip())
    elif reasoning.prompt:
        print(f"    prompt     {len(reasoning.prompt)} chars, redacted (shown with --prompt)")


def _print_assessments(reply: storage_pb2.GetIncidentResponse) -> int:
    print("assessments")
    for assessment in reply.assessments:
        verdict = remediation_pb2.Verdict.Name(assessment.verdict).removeprefix("VERDICT_")
        delay = assessment.delay.ToTimedelta().total_seconds()
        print(f"  +{delay:g}s  {verdict.lower()}  {'; '.join(assessment.evidence)}")
    if not reply.assessments:
        print("  none yet")
    return 0
