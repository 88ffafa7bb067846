"""The workflow engine against a real PostgreSQL, with plain async functions standing in for
the five downstream operations at the engine's boundary (no gRPC)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.notification.v1 import notification_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.runtime.logs import incident_id_var
from kubernaut.services.workflow.downstream import (
    DownstreamError,
    FailedPrecondition,
    Notified,
    Unavailable,
)
from kubernaut.services.workflow.engine import WorkflowEngine
from kubernaut.services.workflow.planning import plan
from kubernaut.services.workflow.settings import PlanningSettings, RunnerSettings
from kubernaut.services.workflow.store import (
    Decision,
    LeaseLost,
    State,
    StepChange,
    StepStatus,
    Workflow,
    WorkflowDatabase,
    WorkflowStore,
    kind_name,
)
from tests.fixtures.waiting import eventually

# Long enough that a busy machine never misses a renewal (every third of it); the tests of
# a crashed runner give that runner SHORT_LEASE_SECONDS, for its lease to run out soon.
SHORT_LEASE_SECONDS = 1.0
SETTINGS = RunnerSettings(
    lease_seconds=30.0,
    poll_seconds=0.05,
    max_concurrent=8,
    retry_initial_seconds=0.01,
    retry_max_seconds=0.05,
)
STAGES_OK = [
    "scope: Deployment shop/web opted in (kubernaut.ai/managed=true)",
    "dry-run: accepted by the API server",
    "snapshot: revision 7 saved",
    "apply: restarted Deployment shop/web",
    "verify: 3/3 replicas ready",
]
STAGES_ROLLED_BACK = [
    "scope: Deployment shop/web opted in",
    "dry-run: accepted by the API server",
    "snapshot: revision 7 saved",
    "apply: restarted Deployment shop/web",
    "verify: failed: 0/3 replicas ready after 60s",
    "rollback: restored revision 7",
]
ACTING = ["DRY_RUN", "SNAPSHOT", "APPLY", "VERIFY"]
ALL_STEPS = ["VALIDATE", *ACTING, "NOTIFY"]


# -- the stand-ins for the downstream services ------------------------------------------------


@dataclass
class Call:
    operation: str
    request: Message
    at: dt.datetime


@dataclass
class Downstream:
    """Plain async functions that behave like the downstream services: the executor answers
    a repeated action_id with the first run's record, notification delivers each key once."""

    outcome: storage_pb2.ActionOutcome.ValueType = storage_pb2.ACTION_OUTCOME_SUCCEEDED
    stages: list[str] = field(default_factory=lambda: list(STAGES_OK))
    outcome_message: str = "3/3 replicas ready"
    # The first ExecuteAction (or report: a NotifyIncidentEvent other than the plan's) hangs
    # forever after arriving: the runner is killed while it waits.
    hang_first_execute: bool = False
    hang_first_notify: bool = False
    # How many times each operation answers UNAVAILABLE before it works.
    unavailable: dict[str, int] = field(default_factory=dict)
    # Errors that an operation raises every time.
    errors: dict[str, DownstreamError] = field(default_factory=dict)
    # Seconds ExecuteAction takes.
    execute_seconds: float = 0.0
    # No channel takes a notification (the mail server is down): kept for later.
    mail_down: bool = False
    # What GetActionProgress answers (None: NOT_FOUND, as before the executor starts).
    progress: executor_pb2.GetActionProgressResponse | None = None
    # ExecuteAction waits for this before it answers (the action is in progress meanwhile).
    gate: asyncio.Event | None = None
    # How many times ExecuteAction answers UNAVAILABLE because the first call still holds
    # the action (the executor's ActionBusy), while the progress says it runs.
    busy: int = 0

    calls: list[Call] = field(default_factory=list)
    # The deadline of each ExecuteAction call.
    deadlines: list[float] = field(default_factory=list)
    records: dict[str, executor_pb2.ExecuteActionResponse] = field(default_factory=dict)
    delivered: dict[str, notification_pb2.IncidentEvent] = field(default_factory=dict)
    executing: set[str] = field(default_factory=set)
    overlaps: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def _enter(self, operation: str, request: Message) -> None:
        self.calls.append(Call(operation, request, dt.datetime.now(dt.UTC)))
        if self.unavailable.get(operation, 0) > 0:
            self.unavailable[operation] -= 1
            raise Unavailable(operation, "UNAVAILABLE: connection refused")
        if operation in self.errors:
            raise self.errors[operation]

    def of(self, operation: str) -> list[Any]:
        return [c.request for c in self.calls if c.operation == operation]

    def reports(self) -> list[notification_pb2.NotifyIncidentEventRequest]:
        """The NotifyIncidentEvent requests other than the plan's (ACTION_PLANNED)."""
        return [
            r
            for r in self.of("NotifyIncidentEvent")
            if r.event.kind != notification_pb2.INCIDENT_EVENT_KIND_ACTION_PLANNED
        ]

    @property
    def operations(self) -> list[str]:
        """The calls in order, UpdateIncident with its status."""
        names = []
        for call in self.calls:
            if isinstance(call.request, storage_pb2.UpdateIncidentRequest):
                status = storage_pb2.IncidentStatus.Name(call.request.status)
                names.append(f"UpdateIncident {status.removeprefix('INCIDENT_STATUS_')}")
            elif isinstance(call.request, notification_pb2.NotifyIncidentEventRequest):
                kind = notification_pb2.IncidentEventKind.Name(call.request.event.kind)
                names.append(f"NotifyIncidentEvent {kind.removeprefix('INCIDENT_EVENT_KIND_')}")
            else:
                names.append(call.operation)
        return names

    async def execute_action(
        self, request: executor_pb2.ExecuteActionRequest, timeout: float
    ) -> executor_pb2.ExecuteActionResponse:
        self._enter("ExecuteAction", request)
        self.deadlines.append(timeout)
        if self.busy > 0:
            self.busy -= 1
            raise Unavailable(
                "ExecuteAction",
                f"UNAVAILABLE: another call is still working on action {request.action_id}",
            )
        if self.gate is not None:
            self.arrived.set()
            await self.gate.wait()
        if request.action_id in self.executing:
            self.overlaps.append(request.action_id)
        self.executing.add(request.action_id)
        try:
            if self.hang_first_execute and len(self.of("ExecuteAction")) == 1:
                self.arrived.set()
                await asyncio.Event().wait()
            await asyncio.sleep(self.execute_seconds)
            if request.action_id not in self.records:  # acts once per action_id
                record = storage_pb2.ActionRecord(
                    action_id=request.action_id,
                    incident_id=request.incident_id,
                    alert_name=request.alert_name,
                    action=request.action.WhichOneof("params") or "",
                    target=request.target,
                    outcome=self.outcome,
                    message=self.outcome_message,
                )
                record.started_at.GetCurrentTime()
                record.finished_at.GetCurrentTime()
                self.records[request.action_id] = executor_pb2.ExecuteActionResponse(
                    record=record, stages=self.stages
                )
            return self.records[request.action_id]
        finally:
            self.executing.discard(request.action_id)

    async def get_action_progress(
        self, request: executor_pb2.GetActionProgressRequest
    ) -> executor_pb2.GetActionProgressResponse:
        # Not in `calls`: how often it is asked depends on timing.
        if self.progress is None:
            raise DownstreamError("GetActionProgress", f"NOT_FOUND: no action {request.action_id}")
        return self.progress

    async def rollback_action(
        self, request: executor_pb2.RollbackActionRequest, timeout: float
    ) -> executor_pb2.RollbackActionResponse:
        # Single-action plans never compensate: the executor rolls back itself.
        raise DownstreamError("RollbackAction", "UNIMPLEMENTED: not a runbook plan")

    async def run_check(
        self, request: executor_pb2.RunCheckRequest, timeout: float
    ) -> executor_pb2.RunCheckResponse:
        raise DownstreamError("RunCheck", "UNIMPLEMENTED: not a runbook plan")

    async def update_incident(self, request: storage_pb2.UpdateIncidentRequest) -> None:
        self._enter("UpdateIncident", request)

    async def schedule_assessment(
        self, request: effectiveness_pb2.ScheduleAssessmentRequest
    ) -> None:
        self._enter("ScheduleAssessment", request)

    async def notify_incident_event(
        self, request: notification_pb2.NotifyIncidentEventRequest
    ) -> Notified:
        self._enter("NotifyIncidentEvent", request)
        if self.mail_down:
            return Notified(sent=False, delivered=False, errors="email: connection refused")
        sent = request.idempotency_key not in self.delivered
        self.delivered.setdefault(request.idempotency_key, request.event)
        if self.hang_first_notify and len(self.reports()) == 1:
            self.arrived.set()  # delivered, but the answer never comes back
            await asyncio.Event().wait()
        return Notified(sent=sent, delivered=True)


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest_asyncio.fixture
async def store(workflow_database: WorkflowDatabase) -> WorkflowStore:
    return await workflow_database.store()


