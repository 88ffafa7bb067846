"""The workflow engine: creates workflows and runs their steps, without gRPC.

A runner claims RUNNING workflows that no live runner holds (a lease with an owner and an
expiry, renewed while it runs; a runner that died leaves a lease that expires and is taken
over) and runs each one's steps in plan order, persisting every step's state before and
after running it. From what is stored it always knows where to resume:

- a DONE (or SKIPPED, FAILED) step is never run again;
- a step found RUNNING is run again (attempts + 1): safe, because every call it makes is
  idempotent. ExecuteAction is keyed by the workflow's action_id (chosen at creation), so a
  repeat returns the first run's record and acts no more; NotifyIncidentEvent is keyed by
  "<workflow_id>/<event>", so a repeat sends nothing; UpdateIncident and ScheduleAssessment
  are idempotent too.

One ExecuteAction call performs DRY_RUN, SNAPSHOT, APPLY and VERIFY (the executor does
dry-run, snapshot, change, verification and rollback itself). While it runs, the runner
polls the executor's GetActionProgress and moves the four steps along as the executor does
("applied 18:41:19, verifying, 45 s of 120 s"); the answer decides how they end, with the
times the executor reached each stage. The call's deadline is made from the executor's
verification timeout (twice it, for a rollback's verification, plus a margin); a call that
ends while the executor still works on the action (a deadline, or a retry that met the
first call) is "still running", and the runner waits on.

A runbook plan (WorkflowPlan.nodes) runs its ACTION and CHECK steps as a graph instead of
the four acting steps: each step starts when its dependencies finished and its condition
holds, up to the plan's max_parallel at once, each attempt an ExecuteAction (or RunCheck)
with an id derived from the workflow's action_id, the step's node and the attempt number,
stored before the call. A resumed step asks again with the stored id; a retry's backoff is
stored as the time the next attempt may start. When a step fails the plan, nothing new
starts, and once the running ones finished the COMPENSATE steps of the applied actions run
in reverse order of completion, each recorded (see `graph`).

The downstream services are reached through `Downstream`, seven async operations; the
servicer wires gRPC stubs to it, tests wire plain functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, TypeVar

from google.protobuf import timestamp_pb2
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.notification.v1 import notification_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.workflow.v1 import workflow_pb2
from opentelemetry import propagate, trace

from kubernaut.runtime.durations import human_duration
from kubernaut.runtime.leases import ClaimLoop, LeaseLost, hold, owner_id
from kubernaut.runtime.logs import incident_id_var
from kubernaut.services.alerts import subject_text
from kubernaut.services.workflow.downstream import (
    Downstream,
    DownstreamError,
    FailedPrecondition,
    Notified,
    Unavailable,
)
from kubernaut.services.workflow.graph import GRAPH_KINDS
from kubernaut.services.workflow.graph_run import GraphRun
from kubernaut.services.workflow.settings import RunnerSettings
from kubernaut.services.workflow.store import (
    Claim,
    Decision,
    State,
    Step,
    StepChange,
    StepStatus,
    StoreUnavailable,
    Workflow,
    WorkflowChange,
    WorkflowStore,
    kind_name,
    outcome_name,
)

_tracer = trace.get_tracer("kubernaut.workflow")
log = logging.getLogger(__name__)

T = TypeVar("T")
K = workflow_pb2

# The steps the one ExecuteAction call performs.
ACTING_KINDS: Final = frozenset(
    {K.STEP_KIND_DRY_RUN, K.STEP_KIND_SNAPSHOT, K.STEP_KIND_APPLY, K.STEP_KIND_VERIFY}
)
# Outcomes after which the cluster was changed, so the change is assessed.
APPLIED_OUTCOMES: Final = frozenset(
    {storage_pb2.ACTION_OUTCOME_SUCCEEDED, storage_pb2.ACTION_OUTCOME_ROLLED_BACK}
)
_RESULT_OF_OUTCOME: Final = {
    storage_pb2.ACTION_OUTCOME_SUCCEEDED: State.SUCCEEDED,
    storage_pb2.ACTION_OUTCOME_DRY_RUN: State.SUCCEEDED,
    storage_pb2.ACTION_OUTCOME_ROLLED_BACK: State.ROLLED_BACK,
    storage_pb2.ACTION_OUTCOME_FAILED: State.FAILED,
    storage_pb2.ACTION_OUTCOME_REFUSED: State.REFUSED,
}
_EVENT_OF_RESULT: Final = {
    State.SUCCEEDED: notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED,
    State.FAILED: notification_pb2.INCIDENT_EVENT_KIND_FAILED,
    State.ROLLED_BACK: notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK,
    State.REFUSED: notification_pb2.INCIDENT_EVENT_KIND_REFUSED,
}
# How the executor's stage lines start, by step ("dry-run: ok", "verify: 3/3 ready", ...).
_STAGE_PREFIXES: Final = {
    K.STEP_KIND_DRY_RUN: ("dry-run", "dry run", "dryrun"),
    K.STEP_KIND_SNAPSHOT: ("snapshot",),
    K.STEP_KIND_APPLY: ("apply", "applied", "change"),
    K.STEP_KIND_VERIFY: ("verif",),
}
_ROLLBACK_PREFIXES: Final = ("rollback", "rolled back", "roll back")
_FAILURE_WORDS: Final = re.compile(r"\b(fail\w*|error\w*|refused|denied|forbidden|timed out)\b")

# How an approval nobody decided in time is recorded: a rejection with this reason, which the
# report tells as ESCALATED (the incident is left to people), not as REFUSED.
EXPIRED_APPROVAL: Final = "expired: "

# Limits of the downstream requests' fields.
_MAX_REASON: Final = 4096
_MAX_STAGES: Final = 64
_MAX_STAGE: Final = 2048
_MAX_VERDICT: Final = 1024


StoreSource = Callable[[], Awaitable[WorkflowStore]]


# -- the engine -------------------------------------------------------------------------------


class WorkflowEngine:
    """Creates workflows and runs them in the background. `start()` launches the runner,
    `stop()` ends it and gives up its leases; `wake()` makes it look for work now."""

    def __init__(
        self,
        store: StoreSource,
        downstream: Downstream,
        settings: RunnerSettings,
        *,
        owner: str | None = None,
    ) -> None:
        self._store_source = store
        # The store once reached: stop() releases leases through it and never connects
        # (a database that never came up holds no leases of ours).
        self._reached: WorkflowStore | None = None
        self.downstream = downstream
        self.settings = settings
        self.owner = owner or owner_id()
        self._loop = ClaimLoop(
            f"workflow-runner {self.owner}",
            self._claim_available,
            log=log,
            store="workflow store",
            poll_seconds=settings.poll_seconds,
            unavailable=StoreUnavailable,
            release=self._release,
        )
        # When this runner looks for expired approvals next (time.monotonic()).
        self._next_expiry = 0.0
        self._executor = ExecutorFacts(self.settings.executor_verify_timeout_seconds)

    async def _store(self) -> WorkflowStore:
        self._reached = await self._store_source()
        return self._reached

    # -- API ---------------------------------------------------------------------------------

    async def create(
        self,
        incident_id: str,
        alert: alert_pb2.Alert,
        recommendation: remediation_pb2.Recommendation,
        plan: workflow_pb2.WorkflowPlan,
        requested_by: str = "",
    ) -> tuple[Workflow, bool]:
        """Persist a workflow for the incident and wake the runner; when the incident has one
        already, return it and False. StoreUnavailable when the database is down."""
        store = await self._store()
        trace_context: dict[str, str] = {}
        propagate.inject(trace_context)  # the creating request's trace, for the steps
        workflow, created = await store.create(
            incident_id, alert, recommendation, plan, trace_context, requested_by
        )
        if created:
            log.info(
                "workflow created",
                extra={"workflow_id": workflow.workflow_id, "action": plan.action},
            )
            self.wake()
        return workflow, created

    async def get(self, workflow_id: str) -> Workflow | None:
        return await (await self._store()).get(workflow_id)

    async def decide(
        self, workflow_id: str, decision: Decision, approver: str, reason: str
    ) -> tuple[Workflow, bool] | None:
        """Record a person's decision on a workflow that waits for approval and wake the
        runner to carry it out (see WorkflowStore.decide). StoreUnavailable when the
        database is down, NotWaitingApproval when the workflow does not wait, SelfApproval
        when `approver` requested it."""
        decided = await (await self._store()).decide(workflow_id, decision, approver, reason)
        if decided is not None and decided[1]:
            log.info(
                "approval decided",
                extra={
                    "workflow_id": workflow_id,
                    "decision": decision.name.lower(),
                    "approver": approver,
                },
            )
            self.wake()
        return decided

    async def get_by_incident(self, incident_id: str) -> Workflow | None:
        return await (await self._store()).get_by_incident(incident_id)

    def wake(self) -> None:
        self._loop.wake()

    def start(self) -> asyncio.Task[None]:
        """Start the runner. Cancelling the task it returns abandons the workflows in
        flight as a crash would: their leases stay until they expire."""
        log.info("workflow runner started", extra={"owner": self.owner})
        return self._loop.start()

    async def stop(self) -> None:
        """Stop claiming, cancel the workflows in flight (a step they were running runs again
        when resumed) and give up their leases, so another runner resumes them at once."""
        await self._loop.stop()

    async def _release(self) -> int:
        # Never connects: a database that never came up holds no leases of ours.
        if self._reached is None:
            return 0
        return await self._reached.release_all(self.owner)

    @property
    def in_flight(self) -> frozenset[str]:
        """The ids of the workflows this runner is running now."""
        return frozenset(self._loop.running)

    # -- the runner --------------------------------------------------------------------------

    async def _expire_approvals(self) -> None:
        timeout = self.settings.approval_timeout_seconds
        if not timeout or time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + self.settings.approval_sweep_seconds
        expired = await (await self._store()).expire_approvals(
            timeout, f"{EXPIRED_APPROVAL}no decision within {human_duration(timeout)}"
        )
        for workflow_id in expired:
            log.warning("approval expired", extra={"workflow_id": workflow_id})

    async def _claim_available(self) -> bool:
        """One round of the runner: expire approvals, then claim workflows while there is
        room. False: the runner waits for a poll, or a wake (a workflow created, decided or
        finished)."""
        await self._expire_approvals()
        store = await self._store()
        while len(self._loop.running) < self.settings.max_concurrent:
            claim = await store.claim(self.owner, self.settings.lease_seconds)
            if claim is None:
                break
            if claim.workflow_id in self._loop.running:
                # Our own lease ran out while the database was unreachable and we took it
                # back: the task that runs it is still here.
                continue
            if claim.previous_owner:
                log.warning(
                    "taking over a workflow whose runner stopped renewing its lease",
                    extra={
                        "workflow_id": claim.workflow_id,
                        "incident_id": claim.incident_id,
                        "previous_owner": claim.previous_owner,
                    },
                )
            self._loop.launch(claim.workflow_id, self._run_claimed(store, claim))
        return False

    async def _run_claimed(self, store: WorkflowStore, claim: Claim) -> None:
        incident_id_var.set(claim.incident_id)
        run = WorkflowRun(store, self.downstream, self.settings, self.owner, claim, self._executor)
        try:
            # Continue the incident's trace: every call the steps make carries its trace id.
            with _tracer.start_as_current_span(
                "workflow.run",
                context=propagate.extract(claim.trace_context),
                attributes={"workflow.id": claim.workflow_id, "incident.id": claim.incident_id},
            ):
                await hold(
                    run.run(),
                    lambda: store.renew(claim.workflow_id, self.owner, self.settings.lease_seconds),
                    self.settings.lease_seconds,
                    log=log,
                    unavailable=StoreUnavailable,
                    what=f"workflow {claim.workflow_id}",
                )
        except LeaseLost as error:
            log.warning("lost the lease; another runner continues", extra={"error": str(error)})
        except StoreUnavailable as error:
            log.warning(
                "database unavailable; the workflow resumes when its lease expires",
                extra={"workflow_id": claim.workflow_id, "error": str(error)},
            )
        except Exception:
            log.exception(
                "workflow run crashed; it resumes when its lease expires",
                extra={"workflow_id": claim.workflow_id},
            )


@dataclass
class ExecutorFacts:
    """What a runner learned from the executor's progress answers, for the next calls."""

    verify_timeout_seconds: float


