"""Running a runbook plan's graph: its ACTION and CHECK steps as their dependencies,
conditions and the plan's max_parallel allow, each with its timeout and retries; then, when
a step failed the plan, the compensations of the applied actions in reverse order; then the
workflow's result, the incident's status and the assessments.

Every decision is taken from the stored steps (`graph`), and every call is idempotent: an
attempt's executor id is derived from the workflow's action_id, the node and the attempt
number and stored with the attempt before the call, so a runner that resumes the workflow
after a crash asks the executor again with the same id and gets the first run's answer; a
compensation's id is derived from the node alone; checks change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.runtime.durations import human_duration
from kubernaut.services.alerts import subject_text
from kubernaut.services.workflow.downstream import (
    Downstream,
    DownstreamError,
    FailedPrecondition,
    Unavailable,
)
from kubernaut.services.workflow.graph import (
    APPLIED,
    GRAPH_KINDS,
    NODE_KINDS,
    NOT_PASSED,
    PASSED,
    compensations,
    next_moves,
    nodes_by_name,
    plan_failure,
)
from kubernaut.services.workflow.settings import RunnerSettings
from kubernaut.services.workflow.store import (
    State,
    Step,
    StepChange,
    StepStatus,
    Workflow,
    WorkflowChange,
    WorkflowStore,
    kind_name,
    outcome_name,
)

T = TypeVar("T")


class Acting(Protocol):
    """What a graph pass uses of the workflow run it belongs to (engine.WorkflowRun): its
    store, its downstream calls with their retries, and how it saves and closes."""

    workflow_id: str
    store: WorkflowStore
    downstream: Downstream
    settings: RunnerSettings

    @property
    def verify_timeout_seconds(self) -> float:
        """The executor's verification timeout as it last said."""
        ...

    async def save(
        self, steps: Sequence[StepChange] = (), change: WorkflowChange | None = None
    ) -> None: ...

    async def call(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        still_running: Callable[[Unavailable], Awaitable[bool]] | None = None,
    ) -> T: ...

    async def call_execute(
        self, request: executor_pb2.ExecuteActionRequest
    ) -> executor_pb2.ExecuteActionResponse: ...

    async def progress(self, action_id: str) -> executor_pb2.GetActionProgressResponse | None: ...

    async def close_incident(
        self, workflow: Workflow, status: storage_pb2.IncidentStatus.ValueType, reason: str
    ) -> None: ...


log = logging.getLogger(__name__)
K = workflow_pb2

# Action outcomes after which the cluster was changed, so the change is assessed.
_ASSESSED: Final = frozenset({"SUCCEEDED", "ROLLED_BACK"})
# Action outcomes worth another attempt: the change did not take or did not verify (and the
# executor put things back). A refusal (scope, RBAC, guards) would refuse again.
_RETRYABLE: Final = frozenset({"FAILED", "ROLLED_BACK"})
# Extra seconds for a check's call deadline beyond its own timeout.
_CHECK_MARGIN_SECONDS: Final = 30.0


def attempt_id(workflow_action_id: str, node: str, attempt: int) -> str:
    """The executor's id of one attempt of one node: the same after any restart."""
    return str(uuid.uuid5(uuid.UUID(workflow_action_id), f"{node}/{attempt}"))


def compensation_id(workflow_action_id: str, node: str) -> str:
    """The executor's id of a node's compensation (a rollback_id or an action_id)."""
    return str(uuid.uuid5(uuid.UUID(workflow_action_id), f"compensate/{node}"))


def backoff_seconds(retry: workflow_pb2.RetryPolicy, attempt: int) -> float:
    """The wait after failed attempt number `attempt` (from 1): backoff_seconds, doubling,
    up to max_backoff_seconds when set."""
    delay = float(retry.backoff_seconds) * 2.0 ** max(0, attempt - 1)
    return min(delay, float(retry.max_backoff_seconds)) if retry.max_backoff_seconds else delay