Engines = Callable[..., WorkflowEngine]


@pytest_asyncio.fixture
async def engines(workflow_database: WorkflowDatabase) -> AsyncIterator[Engines]:
    """Makes engines on the test database; stops them all at the end."""
    made: list[WorkflowEngine] = []

    def make(downstream: Downstream, **settings: Any) -> WorkflowEngine:
        engine = WorkflowEngine(
            workflow_database.store, downstream, SETTINGS.model_copy(update=settings), owner=None
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.stop()


def alert() -> alert_pb2.Alert:
    fired = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": "shop", "pod": "web-1", "severity": "critical"},
    )
    fired.starts_at.GetCurrentTime()
    return fired


def recommendation(confidence: float = 0.9) -> remediation_pb2.Recommendation:
    return remediation_pb2.Recommendation(
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web"),
        confidence=confidence,
        reasons=["pods crash-loop after a config change"],
    )


def planned(
    rec: remediation_pb2.Recommendation,
    risk: remediation_pb2.RiskLevel.ValueType = remediation_pb2.RISK_LEVEL_LOW,
) -> workflow_pb2.WorkflowPlan:
    definition = executor_pb2.ActionDefinition(
        name="restart_deployment",
        description="rolling restart of the deployment",
        risk=risk,
        verification="all replicas Ready",
        rollback="restore the previous pod template",
    )
    return plan(rec, definition, PlanningSettings())


async def create(
    engine: WorkflowEngine,
    *,
    confidence: float = 0.9,
    risk: remediation_pb2.RiskLevel.ValueType = remediation_pb2.RISK_LEVEL_LOW,
) -> Workflow:
    rec = recommendation(confidence)
    workflow, created = await engine.create(str(uuid.uuid4()), alert(), rec, planned(rec, risk))
    assert created
    return workflow


async def finished(store: WorkflowStore, workflow_id: str, timeout: float = 10.0) -> Workflow:
    async def check() -> Workflow | None:
        workflow = await store.get(workflow_id)
        assert workflow is not None
        return workflow if workflow.state is not State.RUNNING else None

    return await eventually(check, f"workflow {workflow_id} to finish", timeout, interval=0.02)