class WorkflowRun:
    """One runner's pass over one claimed workflow: from the stored state to the end, or to
    a wait for approval."""

    def __init__(
        self,
        store: WorkflowStore,
        downstream: Downstream,
        settings: RunnerSettings,
        owner: str,
        claim: Claim,
        executor: ExecutorFacts | None = None,
    ) -> None:
        self.store = store
        self.downstream = downstream
        self.settings = settings
        self.owner = owner
        self.workflow_id = claim.workflow_id
        self.executor = executor or ExecutorFacts(settings.executor_verify_timeout_seconds)

    async def run(self) -> None:
        while True:
            workflow = await self.store.get(self.workflow_id)
            if workflow is None or workflow.state is not State.RUNNING:
                # Changed since it was claimed: nothing to run.
                await self.store.release(self.workflow_id, self.owner)
                return
            step = next((s for s in workflow.steps if not s.state.finished), None)
            if step is None:
                await self._finish(workflow)
                return
            try:
                if step.kind == K.STEP_KIND_VALIDATE:
                    await self._validate(workflow, step)
                elif step.kind == K.STEP_KIND_APPROVAL:
                    await self._approval(workflow, step)
                    return
                elif step.kind in ACTING_KINDS:
                    await self._act(workflow)
                elif step.kind in GRAPH_KINDS or (
                    # Every graph step finished but the result was not stored yet (a
                    # restart right after the last one): the graph pass concludes it.
                    step.kind == K.STEP_KIND_NOTIFY
                    and workflow.plan.nodes
                    and workflow.result is None
                ):
                    await self._graph(workflow)
                elif step.kind == K.STEP_KIND_NOTIFY:
                    await self._notify(workflow, step)
                else:
                    raise DownstreamError("plan", f"unknown step kind {step.kind}")
            except DownstreamError as error:
                await self._fail(str(error))

    # -- steps -------------------------------------------------------------------------------

    async def save(
        self, steps: Sequence[StepChange] = (), change: WorkflowChange | None = None
    ) -> None:
        await self.store.save(self.workflow_id, self.owner, steps, change)

    async def _start(self, steps: Sequence[Step], message: str = "") -> None:
        await self.save([StepChange(s.index, StepStatus.RUNNING, message) for s in steps])
        for step in steps:
            log.info(
                "step started",
                extra={
                    "workflow_id": self.workflow_id,
                    "step": kind_name(step.kind),
                    "attempt": step.attempts + 1,
                },
            )

    async def _validate(self, workflow: Workflow, step: Step) -> None:
        await self._start([step])
        policy = workflow.plan.policy
        if policy.outcome == workflow_pb2.POLICY_OUTCOME_DENY:
            # The approval policy forbids this plan: nothing acts, NOTIFY says why.
            message = f"denied by policy rule {policy.rule}: {policy.reason} ({policy.policy})"
            await self.close_incident(
                workflow, storage_pb2.INCIDENT_STATUS_NO_ACTION, f"not acting: {message}"
            )
            await self.save(
                [StepChange(step.index, StepStatus.FAILED, message)]
                + [
                    StepChange(s.index, StepStatus.SKIPPED, f"not run: {message}")
                    for s in workflow.steps
                    if s.index != step.index
                    and not s.state.finished
                    and s.kind != K.STEP_KIND_NOTIFY
                ],
                WorkflowChange(result=State.REFUSED, message=f"not acting: {message}"),
            )
            return
        # The recommendation was validated and checked against the executor's catalogue
        # when the workflow was planned; the executor checks the scope again when it acts.
        told = await self._tell_plan(workflow)
        await self.save([StepChange(step.index, StepStatus.DONE, f"checked when planned; {told}")])

    async def _tell_plan(self, workflow: Workflow) -> str:
        """ACTION_PLANNED, before anything acts (and before an approval request, which
        says only what to decide): what will be done and why. One attempt (the client
        retries UNAVAILABLE itself): telling people must never hold up the fix, and the
        outcome's report follows anyway. Returns what happened, for the step's message."""
        event = _event(
            workflow,
            notification_pb2.INCIDENT_EVENT_KIND_ACTION_PLANNED,
            stages=plan_stages(workflow),
            verdict="not acted yet",
        )
        try:
            notified = await self._notify_call(workflow, event)()
        except DownstreamError as error:
            log.warning("the plan was not told", extra={"error": str(error)})
            return f"the plan was not told: {error}"
        if not notified.delivered:
            log.warning("the plan not delivered yet", extra={"error": notified.errors})
            return notified.undelivered("the plan")
        return "the plan was told" if notified.sent else "the plan was told before"

    async def _approval(self, workflow: Workflow, step: Step) -> None:
        reason = f"waiting for approval: {workflow.plan.approval_reason}"
        await self._start([step], reason)
        event = _event(
            workflow,
            notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED,
            stages=[reason],
            verdict="not acted yet",
        )
        message = reason
        try:
            notified = await self.call("NotifyIncidentEvent", self._notify_call(workflow, event))
        except DownstreamError as error:
            log.warning("approval request not delivered", extra={"error": str(error)})
            message = f"{reason}; the approval request was not delivered: {error}"
        else:
            if not notified.delivered:
                log.warning("approval request not delivered yet", extra={"error": notified.errors})
                message = f"{reason}; {notified.undelivered('the approval request')}"
        await self.save(
            change=WorkflowChange(state=State.WAITING_APPROVAL, message=message, release=True)
        )
        log.info("workflow waits for approval", extra={"workflow_id": self.workflow_id})

    @property
    def verify_timeout_seconds(self) -> float:
        return self.executor.verify_timeout_seconds

    async def _refused_by_a_person(self, workflow: Workflow, group: Sequence[Step]) -> bool:
        """When a person rejected the plan: nothing acts (`group` is skipped), the incident
        closes, NOTIFY tells people; True. False when nobody did."""
        rejection = next(
            (
                s.message
                for s in workflow.steps
                if s.kind == K.STEP_KIND_APPROVAL and s.state is Decision.REJECT.value
            ),
            None,
        )
        if rejection is None:
            return False
        await self.close_incident(
            workflow, storage_pb2.INCIDENT_STATUS_NO_ACTION, f"not acting: {rejection}"
        )
        await self.save(
            [StepChange(s.index, StepStatus.SKIPPED, f"not run: {rejection}") for s in group],
            WorkflowChange(result=State.REFUSED, message=f"not acting: {rejection}"),
        )
        return True

    async def _graph(self, workflow: Workflow) -> None:
        group = [s for s in workflow.steps if s.kind in GRAPH_KINDS and not s.state.finished]
        if not await self._refused_by_a_person(workflow, group):
            await GraphRun(self)(workflow)

    async def _act(self, workflow: Workflow) -> None:
        plan = workflow.plan
        group = [s for s in workflow.steps if s.kind in ACTING_KINDS and not s.state.finished]
        where = subject_text(plan.target)
        if await self._refused_by_a_person(workflow, group):
            return
        # Only the first: the others start as the executor gets to them (_watch_progress).
        await self._start(group[:1])
        outcome = workflow.outcome
        outcome_message = workflow.outcome_message
        stages = workflow.stages
        acted_at = workflow.acted_at
        if outcome is None:
            try:
                await self.call(
                    "UpdateIncident",
                    lambda: self.downstream.update_incident(
                        storage_pb2.UpdateIncidentRequest(
                            incident_id=workflow.incident_id,
                            status=storage_pb2.INCIDENT_STATUS_REMEDIATING,
                            status_reason=_clip(
                                f"workflow {workflow.workflow_id} runs {plan.action} on {where}",
                                _MAX_REASON,
                            ),
                        )
                    ),
                )
            except FailedPrecondition as error:
                # Closed (e.g. the alert resolved) before we acted: never act on it.
                message = f"not acting: the incident is closed ({error.detail})"
                await self.save(
                    [StepChange(s.index, StepStatus.SKIPPED, message) for s in group],
                    WorkflowChange(result=State.REFUSED, message=message),
                )
                return
            response = await self._execute(
                executor_pb2.ExecuteActionRequest(
                    action_id=workflow.action_id,
                    incident_id=workflow.incident_id,
                    alert_name=workflow.alert.name or "unknown",
                    action=workflow.recommendation.action,
                    target=plan.target,
                ),
                group,
            )
            record = response.record
            if record.outcome not in _RESULT_OF_OUTCOME:
                raise DownstreamError("ExecuteAction", "the executor answered without an outcome")
            outcome, outcome_message, stages = record.outcome, record.message, list(response.stages)
            acted_at = _acted_at(record)
            # Stored before the consequences, so that a restart from here does not ask the
            # (by then closed) incident to become REMEDIATING again.
            await self.save(
                change=WorkflowChange(
                    outcome=outcome,
                    outcome_message=outcome_message,
                    stages=stages,
                    acted_at=acted_at,
                )
            )
            log.info(
                "executor answered",
                extra={"workflow_id": self.workflow_id, "outcome": outcome_name(outcome)},
            )
        assert acted_at is not None
        result = _RESULT_OF_OUTCOME[outcome]
        summary = _summary(plan, outcome, outcome_message)
        status = {
            State.SUCCEEDED: storage_pb2.INCIDENT_STATUS_REMEDIATED,
            State.FAILED: storage_pb2.INCIDENT_STATUS_FAILED,
            State.ROLLED_BACK: storage_pb2.INCIDENT_STATUS_FAILED,
            State.REFUSED: storage_pb2.INCIDENT_STATUS_NO_ACTION,
        }[result]
        if outcome == storage_pb2.ACTION_OUTCOME_DRY_RUN:
            status = storage_pb2.INCIDENT_STATUS_NO_ACTION
        await self.close_incident(workflow, status, summary)
        notes: list[str] = []
        if outcome in APPLIED_OUTCOMES:
            request = effectiveness_pb2.ScheduleAssessmentRequest(
                action_id=workflow.action_id,
                incident_id=workflow.incident_id,
                alert=workflow.alert,
                target=plan.target,
            )
            request.acted_at.FromDatetime(acted_at)
            try:
                await self.call(
                    "ScheduleAssessment", lambda: self.downstream.schedule_assessment(request)
                )
            except DownstreamError as error:
                # The action ran; its result stands even if it cannot be assessed.
                log.warning("assessment not scheduled", extra={"error": str(error)})
                notes.append(f"assessment not scheduled: {error}")
        # When the executor reached each stage: the steps' real times.
        progress = await self.progress(workflow.action_id)
        times = {} if progress is None else _step_times(progress)
        await self.save(
            _acting_steps(group, outcome, outcome_message, stages, times),
            WorkflowChange(result=result, message="; ".join([summary, *notes])),
        )

    async def _execute(
        self, request: executor_pb2.ExecuteActionRequest, group: Sequence[Step]
    ) -> executor_pb2.ExecuteActionResponse:
        """ExecuteAction, while the acting steps follow the executor's progress."""
        watcher = asyncio.create_task(self._watch_progress(request.action_id, group))
        try:
            return await self.call_execute(request)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _verify_seconds(self, request: executor_pb2.ExecuteActionRequest) -> float:
        # A runbook step's own timeout, else what the executor said it uses.
        verify = float(request.verify_timeout_seconds) or self.executor.verify_timeout_seconds
        if request.action.HasField("drain_node"):  # waits for evictions up to its own timeout
            verify = max(verify, float(request.action.drain_node.timeout_seconds))
        return verify

    async def call_execute(
        self, request: executor_pb2.ExecuteActionRequest
    ) -> executor_pb2.ExecuteActionResponse:
        """ExecuteAction with a deadline that covers the executor's verification (and a
        rollback's); repeated while the executor still works on the action (it answers a
        repeat with the first call's result) and, with backoff, while it is unavailable."""

        async def call() -> executor_pb2.ExecuteActionResponse:
            verify = self._verify_seconds(request)
            deadline = 2 * verify + self.settings.execute_margin_seconds
            log.info(
                f"calling ExecuteAction; deadline {deadline:g} s (verification up to "
                f"{verify:g} s, a rollback's as long again)",
                extra={
                    "workflow_id": self.workflow_id,
                    "action_id": request.action_id,
                    "deadline_seconds": deadline,
                    "verify_timeout_seconds": verify,
                },
            )
            return await self.downstream.execute_action(request, deadline)

        async def still_running(error: Unavailable) -> bool:
            # Busy, not down: the deadline ran out, or this call met the first one's lock.
            # The executor finishes the action either way; ask again.
            progress = await self.progress(request.action_id)
            if progress is None or not progress.running:
                return False
            log.info(
                "ExecuteAction still running; waiting for it",
                extra={
                    "workflow_id": self.workflow_id,
                    "action_id": request.action_id,
                    "state": _action_state(progress),
                    "error": str(error),
                },
            )
            return True

        return await self.call("ExecuteAction", call, still_running)

    async def progress(self, action_id: str) -> executor_pb2.GetActionProgressResponse | None:
        """The executor's progress on the action, or None when it cannot say (not started,
        unreachable): progress only informs, it never fails the workflow."""
        try:
            progress = await self.downstream.get_action_progress(
                executor_pb2.GetActionProgressRequest(action_id=action_id)
            )
        except Exception as error:
            log.info(
                "no progress from the executor",
                extra={"workflow_id": self.workflow_id, "error": str(error)},
            )
            return None
        if progress.HasField("verify_timeout"):
            self.executor.verify_timeout_seconds = (
                progress.verify_timeout.ToTimedelta().total_seconds()
            )
        return progress

    async def _watch_progress(self, action_id: str, group: Sequence[Step]) -> None:
        """Every few seconds, move the acting steps along as the executor reports; failures
        only log."""
        saved: dict[int, StepChange] = {}
        while True:
            await asyncio.sleep(self.settings.progress_poll_seconds)
            progress = await self.progress(action_id)
            if progress is None:
                continue
            changes = [
                change
                for change in _progress_steps(group, progress, dt.datetime.now(dt.UTC))
                if saved.get(change.index) != change
            ]
            if not changes:
                continue
            try:
                await self.save(changes)
            except Exception as error:  # progress only informs: the run goes on regardless
                log.warning("progress not saved", extra={"error": str(error)})
                continue
            saved.update((change.index, change) for change in changes)

    async def _notify(self, workflow: Workflow, step: Step) -> None:
        await self._start([step])
        result = _final_state(workflow)
        kind = _EVENT_OF_RESULT[result]
        stages = workflow.stages or [workflow.message]
        expired = expired_approval(workflow)
        if result is State.REFUSED and expired is not None:
            # Nobody decided in time: not a "no" to the plan; the incident is left to people.
            kind = notification_pb2.INCIDENT_EVENT_KIND_ESCALATED
            stages = escalation_stages(workflow, expired)
        event = _event(workflow, kind, stages=stages, verdict=_verdict(workflow))
        try:
            notified = await self.call("NotifyIncidentEvent", self._notify_call(workflow, event))
        except DownstreamError as error:
            # Telling people failed; what happened to the cluster stands.
            log.warning("notification not delivered", extra={"error": str(error)})
            await self.save([StepChange(step.index, StepStatus.FAILED, f"not delivered: {error}")])
            return
        if not notified.delivered:
            # Kept by the notification service, which delivers it later; the step says so
            # rather than "delivered".
            log.warning("notification not delivered yet", extra={"error": notified.errors})
            change = StepChange(step.index, StepStatus.FAILED, notified.undelivered("the report"))
        else:
            message = "delivered" if notified.sent else "delivered before"
            change = StepChange(step.index, StepStatus.DONE, message)
        await self.save([change])

    def _notify_call(
        self, workflow: Workflow, event: notification_pb2.IncidentEvent
    ) -> Callable[[], Awaitable[Notified]]:
        kind = notification_pb2.IncidentEventKind.Name(event.kind).removeprefix(
            "INCIDENT_EVENT_KIND_"
        )
        request = notification_pb2.NotifyIncidentEventRequest(
            event=event, idempotency_key=f"{workflow.workflow_id}/{kind.lower()}"
        )
        return lambda: self.downstream.notify_incident_event(request)

    async def _finish(self, workflow: Workflow) -> None:
        state = _final_state(workflow)
        await self.save(change=WorkflowChange(state=state, release=True))
        log.info(
            "workflow finished",
            extra={"workflow_id": self.workflow_id, "state": state.value},
        )

    async def _fail(self, message: str) -> None:
        """A step failed for good: it (and any step running with it) FAILED, the steps not
        run SKIPPED except NOTIFY, which still tells people; the incident FAILED."""
        log.error("workflow failed", extra={"workflow_id": self.workflow_id, "error": message})
        workflow = await self.store.get(self.workflow_id)
        if workflow is None:
            return
        changes: list[StepChange] = []
        for step in workflow.steps:
            if step.state is StepStatus.RUNNING:
                changes.append(StepChange(step.index, StepStatus.FAILED, message))
            elif step.state is StepStatus.PENDING and step.kind != K.STEP_KIND_NOTIFY:
                changes.append(StepChange(step.index, StepStatus.SKIPPED, "not run: a step failed"))
        await self.close_incident(workflow, storage_pb2.INCIDENT_STATUS_FAILED, message)
        await self.save(changes, WorkflowChange(result=State.FAILED, message=message))

    async def close_incident(
        self, workflow: Workflow, status: storage_pb2.IncidentStatus.ValueType, reason: str
    ) -> None:
        request = storage_pb2.UpdateIncidentRequest(
            incident_id=workflow.incident_id,
            status=status,
            status_reason=_clip(reason, _MAX_REASON),
        )
        try:
            await self.call("UpdateIncident", lambda: self.downstream.update_incident(request))
        except FailedPrecondition as error:
            # Closed already: by our own earlier attempt, or the alert resolved meanwhile.
            log.info("incident already closed", extra={"error": str(error)})
        except DownstreamError as error:
            log.warning("incident status not updated", extra={"error": str(error)})

    # -- calls -------------------------------------------------------------------------------

    async def call(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        still_running: Callable[[Unavailable], Awaitable[bool]] | None = None,
    ) -> T:
        """`call()`, repeated with capped exponential backoff (and jitter) while the callee
        is unavailable, or at the progress poll's pace while `still_running` says the
        callee is busy with it rather than down. The lease keeps being renewed meanwhile."""
        delay = self.settings.retry_initial_seconds
        attempt = 1
        while True:
            try:
                return await call()
            except Unavailable as error:
                if still_running is not None and await still_running(error):
                    attempt += 1
                    await asyncio.sleep(self.settings.progress_poll_seconds)
                    continue
                log.warning(
                    "downstream unavailable; retrying",
                    extra={
                        "workflow_id": self.workflow_id,
                        "operation": operation,
                        "attempt": attempt,
                        "retry_in_seconds": round(delay, 3),
                        "error": str(error),
                    },
                )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.settings.retry_max_seconds)
            attempt += 1


