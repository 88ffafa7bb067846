"""What the console's pages show, read through the services' gRPC APIs with the signed-in
person's token: plain data for the templates, testable without a browser.

Nothing secret is shown: incidents, workflows and analyses hold no credentials (the
record is redacted where it is made), and the console shows only those.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import remediation_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.effectiveness.v1.effectiveness_pb2_grpc import EffectivenessServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.runtime.audit import DELIVERY_METHOD_PREFIX
from kubernaut.services.alerts import subject_text

# The incidents a list shows at most.
LIST_SIZE: Final = 200
# The overview asks how well fixes worked for this many of the commonest alerts.
EFFECTIVENESS_ALERTS: Final = 5
# A diff longer than this many lines is cut (a spec is normally a few dozen).
MAX_DIFF_LINES: Final = 400


def when(stamp: Timestamp) -> str:
    if not stamp.ByteSize():
        return ""
    return stamp.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(stamp: Timestamp, now: dt.datetime) -> str:
    """'3m', '2h', '5d' since `stamp`."""
    if not stamp.ByteSize():
        return ""
    seconds = max(0, int((now - stamp.ToDatetime(tzinfo=dt.UTC)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def status_name(value: storage_pb2.IncidentStatus.ValueType) -> str:
    return storage_pb2.IncidentStatus.Name(value).removeprefix("INCIDENT_STATUS_").lower()


def state_name(value: workflow_pb2.WorkflowState.ValueType) -> str:
    return workflow_pb2.WorkflowState.Name(value).removeprefix("WORKFLOW_STATE_").lower()


@dataclass(frozen=True)
class IncidentRow:
    incident_id: str
    status: str
    alert: str
    subject: str
    cluster: str
    age: str
    opened: str
    reason: str
    # The latest action taken for it and its outcome ("rollback_deployment: succeeded").
    action: str = ""

    def matches(self, text: str) -> bool:
        """`text` (any case) is in its alert, subject or cluster: the list's search."""
        folded = text.casefold()
        return any(folded in field.casefold() for field in (self.alert, self.subject, self.cluster))


@dataclass(frozen=True)
class TimelineEntry:
    at: str
    what: str
    outcome: str = ""
    detail: str = ""


@dataclass(frozen=True)
class ActionView:
    action: str
    target: str
    outcome: str
    message: str
    started: str
    # A unified diff of the target's spec, before to after.
    diff: tuple[str, ...]


@dataclass(frozen=True)
class ModelView:
    """How a model took part in an analysis, as the record has it (the prompt is redacted
    where the record is made)."""

    provider: str
    model: str
    answer: str
    validation: str
    guard: str
    fallback_reason: str
    tools: tuple[str, ...]
    tokens: str
    latency: str
    prompt: str
    # Asked after the rules' plan went ahead: the model's view, for the record.
    after_the_plan: bool


@dataclass(frozen=True)
class AnalysisView:
    analyzer: str
    decision: str
    reasons: tuple[str, ...]
    model: ModelView | None


def analysis_view(analysis: remediation_pb2.Analysis) -> AnalysisView:
    model = None
    if analysis.HasField("reasoning"):
        reasoning = analysis.reasoning
        model = ModelView(
            provider=reasoning.provider,
            model=reasoning.model,
            answer=reasoning.answer,
            validation=reasoning.validation,
            guard=reasoning.guard,
            fallback_reason=reasoning.fallback_reason,
            tools=tuple(f"{use.name}({use.arguments})" for use in reasoning.tool_uses),
            tokens=(
                f"{reasoning.input_tokens} in, {reasoning.output_tokens} out"
                if reasoning.input_tokens or reasoning.output_tokens
                else ""
            ),
            latency=f"{reasoning.latency_seconds:.1f} s" if reasoning.latency_seconds else "",
            prompt=reasoning.prompt,
            after_the_plan=reasoning.asked_after_the_plan,
        )
    return AnalysisView(
        analyzer=analysis.analyzer or "rules",
        decision=remediation_pb2.Decision.Name(analysis.decision).removeprefix("DECISION_").lower(),
        reasons=tuple(analysis.reasons),
        model=model,
    )


@dataclass(frozen=True)
class WorkflowView:
    workflow_id: str
    state: str
    message: str
    action: str
    target: str
    risk: str
    reasons: tuple[str, ...]
    steps: tuple[TimelineEntry, ...]
    approvals: tuple[str, ...]
    approvals_required: int
    requested_by: str
    waiting: bool