def states(workflow: Workflow) -> dict[str, str]:
    return {kind_name(s.kind): s.state.value for s in workflow.steps}


def attempts(workflow: Workflow) -> dict[str, int]:
    return {kind_name(s.kind): s.attempts for s in workflow.steps}


def messages(workflow: Workflow) -> dict[str, str]:
    return {kind_name(s.kind): s.message for s in workflow.steps}


# -- creating ---------------------------------------------------------------------------------


async def test_create_is_idempotent_per_incident(engines: Engines, store: WorkflowStore) -> None:
    engine = engines(Downstream())  # not started: nothing runs
    incident_id = str(uuid.uuid4())
    rec = recommendation()
    first, created = await engine.create(incident_id, alert(), rec, planned(rec))
    assert created
    assert first.state is State.RUNNING
    assert [kind_name(s.kind) for s in first.steps] == ALL_STEPS
    assert all(s.state is StepStatus.PENDING and s.attempts == 0 for s in first.steps)
    uuid.UUID(first.action_id)

    other = recommendation(confidence=0.2)
    again, created_again = await engine.create(incident_id, alert(), other, planned(other))
    assert not created_again
    assert (again.workflow_id, again.action_id) == (first.workflow_id, first.action_id)
    assert again.plan == first.plan  # the first one stays

    # Concurrent creates for one incident: exactly one creates.
    racing = str(uuid.uuid4())
    results = await asyncio.gather(
        *(engine.create(racing, alert(), rec, planned(rec)) for _ in range(8))
    )
    assert sum(created for _, created in results) == 1
    assert len({w.workflow_id for w, _ in results}) == 1

    proto = first.to_proto()
    assert proto.incident_id == incident_id
    assert proto.state == workflow_pb2.WORKFLOW_STATE_RUNNING
    assert proto.alert.name == "KubePodCrashLooping"
    assert [s.state for s in proto.steps] == [workflow_pb2.STEP_STATE_PENDING] * 6
    assert await store.get(str(uuid.uuid4())) is None
    assert await store.get("not-a-uuid") is None


# -- running ----------------------------------------------------------------------------------