# -- pure helpers -----------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _acted_at(record: storage_pb2.ActionRecord) -> dt.datetime:
    for stamp in (record.finished_at, record.started_at):
        if stamp.seconds or stamp.nanos:
            return stamp.ToDatetime(tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC)


def _summary(
    plan: workflow_pb2.WorkflowPlan, outcome: storage_pb2.ActionOutcome.ValueType, detail: str
) -> str:
    what = f"{plan.action} on {subject_text(plan.target)}"
    text = {
        storage_pb2.ACTION_OUTCOME_SUCCEEDED: f"{what} succeeded",
        storage_pb2.ACTION_OUTCOME_DRY_RUN: f"{what} was only dry-run: nothing was applied",
        storage_pb2.ACTION_OUTCOME_ROLLED_BACK: (f"{what} failed verification and was rolled back"),
        storage_pb2.ACTION_OUTCOME_FAILED: f"{what} failed",
        storage_pb2.ACTION_OUTCOME_REFUSED: f"{what} was refused",
    }[outcome]
    return f"{text}: {detail}" if detail else text


def _stage_lines(stages: Sequence[str], prefixes: tuple[str, ...]) -> list[str]:
    return [line for line in stages if line.strip().lower().startswith(prefixes)]


Times = Mapping[workflow_pb2.StepKind.ValueType, tuple[dt.datetime | None, dt.datetime | None]]