@dataclass(frozen=True)
class Attempt:
    """How one attempt of a node ended."""

    ok: bool
    # As stored: an ActionOutcome name, PASSED or NOT_PASSED.
    outcome: str
    message: str
    retryable: bool


def _what(node: workflow_pb2.PlanNode) -> str:
    if node.HasField("check"):
        return f"check {node.check.WhichOneof('check')}"
    return node.action.WhichOneof("params") or "action"


def step_lines(workflow: Workflow) -> list[str]:
    """One line per graph step, in plan order, for the report."""
    lines = []
    for step in workflow.steps:
        if step.kind not in GRAPH_KINDS:
            continue
        kind = kind_name(step.kind).lower()
        text = f": {step.message}" if step.message else ""
        lines.append(f"step {step.node} ({kind}) {step.state.value.lower()}{text}")
    return lines


class GraphRun:
    """One runner's pass over a workflow's graph steps (see the module's doc)."""

    def __init__(self, run: Acting) -> None:
        self.run = run

    async def __call__(self, workflow: Workflow) -> None:
        if not await self._begin(workflow):
            return
        if not await self._nodes():
            return
        await self._compensate()
        await self._finish()

    async def _reload(self) -> Workflow | None:
        return await self.run.store.get(self.run.workflow_id)

    # -- the node steps ------------------------------------------------------------------------

    async def _begin(self, workflow: Workflow) -> bool:
        """The incident becomes REMEDIATING before the first step acts (again on a resume
        before any step started: idempotent). False when it closed meanwhile: nothing runs."""
        graph = [s for s in workflow.steps if s.kind in GRAPH_KINDS]
        if any(s.state is not StepStatus.PENDING for s in graph) or workflow.result is not None:
            return True
        plan = workflow.plan
        runbook = f"runbook {plan.runbook.name} {plan.runbook.version}".strip()
        request = storage_pb2.UpdateIncidentRequest(
            incident_id=workflow.incident_id,
            status=storage_pb2.INCIDENT_STATUS_REMEDIATING,
            status_reason=(
                f"workflow {workflow.workflow_id} runs {runbook} ({len(plan.nodes)} steps)"
            )[:4096],
        )
        try:
            await self.run.call(
                "UpdateIncident", lambda: self.run.downstream.update_incident(request)
            )
        except FailedPrecondition as error:
            message = f"not acting: the incident is closed ({error.detail})"
            await self.run.save(
                [StepChange(s.index, StepStatus.SKIPPED, message) for s in graph],
                WorkflowChange(result=State.REFUSED, message=message),
            )
            return False
        return True

    async def _nodes(self) -> bool:
        """Run the node steps until none runs and none can start. False when the workflow
        went away."""
        tasks: dict[int, asyncio.Task[None]] = {}
        try:
            while True:
                workflow = await self._reload()
                if workflow is None:
                    return False
                moves = next_moves(workflow.plan, workflow.steps)
                changes = [StepChange(s.index, StepStatus.SKIPPED, why) for s, why in moves.skip]
                changes += [StepChange(s.index, StepStatus.FAILED, why) for s, why in moves.fail]
                if changes:
                    await self.run.save(changes)
                    continue
                limit = max(1, workflow.plan.max_parallel)
                for step in [*moves.resume, *moves.start]:
                    if step.index not in tasks and len(tasks) < limit:
                        tasks[step.index] = asyncio.create_task(self._node(workflow, step))
                if not tasks:
                    return True
                done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
                for index, task in list(tasks.items()):
                    if task in done:
                        del tasks[index]
                        task.result()  # a lost lease or an unreachable database ends the pass
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _node(self, workflow: Workflow, step: Step) -> None:
        """One node step to its end: attempts, with the node's backoff between them."""
        node = nodes_by_name(workflow.plan)[step.node]
        allowed = max(1, node.retry.attempts)
        what = f"{_what(node)} on {subject_text(node.target)}"
        attempt, action_id, not_before = step.attempts, step.action_id, step.not_before
        if step.state is StepStatus.PENDING or not action_id:
            attempt += 1
            action_id = attempt_id(workflow.action_id, node.name, attempt)
            await self._started(step, attempt, allowed, what, action_id)
        while True:
            if not_before is not None:
                wait = (not_before - dt.datetime.now(dt.UTC)).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
                attempt += 1
                action_id = attempt_id(workflow.action_id, node.name, attempt)
                await self._started(step, attempt, allowed, what, action_id)
                not_before = None
            result = await self._attempt(workflow, node, step.index, action_id)
            of = f"attempt {attempt} of {allowed}" if allowed > 1 else ""
            if result.ok:
                message = f"{result.message} ({of})" if of else result.message
                await self.run.save(
                    [StepChange(step.index, StepStatus.DONE, message, outcome=result.outcome)]
                )
                return
            if result.retryable and attempt < allowed:
                delay = backoff_seconds(node.retry, attempt)
                not_before = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
                log.warning(
                    "runbook step failed; retrying",
                    extra={
                        "workflow_id": self.run.workflow_id,
                        "step": node.name,
                        "attempt": attempt,
                        "retry_in_seconds": delay,
                        "error": result.message,
                    },
                )
                await self.run.save(
                    [
                        StepChange(
                            step.index,
                            StepStatus.RUNNING,
                            f"{of} failed: {result.message}; attempt {attempt + 1} in "
                            f"{human_duration(delay)}",
                            new_attempt=False,
                            outcome=result.outcome,
                            not_before=not_before,
                        )
                    ]
                )
                continue
            message = f"{result.message} ({of})" if of else result.message
            await self.run.save(
                [StepChange(step.index, StepStatus.FAILED, message, outcome=result.outcome)]
            )
            return

    async def _started(
        self, step: Step, attempt: int, allowed: int, what: str, action_id: str
    ) -> None:
        of = f" (attempt {attempt} of {allowed})" if allowed > 1 else ""
        await self.run.save(
            [StepChange(step.index, StepStatus.RUNNING, f"{what}{of}", action_id=action_id)]
        )
        log.info(
            "runbook step started",
            extra={"workflow_id": self.run.workflow_id, "step": step.node, "attempt": attempt},
        )

    async def _attempt(
        self, workflow: Workflow, node: workflow_pb2.PlanNode, index: int, action_id: str
    ) -> Attempt:
        if node.HasField("check"):
            return await self._check(workflow, node)
        request = executor_pb2.ExecuteActionRequest(
            action_id=action_id,
            incident_id=workflow.incident_id,
            alert_name=workflow.alert.name or "unknown",
            action=node.action,
            target=node.target,
            verify_timeout_seconds=node.timeout_seconds,
        )
        follower = asyncio.create_task(self._follow(action_id, index))
        try:
            response = await self.run.call_execute(request)
        except DownstreamError as error:
            # Refused as malformed or impossible: another attempt would be too.
            return Attempt(False, "FAILED", str(error), retryable=False)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        record = response.record
        outcome = outcome_name(record.outcome)
        detail = record.message or (response.stages[-1] if response.stages else "")
        message = f"{outcome.lower().replace('_', ' ')}: {detail}" if detail else outcome.lower()
        return Attempt(outcome == APPLIED, outcome, message, outcome in _RETRYABLE)

    async def _check(self, workflow: Workflow, node: workflow_pb2.PlanNode) -> Attempt:
        request = executor_pb2.RunCheckRequest(
            check=node.check,
            target=node.target,
            timeout_seconds=node.timeout_seconds,
            incident_id=workflow.incident_id,
        )
        deadline = node.timeout_seconds + _CHECK_MARGIN_SECONDS
        try:
            response = await self.run.call(
                "RunCheck", lambda: self.run.downstream.run_check(request, deadline)
            )
        except DownstreamError as error:
            return Attempt(False, NOT_PASSED, str(error), retryable=False)
        looked = f" ({response.looks} looks)" if response.looks > 1 else ""
        if response.passed:
            return Attempt(True, PASSED, f"passed: {response.detail}{looked}", retryable=False)
        return Attempt(False, NOT_PASSED, f"not passed: {response.detail}{looked}", True)

    async def _follow(self, action_id: str, index: int) -> None:
        """While an action runs, the step's message follows the executor's stage lines;
        progress only informs, so failures are ignored."""
        said = ""
        while True:
            await asyncio.sleep(self.run.settings.progress_poll_seconds)
            progress = await self.run.progress(action_id)
            if progress is None or not progress.stages:
                continue
            state = executor_pb2.ActionState.Name(progress.state).removeprefix("ACTION_STATE_")
            line = f"{state.lower()}: {progress.stages[-1].line}"
            if line == said:
                continue
            try:
                await self.run.save(
                    [StepChange(index, StepStatus.RUNNING, line, new_attempt=False)]
                )
            except Exception as error:
                log.info("progress not saved", extra={"error": str(error)})
                continue
            said = line

    # -- compensation ------------------------------------------------------------------------

    async def _compensate(self) -> None:
        workflow = await self._reload()
        if workflow is None:
            return
        planned = compensations(workflow.plan, workflow.steps)
        if planned.skip:
            await self.run.save(
                [StepChange(s.index, StepStatus.SKIPPED, why) for s, why in planned.skip]
            )
        failed = plan_failure(workflow.plan, workflow.steps)
        for step in planned.run:
            await self._compensation(workflow, step, failed)

    async def _compensation(self, workflow: Workflow, step: Step, failed: Step | None) -> None:
        node = nodes_by_name(workflow.plan)[step.node]
        undone = next(s for s in workflow.steps if s.kind in NODE_KINDS and s.node == step.node)
        how = node.compensation
        compensation = compensation_id(workflow.action_id, node.name)
        why = f"step {failed.node} failed" if failed is not None else "the plan failed"
        if how.WhichOneof("how") == "undo":
            what = f"undo {_what(node)} on {subject_text(node.target)} from its snapshot"
        else:
            target = how.target if how.HasField("target") else node.target
            what = f"{how.action.WhichOneof('params')} on {subject_text(target)}"
        await self.run.save(
            [
                StepChange(
                    step.index,
                    StepStatus.RUNNING,
                    f"{what}: {why}",
                    new_attempt=step.state is StepStatus.PENDING,
                    action_id=compensation,
                )
            ]
        )
        log.warning(
            "compensating a runbook step",
            extra={"workflow_id": self.run.workflow_id, "step": node.name, "why": why},
        )
        try:
            if how.WhichOneof("how") == "undo":
                rollback = executor_pb2.RollbackActionRequest(
                    action_id=undone.action_id,
                    rollback_id=compensation,
                    reason=f"runbook compensation: {why}"[:1024],
                )
                deadline = (
                    2 * self.run.verify_timeout_seconds + self.run.settings.execute_margin_seconds
                )
                record = (
                    await self.run.call(
                        "RollbackAction",
                        lambda: self.run.downstream.rollback_action(rollback, deadline),
                    )
                ).record
            else:
                execute = executor_pb2.ExecuteActionRequest(
                    action_id=compensation,
                    incident_id=workflow.incident_id,
                    alert_name=workflow.alert.name or "unknown",
                    action=how.action,
                    target=how.target if how.HasField("target") else node.target,
                )
                record = (await self.run.call_execute(execute)).record
        except DownstreamError as error:
            await self.run.save(
                [StepChange(step.index, StepStatus.FAILED, f"{what}: failed: {error}")]
            )
            return
        outcome = outcome_name(record.outcome)
        state = StepStatus.DONE if outcome == APPLIED else StepStatus.FAILED
        detail = f": {record.message}" if record.message else ""
        await self.run.save(
            [StepChange(step.index, state, f"{what}: {outcome.lower()}{detail}", outcome=outcome)]
        )

    # -- the end -----------------------------------------------------------------------------

    async def _finish(self) -> None:
        """The workflow's result, the incident's status and the assessments, from the steps."""
        workflow = await self._reload()
        if workflow is None or workflow.result is not None:
            return
        plan = workflow.plan
        nodes = [s for s in workflow.steps if s.kind in NODE_KINDS]
        undos = [s for s in workflow.steps if s.kind == K.STEP_KIND_COMPENSATE]
        failed = plan_failure(plan, workflow.steps)
        name = f"runbook {plan.runbook.name} {plan.runbook.version}".strip()
        changed = [s for s in nodes if s.kind == K.STEP_KIND_ACTION and s.outcome == APPLIED]
        outcome: storage_pb2.ActionOutcome.ValueType
        if failed is None:
            done = sum(s.state is StepStatus.DONE for s in nodes)
            skipped = sum(s.state is StepStatus.SKIPPED for s in nodes)
            outcome, result = storage_pb2.ACTION_OUTCOME_SUCCEEDED, State.SUCCEEDED
            status = storage_pb2.INCIDENT_STATUS_REMEDIATED
            summary = f"{name} succeeded: {done} steps done, {skipped} skipped"
        elif failed.outcome == "DRY_RUN":
            outcome, result = storage_pb2.ACTION_OUTCOME_DRY_RUN, State.SUCCEEDED
            status = storage_pb2.INCIDENT_STATUS_NO_ACTION
            summary = f"{name} was only dry-run: the executor is in dry-run mode"
        elif failed.outcome == "REFUSED" and not changed:
            outcome, result = storage_pb2.ACTION_OUTCOME_REFUSED, State.REFUSED
            status = storage_pb2.INCIDENT_STATUS_NO_ACTION
            summary = f"{name}: step {failed.node} was refused: {failed.message}"
        else:
            undone = {s.node for s in undos if s.state is StepStatus.DONE}
            kept = [s.node for s in changed if s.node not in undone]
            status = storage_pb2.INCIDENT_STATUS_FAILED
            summary = f"{name}: step {failed.node} failed: {failed.message}"
            if undone:
                summary += f"; compensated {', '.join(s.node for s in undos if s.node in undone)}"
            if not kept:
                # Every change the plan made was undone: the workload is as it was.
                outcome, result = storage_pb2.ACTION_OUTCOME_ROLLED_BACK, State.ROLLED_BACK
            else:
                outcome, result = storage_pb2.ACTION_OUTCOME_FAILED, State.FAILED
                summary += f"; still changed: {', '.join(kept)} (check them)"
        await self.run.close_incident(workflow, status, summary)
        notes = []
        if result is not State.REFUSED:
            notes = await self._assess(workflow, nodes)
        started = [s.started_at for s in nodes if s.started_at is not None]
        await self.run.save(
            change=WorkflowChange(
                result=result,
                message="; ".join([summary, *notes]),
                outcome=outcome,
                outcome_message=summary,
                stages=step_lines(workflow),
                acted_at=min(started) if started else dt.datetime.now(dt.UTC),
            )
        )
        log.info(
            "runbook finished",
            extra={"workflow_id": self.run.workflow_id, "result": result.value},
        )

    async def _assess(self, workflow: Workflow, nodes: Sequence[Step]) -> list[str]:
        """Schedule an assessment of each action that changed the cluster; why any could not
        be scheduled."""
        notes: list[str] = []
        by_name = nodes_by_name(workflow.plan)
        for step in nodes:
            if step.kind != K.STEP_KIND_ACTION or step.outcome not in _ASSESSED:
                continue
            request = effectiveness_pb2.ScheduleAssessmentRequest(
                action_id=step.action_id,
                incident_id=workflow.incident_id,
                alert=workflow.alert,
                target=by_name[step.node].target,
            )
            request.acted_at.FromDatetime(step.finished_at or dt.datetime.now(dt.UTC))
            try:
                await self.run.call("ScheduleAssessment", self._scheduler(request))
            except DownstreamError as error:
                log.warning("assessment not scheduled", extra={"error": str(error)})
                notes.append(f"assessment of {step.node} not scheduled: {error}")
        return notes

    def _scheduler(
        self, request: effectiveness_pb2.ScheduleAssessmentRequest
    ) -> Callable[[], Awaitable[None]]:
        return lambda: self.run.downstream.schedule_assessment(request)