@dataclass(frozen=True)
class IncidentView:
    row: IncidentRow
    occurrences: int
    closed: str
    trace_id: str
    trace_link: str
    labels: tuple[tuple[str, str], ...]
    summary: str
    analyses: tuple[AnalysisView, ...]
    workflow: WorkflowView | None
    workflow_error: str
    actions: tuple[ActionView, ...]
    assessments: tuple[TimelineEntry, ...]
    timeline: tuple[TimelineEntry, ...] = field(default=())
    # What people were told, from the audit trail: when, on what kind of channel, outcome.
    notifications: tuple[TimelineEntry, ...] = field(default=())
    notifications_error: str = ""


def outcome_name(value: storage_pb2.ActionOutcome.ValueType) -> str:
    return storage_pb2.ActionOutcome.Name(value).removeprefix("ACTION_OUTCOME_").lower()


def latest_actions(records: Sequence[storage_pb2.ActionRecord]) -> dict[str, str]:
    """incident id -> its latest action and outcome, from action records in any order."""
    latest: dict[str, storage_pb2.ActionRecord] = {}
    for record in records:
        seen = latest.get(record.incident_id)
        if seen is None or record.started_at.ToNanoseconds() > seen.started_at.ToNanoseconds():
            latest[record.incident_id] = record
    return {key: f"{r.action}: {outcome_name(r.outcome)}" for key, r in latest.items()}


def incident_row(incident: storage_pb2.Incident, now: dt.datetime, action: str = "") -> IncidentRow:
    return IncidentRow(
        incident_id=incident.incident_id,
        status=status_name(incident.status),
        alert=incident.alert_name,
        subject=subject_text(incident.subject),
        cluster=incident.subject.cluster or "default",
        age=age(incident.opened_at, now),
        opened=when(incident.opened_at),
        reason=incident.status_reason,
        action=action,
    )


def spec_diff(before_json: str, after_json: str) -> tuple[str, ...]:
    """The change an action made, as a unified diff of the pretty-printed specs."""
    if not before_json and not after_json:
        return ()

    def lines(text: str) -> list[str]:
        try:
            return json.dumps(json.loads(text), indent=2, sort_keys=True).splitlines()
        except ValueError:
            return text.splitlines()

    diff = list(
        difflib.unified_diff(
            lines(before_json), lines(after_json), "before", "after", n=3, lineterm=""
        )
    )
    if len(diff) > MAX_DIFF_LINES:
        diff = [*diff[:MAX_DIFF_LINES], f"... ({len(diff) - MAX_DIFF_LINES} more lines)"]
    return tuple(diff)


def _decision(value: workflow_pb2.ApprovalDecision.ValueType) -> str:
    name = workflow_pb2.ApprovalDecision.Name(value)
    return {"APPROVAL_DECISION_APPROVE": "approved", "APPROVAL_DECISION_REJECT": "rejected"}.get(
        name, name.lower()
    )


def workflow_view(workflow: workflow_pb2.Workflow) -> WorkflowView:
    plan = workflow.plan
    steps = tuple(
        TimelineEntry(
            at=when(step.finished_at) or when(step.started_at),
            what=workflow_pb2.StepKind.Name(step.kind).removeprefix("STEP_KIND_").lower(),
            outcome=workflow_pb2.StepState.Name(step.state).removeprefix("STEP_STATE_").lower(),
            detail=step.message,
        )
        for step in workflow.steps
    )
    return WorkflowView(
        workflow_id=workflow.workflow_id,
        state=state_name(workflow.state),
        message=workflow.message,
        action=plan.action,
        target=subject_text(plan.target),
        risk=remediation_pb2.RiskLevel.Name(plan.risk).removeprefix("RISK_LEVEL_").lower(),
        reasons=tuple(workflow.recommendation.reasons),
        steps=steps,
        approvals=tuple(
            f"{a.approver} {_decision(a.decision)}" + (f": {a.reason}" if a.reason else "")
            for a in workflow.approvals
        ),
        approvals_required=plan.approvals_required,
        requested_by=workflow.requested_by,
        waiting=workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL,
    )