def _at(stamp: timestamp_pb2.Timestamp) -> dt.datetime | None:
    return stamp.ToDatetime(tzinfo=dt.UTC) if stamp.seconds or stamp.nanos else None


def _action_state(progress: executor_pb2.GetActionProgressResponse) -> str:
    return executor_pb2.ActionState.Name(progress.state).removeprefix("ACTION_STATE_").lower()


def _step_times(progress: executor_pb2.GetActionProgressResponse) -> Times:
    """When each acting step started and ended, from when the executor reached its stage
    lines: DRY_RUN from the action's start to its dry-run line, SNAPSHOT to its snapshot
    line, APPLY to the change, VERIFY from the verification's start to its last verify or
    rollback line. None where the executor did not say."""

    def first(prefixes: tuple[str, ...]) -> dt.datetime | None:
        return next(
            (_at(s.at) for s in progress.stages if s.line.strip().lower().startswith(prefixes)),
            None,
        )

    def last(prefixes: tuple[str, ...]) -> dt.datetime | None:
        found = [_at(s.at) for s in progress.stages if s.line.strip().lower().startswith(prefixes)]
        return found[-1] if found else None

    dry_run = first(_STAGE_PREFIXES[K.STEP_KIND_DRY_RUN])
    snapshot = first(_STAGE_PREFIXES[K.STEP_KIND_SNAPSHOT])
    applied = _at(progress.applied_at) or first(_STAGE_PREFIXES[K.STEP_KIND_APPLY])
    verify_start = _at(progress.verify_started_at) or applied
    verified = last(_STAGE_PREFIXES[K.STEP_KIND_VERIFY] + _ROLLBACK_PREFIXES)
    return {
        K.STEP_KIND_DRY_RUN: (_at(progress.started_at), dry_run),
        K.STEP_KIND_SNAPSHOT: (dry_run, snapshot),
        K.STEP_KIND_APPLY: (snapshot, applied),
        K.STEP_KIND_VERIFY: (verify_start, verified),
    }


