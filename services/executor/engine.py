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
            actions per cluster per minute (services.executor.guards)
  plan      compute the change from the target as it is and the parameters
  dry-run   the exact request with dryRun=All; a rejection FAILS with the API's message;
            in the executor's dry-run mode the action ends here as DRY_RUN
  snapshot  the target's content, resourceVersion and pod-template hashes, and the change,
            stored in the executor's schema before anything is applied
  apply     the change, with the snapshot's resourceVersion as a precondition: a target
            changed by someone else since FAILS ("changed concurrently"), never clobbered
  verify    the rollout completes (workloads) or the change reads back and settles
  rollback  on failed verification: the snapshot's values restored (with the same
            precondition), and verified; the outcome is ROLLED_BACK
  record    the ActionRecord through storage.RecordAction

What differs between actions (how they plan, apply, verify and undo) lives in
services.executor.operations. The stored row (services.executor.store) makes every step
resumable: a retry with the same action_id after a crash continues from where the first
call was, with the same change; a retry after the record was stored returns it without
touching the cluster. `rollback()` (RollbackAction) undoes a recorded action from its
stored snapshot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol

import grpc
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from services.executor import catalogue, guards
from services.executor.changes import (
    WORKLOAD_KINDS,
    Change,
    label_selector,
    template_hash_label,
)
from services.executor.cluster import KINDS, ApiError, Cluster, ClusterUnavailable
from services.executor.clusters import CircuitOpen, ClusterRegistry, UnknownCluster
from services.executor.operations import (
    DRY_RUN,
    FAILED,
    REFUSED,
    SUCCEEDED,
    Operation,
    Outcome,
    content_of,
    operation_for,
    snapshot_content,
    undo_operation_for,
)
from services.executor.progress import progress_of
from services.executor.settings import ExecutorSettings
from services.executor.store import (
    ActionRow,
    ActionSession,
    ActionState,
    ActionStore,
    ExecutorDatabase,
    ExecutorStoreUnavailable,
)
from services.runtime.kube import MANAGED_LABEL, ClusterNotConfigured, is_managed
from services.runtime.logs import incident_id_var
from services.runtime.workload_state import STATE_KINDS, workload_state

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

_MAX_MESSAGE: Final = 4096
_MAX_SPEC: Final = 1048576
CONTROL_PLANE_LABELS: Final = (
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
)


class StorageUnavailable(Exception):
    """storage.RecordAction could not be reached; the action is finished and a retry of
    ExecuteAction with the same action_id records it."""


class RecordRejected(Exception):
    """storage refused the record (not a transient failure)."""


class ActionNotFound(LookupError):
    """RollbackAction named an action the executor has no record of."""


class RollbackRefused(Exception):
    """RollbackAction cannot undo this action; the message says why."""


class Recorder(Protocol):
    async def __call__(self, record: storage_pb2.ActionRecord) -> None: ...


class StorageRecorder:
    """Records through storage.RecordAction, retrying UNAVAILABLE with backoff (the client
    retries each attempt a few times itself). RecordAction is idempotent for the same
    record, which is why the record is built once and stored before the first attempt."""

    _TRANSIENT: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

    def __init__(
        self, storage: StorageServiceStub, *, attempts: int = 5, backoff_seconds: float = 0.5
    ) -> None:
        self.storage = storage
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds

    async def __call__(self, record: storage_pb2.ActionRecord) -> None:
        request = storage_pb2.RecordActionRequest(record=record)
        for attempt in range(1, self.attempts + 1):
            try:
                await self.storage.RecordAction(request)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in self._TRANSIENT:
                    raise RecordRejected(
                        f"storage refused the record: {error.code().name}: {error.details()}"
                    ) from error
                if attempt == self.attempts:
                    raise StorageUnavailable(
                        f"storage did not take the record after {attempt} attempts: "
                        f"{error.code().name}: {error.details()}"
                    ) from error
                log.warning(
                    "RecordAction failed; retrying",
                    extra={
                        "action_id": record.action_id,
                        "attempt": attempt,
                        "code": error.code().name,
                    },
                )
            await asyncio.sleep(self.backoff_seconds * 2 ** (attempt - 1))


@dataclass(frozen=True)
class ExecuteResult:
    record: storage_pb2.ActionRecord
    stages: list[str]