def timeline_of(
    reply: storage_pb2.GetIncidentResponse, workflow: workflow_pb2.Workflow | None
) -> tuple[TimelineEntry, ...]:
    """From the first alert to the last assessment, oldest first."""
    incident = reply.incident
    entries: list[tuple[str, TimelineEntry]] = []

    def add(stamp: Timestamp, entry: TimelineEntry) -> None:
        if stamp.ByteSize():
            entries.append((stamp.ToDatetime(tzinfo=dt.UTC).isoformat(), entry))

    add(
        incident.alert.starts_at,
        TimelineEntry(when(incident.alert.starts_at), f"{incident.alert_name} fired"),
    )
    add(
        incident.opened_at,
        TimelineEntry(
            when(incident.opened_at),
            "incident opened",
            detail=f"{incident.occurrences} alert(s) counted",
        ),
    )
    for recorded in reply.analyses:
        analysis = recorded.analysis
        decision = remediation_pb2.Decision.Name(analysis.decision).removeprefix("DECISION_")
        add(
            recorded.recorded_at,
            TimelineEntry(
                when(recorded.recorded_at),
                f"analysis ({analysis.analyzer or 'rules'})",
                decision.lower(),
                "; ".join(analysis.reasons),
            ),
        )
    if workflow is not None:
        add(
            workflow.created_at,
            TimelineEntry(
                when(workflow.created_at),
                "workflow planned",
                detail=f"{workflow.plan.action} on {subject_text(workflow.plan.target)}",
            ),
        )
        for approval in workflow.approvals:
            add(
                approval.decided_at,
                TimelineEntry(
                    when(approval.decided_at),
                    "approval",
                    _decision(approval.decision),
                    f"{approval.approver}" + (f": {approval.reason}" if approval.reason else ""),
                ),
            )
    for action in reply.actions:
        add(
            action.started_at,
            TimelineEntry(
                when(action.started_at), action.action, outcome_name(action.outcome), action.message
            ),
        )
    for assessment in reply.assessments:
        verdict = remediation_pb2.Verdict.Name(assessment.verdict).removeprefix("VERDICT_")
        add(
            assessment.assessed_at,
            TimelineEntry(
                when(assessment.assessed_at),
                "assessment",
                verdict.lower(),
                "; ".join(assessment.evidence),
            ),
        )
    add(
        incident.alert_resolved_at,
        TimelineEntry(when(incident.alert_resolved_at), "alerts resolved"),
    )
    add(
        incident.closed_at,
        TimelineEntry(
            when(incident.closed_at),
            "incident closed",
            status_name(incident.status),
            incident.status_reason,
        ),
    )
    entries.sort(key=lambda pair: pair[0])
    return tuple(entry for _, entry in entries)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    # The bar's length, 0 to 100 (of the chart's largest value).
    percent: int
    text: str


def bars(values: Sequence[tuple[str, float]], text: str = "{:g}") -> tuple[Bar, ...]:
    top = max((value for _, value in values), default=0) or 1
    return tuple(
        Bar(label, value, round(100 * value / top), text.format(value)) for label, value in values
    )


@dataclass(frozen=True)
class Overview:
    incidents_per_day: tuple[Bar, ...]
    by_status: tuple[Bar, ...]
    actions_by_outcome: tuple[Bar, ...]
    # Of each alert name's actions, the share that worked (the effectiveness service's).
    effectiveness: tuple[Bar, ...]
    # Minutes from the alert firing to the incident closing as remediated.
    median_minutes_to_fix: float | None
    worst_minutes_to_fix: float | None
    incidents: int
    days: int