def _clock(at: dt.datetime | None) -> str:
    return "-" if at is None else at.astimezone(dt.UTC).strftime("%H:%M:%S")


def _progress_steps(
    group: Sequence[Step], progress: executor_pb2.GetActionProgressResponse, now: dt.datetime
) -> list[StepChange]:
    """The acting steps as the executor's progress shows them mid-action: the stages it
    finished DONE, the one it works on RUNNING (with what it does), the rest untouched.
    How the action ends is left to its answer."""
    state = progress.state
    if state in (executor_pb2.ACTION_STATE_FINISHED, executor_pb2.ACTION_STATE_RECORDED):
        return []
    lines = [s.line for s in progress.stages]
    times = _step_times(progress)
    planned = state in (
        executor_pb2.ACTION_STATE_PLANNED,
        executor_pb2.ACTION_STATE_APPLIED,
        executor_pb2.ACTION_STATE_RESTORING,
    )
    applied = state in (executor_pb2.ACTION_STATE_APPLIED, executor_pb2.ACTION_STATE_RESTORING)
    dry_run_lines = _stage_lines(lines, _STAGE_PREFIXES[K.STEP_KIND_DRY_RUN])
    dry_run_ok = bool(dry_run_lines) and not _FAILURE_WORDS.search(dry_run_lines[-1].lower())
    done = {
        K.STEP_KIND_DRY_RUN: planned or dry_run_ok,
        K.STEP_KIND_SNAPSHOT: planned,
        K.STEP_KIND_APPLY: applied,
        K.STEP_KIND_VERIFY: False,
    }
    timeout = progress.verify_timeout.ToTimedelta().total_seconds()
    verify_start, _ = times[K.STEP_KIND_VERIFY]
    running = {
        K.STEP_KIND_DRY_RUN: (lines[-1] if lines else "checking scope, RBAC and guards"),
        K.STEP_KIND_SNAPSHOT: "storing the snapshot",
        K.STEP_KIND_APPLY: "applying the change",
        K.STEP_KIND_VERIFY: "verifying",
    }
    if state == executor_pb2.ACTION_STATE_APPLIED and verify_start is not None:
        elapsed = max(0.0, (now - verify_start).total_seconds())
        running[K.STEP_KIND_VERIFY] = (
            f"applied {_clock(times[K.STEP_KIND_APPLY][1])}, verifying, "
            f"{elapsed:.0f} s of {timeout:g} s"
        )
    elif state == executor_pb2.ACTION_STATE_RESTORING:
        failed = _stage_lines(lines, _STAGE_PREFIXES[K.STEP_KIND_VERIFY])
        why = failed[-1] if failed else "verification failed"
        running[K.STEP_KIND_VERIFY] = (
            f"applied {_clock(times[K.STEP_KIND_APPLY][1])}; {why}; rolling back to the snapshot"
        )
    changes: list[StepChange] = []
    current_found = False
    for step in sorted(group, key=lambda s: s.index):
        start, end = times[step.kind]
        if done[step.kind]:
            line = "; ".join(_stage_lines(lines, _STAGE_PREFIXES[step.kind])) or "done"
            changes.append(
                StepChange(step.index, StepStatus.DONE, line, started_at=start, finished_at=end)
            )
        elif not current_found:
            current_found = True
            changes.append(
                StepChange(
                    step.index,
                    StepStatus.RUNNING,
                    running[step.kind],
                    started_at=start,
                    new_attempt=False,
                )
            )
    return changes