async def test_happy_path(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream()
    # A long poll: the workflow runs at once only because create wakes the runner.
    engine = engines(downstream, poll_seconds=60)
    engine.start()
    await asyncio.sleep(0.1)  # the runner's first look found nothing; it sleeps now
    workflow = await create(engine)
    done = await finished(store, workflow.workflow_id, timeout=5)

    assert done.state is State.SUCCEEDED
    assert downstream.operations == [
        "NotifyIncidentEvent ACTION_PLANNED",  # before anything acts
        "UpdateIncident REMEDIATING",
        "ExecuteAction",
        "UpdateIncident REMEDIATED",
        "ScheduleAssessment",
        "NotifyIncidentEvent SUCCEEDED",
    ]
    assert states(done) == dict.fromkeys(ALL_STEPS, "DONE")
    assert messages(done)["VALIDATE"] == "checked when planned; the plan was told"
    assert attempts(done) == dict.fromkeys(ALL_STEPS, 1)
    assert messages(done)["DRY_RUN"] == "dry-run: accepted by the API server"
    assert messages(done)["VERIFY"] == "verify: 3/3 replicas ready"
    assert all(s.started_at and s.finished_at for s in done.steps)
    assert "succeeded" in done.message
    assert done.lease_owner is None

    (execute,) = downstream.of("ExecuteAction")
    assert execute.action_id == workflow.action_id
    assert execute.incident_id == workflow.incident_id
    assert execute.alert_name == "KubePodCrashLooping"
    assert execute.action.HasField("restart_deployment")
    assert execute.target.name == "web"
    remediated = downstream.of("UpdateIncident")[-1]
    assert remediated.incident_id == workflow.incident_id
    assert "succeeded" in remediated.status_reason
    (assessment,) = downstream.of("ScheduleAssessment")
    assert assessment.action_id == workflow.action_id
    assert assessment.alert.name == "KubePodCrashLooping"
    assert assessment.acted_at.seconds > 0
    told_plan, notify = downstream.of("NotifyIncidentEvent")
    # The plan: what will be done, why, and the steps (none of them reads as done).
    assert told_plan.idempotency_key == f"{workflow.workflow_id}/action_planned"
    assert told_plan.event.workflow_id == workflow.workflow_id
    assert told_plan.event.action == "restart_deployment"
    assert told_plan.event.target.name == "web"
    assert told_plan.event.verdict == "not acted yet"
    assert list(told_plan.event.stages) == [
        "why: pods crash-loop after a config change",
        "runs without approval: low risk and confidence 0.90",
        "step 1 (validate): check the restart_deployment parameters and Deployment shop/web's"
        " scope",
        "step 2 (dry-run): server-side dry-run of restart_deployment on Deployment shop/web",
        "step 3 (snapshot): snapshot Deployment shop/web for rollback",
        "step 4 (apply): rolling restart of the deployment",
        "step 5 (verify): all replicas Ready",
        "step 6 (notify): tell the configured channels how it went",
        "if the change does not verify: restore the previous pod template",
    ]
    assert notify.idempotency_key == f"{workflow.workflow_id}/succeeded"
    assert list(notify.event.stages) == STAGES_OK
    assert notify.event.verdict == "not assessed yet"
    assert notify.event.action == "restart_deployment"

    proto = done.to_proto()
    assert proto.state == workflow_pb2.WORKFLOW_STATE_SUCCEEDED
    assert all(s.state == workflow_pb2.STEP_STATE_DONE for s in proto.steps)
    assert proto.steps[0].started_at.seconds > 0


async def test_refused_changes_nothing(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream(
        outcome=storage_pb2.ACTION_OUTCOME_REFUSED,
        stages=["scope: refused: namespace kube-system is protected"],
        outcome_message="namespace kube-system is protected",
    )
    engine = engines(downstream)
    engine.start()
    done = await finished(store, (await create(engine)).workflow_id)

    assert done.state is State.REFUSED
    assert downstream.operations == [
        "NotifyIncidentEvent ACTION_PLANNED",
        "UpdateIncident REMEDIATING",
        "ExecuteAction",
        "UpdateIncident NO_ACTION",
        "NotifyIncidentEvent REFUSED",  # nothing applied: nothing to assess
    ]
    assert "protected" in downstream.of("UpdateIncident")[-1].status_reason
    assert states(done) == {
        "VALIDATE": "DONE",
        **dict.fromkeys(ACTING, "SKIPPED"),
        "NOTIFY": "DONE",
    }
    assert "refused" in messages(done)["APPLY"]
    assert "refused" in done.message


async def test_rolled_back(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream(
        outcome=storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
        stages=STAGES_ROLLED_BACK,
        outcome_message="verification failed; rolled back",
    )
    engine = engines(downstream)
    engine.start()
    workflow = await create(engine)
    done = await finished(store, workflow.workflow_id)

    assert done.state is State.ROLLED_BACK
    assert downstream.operations == [
        "NotifyIncidentEvent ACTION_PLANNED",
        "UpdateIncident REMEDIATING",
        "ExecuteAction",
        "UpdateIncident FAILED",
        "ScheduleAssessment",  # the change was applied (then undone): assess it
        "NotifyIncidentEvent ROLLED_BACK",
    ]
    assert states(done) == {
        "VALIDATE": "DONE",
        "DRY_RUN": "DONE",
        "SNAPSHOT": "DONE",
        "APPLY": "DONE",
        "VERIFY": "FAILED",
        "NOTIFY": "DONE",
    }
    assert "0/3 replicas ready" in messages(done)["VERIFY"]
    assert "restored revision 7" in messages(done)["VERIFY"]
    (notify,) = downstream.reports()
    assert notify.idempotency_key == f"{workflow.workflow_id}/rolled_back"


async def test_dry_run_executor_applies_nothing(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream(
        outcome=storage_pb2.ACTION_OUTCOME_DRY_RUN,
        stages=["scope: ok", "dry-run: accepted by the API server"],
        outcome_message="dry-run mode",
    )
    engine = engines(downstream)
    engine.start()
    done = await finished(store, (await create(engine)).workflow_id)

    assert done.state is State.SUCCEEDED
    assert "nothing was applied" in done.message
    assert downstream.operations == [
        "NotifyIncidentEvent ACTION_PLANNED",
        "UpdateIncident REMEDIATING",
        "ExecuteAction",
        "UpdateIncident NO_ACTION",
        "NotifyIncidentEvent SUCCEEDED",
    ]
    assert states(done) == {
        "VALIDATE": "DONE",
        "DRY_RUN": "DONE",
        **dict.fromkeys(["SNAPSHOT", "APPLY", "VERIFY"], "SKIPPED"),
        "NOTIFY": "DONE",
    }


async def test_approval_stops_before_acting(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream()
    engine = engines(downstream)
    engine.start()
    workflow = await create(engine, risk=remediation_pb2.RISK_LEVEL_HIGH)
    assert [kind_name(s.kind) for s in workflow.steps][:2] == ["VALIDATE", "APPROVAL"]
    waiting = await finished(store, workflow.workflow_id)

    assert waiting.state is State.WAITING_APPROVAL
    assert "high risk" in waiting.message
    assert states(waiting) == {
        "VALIDATE": "DONE",
        "APPROVAL": "RUNNING",
        **dict.fromkeys(ACTING, "PENDING"),
        "NOTIFY": "PENDING",
    }
    assert waiting.lease_owner is None
    # The plan is told as for any workflow (routes may send it elsewhere than the request
    # to decide), then what to decide.
    assert downstream.operations == [
        "NotifyIncidentEvent ACTION_PLANNED",
        "NotifyIncidentEvent APPROVAL_NEEDED",
    ]
    told_plan, notify = downstream.of("NotifyIncidentEvent")
    assert "waits for approval first: high risk actions need approval" in told_plan.event.stages
    assert notify.idempotency_key == f"{workflow.workflow_id}/approval_needed"

    await asyncio.sleep(0.3)  # several polls: a waiting workflow is not runnable
    assert len(downstream.calls) == 2


async def test_an_approval_nobody_gives_expires_without_acting(
    engines: Engines, store: WorkflowStore
) -> None:
    downstream = Downstream()
    engine = engines(
        downstream, approval_timeout_seconds=0.5, approval_sweep_seconds=0.1, poll_seconds=0.1
    )
    engine.start()
    workflow = await create(engine, risk=remediation_pb2.RISK_LEVEL_HIGH)
    waiting = await finished(store, workflow.workflow_id)
    assert waiting.state is State.WAITING_APPROVAL

    async def ended() -> Workflow | None:
        found = await store.get(workflow.workflow_id)
        return found if found is not None and found.state is State.REFUSED else None

    done = await eventually(ended, "the approval to expire", 10)
    assert done.message == "not acting: expired: no decision within 0s"
    assert states(done) == {
        "VALIDATE": "DONE",
        "APPROVAL": "FAILED",
        **dict.fromkeys(ACTING, "SKIPPED"),
        "NOTIFY": "DONE",
    }
    assert attempts(done)["APPLY"] == 0
    # Nobody said no: the incident is escalated to people, not reported as refused.
    assert downstream.operations == [
        "NotifyIncidentEvent ACTION_PLANNED",
        "NotifyIncidentEvent APPROVAL_NEEDED",
        "UpdateIncident NO_ACTION",
        "NotifyIncidentEvent ESCALATED",
    ]
    assert "ExecuteAction" not in [call.operation for call in downstream.calls]
    escalated = downstream.reports()[-1]
    assert escalated.idempotency_key == f"{workflow.workflow_id}/escalated"
    assert escalated.event.action == "restart_deployment"
    assert list(escalated.event.stages) == [
        "asked for approval to run restart_deployment on Deployment shop/web:"
        " high risk actions need approval",
        "the approval expired: no decision within 0s",
        "nothing was changed, and Kubernaut will not act on this incident: it is yours now",
    ]
    assert escalated.event.verdict == "nothing to assess: nothing was changed"


async def test_a_rejection_is_reported_as_refused_not_escalated(
    engines: Engines, store: WorkflowStore
) -> None:
    downstream = Downstream()
    engine = engines(
        downstream, approval_timeout_seconds=60, approval_sweep_seconds=0.1, poll_seconds=0.1
    )
    engine.start()
    workflow = await create(engine, risk=remediation_pb2.RISK_LEVEL_HIGH)
    waiting = await finished(store, workflow.workflow_id)
    assert waiting.state is State.WAITING_APPROVAL

    # A person says no (in words that mention expiry: the decision is what counts).
    decided = await engine.decide(
        workflow.workflow_id, Decision.REJECT, "person:alice@example.com", "expired: too risky"
    )
    assert decided is not None and decided[1]
    done = await finished(store, workflow.workflow_id)

    assert done.state is State.REFUSED
    assert downstream.operations[-1] == "NotifyIncidentEvent REFUSED"
    assert downstream.reports()[-1].idempotency_key == f"{workflow.workflow_id}/refused"


async def test_an_undelivered_notification_is_not_called_delivered(
    engines: Engines, store: WorkflowStore
) -> None:
    # The notification service kept both messages but no channel took them yet.
    downstream = Downstream(mail_down=True)
    engine = engines(downstream)
    engine.start()
    waiting = await finished(
        store, (await create(engine, risk=remediation_pb2.RISK_LEVEL_HIGH)).workflow_id
    )
    assert waiting.state is State.WAITING_APPROVAL
    assert waiting.message.endswith(
        "; the approval request was not delivered yet (email: connection refused); "
        "the notification service keeps trying"
    )

    done = await finished(store, (await create(engine)).workflow_id, timeout=5)
    assert done.state is State.SUCCEEDED  # what happened to the cluster stands
    assert states(done)["NOTIFY"] == "FAILED"
    assert messages(done)["NOTIFY"] == (
        "the report was not delivered yet (email: connection refused); "
        "the notification service keeps trying"
    )


async def test_closed_incident_is_never_acted_on(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream(
        errors={"UpdateIncident": FailedPrecondition("UpdateIncident", "incident is RESOLVED")}
    )
    engine = engines(downstream)
    engine.start()
    done = await finished(store, (await create(engine)).workflow_id)

    assert done.state is State.REFUSED
    assert "ExecuteAction" not in downstream.operations
    assert downstream.operations[-1] == "NotifyIncidentEvent REFUSED"
    assert "incident is closed" in done.message
    assert states(done)["APPLY"] == "SKIPPED"


async def test_unavailable_downstream_is_retried(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream(
        unavailable={"ExecuteAction": 3, "UpdateIncident": 2, "NotifyIncidentEvent": 2}
    )
    engine = engines(downstream)
    engine.start()
    workflow = await create(engine)
    done = await finished(store, workflow.workflow_id)

    assert done.state is State.SUCCEEDED
    executes = downstream.of("ExecuteAction")
    assert len(executes) == 4
    assert {e.action_id for e in executes} == {workflow.action_id}
    assert attempts(done) == dict.fromkeys(ALL_STEPS, 1)  # retried within the step
    # The plan is tried once (telling it never holds up the fix) and says it was not told;
    # the report is retried until it is delivered.
    assert messages(done)["VALIDATE"].startswith(
        "checked when planned; the plan was not told: NotifyIncidentEvent: UNAVAILABLE"
    )
    assert list(downstream.delivered) == [f"{workflow.workflow_id}/succeeded"]


async def test_other_errors_fail_the_workflow(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream(
        errors={
            "ExecuteAction": DownstreamError(
                "ExecuteAction", "INVALID_ARGUMENT: action.scale_deployment.replicas: too many"
            )
        }
    )
    engine = engines(downstream)
    engine.start()
    done = await finished(store, (await create(engine)).workflow_id)

    assert done.state is State.FAILED
    assert "INVALID_ARGUMENT" in done.message
    assert len(downstream.of("ExecuteAction")) == 1  # not retried
    assert downstream.operations[-2:] == ["UpdateIncident FAILED", "NotifyIncidentEvent FAILED"]
    assert "ScheduleAssessment" not in downstream.operations
    # The executor refused the request before any stage: the first step failed, the
    # others never ran.
    assert states(done) == {
        "VALIDATE": "DONE",
        "DRY_RUN": "FAILED",
        **dict.fromkeys(ACTING[1:], "SKIPPED"),
        "NOTIFY": "DONE",
    }
    assert "INVALID_ARGUMENT" in messages(done)["DRY_RUN"]


# -- progress while the executor acts ----------------------------------------------------------


def progress(
    state: executor_pb2.ActionState.ValueType,
    lines: list[tuple[str, dt.datetime]],
    started: dt.datetime,
    *,
    applied: dt.datetime | None = None,
    verify_started: dt.datetime | None = None,
    running: bool = True,
    verify_timeout: float = 120.0,
) -> executor_pb2.GetActionProgressResponse:
    """What the executor's GetActionProgress answers."""
    answer = executor_pb2.GetActionProgressResponse(state=state, running=running)
    for line, at in lines:
        answer.stages.add(line=line).at.FromDatetime(at)
    answer.started_at.FromDatetime(started)
    if applied is not None:
        answer.applied_at.FromDatetime(applied)
    if verify_started is not None:
        answer.verify_started_at.FromDatetime(verify_started)
    answer.verify_timeout.FromTimedelta(dt.timedelta(seconds=verify_timeout))
    return answer


def step(workflow: Workflow, kind: str) -> Any:
    return next(s for s in workflow.steps if kind_name(s.kind) == kind)


async def reached(
    store: WorkflowStore, workflow_id: str, wanted: dict[str, str], what: str
) -> Workflow:
    async def check() -> Workflow | None:
        workflow = await store.get(workflow_id)
        assert workflow is not None
        return workflow if {k: states(workflow)[k] for k in wanted} == wanted else None

    return await eventually(check, what, 10, interval=0.02)


async def test_acting_steps_follow_the_executors_progress_with_its_times(
    engines: Engines, store: WorkflowStore
) -> None:
    gate = asyncio.Event()
    downstream = Downstream(gate=gate)
    engine = engines(downstream, progress_poll_seconds=0.05)
    engine.start()
    workflow = await create(engine)
    await asyncio.wait_for(downstream.arrived.wait(), 10)  # ExecuteAction is in flight

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    t0 = now - dt.timedelta(seconds=60)
    lines = [
        (
            "scope: ok: the Deployment carries kubernaut.ai/managed=true",
            t0 + dt.timedelta(seconds=1),
        ),
        ("rbac: ok: patch deployments.apps", t0 + dt.timedelta(seconds=2)),
        ("guards: ok: the target is free", t0 + dt.timedelta(seconds=3)),
        ("plan: restart the pods", t0 + dt.timedelta(seconds=4)),
        ("dry-run: ok: the API server accepted the change", t0 + dt.timedelta(seconds=5)),
    ]
    downstream.progress = progress(executor_pb2.ACTION_STATE_STARTED, lines, t0)
    dry_run_done = {"DRY_RUN": "DONE", "SNAPSHOT": "RUNNING", "APPLY": "PENDING"}
    mid = await reached(store, workflow.workflow_id, dry_run_done, "the dry-run to be done")
    assert step(mid, "DRY_RUN").started_at == t0
    assert step(mid, "DRY_RUN").finished_at == t0 + dt.timedelta(seconds=5)
    assert step(mid, "DRY_RUN").message == "dry-run: ok: the API server accepted the change"
    assert step(mid, "SNAPSHOT").started_at == t0 + dt.timedelta(seconds=5)

    # Applied 45 s ago and verifying since.
    applied = now - dt.timedelta(seconds=45)
    lines += [
        ("snapshot: stored the Deployment at resourceVersion 7", t0 + dt.timedelta(seconds=6)),
        ("apply: restart the pods (generation 3)", applied),
    ]
    downstream.progress = progress(
        executor_pb2.ACTION_STATE_APPLIED, lines, t0, applied=applied, verify_started=applied
    )
    verifying = {"DRY_RUN": "DONE", "SNAPSHOT": "DONE", "APPLY": "DONE", "VERIFY": "RUNNING"}
    mid = await reached(store, workflow.workflow_id, verifying, "verification to run")
    finishes = [step(mid, kind).finished_at for kind in ("DRY_RUN", "SNAPSHOT", "APPLY")]
    assert finishes == [t0 + dt.timedelta(seconds=5), t0 + dt.timedelta(seconds=6), applied]
    assert step(mid, "VERIFY").started_at == applied
    assert step(mid, "VERIFY").finished_at is None
    assert re.fullmatch(
        rf"applied {applied:%H:%M:%S}, verifying, 4[5-9] s of 120 s", step(mid, "VERIFY").message
    ), step(mid, "VERIFY").message
    await asyncio.sleep(0.3)  # polls go on; a step's message changes, not its attempts
    assert attempts(await store.get(workflow.workflow_id)) == {  # type: ignore[arg-type]
        "VALIDATE": 1,
        **dict.fromkeys(ACTING, 1),
        "NOTIFY": 0,
    }

    verified = now - dt.timedelta(seconds=2)
    lines += [("verify: ok: 3/3 replicas ready", verified)]
    downstream.stages = [line for line, _ in lines]
    downstream.progress = progress(
        executor_pb2.ACTION_STATE_RECORDED,
        lines,
        t0,
        applied=applied,
        verify_started=applied,
        running=False,
    )
    gate.set()
    done = await finished(store, workflow.workflow_id)
    assert done.state is State.SUCCEEDED
    assert states(done) == dict.fromkeys(ALL_STEPS, "DONE")
    assert attempts(done) == dict.fromkeys(ALL_STEPS, 1)
    # Each step ends when the executor finished its stage, not when the answer came.
    assert [(step(done, k).started_at, step(done, k).finished_at) for k in ACTING] == [
        (t0, t0 + dt.timedelta(seconds=5)),
        (t0 + dt.timedelta(seconds=5), t0 + dt.timedelta(seconds=6)),
        (t0 + dt.timedelta(seconds=6), applied),
        (applied, verified),
    ]
    assert step(done, "VERIFY").message == "verify: ok: 3/3 replicas ready"


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def engine_logs() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("kubernaut.services.workflow.engine")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


async def test_a_busy_executor_is_still_running_not_an_outage(
    engines: Engines, store: WorkflowStore
) -> None:
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)
    applied = started + dt.timedelta(seconds=2)
    verifying = progress(
        executor_pb2.ACTION_STATE_APPLIED,
        [("apply: restart the pods", applied)],
        started,
        applied=applied,
        verify_started=applied,
        verify_timeout=30,
    )
    # The first call's deadline ran out (or a retry met its lock) twice while the executor
    # verified.
    downstream = Downstream(busy=2, progress=verifying)
    engine = engines(downstream, progress_poll_seconds=0.05)
    with engine_logs() as logs:
        engine.start()
        done = await finished(store, (await create(engine)).workflow_id)
    assert done.state is State.SUCCEEDED
    # The executor's verification timeout (120 s until it says 30 s): twice it (for a
    # rollback's verification) plus the margin.
    assert downstream.deadlines == [300.0, 120.0, 120.0]
    assert (
        "calling ExecuteAction; deadline 300 s (verification up to 120 s, a rollback's as "
        "long again)" in logs.messages
    )
    assert (
        "calling ExecuteAction; deadline 120 s (verification up to 30 s, a rollback's as "
        "long again)" in logs.messages
    )
    assert logs.messages.count("ExecuteAction still running; waiting for it") == 2
    assert "downstream unavailable; retrying" not in logs.messages
    # Stopped, so that it cannot claim the next workflow (with its own executor's answers).
    await engine.stop()

    # Nothing works on the action and the executor answers UNAVAILABLE: that is an outage.
    stalled = progress(executor_pb2.ACTION_STATE_STARTED, [], started, running=False)
    downstream = Downstream(unavailable={"ExecuteAction": 1}, progress=stalled)
    engine = engines(downstream, progress_poll_seconds=0.05)
    with engine_logs() as logs:
        engine.start()
        done = await finished(store, (await create(engine)).workflow_id)
    assert done.state is State.SUCCEEDED
    assert "downstream unavailable; retrying" in logs.messages
    assert "ExecuteAction still running; waiting for it" not in logs.messages


async def test_logs_carry_the_incident_id(engines: Engines, store: WorkflowStore) -> None:
    seen: list[tuple[str, str]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), incident_id_var.get()))

    handler = Capture(logging.INFO)
    logger = logging.getLogger("kubernaut.services.workflow.engine")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        engine = engines(Downstream())
        engine.start()
        workflow = await create(engine)
        await finished(store, workflow.workflow_id)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    step_logs = [incident for message, incident in seen if message == "step started"]
    assert step_logs
    assert set(step_logs) == {workflow.incident_id}


# -- restarts and concurrency -----------------------------------------------------------------


async def abandon(task: asyncio.Task[None]) -> None:
    """Kill a runner as a crash would: no cleanup, its leases stay behind."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_killed_mid_apply_resumes_without_repeating_finished_steps(
    engines: Engines, store: WorkflowStore
) -> None:
    downstream = Downstream(hang_first_execute=True)
    first = engines(downstream, lease_seconds=SHORT_LEASE_SECONDS)
    crashed = first.start()
    workflow = await create(first)
    await asyncio.wait_for(downstream.arrived.wait(), 10)
    mid = await store.get(workflow.workflow_id)
    assert mid is not None
    assert (
        states(mid)
        == {
            "VALIDATE": "DONE",
            "DRY_RUN": "RUNNING",  # the others start as the executor gets to them
            **dict.fromkeys(ACTING[1:], "PENDING"),
            "NOTIFY": "PENDING",
        }
    )
    await abandon(crashed)
    left = await store.get(workflow.workflow_id)
    assert left is not None
    assert left.lease_owner == first.owner  # the dead runner's lease is still there
    assert left.lease_expires_at is not None

    second = engines(downstream)
    second.start()
    done = await finished(store, workflow.workflow_id)

    assert done.state is State.SUCCEEDED
    executes = downstream.of("ExecuteAction")
    assert [e.action_id for e in executes] == [workflow.action_id] * 2  # the executor acts once
    resumed_at = [c.at for c in downstream.calls if c.operation == "ExecuteAction"][1]
    assert resumed_at >= left.lease_expires_at  # taken over only once the lease expired
    # DRY_RUN was started twice; the others ran once, within the second call.
    assert attempts(done) == {
        "VALIDATE": 1,
        "DRY_RUN": 2,
        **dict.fromkeys(ACTING[1:], 1),
        "NOTIFY": 1,
    }
    assert states(done) == dict.fromkeys(ALL_STEPS, "DONE")
    assert len(downstream.reports()) == 1
    assert list(downstream.delivered) == [
        f"{workflow.workflow_id}/action_planned",
        f"{workflow.workflow_id}/succeeded",
    ]
    assert len(downstream.of("ScheduleAssessment")) == 1
    assert done.lease_owner is None


async def test_killed_mid_notify_sends_no_second_notification(
    engines: Engines, store: WorkflowStore
) -> None:
    downstream = Downstream(hang_first_notify=True)
    first = engines(downstream, lease_seconds=SHORT_LEASE_SECONDS)
    crashed = first.start()
    workflow = await create(first)
    await asyncio.wait_for(downstream.arrived.wait(), 10)
    await abandon(crashed)

    engines(downstream).start()
    done = await finished(store, workflow.workflow_id)

    assert done.state is State.SUCCEEDED
    assert attempts(done) == {**dict.fromkeys(ALL_STEPS[:-1], 1), "NOTIFY": 2}
    assert messages(done)["NOTIFY"] == "delivered before"
    assert len(downstream.reports()) == 2
    assert len(downstream.delivered) == 2  # one email each: the plan, the report
    assert len(downstream.of("ExecuteAction")) == 1


async def test_stop_hands_workflows_over_at_once(engines: Engines, store: WorkflowStore) -> None:
    downstream = Downstream(hang_first_execute=True)
    first = engines(downstream, lease_seconds=60)  # a crash would block it for a minute
    first.start()
    workflow = await create(first)
    await asyncio.wait_for(downstream.arrived.wait(), 10)
    await first.stop()
    released = await store.get(workflow.workflow_id)
    assert released is not None
    assert released.lease_owner is None
    assert states(released)["DRY_RUN"] == "RUNNING"

    engines(downstream, lease_seconds=60).start()
    done = await finished(store, workflow.workflow_id, timeout=5)
    assert done.state is State.SUCCEEDED
    assert attempts(done)["DRY_RUN"] == 2


async def test_two_runners_never_run_the_same_workflow(
    engines: Engines, store: WorkflowStore
) -> None:
    downstream = Downstream(execute_seconds=0.05)
    creator = engines(downstream)  # never started
    workflows = [await create(creator) for _ in range(12)]
    runners = [engines(downstream, max_concurrent=3), engines(downstream, max_concurrent=3)]
    for runner in runners:
        runner.start()
    for workflow in workflows:
        done = await finished(store, workflow.workflow_id, timeout=20)
        assert done.state is State.SUCCEEDED
        assert attempts(done) == dict.fromkeys(ALL_STEPS, 1)

    assert downstream.overlaps == []
    executed = [e.action_id for e in downstream.of("ExecuteAction")]
    assert sorted(executed) == sorted(w.action_id for w in workflows)  # each once
    assert len(downstream.delivered) == 24  # each workflow's plan and report, once


async def test_concurrent_claims_never_share_a_workflow(
    engines: Engines, store: WorkflowStore
) -> None:
    creator = engines(Downstream())
    ids = {(await create(creator)).workflow_id for _ in range(5)}
    claims = await asyncio.gather(*(store.claim(f"runner-{i}", 30) for i in range(20)))
    claimed = [c.workflow_id for c in claims if c is not None]
    assert sorted(claimed) == sorted(ids)
    assert await store.claim("late", 30) is None  # all leased


async def test_expired_lease_is_taken_over_and_fences_the_old_owner(
    engines: Engines, store: WorkflowStore, database_dsn: str
) -> None:
    workflow = await create(engines(Downstream()))
    first = await store.claim("runner-a", 30)
    assert first is not None
    assert first.workflow_id == workflow.workflow_id
    assert first.previous_owner is None
    assert await store.claim("runner-b", 30) is None  # held
    assert await store.renew(workflow.workflow_id, "runner-a", 30)

    conn = await asyncpg.connect(database_dsn)
    try:  # runner-a stops renewing and its lease runs out
        await conn.execute(
            "UPDATE workflow.workflows SET lease_expires_at = now() - interval '1 second'"
        )
    finally:
        await conn.close()
    second = await store.claim("runner-b", 30)
    assert second is not None
    assert second.previous_owner == "runner-a"
    assert not await store.renew(workflow.workflow_id, "runner-a", 30)
    with pytest.raises(LeaseLost):
        await store.save(workflow.workflow_id, "runner-a", [StepChange(0, StepStatus.RUNNING)])
    await store.save(workflow.workflow_id, "runner-b", [StepChange(0, StepStatus.RUNNING)])
    assert await store.release_all("runner-b") == 1


async def test_migrations_create_the_workflow_schema_once(database_dsn: str) -> None:
    databases = [WorkflowDatabase(database_dsn) for _ in range(3)]
    try:
        await asyncio.gather(*(db.store() for db in databases))
        assert all([await db.ready() for db in databases])
        conn = await asyncpg.connect(database_dsn)
        try:
            versions = await conn.fetch("SELECT version FROM workflow.schema_migrations")
            assert [r["version"] for r in versions] == [1, 2, 3]
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'workflow' ORDER BY table_name"
            )
            assert [r["table_name"] for r in tables] == [
                "approvals",
                "schema_migrations",
                "steps",
                "workflows",
            ]
            # Nothing outside its own schema.
            assert await conn.fetchval("SELECT to_regclass('public.schema_migrations')") is None
        finally:
            await conn.close()
    finally:
        for db in databases:
            await db.close()


async def test_unreachable_database_is_not_ready() -> None:
    db = WorkflowDatabase("postgresql://nobody:secret@127.0.0.1:1/none", connect_timeout=1)
    assert not await db.ready()