def overview_of(
    incidents: Sequence[storage_pb2.Incident],
    actions: Sequence[storage_pb2.ActionRecord],
    effectiveness: Sequence[tuple[str, float, int]],
    now: dt.datetime,
    days: int = 14,
) -> Overview:
    """The overview's figures from the records: incidents per day over the last `days`,
    by status, actions by outcome, effectiveness (label, success rate, attempts), and the
    time from the alert to its fix."""
    first_day = (now - dt.timedelta(days=days - 1)).date()
    per_day = {first_day + dt.timedelta(days=i): 0 for i in range(days)}
    statuses: dict[str, int] = {}
    fixes: list[float] = []
    for incident in incidents:
        if incident.opened_at.ByteSize():
            day = incident.opened_at.ToDatetime(tzinfo=dt.UTC).date()
            if day in per_day:
                per_day[day] += 1
        name = status_name(incident.status)
        statuses[name] = statuses.get(name, 0) + 1
        fired = incident.alert.starts_at if incident.alert.starts_at.ByteSize() else None
        if (
            incident.status == storage_pb2.INCIDENT_STATUS_REMEDIATED
            and incident.closed_at.ByteSize()
        ):
            start = fired or incident.opened_at
            seconds = (incident.closed_at.ToDatetime() - start.ToDatetime()).total_seconds()
            fixes.append(max(0.0, seconds) / 60)
    outcomes: dict[str, int] = {}
    for action in actions:
        outcome = outcome_name(action.outcome)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    fixes.sort()
    return Overview(
        incidents_per_day=bars([(f"{day:%m-%d}", n) for day, n in per_day.items()]),
        by_status=bars(sorted(statuses.items(), key=lambda kv: -kv[1])),
        actions_by_outcome=bars(sorted(outcomes.items(), key=lambda kv: -kv[1])),
        effectiveness=tuple(
            Bar(label, rate, round(100 * rate), f"{rate:.0%} of {attempts}")
            for label, rate, attempts in effectiveness
        ),
        median_minutes_to_fix=statistics.median(fixes) if fixes else None,
        worst_minutes_to_fix=fixes[-1] if fixes else None,
        incidents=len(incidents),
        days=days,
    )