def _acting_steps(
    group: Sequence[Step],
    outcome: storage_pb2.ActionOutcome.ValueType,
    detail: str,
    stages: Sequence[str],
    times: Times | None = None,
) -> list[StepChange]:
    """The states of DRY_RUN, SNAPSHOT, APPLY and VERIFY from the executor's answer, with
    when each really started and ended where `times` (from its progress) says."""
    changes = _acting_states(group, outcome, detail, stages)
    if not times:
        return changes
    timed = []
    kinds = {step.index: step.kind for step in group}
    for change in changes:
        start, end = times.get(kinds[change.index], (None, None))
        if change.state in (StepStatus.DONE, StepStatus.FAILED):
            change = replace(change, started_at=start, finished_at=end)
        timed.append(change)
    return timed


def _acting_states(
    group: Sequence[Step],
    outcome: storage_pb2.ActionOutcome.ValueType,
    detail: str,
    stages: Sequence[str],
) -> list[StepChange]:
    lines = {kind: "; ".join(_stage_lines(stages, p)) for kind, p in _STAGE_PREFIXES.items()}
    rollback = "; ".join(_stage_lines(stages, _ROLLBACK_PREFIXES))
    ordered = sorted(group, key=lambda s: s.index)
    changes: list[StepChange] = []
    if outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED:
        for step in ordered:
            changes.append(StepChange(step.index, StepStatus.DONE, lines[step.kind] or "done"))
    elif outcome == storage_pb2.ACTION_OUTCOME_ROLLED_BACK:
        for step in ordered:
            if step.kind == K.STEP_KIND_VERIFY:
                text = "; ".join(t for t in (lines[step.kind] or "failed", rollback) if t)
                changes.append(StepChange(step.index, StepStatus.FAILED, text))
            else:
                changes.append(StepChange(step.index, StepStatus.DONE, lines[step.kind] or "done"))
    elif outcome == storage_pb2.ACTION_OUTCOME_DRY_RUN:
        for step in ordered:
            if step.kind == K.STEP_KIND_DRY_RUN:
                changes.append(StepChange(step.index, StepStatus.DONE, lines[step.kind] or "done"))
            else:
                changes.append(
                    StepChange(
                        step.index, StepStatus.SKIPPED, "not run: the executor is in dry-run mode"
                    )
                )
    elif outcome == storage_pb2.ACTION_OUTCOME_REFUSED:
        for step in ordered:
            text = lines[step.kind] or (
                "not run: refused: " + detail if detail else "not run: refused"
            )
            changes.append(StepChange(step.index, StepStatus.SKIPPED, text))
    else:  # FAILED: done up to the first stage that failed or did not report
        failed = False
        for step in ordered:
            line = lines[step.kind]
            if failed:
                changes.append(
                    StepChange(step.index, StepStatus.SKIPPED, "not run: a stage failed")
                )
            elif not line or _FAILURE_WORDS.search(line.lower()):
                failed = True
                text = "; ".join(t for t in (line, detail) if t) or "failed"
                changes.append(StepChange(step.index, StepStatus.FAILED, text))
            else:
                changes.append(StepChange(step.index, StepStatus.DONE, line))
        if not failed and changes:
            last = changes[-1]
            changes[-1] = StepChange(
                last.index, StepStatus.FAILED, "; ".join(t for t in (last.message, detail) if t)
            )
    return changes


