"""ExecuteAction without gRPC: scope, RBAC, the change, dry-run, snapshot, apply, verify,
rollback, record.

One call runs these stages in order, each reported as a line of `stages`:

  scope     refuse protected namespaces and objects that have not opted in
            (kubernaut.ai/managed=true on the Deployment or its namespace); FAILED when the
            target does not exist
  rbac      a SelfSubjectAccessReview for every permission the catalogue lists for the action
  plan      compute the change from the Deployment as it is and the parameters
  dry-run   the exact patch with dryRun=All; a rejection FAILS with the API's message
  snapshot  the Deployment's spec, resourceVersion and pod-template hashes, and the
            computed change, stored in the executor's schema before anything is applied
  apply     the patch, with the snapshot's resourceVersion as a precondition: a Deployment
            changed by someone else since FAILS ("changed concurrently"), never clobbered
  verify    the rollout completes within the timeout (observedGeneration, updated == ready
            == available == desired, no pods left over, none in CrashLoopBackOff)
  rollback  on failed verification: the snapshot's value restored (with the same
            precondition), and verified; the outcome is ROLLED_BACK
  record    the ActionRecord through storage.RecordAction

The stored row (services.executor.store) makes every step resumable: a retry with the same
action_id after a crash continues from where the first call was, with the same change; a
retry after the record was stored returns it without touching the cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol, TypeAlias

import grpc
from kubernaut.common.v1 import alert_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from services.executor import catalogue
from services.executor.changes import (
    POD_TEMPLATE_HASH,
    Change,
    ChangeRefused,
    assess_rollout,
    changes_template,
    compute_change,
    equivalent,
    label_selector,
    spec_json,
)
from services.executor.cluster import ApiError, Cluster, ClusterUnavailable
from services.executor.settings import ExecutorSettings
from services.executor.store import (
    ActionRow,
    ActionSession,
    ActionState,
    ExecutorDatabase,
    ExecutorStoreUnavailable,
)
from services.runtime.kube import MANAGED_LABEL, ClusterNotConfigured, KubeConnection, is_managed
from services.runtime.logs import incident_id_var

log = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "ClusterNotConfigured",
    "ClusterUnavailable",
    "ExecuteResult",
    "Executor",
    "ExecutorStoreUnavailable",
    "RecordRejected",
    "Recorder",
    "StorageRecorder",
    "StorageUnavailable",
]

Outcome: TypeAlias = storage_pb2.ActionOutcome.ValueType
SUCCEEDED: Final = storage_pb2.ACTION_OUTCOME_SUCCEEDED
FAILED: Final = storage_pb2.ACTION_OUTCOME_FAILED
ROLLED_BACK: Final = storage_pb2.ACTION_OUTCOME_ROLLED_BACK
DRY_RUN: Final = storage_pb2.ACTION_OUTCOME_DRY_RUN
REFUSED: Final = storage_pb2.ACTION_OUTCOME_REFUSED

_MAX_MESSAGE: Final = 4096
_MAX_SPEC: Final = 1048576
# Conflicts tolerated while only the Deployment's status moves under us (the controller
# writes status, which changes resourceVersion but not what we change).
_MAX_CONFLICTS: Final = 5


class StorageUnavailable(Exception):
    """storage.RecordAction could not be reached; the action is finished and a retry of
    ExecuteAction with the same action_id records it."""


class RecordRejected(Exception):
    """storage refused the record (not a transient failure)."""


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


@dataclass(frozen=True)
class _Verified:
    ok: bool
    summary: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(ref: alert_pb2.ResourceRef) -> str:
    return f"{ref.kind} {ref.namespace}/{ref.name}"


class Executor:
    """Runs ExecuteAction. `cluster` is the executor's own identity (its RBAC is what the
    SelfSubjectAccessReviews check); `database` holds the executor's schema; `recorder`
    stores the final record (StorageRecorder in the service)."""

    def __init__(
        self,
        cluster: KubeConnection,
        database: ExecutorDatabase,
        recorder: Recorder,
        settings: ExecutorSettings | None = None,
        *,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.cluster = cluster
        self.database = database
        self.recorder = recorder
        self.settings = settings or ExecutorSettings()
        self.checkpoint = checkpoint
        self._running: dict[str, asyncio.Task[ExecuteResult]] = {}

    async def execute(self, request: executor_pb2.ExecuteActionRequest) -> ExecuteResult:
        """Run (or resume, or answer again) the action `request.action_id` names.

        Raises ClusterNotConfigured; ClusterUnavailable, ExecutorStoreUnavailable and
        StorageUnavailable when a dependency cannot be reached (a retry with the same
        action_id continues safely); RecordRejected when storage refuses the record.
        The action runs to its end even when the caller goes away."""
        if not self.cluster.configured:
            raise ClusterNotConfigured(
                "no Kubernetes cluster configured: set KUBECONFIG (or KUBERNAUT_KUBE_KUBECONFIG)"
            )
        task = self._running.get(request.action_id)
        if task is None:
            task = asyncio.create_task(
                self._execute(request), name=f"executor action {request.action_id}"
            )
            self._running[request.action_id] = task
            task.add_done_callback(lambda done: self._finished(request.action_id, done))
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

    async def _execute(self, request: executor_pb2.ExecuteActionRequest) -> ExecuteResult:
        token = incident_id_var.set(request.incident_id)
        try:
            store = await self.database.store()
            async with store.claim(request.action_id) as session:
                row = await session.load()
                if row is None:
                    row = await session.create(request, _now())
                elif row.state is not ActionState.RECORDED:
                    row.attempts += 1
                    if row.request != request:
                        log.warning(
                            "a retry of the action sent a different request; continuing the "
                            "first one",
                            extra={"action_id": request.action_id},
                        )
                return await _Run(self, session, row).run()
        finally:
            incident_id_var.reset(token)


class _Run:
    """One call's work on one action."""

    def __init__(self, executor: Executor, session: ActionSession, row: ActionRow) -> None:
        self.executor = executor
        self.settings = executor.settings
        self.session = session
        self.row = row
        self.request = row.request
        self.ref = row.request.target
        self.action = catalogue.action_name(row.request.action)
        self._cluster: Cluster | None = None
        # The Deployment as last read (the record's spec after).
        self.current: dict[str, Any] | None = None
        # The Deployment as first read by this call (the spec before, until a snapshot).
        self.seen: dict[str, Any] | None = None

    # -- plumbing -----------------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        return {
            "action_id": self.row.action_id,
            "incident_id": self.request.incident_id,
            "action": self.action,
            "target": _where(self.ref),
        }

    def stage(self, line: str) -> None:
        self.row.stages.append(line)
        log.info(line, extra=self._fields())

    def refuse(self, line: str, message: str) -> NoReturn:
        self.stage(line)
        raise _Finished(REFUSED, message)

    def fail(self, line: str, message: str) -> NoReturn:
        self.stage(line)
        raise _Finished(FAILED, message)

    async def save(self, state: ActionState | None = None) -> None:
        if state is not None:
            self.row.state = state
        await self.session.save(self.row)

    async def cluster(self) -> Cluster:
        if self._cluster is None:
            connection = self.executor.cluster
            try:
                api = await connection.api()
            except ClusterNotConfigured:
                raise
            except Exception as error:  # a kubeconfig that cannot be loaded
                raise ClusterNotConfigured(
                    f"the cluster configuration cannot be loaded: {error}"
                ) from error
            self._cluster = Cluster(api, timeout=connection.settings.request_timeout_seconds)
        return self._cluster

    async def read(self) -> dict[str, Any]:
        deployment = await (await self.cluster()).deployment(self.ref.namespace, self.ref.name)
        self.current = deployment
        return deployment

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
        if row.state is ActionState.RECORDED:
            assert row.record is not None
            log.info("already done: returning the stored record", extra=self._fields())
            return ExecuteResult(row.record, list(row.stages))
        if row.state is not ActionState.FINISHED:
            if row.attempts > 1:
                if row.state is ActionState.STARTED:
                    row.stages.clear()  # nothing was applied: start over
                self.stage(f"resume: attempt {row.attempts} continues from {row.state.value}")
            try:
                outcome, message = await self._act()
            except _Finished as finished:
                outcome, message = finished.outcome, finished.message
            await self._finish(outcome, message)
        return await self._record()

    async def _act(self) -> tuple[Outcome, str]:
        row = self.row
        if row.state is ActionState.STARTED:
            await self._prepare()
        if row.state is ActionState.PLANNED:
            await self._apply()
        failure = ""
        if row.state is ActionState.APPLIED:
            assert row.generation is not None
            verified = await self._verify(row.generation, self._old_hashes(), "verify")
            if verified.ok:
                return (
                    SUCCEEDED,
                    f"{self._what()}: {self.change.summary}; verified: {verified.summary}",
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
            return await self._restore(failure)
        raise AssertionError(f"unexpected state {row.state}")

    def _what(self) -> str:
        return f"{self.action} on {_where(self.ref)}"

    def _old_hashes(self) -> frozenset[str]:
        return frozenset(self.snapshot.get("podTemplateHashes") or ())

    # -- scope, rbac, plan, dry-run, snapshot ---------------------------------------------------

    async def _prepare(self) -> None:
        deployment = await self._scope()
        await self._rbac()
        change = await self._plan(deployment)
        await self._dry_run(deployment, change)
        await self._snapshot(deployment, change)

    async def _scope(self) -> dict[str, Any]:
        ref, settings = self.ref, self.settings
        definition = catalogue.describe_action(self.action)
        if ref.kind not in definition.target_kinds:
            self.refuse(
                f"scope: refused: {self.action} acts on {', '.join(definition.target_kinds)}, "
                f"not {ref.kind or 'an unnamed kind'}",
                f"{self.action} cannot act on {ref.kind or 'an unnamed kind'}",
            )
        if not ref.namespace:
            self.refuse("scope: refused: the target names no namespace", "no namespace given")
        if ref.namespace in settings.protected_namespaces:
            self.refuse(
                f"scope: refused: namespace {ref.namespace} is protected "
                "(KUBERNAUT_EXECUTOR_PROTECTED_NAMESPACES)",
                f"{self._what()} refused: namespace {ref.namespace} is protected",
            )
        cluster = await self.cluster()
        try:
            deployment = await self.read()
        except ApiError as error:
            self._scope_read_error(error, f"deployments.apps {ref.name}")
        self.seen = deployment
        labels = (deployment.get("metadata") or {}).get("labels")
        if not settings.require_opt_in:
            self.stage("scope: ok: opt-in not required by the settings")
        elif is_managed(labels):
            self.stage(f"scope: ok: the Deployment carries {MANAGED_LABEL}=true")
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
                    f"{self._what()} refused: not opted in (label {MANAGED_LABEL}=true on the "
                    "Deployment or its namespace)",
                )
        return deployment

    def _scope_read_error(self, error: ApiError, what: str) -> NoReturn:
        if error.not_found:
            self.fail(
                f"scope: failed: {error.message or what + ' not found'}",
                f"{self._what()} failed: the target does not exist ({error.message})",
            )
        if error.forbidden:
            self.refuse(
                f"scope: refused: the executor's identity may not get {what}: {error.message}",
                f"{self._what()} refused: the executor may not read {what}",
            )
        self.fail(f"scope: failed: reading {what}: {error}", f"{self._what()} failed: {error}")

    async def _rbac(self) -> None:
        ref = self.ref
        cluster = await self.cluster()
        checks: list[tuple[str, str, str, str, str]] = []
        for permission in catalogue.describe_action(self.action).permissions:
            name = ""
            if permission.resource == "deployments":
                name = ref.name
            elif permission.resource == "namespaces":
                name = ref.namespace
            for verb in permission.verbs:
                checks.append(
                    (permission.api_group, permission.resource, permission.subresource, verb, name)
                )
        try:
            answers = await asyncio.gather(
                *(
                    cluster.allowed(
                        namespace=ref.namespace,
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
                f"{self._what()} failed: cannot check RBAC: {error}",
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
        if missing:
            self.refuse(
                f"rbac: refused: the executor's identity may not {'; '.join(missing)} in "
                f"namespace {ref.namespace}",
                f"{self._what()} refused: missing RBAC permission: {'; '.join(missing)}",
            )
        granted: dict[str, list[str]] = {}
        for group, resource, subresource, verb, _ in checks:
            granted.setdefault(label(group, resource, subresource), []).append(verb)
        self.stage(
            "rbac: ok: "
            + "; ".join(f"{', '.join(verbs)} {what}" for what, verbs in granted.items())
        )

    async def _plan(self, deployment: dict[str, Any]) -> Change:
        params = self.request.action
        replica_sets: list[dict[str, Any]] = []
        if changes_template(params) and (deployment.get("spec") or {}).get("paused"):
            self.fail(
                "plan: failed: the Deployment is paused (a paused Deployment does not roll out)",
                f"{self._what()} failed: the Deployment is paused",
            )
        if self.action == "rollback_deployment":
            selector = label_selector(deployment["spec"].get("selector"))
            try:
                replica_sets = await (await self.cluster()).replica_sets(
                    self.ref.namespace, selector
                )
            except ApiError as error:
                self.fail(
                    f"plan: failed: listing the ReplicaSets: {error}",
                    f"{self._what()} failed: {error}",
                )
        try:
            change = compute_change(
                deployment, params, at=self.row.started_at, replica_sets=replica_sets
            )
        except ChangeRefused as error:
            self.fail(f"plan: failed: {error}", f"{self._what()} failed: {error}")
        self.stage(f"plan: {change.summary}")
        return change

    async def _dry_run(self, deployment: dict[str, Any], change: Change) -> None:
        rv = deployment["metadata"]["resourceVersion"]
        try:
            await (await self.cluster()).patch_deployment(
                self.ref.namespace, self.ref.name, change.patch(rv), dry_run=True
            )
        except ApiError as error:
            if error.conflict:
                self.fail(
                    "dry-run: failed: the Deployment changed concurrently; nothing applied",
                    f"{self._what()} failed: the Deployment changed concurrently",
                )
            self.fail(
                f"dry-run: failed: the API server rejected the change ({error}); nothing applied",
                f"{self._what()} failed in the dry-run: {error.message or error}",
            )
        self.stage("dry-run: ok: the API server accepted the change (dryRun=All)")
        if self.settings.dry_run:
            raise _Finished(
                DRY_RUN,
                f"{self._what()}: dry-run only, not applied: {change.summary}",
            )

    async def _snapshot(self, deployment: dict[str, Any], change: Change) -> None:
        selector = label_selector(deployment["spec"].get("selector"))
        try:
            pods = await (await self.cluster()).pods(self.ref.namespace, selector)
        except ApiError as error:
            self.fail(f"snapshot: failed: listing pods: {error}", f"{self._what()} failed: {error}")
        hashes = sorted(
            {
                h
                for pod in pods
                if (h := ((pod.get("metadata") or {}).get("labels") or {}).get(POD_TEMPLATE_HASH))
            }
        )
        meta = deployment["metadata"]
        self.row.snapshot = {
            "resourceVersion": meta["resourceVersion"],
            "generation": meta.get("generation"),
            "spec": deployment.get("spec") or {},
            "labels": meta.get("labels") or {},
            "podTemplateHashes": hashes,
        }
        self.row.change = change
        self.stage(
            f"snapshot: stored the Deployment spec at resourceVersion {meta['resourceVersion']} "
            "and the change"
        )
        await self.save(ActionState.PLANNED)
        await self._checkpoint("snapshot")

    # -- apply, verify, rollback --------------------------------------------------------------

    def _unchanged_since_snapshot(self, deployment: Mapping[str, Any]) -> bool:
        """Only status or bookkeeping moved: the spec and labels are as in the snapshot."""
        snapshot = self.snapshot
        labels = (deployment.get("metadata") or {}).get("labels") or {}
        return equivalent(deployment.get("spec") or {}, snapshot["spec"]) and equivalent(
            labels, snapshot["labels"]
        )

    async def _patch(self, patch: list[dict[str, Any]]) -> dict[str, Any]:
        result = await (await self.cluster()).patch_deployment(
            self.ref.namespace, self.ref.name, patch, dry_run=False
        )
        self.current = result
        return result

    async def _apply(self) -> None:
        change = self.change
        rv = str(self.snapshot["resourceVersion"])
        generation: int | None = None
        for _ in range(_MAX_CONFLICTS):
            try:
                applied = await self._patch(change.patch(rv))
                generation = int(applied["metadata"]["generation"])
                self.stage(f"apply: {change.summary} (generation {generation})")
                break
            except ApiError as error:
                if not error.conflict:
                    self.fail(
                        f"apply: failed: the API server rejected the change ({error}); "
                        "nothing applied",
                        f"{self._what()} failed: {error.message or error}",
                    )
            current = await self.read()
            if change.is_applied(current):
                generation = int(current["metadata"]["generation"])
                self.stage(
                    f"apply: already applied by an earlier attempt (generation {generation})"
                )
                break
            if not self._unchanged_since_snapshot(current):
                self.fail(
                    "apply: failed: the Deployment changed concurrently since the snapshot "
                    f"(resourceVersion {self.snapshot['resourceVersion']} -> "
                    f"{current['metadata']['resourceVersion']}); nothing applied, the other "
                    "change is kept",
                    f"{self._what()} failed: the Deployment changed concurrently; nothing applied",
                )
            rv = current["metadata"]["resourceVersion"]  # only its status moved: try again
        if generation is None:
            self.fail(
                "apply: failed: the Deployment kept changing; nothing applied",
                f"{self._what()} failed: the Deployment changed concurrently; nothing applied",
            )
        self.row.generation = generation
        await self.save(ActionState.APPLIED)
        await self._checkpoint("apply")

    async def _verify(
        self, generation: int, old_hashes: frozenset[str] | None, phase: str
    ) -> _Verified:
        cluster = await self.cluster()
        timeout = self.settings.verify_timeout_seconds
        started = time.monotonic()
        deadline = started + timeout
        while True:
            try:
                deployment = await self.read()
                pods = await cluster.pods(
                    self.ref.namespace, label_selector(deployment["spec"].get("selector"))
                )
            except ApiError as error:
                if error.not_found:
                    self.fail(
                        f"{phase}: failed: the Deployment was deleted",
                        f"{self._what()} failed: the Deployment was deleted during {phase}",
                    )
                raise ClusterUnavailable(f"cannot read the rollout: {error}") from error
            state = assess_rollout(deployment, pods, generation=generation, old_hashes=old_hashes)
            elapsed = time.monotonic() - started
            if state.done:
                summary = f"{state.summary} after {elapsed:.1f}s"
                self.stage(f"{phase}: ok: {summary}")
                return _Verified(True, summary)
            if state.broken:
                summary = f"{state.summary} after {elapsed:.1f}s"
                self.stage(f"{phase}: failed: {summary}")
                return _Verified(False, summary)
            if time.monotonic() >= deadline:
                summary = f"timed out after {timeout:g}s: {state.summary}"
                self.stage(f"{phase}: failed: {summary}")
                return _Verified(False, summary)
            await asyncio.sleep(
                min(self.settings.poll_interval_seconds, deadline - time.monotonic())
            )

    async def _restore(self, failure: str) -> tuple[Outcome, str]:
        change = self.change
        what = self._what()
        generation: int | None = None
        for _ in range(_MAX_CONFLICTS):
            current = await self.read()
            if change.is_restored(current):
                generation = int(current["metadata"]["generation"])
                self.stage(
                    f"rollback: the snapshot's {change.path} is in place (generation {generation})"
                )
                break
            if not change.is_applied(current):
                self.fail(
                    "rollback: failed: the Deployment changed concurrently after the change; "
                    "not restoring over someone else's change",
                    f"{what}: verification failed ({failure}); the rollback was not applied "
                    "because the Deployment changed concurrently",
                )
            try:
                restored = await self._patch(
                    change.restore_patch(current["metadata"]["resourceVersion"])
                )
            except ApiError as error:
                if error.conflict:
                    continue
                self.fail(
                    f"rollback: failed: the API server rejected the restore ({error})",
                    f"{what}: verification failed ({failure}); the rollback failed: {error}",
                )
            generation = int(restored["metadata"]["generation"])
            self.stage(
                f"rollback: restored {change.path} from the snapshot (generation {generation})"
            )
            break
        if generation is None:
            self.fail(
                "rollback: failed: the Deployment kept changing; not restored",
                f"{what}: verification failed ({failure}); the rollback was not applied",
            )
        self.row.generation = generation
        await self.save()
        verified = await self._verify(generation, None, "rollback verify")
        if verified.ok:
            return ROLLED_BACK, (
                f"{what}: {change.summary}; verification failed: {failure}; rolled back to the "
                f"snapshot and verified: {verified.summary}"
            )
        return ROLLED_BACK, (
            f"{what}: {change.summary}; verification failed: {failure}; rolled back to the "
            f"snapshot, but the restored Deployment is not healthy either: {verified.summary}"
        )

    # -- the record ---------------------------------------------------------------------------

    async def _finish(self, outcome: Outcome, message: str) -> None:
        row = self.row
        before = ""
        if row.snapshot is not None:
            before = spec_json({"spec": row.snapshot["spec"]})
        elif self.seen is not None:
            before = spec_json(self.seen)
        after = spec_json(self.current) if self.current is not None else before
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
            spec_before_json=before,
            spec_after_json=after,
            message=_clip(message, _MAX_MESSAGE),
        )
        record.started_at.FromDatetime(row.started_at)
        record.finished_at.FromDatetime(_now())
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