class Console:
    """The console's reads and its one write, as the signed-in person."""

    def __init__(
        self,
        storage: StorageServiceStub,
        workflows: WorkflowServiceStub,
        effectiveness: EffectivenessServiceStub,
        trace_ui_url: str = "",
    ) -> None:
        self._storage = storage
        self._workflows = workflows
        self._effectiveness = effectiveness
        self._trace_ui_url = trace_ui_url.rstrip("/")

    @staticmethod
    def _as(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    async def incidents(
        self,
        token: str,
        status: storage_pb2.IncidentStatus.ValueType = storage_pb2.INCIDENT_STATUS_UNSPECIFIED,
        text: str = "",
        now: dt.datetime | None = None,
    ) -> list[IncidentRow]:
        """The newest incidents (of `status`; whose alert, subject or cluster holds `text`),
        each with the latest action taken for it."""
        reply, actions = await asyncio.gather(
            self._storage.ListIncidents(
                storage_pb2.ListIncidentsRequest(status=status, page_size=LIST_SIZE),
                metadata=self._as(token),
            ),
            self._storage.ListActionRecords(
                storage_pb2.ListActionRecordsRequest(page_size=LIST_SIZE), metadata=self._as(token)
            ),
        )
        moment = now or dt.datetime.now(dt.UTC)
        taken = latest_actions(actions.records)
        rows = [incident_row(i, moment, taken.get(i.incident_id, "")) for i in reply.incidents]
        return [row for row in rows if row.matches(text)] if text else rows

    async def workflow_of(self, token: str, incident_id: str) -> workflow_pb2.Workflow | None:
        try:
            reply = await self._workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(incident_id=incident_id),
                metadata=self._as(token),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        found: workflow_pb2.Workflow = reply.workflow
        return found

    async def incident(self, token: str, incident_id: str) -> IncidentView:
        reply = await self._storage.GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=incident_id), metadata=self._as(token)
        )
        found: workflow_pb2.Workflow | None = None
        workflow_error = ""
        try:
            found = await self.workflow_of(token, incident_id)
        except grpc.aio.AioRpcError as error:
            # The record stands on its own; say why the workflow part is missing.
            workflow_error = f"{error.code().name}: {error.details()}"
        notifications: tuple[TimelineEntry, ...] = ()
        notifications_error = ""
        try:
            notifications = await self.notifications(token, incident_id)
        except grpc.aio.AioRpcError as error:
            notifications_error = f"{error.code().name}: {error.details()}"
        incident = reply.incident
        now = dt.datetime.now(dt.UTC)
        trace_link = ""
        if incident.trace_id and self._trace_ui_url:
            trace_link = f"{self._trace_ui_url}/trace/{incident.trace_id}"
        return IncidentView(
            row=incident_row(incident, now),
            occurrences=incident.occurrences,
            closed=when(incident.closed_at),
            trace_id=incident.trace_id,
            trace_link=trace_link,
            labels=tuple(sorted(incident.alert.labels.items())),
            summary=incident.alert.annotations.get("summary", ""),
            analyses=tuple(analysis_view(r.analysis) for r in reply.analyses),
            workflow=workflow_view(found) if found is not None else None,
            workflow_error=workflow_error,
            actions=tuple(
                ActionView(
                    action=a.action,
                    target=subject_text(a.target),
                    outcome=outcome_name(a.outcome),
                    message=a.message,
                    started=when(a.started_at),
                    diff=spec_diff(a.spec_before_json, a.spec_after_json),
                )
                for a in reply.actions
            ),
            assessments=tuple(
                TimelineEntry(
                    when(s.assessed_at),
                    f"+{s.delay.ToTimedelta().total_seconds():g}s",
                    remediation_pb2.Verdict.Name(s.verdict).removeprefix("VERDICT_").lower(),
                    "; ".join(s.evidence),
                )
                for s in reply.assessments
            ),
            timeline=timeline_of(reply, found),
            notifications=notifications,
            notifications_error=notifications_error,
        )

    async def notifications(self, token: str, incident_id: str) -> tuple[TimelineEntry, ...]:
        """The incident's deliveries the notification service put on the audit trail."""
        listed = await self._storage.ListAuditEntries(
            storage_pb2.ListAuditEntriesRequest(incident_id=incident_id, page_size=500),
            metadata=self._as(token),
        )
        return tuple(
            TimelineEntry(
                when(entry.at),
                entry.method.removeprefix(DELIVERY_METHOD_PREFIX),
                "sent" if entry.outcome_code == "OK" else "not sent",
                f"{entry.target}: {entry.outcome_message}",
            )
            for entry in listed.entries
            if entry.method.startswith(DELIVERY_METHOD_PREFIX)
        )

    async def overview(self, token: str, now: dt.datetime | None = None) -> Overview:
        """The last two weeks at a glance (the newest 1000 incidents and actions)."""
        listed = await self._storage.ListIncidents(
            storage_pb2.ListIncidentsRequest(page_size=1000), metadata=self._as(token)
        )
        actions = await self._storage.ListActionRecords(
            storage_pb2.ListActionRecordsRequest(page_size=1000), metadata=self._as(token)
        )
        names: dict[str, int] = {}
        for incident in listed.incidents:
            names[incident.alert_name] = names.get(incident.alert_name, 0) + 1
        effectiveness: list[tuple[str, float, int]] = []
        for name in sorted(names, key=lambda n: -names[n])[:EFFECTIVENESS_ALERTS]:
            if not name:
                continue
            answer = await self._effectiveness.GetActionEffectiveness(
                effectiveness_pb2.GetActionEffectivenessRequest(alert_name=name),
                metadata=self._as(token),
            )
            effectiveness += [
                (f"{action.action} for {name}", action.success_rate, int(action.attempts))
                for action in answer.actions
                if action.attempts
            ]
        return overview_of(
            listed.incidents, actions.records, effectiveness, now or dt.datetime.now(dt.UTC)
        )

    async def waiting(self, token: str) -> list[tuple[IncidentRow, WorkflowView]]:
        """The workflows that wait for a person's approval, with their incidents."""
        # A held workflow's incident is still open, or already remediating.
        rows = [
            *await self.incidents(token, status=storage_pb2.INCIDENT_STATUS_OPEN),
            *await self.incidents(token, status=storage_pb2.INCIDENT_STATUS_REMEDIATING),
        ]
        held: list[tuple[IncidentRow, WorkflowView]] = []
        for row in rows:
            found = await self.workflow_of(token, row.incident_id)
            if found is not None and found.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL:
                held.append((row, workflow_view(found)))
        return held

    async def decide(
        self, token: str, workflow_id: str, approve: bool, reason: str
    ) -> workflow_pb2.DecideApprovalResponse:
        decided: workflow_pb2.DecideApprovalResponse = await self._workflows.DecideApproval(
            workflow_pb2.DecideApprovalRequest(
                workflow_id=workflow_id,
                decision=workflow_pb2.APPROVAL_DECISION_APPROVE
                if approve
                else workflow_pb2.APPROVAL_DECISION_REJECT,
                reason=reason,
            ),
            metadata=self._as(token),
        )
        return decided