def _final_state(workflow: Workflow) -> State:
    if workflow.result is not None:
        return workflow.result
    if any(s.state is StepStatus.FAILED for s in workflow.steps):
        return State.FAILED
    return State.SUCCEEDED


def _verdict(workflow: Workflow) -> str:
    """The verdict so far, for the notification: assessments come later, when at all."""
    if workflow.outcome in APPLIED_OUTCOMES:
        return "not assessed yet"
    if workflow.result is State.REFUSED or workflow.outcome == storage_pb2.ACTION_OUTCOME_DRY_RUN:
        return "nothing to assess: nothing was changed"
    return "not assessed: the action failed"


def plan_stages(workflow: Workflow) -> list[str]:
    """The stages of ACTION_PLANNED: why this action (the analysis' reasons), whether it
    waits for approval, then the plan's steps. Worded so that no line reads as an
    executor's stage line ("apply: ..."), which would say the change was made."""
    plan = workflow.plan
    lines = [f"why: {reason}" for reason in workflow.recommendation.reasons]
    if plan.requires_approval:
        lines.append(f"waits for approval first: {plan.approval_reason}")
    else:
        lines.append(f"runs without approval: {plan.approval_reason}")
    for number, step in enumerate(plan.steps, 1):
        what = kind_name(step.kind).lower().replace("_", "-")
        lines.append(f"step {number} ({what}): {step.description}")
    if plan.rollback:
        lines.append(f"if the change does not verify: {plan.rollback}")
    return lines


