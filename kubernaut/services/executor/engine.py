"""ExecuteAction without gRPC: scope, RBAC, guards, the change, dry-run, snapshot, apply,
verify, rollback, record.

One call runs these stages in order, each reported as a line of `stages`:

  scope     refuse kinds the action does not act on, protected namespaces and nodes,
            namespaces outside the cluster's allow list or inside its deny list, and
            objects that have not opted in (kubernaut.ai/managed=true on the object or its
            namespace); FAILED when the target does not exist
  rbac      a SelfSubjectAccessReview for every permission the catalogue lists for the
            action (and the target's kind); refused naming each missing verb
  guards    one action at a time per target, a cooldown per (target, action), a limit of
            actions per cluster per minute (kubernaut.services.executor.guards)
  plan      compute the change from the target as it is and the parameters
  dry-run   the exact request with dryRun=All; a rejection FAILS with the API's message;
            in the executor's dry-run mode the action ends here as DRY_RUN
  gitops    a target Argo CD or Flux manages is REFUSED with the change as a proposed
            kubectl patch (the controller would revert it; KUBERNAUT_EXECUTOR_GITOPS)
  snapshot  the target's content, resourceVersion and pod-template hashes, and the change,
            stored in the executor's schema before anything is applied
  apply     the change, with the snapshot's resourceVersion as a precondition: a target
            changed by someone else since FAILS ("changed concurrently"), never clobbered
  verify    the rollout completes (workloads) or the change reads back and settles
  rollback  on failed verification: the snapshot's values restored (with the same
            precondition), and verified; the outcome is ROLLED_BACK
  record    the ActionRecord through storage.RecordAction

Each stage has its module: scope in kubernaut.services.executor.scope, rbac in .access, guards to
rollback in .apply, record in .record; they work on the call's Run (.run), and `_act` below
runs them in order. What differs between actions (how they plan, apply, verify and undo)
lives in operations.py. The stored row (store.py) makes
every step resumable: a retry with the same action_id after a crash continues from where
the first call was, with the same change; a retry after the record was stored returns it
without touching the cluster. `rollback()` (RollbackAction) undoes a recorded action from
its stored snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2
from opentelemetry import trace

from kubernaut.runtime.clusters import UnknownCluster
from kubernaut.runtime.kube import ClusterNotConfigured
from kubernaut.runtime.logs import incident_id_var
from kubernaut.services.executor import catalogue, guards
from kubernaut.services.executor.access import check_rbac
from kubernaut.services.executor.apply import (
    admit,
    apply_change,
    observe,
    prepare,
    restore_change,
    verify_change,
)
from kubernaut.services.executor.cluster import ClusterUnavailable
from kubernaut.services.executor.clusters import CircuitOpen, ExecutorClusters
from kubernaut.services.executor.operations import SUCCEEDED, Outcome
from kubernaut.services.executor.progress import progress_of
from kubernaut.services.executor.record import (
    Recorder,
    RecordRejected,
    StorageRecorder,
    StorageUnavailable,
    finish_record,
    store_record,
)
from kubernaut.services.executor.run import Checkpoint, Finished, Run, now
from kubernaut.services.executor.scope import check_scope
from kubernaut.services.executor.settings import ExecutorSettings
from kubernaut.services.executor.store import (
    ActionRow,
    ActionState,
    ActionStore,
    ExecutorDatabase,
    ExecutorStoreUnavailable,
)

log = logging.getLogger(__name__)

__all__ = [
    "ActionNotFound",
    "Checkpoint",
    "ClusterNotConfigured",
    "ClusterUnavailable",
    "ExecuteResult",
    "Executor",
    "ExecutorStoreUnavailable",
    "RecordRejected",
    "Recorder",
    "RollbackRefused",
    "StorageRecorder",
    "StorageUnavailable",
    "UnknownCluster",
]


class ActionNotFound(LookupError):
    """RollbackAction named an action the executor has no record of."""


class RollbackRefused(Exception):
    """RollbackAction cannot undo this action; the message says why."""


@dataclass(frozen=True)
class ExecuteResult:
    record: storage_pb2.ActionRecord
    stages: list[str]


class Executor:
    """Runs ExecuteAction and RollbackAction. `clusters` holds the executor's own identity
    on each cluster (its RBAC is what the SelfSubjectAccessReviews check); `database` holds
    the executor's schema; `recorder` stores the final record (StorageRecorder in the
    service)."""

    def __init__(
        self,
        clusters: ExecutorClusters,
        database: ExecutorDatabase,
        recorder: Recorder,
        settings: ExecutorSettings,
        *,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.clusters = clusters
        self.database = database
        self.recorder = recorder
        self.settings = settings
        self.checkpoint = checkpoint
        self._running: dict[str, asyncio.Task[ExecuteResult]] = {}

    async def execute(self, request: executor_pb2.ExecuteActionRequest) -> ExecuteResult:
        """Run (or resume, or answer again) the action `request.action_id` names.

        Raises UnknownCluster (nothing recorded: the request is wrong); ClusterNotConfigured;
        ClusterUnavailable (also CircuitOpen), ExecutorStoreUnavailable and
        StorageUnavailable when a dependency cannot be reached (a retry with the same
        action_id continues safely); RecordRejected when storage refuses the record.
        The action runs to its end even when the caller goes away."""
        cluster = self.clusters.resolve(request.target.cluster)
        if not self.clusters.connection(cluster).configured:
            raise ClusterNotConfigured(
                f"cluster {cluster} is not configured: set KUBECONFIG (or "
                "KUBERNAUT_KUBE_KUBECONFIG, or KUBERNAUT_KUBE_CLUSTERS)"
            )
        return await self._once(request.action_id, lambda: self._execute(request, cluster))

    async def rollback(self, request: executor_pb2.RollbackActionRequest) -> ExecuteResult:
        """Undo the recorded action `request.action_id` as the action `rollback_id` (see
        RollbackAction). Raises ActionNotFound and RollbackRefused (nothing recorded), and
        what `execute` raises."""
        store = await self.database.store()
        original = await store.get(request.action_id)
        if original is None:
            raise ActionNotFound(f"the executor has no action {request.action_id}")
        existing = await store.get(request.rollback_id)
        if existing is not None:
            if existing.undo_of != request.action_id:
                raise RollbackRefused(
                    f"rollback_id {request.rollback_id} is the id of another action; choose "
                    "a new one"
                )
        else:
            await self._check_undoable(store, original)
        undo = executor_pb2.ExecuteActionRequest()
        undo.CopyFrom(original.request)
        undo.action_id = request.rollback_id
        cluster = self.clusters.resolve(undo.target.cluster)
        return await self._once(
            request.rollback_id,
            lambda: self._execute(undo, cluster, undo_of=original, reason=request.reason),
        )

    async def progress(self, action_id: str) -> executor_pb2.GetActionProgressResponse | None:
        """How far the action got (GetActionProgress), from the stored row, without waiting
        for a call working on it; None when there is no such action. Raises
        ExecutorStoreUnavailable."""
        store = await self.database.store()
        row = await store.get(action_id)
        if row is None:
            return None
        running = action_id in self._running or await store.working_on(action_id)
        return progress_of(row, self.settings, running=running)

    async def _check_undoable(self, store: ActionStore, original: ActionRow) -> None:
        action = catalogue.action_name(original.request.action)
        what = f"action {original.action_id} ({action})"
        if original.undo_of is not None:
            raise RollbackRefused(
                f"{what} is itself a rollback (of {original.undo_of}); run the action again"
            )
        if original.state not in (ActionState.FINISHED, ActionState.RECORDED):
            raise RollbackRefused(f"{what} is still in progress; retry once it finished")
        assert original.record is not None
        if original.record.outcome != SUCCEEDED:
            outcome = storage_pb2.ActionOutcome.Name(original.record.outcome)
            raise RollbackRefused(
                f"{what} ended {outcome.removeprefix('ACTION_OUTCOME_')}: nothing of it is "
                "in place to undo"
            )
        definition = catalogue.describe_action(action)
        if not definition.reversible:
            raise RollbackRefused(f"{what} is not reversible: {definition.rollback}")
        age = (now() - original.started_at).total_seconds()
        if age > self.settings.rollback_retention_seconds:
            raise RollbackRefused(
                f"{what} started {age:.0f}s ago, beyond the rollback window of "
                f"{self.settings.rollback_retention_seconds:.0f}s "
                "(KUBERNAUT_EXECUTOR_ROLLBACK_RETENTION_SECONDS)"
            )
        for undo in await store.undos_of(original.action_id):
            if undo.state not in (ActionState.FINISHED, ActionState.RECORDED):
                raise RollbackRefused(f"{what} is being rolled back by {undo.action_id}")
            if undo.record is not None and undo.record.outcome == SUCCEEDED:
                raise RollbackRefused(f"{what} was rolled back already by {undo.action_id}")

    async def _once(self, key: str, work: Callable[[], Awaitable[ExecuteResult]]) -> ExecuteResult:
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(_await(work), name=f"executor action {key}")
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # Shielded: a caller that gives up (deadline) does not cut an action in half.
        return await asyncio.shield(task)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` for the actions in progress, then cancel the rest (a retry
        with the same action_id resumes each from its stored state)."""
        tasks = list(self._running.values())
        if not tasks:
            return
        log.info("waiting for actions in progress", extra={"actions": len(tasks)})
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.warning(
                "cancelling an action in progress; a retry resumes it",
                extra={"task": task.get_name()},
            )
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    def _finished(self, action_id: str, task: asyncio.Task[ExecuteResult]) -> None:
        self._running.pop(action_id, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.debug("action %s ended with %r", action_id, error)

    async def _execute(
        self,
        request: executor_pb2.ExecuteActionRequest,
        cluster: str,
        *,
        undo_of: ActionRow | None = None,
        reason: str = "",
    ) -> ExecuteResult:
        token = incident_id_var.set(request.incident_id)
        breaker = self.clusters.breaker(cluster)
        try:
            store = await self.database.store()
            async with store.claim(request.action_id) as session:
                row = await session.load()
                if row is not None and row.state is ActionState.RECORDED:
                    assert row.record is not None
                    log.info(
                        "already done: returning the stored record",
                        extra={"action_id": row.action_id},
                    )
                    return ExecuteResult(row.record, list(row.stages))
                breaker.check()
                if row is not None and row.undo_of is not None and undo_of is None:
                    # A rollback's id sent to ExecuteAction: it goes on as that rollback.
                    undo_of = await store.get(row.undo_of)
                if row is None:
                    row = await session.create(
                        request, now(), undo_of=None if undo_of is None else undo_of.action_id
                    )
                else:
                    row.attempts += 1
                    if row.request != request:
                        log.warning(
                            "a retry of the action sent a different request; continuing the "
                            "first one",
                            extra={"action_id": request.action_id},
                        )
                try:
                    run = Run(
                        session,
                        row,
                        cluster,
                        clusters=self.clusters,
                        settings=self.settings,
                        checkpoint=self.checkpoint,
                        undo_of=undo_of,
                        reason=reason,
                    )
                    result = await _run_action(run, self.recorder)
                except ClusterUnavailable as error:
                    if not isinstance(error, CircuitOpen):
                        breaker.failure()
                    raise
                breaker.success()
                return result
        finally:
            incident_id_var.reset(token)


async def _await(work: Callable[[], Awaitable[ExecuteResult]]) -> ExecuteResult:
    return await work()


async def _run_action(run: Run, recorder: Recorder) -> ExecuteResult:
    """One call's work on one action: act (unless an earlier call finished), build the
    record, store it."""
    row = run.row
    if row.state is not ActionState.FINISHED:
        if row.attempts > 1:
            if row.state is ActionState.STARTED:
                row.stages.clear()  # nothing was applied: start over
                row.stage_times.clear()
            run.stage(f"resume: attempt {row.attempts} continues from {row.state.value}")
        try:
            try:
                outcome, message = await _act(run)
            except Finished as finished:
                outcome, message = finished.outcome, finished.message
        finally:
            if run.admitted:
                await guards.release(run.session.connection, run.target_key)
        await finish_record(run, outcome, message)
    record = await store_record(run, recorder)
    return ExecuteResult(record, list(row.stages))


_tracer = trace.get_tracer("kubernaut.executor")
_T = TypeVar("_T")


async def _traced(stage: str, work: Awaitable[_T]) -> _T:
    """A stage as a span of its own: the Kubernetes calls have none, and the latency
    bench breaks the time to the change down by them."""
    with _tracer.start_as_current_span(f"executor {stage}"):
        return await work


async def _act(run: Run) -> tuple[Outcome, str]:
    """The stages in order, from the state the stored row is in (a resumed action goes on
    where the first call was)."""
    row = run.row
    if row.state is ActionState.STARTED:
        target = await _traced("scope", check_scope(run))
        await _traced("rbac", check_rbac(run))
        if not run.operation.changes_cluster:
            return await observe(run, target)
        assert target is not None
        await _traced("admit", admit(run))
        await _traced("prepare", prepare(run, target))
    elif row.state is not ActionState.FINISHED:
        await admit(run)  # a resumed action holds its target again
    if row.state is ActionState.PLANNED:
        await _traced("apply", apply_change(run))
    failure = ""
    if row.state is ActionState.APPLIED:
        verified = await verify_change(run)
        if verified.ok:
            return SUCCEEDED, f"{run.what()}: {run.change.summary}; verified: {verified.summary}"
        failure = verified.summary
    if row.state is ActionState.RESTORING:
        return await restore_change(run, failure)
    raise AssertionError(f"unexpected state {row.state}")