# A test seam: awaited with the stored row right after the state of a stage was saved:
# "snapshot" (planned), "apply" (applied), "verify" (failed verification: restoring).
Checkpoint = Callable[[str, ActionRow], Awaitable[None]]


class _Finished(Exception):
    """A stage decided the outcome (refused, failed, dry-run only)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(ref: alert_pb2.ResourceRef) -> str:
    name = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    return f"{ref.kind} {name}"


def _matches(name: str, patterns: tuple[str, ...] | frozenset[str]) -> str | None:
    return next((p for p in sorted(patterns) if fnmatch.fnmatchcase(name, p)), None)


def record_view(obj: Mapping[str, Any] | None, change: Change | None) -> str:
    """What the record shows of an object: its spec when the change is all in the spec,
    else the object without status and server-kept metadata. Compact JSON, sorted keys."""
    if obj is None:
        return ""
    edits = change.edits if change is not None else ()
    if "spec" in obj and all(e.path.startswith("/spec") for e in edits):
        view: Any = obj.get("spec") or {}
    else:
        meta = obj.get("metadata") or {}
        view = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
        view["metadata"] = {
            k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta
        }
    return json.dumps(view, sort_keys=True, separators=(",", ":"))


class Executor:
    """Runs ExecuteAction and RollbackAction. `clusters` holds the executor's own identity
    on each cluster (its RBAC is what the SelfSubjectAccessReviews check); `database` holds
    the executor's schema; `recorder` stores the final record (StorageRecorder in the
    service)."""

    def __init__(
        self,
        clusters: ClusterRegistry,
        database: ExecutorDatabase,
        recorder: Recorder,
        settings: ExecutorSettings | None = None,
        *,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.clusters = clusters
        self.database = database
        self.recorder = recorder
        self.settings = settings or ExecutorSettings()
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
                "KUBERNAUT_KUBE_KUBECONFIG, or KUBERNAUT_EXECUTOR_CLUSTERS)"
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
        age = (_now() - original.started_at).total_seconds()
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
                        request, _now(), undo_of=None if undo_of is None else undo_of.action_id
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
                    result = await _Run(
                        self, session, row, cluster, undo_of=undo_of, reason=reason
                    ).run()
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


class _Run:
    """One call's work on one action."""

    def __init__(
        self,
        executor: Executor,
        session: ActionSession,
        row: ActionRow,
        cluster_name: str,
        *,
        undo_of: ActionRow | None = None,
        reason: str = "",
    ) -> None:
        self.executor = executor
        self.settings = executor.settings
        self.session = session
        self.row = row
        self.request = row.request
        self.ref = row.request.target
        self.cluster_name = cluster_name
        self.action = catalogue.action_name(row.request.action)
        # A rollback (RollbackAction): the action it undoes, and why.
        self.undo_of = undo_of
        self.reason = reason
        self.operation: Operation = (
            operation_for(self.action) if undo_of is None else undo_operation_for(undo_of)
        )
        # The guards' name for what runs: a rollback cools down apart from its action.
        self.guarded_action = self.action if undo_of is None else f"undo:{self.action}"
        self.target_key = guards.TargetKey(
            cluster_name, self.ref.kind, self.ref.namespace, self.ref.name
        )
        self._cluster: Cluster | None = None
        self._admitted = False
        # What a read-only action gathered (collect_diagnostics), for the record.
        self.details = ""
        # The target as last read (the record's after).
        self.current: dict[str, Any] | None = None
        # The target as first read by this call (the before, until a snapshot).
        self.seen: dict[str, Any] | None = None

    # -- plumbing -----------------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        return {
            "action_id": self.row.action_id,
            "incident_id": self.request.incident_id,
            "action": self.action,
            "target": _where(self.ref),
            "cluster": self.cluster_name,
        }

    def stage(self, line: str) -> None:
        self.row.stages.append(line)
        self.row.stage_times.append(_now())  # for GetActionProgress
        log.info(line, extra=self._fields())

    def refuse(self, line: str, message: str) -> NoReturn:
        self.stage(line)
        raise _Finished(REFUSED, message)

    def fail(self, line: str, message: str) -> NoReturn:
        self.stage(line)
        raise _Finished(FAILED, message)

    def what(self) -> str:
        where = f" in cluster {self.cluster_name}" if self.ref.cluster else ""
        action = self.action
        if self.undo_of is not None:
            why = f" ({self.reason})" if self.reason else ""
            action = f"rollback of {action} {self.undo_of.action_id}{why}"
        return f"{action} on {_where(self.ref)}{where}"

    async def save(self, state: ActionState | None = None) -> None:
        if state is not None:
            self.row.state = state
        await self.session.save(self.row)

    async def cluster(self) -> Cluster:
        if self._cluster is None:
            connection = self.executor.clusters.connection(self.cluster_name)
            try:
                api = await connection.api()
            except ClusterNotConfigured:
                raise
            except Exception as error:  # a kubeconfig that cannot be loaded
                raise ClusterNotConfigured(
                    f"the configuration of cluster {self.cluster_name} cannot be loaded: {error}"
                ) from error
            self._cluster = Cluster(api, timeout=connection.settings.request_timeout_seconds)
        return self._cluster

    async def read(self) -> dict[str, Any]:
        ref = self.ref
        obj = await (await self.cluster()).get(ref.kind, ref.namespace, ref.name)
        self.current = obj
        return obj

    async def _checkpoint(self, name: str) -> None:
        if self.executor.checkpoint is not None:
            await self.executor.checkpoint(name, self.row)

    @property
    def change(self) -> Change:
        assert self.row.change is not None
        return self.row.change

    @property
    def snapshot(self) -> dict[str, Any]:
        assert self.row.snapshot is not None
        return self.row.snapshot

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> ExecuteResult:
        row = self.row
        if row.state is not ActionState.FINISHED:
            if row.attempts > 1:
                if row.state is ActionState.STARTED:
                    row.stages.clear()  # nothing was applied: start over
                    row.stage_times.clear()
                self.stage(f"resume: attempt {row.attempts} continues from {row.state.value}")
            try:
                try:
                    outcome, message = await self._act()
                except _Finished as finished:
                    outcome, message = finished.outcome, finished.message
            finally:
                if self._admitted:
                    await guards.release(self.session.connection, self.target_key)
            await self._finish(outcome, message)
        return await self._record()

    async def _act(self) -> tuple[Outcome, str]:
        row = self.row
        operation = self.operation
        if row.state is ActionState.STARTED:
            target = await self._scope()
            await self._rbac()
            if not operation.changes_cluster:
                return await self._observe(target)
            assert target is not None
            await self._admit()
            await self._prepare(target)
        elif row.state is not ActionState.FINISHED:
            await self._admit()  # a resumed action holds its target again
        if row.state is ActionState.PLANNED:
            row.generation = await operation.apply(self)
            # One transaction: a crash cannot leave an applied action without the time its
            # cooldown runs from.
            async with self.session.connection.transaction():
                await self.save(ActionState.APPLIED)
                await guards.mark_applied(self.session.connection, row.action_id, _now())
            await self._checkpoint("apply")
        failure = ""
        if row.state is ActionState.APPLIED:
            # Saved so that GetActionProgress can say how long verification has run.
            row.verify_started_at = _now()
            await self.save()
            verified = await operation.verify(self, row.generation, "verify")
            if verified.ok:
                return (
                    SUCCEEDED,
                    f"{self.what()}: {self.change.summary}; verified: {verified.summary}",
                )
            failure = verified.summary
            await self.save(ActionState.RESTORING)
            await self._checkpoint("verify")
        if row.state is ActionState.RESTORING:
            if not failure:  # resumed: the first call's verification line says why
                failure = next(
                    (
                        s.removeprefix("verify: failed: ")
                        for s in reversed(row.stages)
                        if s.startswith("verify: failed")
                    ),
                    "verification failed",
                )
            outcome, message = await operation.restore(self, failure)
            await self.save()
            return outcome, message
        raise AssertionError(f"unexpected state {row.state}")

    async def _observe(self, target: dict[str, Any] | None) -> tuple[Outcome, str]:
        message, details = await self.operation.observe(self, target)
        self.details = details
        if self.settings.dry_run:
            return DRY_RUN, f"{self.what()}: dry-run mode (nothing changes either way): {message}"
        return SUCCEEDED, f"{self.what()}: {message}"

    # -- scope, rbac, guards, plan, dry-run, snapshot -------------------------------------------

    async def _prepare(self, target: dict[str, Any]) -> None:
        operation = self.operation
        change = await operation.plan(self, target)
        self.stage(f"plan: {change.summary}")
        await operation.dry_run(self, target, change)
        await self.save()  # the stages so far, for GetActionProgress
        if self.settings.dry_run:
            raise _Finished(DRY_RUN, f"{self.what()}: dry-run only, not applied: {change.summary}")
        await self._snapshot(target, change)

    async def _scope(self) -> dict[str, Any] | None:
        ref, settings = self.ref, self.settings
        definition = catalogue.describe_action(self.action)
        if ref.kind not in definition.target_kinds:
            self.refuse(
                f"scope: refused: {self.action} acts on {', '.join(definition.target_kinds)}, "
                f"not {ref.kind or 'an unnamed kind'}",
                f"{self.action} cannot act on {ref.kind or 'an unnamed kind'}",
            )
        namespaced = KINDS[ref.kind].namespaced
        if namespaced and not ref.namespace:
            self.refuse("scope: refused: the target names no namespace", "no namespace given")
        if not namespaced and ref.namespace:
            self.refuse(
                f"scope: refused: a {ref.kind} has no namespace (got {ref.namespace})",
                f"{self.what()} refused: a {ref.kind} has no namespace",
            )
        if namespaced:
            self._namespace_scope(ref.namespace)
        elif ref.kind == "Node" and (pattern := _matches(ref.name, settings.protected_nodes)):
            self.refuse(
                f"scope: refused: node {ref.name} is protected ({pattern} in "
                "KUBERNAUT_EXECUTOR_PROTECTED_NODES)",
                f"{self.what()} refused: node {ref.name} is protected",
            )
        if not self.operation.reads_target:
            self.stage("scope: ok: the action reads and changes nothing")
            return None
        cluster = await self.cluster()
        try:
            target = await self.read()
        except ApiError as error:
            self._scope_read_error(error, f"{KINDS[ref.kind].plural} {ref.name}")
        self.seen = target
        labels = (target.get("metadata") or {}).get("labels") or {}
        if ref.kind == "Node" and (
            role := next((k for k in CONTROL_PLANE_LABELS if k in labels), None)
        ):
            self.refuse(
                f"scope: refused: node {ref.name} is a control-plane node ({role})",
                f"{self.what()} refused: node {ref.name} is a control-plane node",
            )
        if not settings.require_opt_in:
            self.stage("scope: ok: opt-in not required by the settings")
        elif is_managed(labels):
            self.stage(f"scope: ok: the {ref.kind} carries {MANAGED_LABEL}=true")
        elif not namespaced:
            self.refuse(
                f"scope: refused: {_where(ref)} does not carry the label {MANAGED_LABEL}=true "
                "(not opted in)",
                f"{self.what()} refused: not opted in (label {MANAGED_LABEL}=true on the "
                f"{ref.kind})",
            )
        else:
            try:
                namespace = await cluster.namespace(ref.namespace)
            except ApiError as error:
                self._scope_read_error(error, f"namespaces {ref.namespace}")
            if is_managed((namespace.get("metadata") or {}).get("labels")):
                self.stage(f"scope: ok: namespace {ref.namespace} carries {MANAGED_LABEL}=true")
            else:
                self.refuse(
                    f"scope: refused: neither {_where(ref)} nor its namespace carries the label "
                    f"{MANAGED_LABEL}=true (not opted in)",
                    f"{self.what()} refused: not opted in (label {MANAGED_LABEL}=true on the "
                    f"{ref.kind} or its namespace)",
                )
        return target

    def _namespace_scope(self, namespace: str) -> None:
        settings = self.settings
        if namespace in settings.protected_namespaces:
            self.refuse(
                f"scope: refused: namespace {namespace} is protected "
                "(KUBERNAUT_EXECUTOR_PROTECTED_NAMESPACES)",
                f"{self.what()} refused: namespace {namespace} is protected",
            )
        scope = settings.cluster_scopes.get(self.cluster_name)
        if scope is None:
            return
        if pattern := _matches(namespace, scope.deny):
            self.refuse(
                f"scope: refused: namespace {namespace} is in cluster {self.cluster_name}'s deny "
                f"list ({pattern}; KUBERNAUT_EXECUTOR_CLUSTER_SCOPES)",
                f"{self.what()} refused: namespace {namespace} is denied in cluster "
                f"{self.cluster_name}",
            )
        if scope.allow and not _matches(namespace, scope.allow):
            self.refuse(
                f"scope: refused: namespace {namespace} is not in cluster {self.cluster_name}'s "
                f"allow list ({', '.join(scope.allow)}; KUBERNAUT_EXECUTOR_CLUSTER_SCOPES)",
                f"{self.what()} refused: namespace {namespace} is not allowed in cluster "
                f"{self.cluster_name}",
            )

    def _scope_read_error(self, error: ApiError, what: str) -> NoReturn:
        if error.not_found:
            self.fail(
                f"scope: failed: {error.message or what + ' not found'}",
                f"{self.what()} failed: the target does not exist ({error.message})",
            )
        if error.forbidden:
            self.refuse(
                f"scope: refused: the executor's identity may not get {what}: {error.message}",
                f"{self.what()} refused: the executor may not read {what}",
            )
        self.fail(f"scope: failed: reading {what}: {error}", f"{self.what()} failed: {error}")

    async def _rbac(self) -> None:
        ref = self.ref
        definition = catalogue.describe_action(self.action)
        target_plural = KINDS[ref.kind].plural
        namespaced = KINDS[ref.kind].namespaced
        checks: list[tuple[str, str, str, str, str]] = []
        for permission in definition.permissions:
            if permission.target_kinds and ref.kind not in permission.target_kinds:
                continue
            own = permission.resource == target_plural and not permission.subresource
            for verb in permission.verbs:
                # Checked on the very object where the action names one (list and create
                # name none), so RBAC restricted by resourceNames is honoured.
                name = ""
                if own and verb not in ("list", "create"):
                    name = ref.name
                elif permission.resource == "namespaces":
                    name = ref.namespace
                checks.append(
                    (permission.api_group, permission.resource, permission.subresource, verb, name)
                )
        if not checks:
            self.stage("rbac: ok: the action needs no permission")
            return
        cluster = await self.cluster()
        try:
            answers = await asyncio.gather(
                *(
                    cluster.allowed(
                        # Cluster-scoped targets (nodes) act on pods in every namespace.
                        namespace=ref.namespace if namespaced else "",
                        group=group,
                        resource=resource,
                        subresource=subresource,
                        verb=verb,
                        name=name,
                    )
                    for group, resource, subresource, verb, name in checks
                )
            )
        except ApiError as error:
            self.fail(
                f"rbac: failed: SelfSubjectAccessReview: {error}",
                f"{self.what()} failed: cannot check RBAC: {error}",
            )

        def label(group: str, resource: str, subresource: str) -> str:
            full = f"{resource}.{group}" if group else resource
            return f"{full}/{subresource}" if subresource else full

        missing = [
            f"{verb} {label(group, resource, subresource)}"
            for (group, resource, subresource, verb, _), (allowed, _) in zip(
                checks, answers, strict=True
            )
            if not allowed
        ]
        where = f"in namespace {ref.namespace}" if namespaced else "cluster-wide"
        if missing:
            self.refuse(
                f"rbac: refused: the executor's identity may not {'; '.join(missing)} {where}",
                f"{self.what()} refused: missing RBAC permission: {'; '.join(missing)}",
            )
        granted: dict[str, list[str]] = {}
        for group, resource, subresource, verb, _ in checks:
            granted.setdefault(label(group, resource, subresource), []).append(verb)
        self.stage(
            "rbac: ok: "
            + "; ".join(f"{', '.join(verbs)} {what}" for what, verbs in granted.items())
        )

    async def _admit(self) -> None:
        settings = self.settings
        try:
            await guards.admit(
                self.session.connection,
                action_id=self.row.action_id,
                action=self.guarded_action,
                target=self.target_key,
                cooldown_seconds=settings.cooldown_seconds,
                max_per_minute=settings.max_actions_per_cluster_per_minute,
                now=_now(),
            )
        except guards.GuardRefused as refused:
            if self.row.state is not ActionState.STARTED:
                # A resumed action whose target another action took meanwhile: wait.
                raise ExecutorStoreUnavailable(
                    f"cannot resume: {refused.reason}; retry later"
                ) from refused
            self.refuse(
                f"guards: refused: {refused.reason}", f"{self.what()} refused: {refused.reason}"
            )
        self._admitted = True
        if self.row.state is ActionState.STARTED:
            self.stage(
                "guards: ok: the target is free, not cooling down, within the cluster's rate"
            )

    async def _snapshot(self, target: dict[str, Any], change: Change) -> None:
        ref = self.ref
        hashes: list[str] = []
        if ref.kind in WORKLOAD_KINDS:  # its pods' template hashes tell new pods from old
            try:
                pods = await (await self.cluster()).pods(
                    ref.namespace, label_selector(target["spec"].get("selector"))
                )
            except ApiError as error:
                self.fail(
                    f"snapshot: failed: listing pods: {error}", f"{self.what()} failed: {error}"
                )
            label = template_hash_label(ref.kind)
            hashes = sorted(
                {
                    h
                    for pod in pods
                    if (h := ((pod.get("metadata") or {}).get("labels") or {}).get(label))
                }
            )
        meta = target["metadata"]
        self.row.snapshot = {
            "resourceVersion": meta["resourceVersion"],
            "generation": meta.get("generation"),
            "uid": meta.get("uid"),
            "content": content_of(target),
            "view": record_view(target, change),
            "podTemplateHashes": hashes,
            "extra": self.operation.snapshot_extra(self, target),
        }
        self.row.change = change
        self.stage(
            f"snapshot: stored the {ref.kind} at resourceVersion {meta['resourceVersion']} and the "
            "change"
        )
        await self.save(ActionState.PLANNED)
        await self._checkpoint("snapshot")

    # -- the record ---------------------------------------------------------------------------

    async def _finish(self, outcome: Outcome, message: str) -> None:
        row = self.row
        change = row.change
        if row.snapshot is not None:
            # Older snapshots (Deployments only) keep the spec, which was the record's view.
            before = str(
                row.snapshot.get("view") or record_view(snapshot_content(row.snapshot), None)
            )
        else:
            before = record_view(self.seen, change)
        after = record_view(self.current, change) if self.current is not None else before
        if self.details:
            after = self.details
        if len(before) > _MAX_SPEC or len(after) > _MAX_SPEC:
            message += " (specs left out of the record: over 1 MiB)"
            before = after = ""
        record = storage_pb2.ActionRecord(
            action_id=row.action_id,
            incident_id=self.request.incident_id,
            alert_name=self.request.alert_name,
            action=self.action,
            target=self.ref,
            outcome=outcome,
            # The workflow's guard tells a repeat of the same action with the same
            # parameters from another by these.
            params=self.request.action,
            spec_before_json=before,
            spec_after_json=after,
            message=_clip(message, _MAX_MESSAGE),
        )
        record.started_at.FromDatetime(row.started_at)
        record.finished_at.FromDatetime(_now())
        if outcome == SUCCEEDED and self.operation.changes_cluster and self.undo_of is None:
            observed = await self._verified_state()
            if observed is not None:
                record.observed_after.CopyFrom(observed)
        row.record = record
        log.info(
            "action finished",
            extra={
                **self._fields(),
                "outcome": storage_pb2.ActionOutcome.Name(outcome),
                "summary": record.message,
            },
        )
        await self.save(ActionState.FINISHED)

    async def _verified_state(self) -> remediation_pb2.WorkloadState | None:
        """The workload and its pods as verified: storage's baseline for telling a new failure
        from the old one in the quiet period. None when the target is not a workload, or
        cannot be read now (the record is not held up for it; without a baseline storage
        counts later alerts on the incident, as before)."""
        ref = self.ref
        if ref.kind not in STATE_KINDS:
            return None
        try:
            cluster = await self.cluster()
            workload = await cluster.get(ref.kind, ref.namespace, ref.name)
            selector = label_selector((workload.get("spec") or {}).get("selector"))
            pods = await cluster.pods(ref.namespace, selector) if selector else []
        except (ApiError, ClusterUnavailable) as error:
            log.warning(
                "cannot read the verified workload's state; recorded without it",
                extra={**self._fields(), "error": str(error)},
            )
            return None
        return workload_state(workload, pods)

    async def _record(self) -> ExecuteResult:
        row = self.row
        assert row.record is not None
        await self.executor.recorder(row.record)
        self.stage(
            "record: stored through storage.RecordAction (outcome "
            f"{storage_pb2.ActionOutcome.Name(row.record.outcome).removeprefix('ACTION_OUTCOME_')})"
        )
        await self.save(ActionState.RECORDED)
        return ExecuteResult(row.record, list(row.stages))