def expired_approval(workflow: Workflow) -> str | None:
    """Why the workflow's approval expired (the approval step's message), or None when it
    did not: no approval step, not decided, or decided by a person."""
    for step in workflow.steps:
        if (
            step.kind == K.STEP_KIND_APPROVAL
            and step.state is Decision.REJECT.value
            and step.message.startswith(EXPIRED_APPROVAL)
        ):
            return step.message
    return None


def escalation_stages(workflow: Workflow, expired: str) -> list[str]:
    """The stages of ESCALATED: what waited for a decision, that nobody decided, and that
    Kubernaut leaves the incident to people."""
    plan = workflow.plan
    return [
        f"asked for approval to run {plan.action} on {subject_text(plan.target)}: "
        f"{plan.approval_reason}",
        f"the approval expired: {expired.removeprefix(EXPIRED_APPROVAL)}",
        "nothing was changed, and Kubernaut will not act on this incident: it is yours now",
    ]


def _event(
    workflow: Workflow,
    kind: notification_pb2.IncidentEventKind.ValueType,
    *,
    stages: Sequence[str],
    verdict: str,
) -> notification_pb2.IncidentEvent:
    event = notification_pb2.IncidentEvent(
        incident_id=workflow.incident_id,
        workflow_id=workflow.workflow_id,
        kind=kind,
        alert=workflow.alert,
        target=workflow.plan.target,
        action=workflow.plan.action,
        stages=[_clip(line, _MAX_STAGE) for line in stages if line][:_MAX_STAGES],
        verdict=_clip(verdict, _MAX_VERDICT),
    )
    event.occurred_at.GetCurrentTime()
    return event
