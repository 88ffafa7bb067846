"""How each action plans, dry-runs, applies, verifies and undoes its change.

The engine (kubernaut.services.executor.engine) runs the stages every action shares: scope, RBAC,
guards, the snapshot, the record. What differs between actions lives here, one
`Operation` per way of acting:

  PatchOperation        one JSON patch of the target (most actions): resourceVersion as a
                        precondition, verified by the workload's rollout or by reading the
                        fields back, undone by patching the snapshot's values back
  DeletePodOperation    delete one pod by uid; verified when it is gone; not reversible
  DrainOperation        cordon, then evict through the Eviction API until the node holds
                        only DaemonSet and mirror pods (each pod, and the workload owning
                        it, recorded in the snapshot before its eviction); undone by
                        uncordoning
  RerunJobOperation     create a Job from a failed one's template; undone by deleting it
  DiagnosticsOperation  read only: the target, its events, bounded logs
  NotifyOperation       nothing at all; the record says who is to be told what
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NoReturn, Protocol, TypeAlias

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.runtime.kube import ACTION_ID_ANNOTATION, CHANGE_CAUSE_ANNOTATION, pod_spec_digest
from kubernaut.services.executor.changes import (
    POD_TEMPLATE_HASH,
    WORKLOAD_KINDS,
    Change,
    ChangeRefused,
    Edit,
    PlanContext,
    assess_workload,
    changes_template,
    compute_change,
    equivalent,
    has_annotations,
    label_selector,
    mark_ops,
    mark_template,
    own_taints,
    template_after,
    template_hash_label,
)
from kubernaut.services.executor.cluster import ApiError, Cluster, ClusterUnavailable
from kubernaut.services.executor.progress import verify_timeout
from kubernaut.services.executor.settings import ExecutorSettings
from kubernaut.services.executor.store import ActionRow, ActionState

__all__ = [
    "DRY_RUN",
    "FAILED",
    "REFUSED",
    "ROLLED_BACK",
    "SUCCEEDED",
    "Operation",
    "Outcome",
    "RunContext",
    "Verified",
    "condition_of",
    "content_of",
    "controller_of",
    "displaced_workloads",
    "evictable",
    "namespaced_name",
    "operation_for",
    "snapshot_content",
    "undo_operation_for",
    "workload_of",
]

Outcome: TypeAlias = storage_pb2.ActionOutcome.ValueType
SUCCEEDED: Final = storage_pb2.ACTION_OUTCOME_SUCCEEDED
FAILED: Final = storage_pb2.ACTION_OUTCOME_FAILED
ROLLED_BACK: Final = storage_pb2.ACTION_OUTCOME_ROLLED_BACK
DRY_RUN: Final = storage_pb2.ACTION_OUTCOME_DRY_RUN
REFUSED: Final = storage_pb2.ACTION_OUTCOME_REFUSED

# Conflicts tolerated while only the object's status moves under us (controllers write
# status, which changes resourceVersion but not what we change).
_MAX_CONFLICTS: Final = 5
RERUN_OF: Final = "kubernaut.ai/rerun-of"
ACTION_ID: Final = ACTION_ID_ANNOTATION
# kubernetes.io/change-cause is shown by `kubectl rollout history`; longer text is clipped.
_MAX_CHANGE_CAUSE: Final = 256
_ANNOTATIONS: Final = "/metadata/annotations"
# Labels the Job controller puts on a Job and its pods; a copy must not carry them.
_JOB_CONTROLLER_LABELS: Final = frozenset(
    {
        "controller-uid",
        "batch.kubernetes.io/controller-uid",
        "job-name",
        "batch.kubernetes.io/job-name",
    }
)
_MIRROR: Final = "kubernetes.io/config.mirror"
# drain_node's snapshot["extra"][_EVICTED]: each pod it evicts, recorded before the eviction
# ({"namespace", "name"}, and "workload": {"kind", "name"} when a Deployment, StatefulSet or
# DaemonSet owns it). Drains stored before there was this key have none.
_EVICTED: Final = "evicted"
# Pods of a workload whose logs collect_diagnostics reads.
_DIAGNOSTIC_PODS: Final = 5


@dataclass(frozen=True)
class Verified:
    ok: bool
    summary: str


class RunContext(Protocol):
    """What an operation uses of the engine's run of one action."""

    row: ActionRow
    ref: alert_pb2.ResourceRef
    request: executor_pb2.ExecuteActionRequest
    action: str
    settings: ExecutorSettings
    current: dict[str, Any] | None

    def stage(self, line: str) -> None: ...
    async def save(self, state: ActionState | None = None) -> None: ...
    def fail(self, line: str, message: str) -> NoReturn: ...
    def what(self) -> str: ...
    async def cluster(self) -> Cluster: ...
    async def read(self) -> dict[str, Any]: ...

    @property
    def change(self) -> Change: ...

    @property
    def snapshot(self) -> dict[str, Any]: ...


def content_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What an action may not overwrite unseen: every field but metadata and status, and
    the labels. Annotations are left out: controllers write bookkeeping there; so are the
    node.kubernetes.io/* taints, which the node lifecycle controller sets and clears by
    itself (a cordon adds node.kubernetes.io/unschedulable) and puts back if lost."""
    content = {
        k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")
    }
    content["labels"] = (obj.get("metadata") or {}).get("labels") or {}
    spec = content.get("spec")
    if isinstance(spec, Mapping) and "taints" in spec:
        content["spec"] = {k: v for k, v in spec.items() if k != "taints"}
        if taints := own_taints(spec["taints"]):
            content["spec"]["taints"] = taints
    return content


def snapshot_content(snapshot: Mapping[str, Any]) -> Any:
    """The content a snapshot holds. Snapshots stored before there were other kinds than
    Deployments hold only the spec and labels, which is all a Deployment's content is."""
    if "content" in snapshot:
        return snapshot["content"]
    return {"spec": snapshot["spec"], "labels": snapshot.get("labels") or {}}


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object's controlling owner reference, if it has one."""
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((o for o in owners if o.get("controller")), None)


def condition_of(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The object's status condition of type `kind`, if it has one."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), None)


class Operation:
    """The default is no change at all; subclasses say how they act."""

    # False: the action only reads (or does nothing): no dry-run, snapshot or apply.
    changes_cluster: ClassVar[bool] = True
    # False: the target is not read (notify_only acts on nothing).
    reads_target: ClassVar[bool] = True

    async def plan(self, run: RunContext, target: dict[str, Any]) -> Change:
        raise NotImplementedError

    async def dry_run(self, run: RunContext, target: dict[str, Any], change: Change) -> None:
        raise NotImplementedError

    def snapshot_extra(self, run: RunContext, target: dict[str, Any]) -> dict[str, Any]:
        """More to keep with the snapshot, for the apply and the undo."""
        return {}

    async def apply(self, run: RunContext) -> int | None:
        """Apply the change; the generation to verify, if the kind has one."""
        raise NotImplementedError

    async def verify(self, run: RunContext, generation: int | None, phase: str) -> Verified:
        raise NotImplementedError

    async def restore(self, run: RunContext, failure: str) -> tuple[Outcome, str]:
        raise NotImplementedError

    async def observe(self, run: RunContext, target: dict[str, Any] | None) -> tuple[str, str]:
        """For actions that change nothing: the record's message and its details (JSON)."""
        raise NotImplementedError


# One look during verification: (done, broken, what was seen).
Look = Callable[[], Awaitable[tuple[bool, bool, str]]]


async def _poll(run: RunContext, phase: str, look: Look, timeout: float | None = None) -> Verified:
    """Call `look()` until it says done or broken, or `timeout` (by default the
    verification timeout) passes."""
    timeout = timeout or verify_timeout(run.request, run.settings)
    started = time.monotonic()
    deadline = started + timeout
    said = ""
    while True:
        done, broken, summary = await look()
        elapsed = time.monotonic() - started
        if summary != said:
            # What verification sees, as it changes: a verification that does not end says
            # why while it waits, not only at its timeout.
            _log.info(f"{phase}: waiting: {summary}", extra={"elapsed_seconds": round(elapsed, 1)})
            said = summary
        if done or broken:
            line = f"{summary} after {elapsed:.1f}s"
            run.stage(f"{phase}: {'ok' if done else 'failed'}: {line}")
            return Verified(done, line)
        if time.monotonic() >= deadline:
            line = f"timed out after {timeout:g}s: {summary}"
            run.stage(f"{phase}: failed: {line}")
            return Verified(False, line)
        await asyncio.sleep(
            min(run.settings.poll_interval_seconds, max(deadline - time.monotonic(), 0))
        )


# Scaling a workload whose rollout is stuck (a replica not updated or not Ready) cannot make
# the rollout complete, so such a scale is judged on what it may change: the controller took
# it and no available replica was lost (a runbook's scale guard before a rollback).
_log = logging.getLogger(__name__)

SCALE_ACTIONS: Final = frozenset({"scale_deployment", "scale_statefulset"})


def _availability_floor(run: RunContext) -> int | None:
    """The available replicas before a scale of a workload that was not rolled out then
    (a replica not updated or not Ready: a stuck or crashing rollout); None for any other
    change (judged on its rollout completing)."""
    if run.action not in SCALE_ACTIONS or run.snapshot.get("rolledOutBefore", True):
        return None
    return int(run.snapshot.get("availableBefore") or 0)


def _kept_availability(
    obj: Mapping[str, Any], generation: int, floor: int, summary: str
) -> tuple[bool, bool, str]:
    status = obj.get("status") or {}
    observed = int(status.get("observedGeneration") or 0)
    available = int(status.get("availableReplicas") or 0)
    if observed >= generation and available >= floor:
        return (
            True,
            False,
            f"{summary}; it was not rolled out before the change ({floor} available), so the "
            f"scale is judged on keeping what was available: {available} available",
        )
    return False, False, f"{summary}; {available} available, {floor} before the change"


async def _read_or_unavailable(run: RunContext, phase: str) -> dict[str, Any]:
    try:
        return await run.read()
    except ApiError as error:
        if error.not_found:
            run.fail(
                f"{phase}: failed: the {run.ref.kind} was deleted",
                f"{run.what()} failed: the {run.ref.kind} was deleted during {phase}",
            )
        raise ClusterUnavailable(f"cannot read the {run.ref.kind}: {error}") from error


class PatchOperation(Operation):
    """Actions that set fields of their target with one JSON patch."""

    async def plan(self, run: RunContext, target: dict[str, Any]) -> Change:
        replica_sets: list[dict[str, Any]] = []
        kind = run.ref.kind
        if run.action == "rollback_deployment":
            selector = label_selector(target["spec"].get("selector"))
            try:
                replica_sets = await (await run.cluster()).replica_sets(run.ref.namespace, selector)
            except ApiError as error:
                run.fail(
                    f"plan: failed: listing the ReplicaSets: {error}",
                    f"{run.what()} failed: {error}",
                )
        context = PlanContext(
            at=run.row.started_at,
            kind=kind,
            replica_sets=replica_sets,
            patch_allowed_fields=run.settings.patch_allowed_fields,
        )
        try:
            change = compute_change(target, run.request.action, context)
        except ChangeRefused as error:
            run.fail(f"plan: failed: {error}", f"{run.what()} failed: {error}")
        if kind == "Deployment" and changes_template(change) and target["spec"].get("paused"):
            run.fail(
                "plan: failed: the Deployment is paused (a paused Deployment does not roll out)",
                f"{run.what()} failed: the Deployment is paused",
            )
        if kind == "ConfigMap" and target.get("immutable"):
            run.fail(
                "plan: failed: the ConfigMap is immutable",
                f"{run.what()} failed: the ConfigMap is immutable",
            )
        # A rollback puts back a template that ran before, exactly (no digest): the
        # controller then re-uses that revision's ReplicaSet and its running pods instead of
        # rolling out a copy. Only new templates are marked as Kubernaut's.
        if (
            kind in WORKLOAD_KINDS
            and changes_template(change)
            and run.action != "rollback_deployment"
        ):
            change = await self._digest_template(run, target, change)
        return change

    async def _digest_template(
        self, run: RunContext, target: dict[str, Any], change: Change
    ) -> Change:
        """The change with the digest of its new template's spec in the template (see
        mark_template). The API server stores some values otherwise than they are written
        (quantities such as "0.5" as "500m", defaulted fields), and the digest must be of
        the spec as stored, which the ReplicaSets copy: when the spec changes, a dry-run of
        the change shows it. When that dry-run fails, the digest is of the spec as written;
        the dry-run stage then reports the failure."""
        spec = template_after(target, change).get("spec")
        if spec != target["spec"]["template"].get("spec"):
            ref = run.ref
            try:
                stored = await (await run.cluster()).patch(
                    ref.kind,
                    ref.namespace,
                    ref.name,
                    change.patch(target["metadata"]["resourceVersion"]),
                    dry_run=True,
                )
                spec = ((stored.get("spec") or {}).get("template") or {}).get("spec", spec)
            except ApiError:
                pass
        return mark_template(target, change, pod_spec_digest(spec), run.row.action_id)

    def snapshot_extra(self, run: RunContext, target: dict[str, Any]) -> dict[str, Any]:
        # How the apply sets the marks at the snapshot's resourceVersion (mark_ops).
        return {"annotated": has_annotations(target)}

    def _cause(self, run: RunContext, phase: str) -> str:
        """What the write does, for kubernetes.io/change-cause."""
        if phase == "restore":
            return f"undo of {run.action} after failed verification"
        return run.action

    def _marks(
        self, run: RunContext, change: Change, phase: str, annotated: bool | None
    ) -> list[dict[str, Any]]:
        """Patch operations for Kubernaut's annotations on the object it writes ("apply" or
        "restore"): kubernaut.ai/action-id, and kubernetes.io/change-cause when a workload's
        pod template changes (the Deployment controller copies the Deployment's annotations
        onto the ReplicaSet that becomes its new one). None for `annotated`: not known (an
        action stored before the marks were written), so none are set."""
        if annotated is None or any(e.path.startswith(_ANNOTATIONS) for e in change.edits):
            # A patch_resource of the annotations themselves (if configured) keeps its own.
            return []
        action_id = run.row.action_id
        marks = {ACTION_ID: action_id}
        if run.ref.kind in WORKLOAD_KINDS and changes_template(change):
            cause = f"kubernaut: {self._cause(run, phase)} (action {action_id})"
            marks[CHANGE_CAUSE_ANNOTATION] = cause[:_MAX_CHANGE_CAUSE]
        return mark_ops(annotated, marks)

    async def dry_run(self, run: RunContext, target: dict[str, Any], change: Change) -> None:
        ref = run.ref
        planned = content_of(target)
        for _ in range(_MAX_CONFLICTS):
            rv = target["metadata"]["resourceVersion"]
            marks = self._marks(run, change, "apply", has_annotations(target))
            try:
                await (await run.cluster()).patch(
                    ref.kind, ref.namespace, ref.name, change.patch(rv, marks), dry_run=True
                )
                run.stage("dry-run: ok: the API server accepted the change (dryRun=All)")
                return
            except ApiError as error:
                if not error.conflict:
                    _refused_by_api(run, error, "dry-run")
            # A controller wrote status since the plan: go on if nothing else moved.
            current = await run.read()
            if not equivalent(content_of(current), planned):
                _refused_by_api(run, ApiError(409, "Conflict", "changed since the plan"), "dry-run")
            target.clear()
            target.update(current)
        _refused_by_api(run, ApiError(409, "Conflict", "kept changing"), "dry-run")

    async def _patch(self, run: RunContext, patch: list[dict[str, Any]]) -> dict[str, Any]:
        ref = run.ref
        result = await (await run.cluster()).patch(
            ref.kind, ref.namespace, ref.name, patch, dry_run=False
        )
        run.current = result
        return result

    def _unchanged_since_snapshot(self, run: RunContext, obj: Mapping[str, Any]) -> bool:
        """Only status or bookkeeping moved: the content is as in the snapshot."""
        return equivalent(content_of(obj), snapshot_content(run.snapshot))

    async def apply(self, run: RunContext) -> int | None:
        change = run.change
        rv = str(run.snapshot["resourceVersion"])
        annotated = (run.snapshot.get("extra") or {}).get("annotated")
        for _ in range(_MAX_CONFLICTS):
            marks = self._marks(run, change, "apply", annotated)
            try:
                applied = await self._patch(run, change.patch(rv, marks))
                generation = applied["metadata"].get("generation")
                run.stage(f"apply: {change.summary}{_generation(generation)}")
                return None if generation is None else int(generation)
            except ApiError as error:
                if not error.conflict:
                    run.fail(
                        f"apply: failed: the API server rejected the change ({error}); "
                        "nothing applied",
                        f"{run.what()} failed: {error.message or error}",
                    )
            current = await run.read()
            if change.is_applied(current):
                generation = current["metadata"].get("generation")
                run.stage(f"apply: already applied by an earlier attempt{_generation(generation)}")
                return None if generation is None else int(generation)
            if not self._unchanged_since_snapshot(run, current):
                run.fail(
                    f"apply: failed: the {run.ref.kind} changed concurrently since the snapshot "
                    f"(resourceVersion {run.snapshot['resourceVersion']} -> "
                    f"{current['metadata']['resourceVersion']}); nothing applied, the other "
                    "change is kept",
                    f"{run.what()} failed: the {run.ref.kind} changed concurrently; "
                    "nothing applied",
                )
            rv = current["metadata"]["resourceVersion"]  # only its status moved: try again
            annotated = has_annotations(current)
        run.fail(
            f"apply: failed: the {run.ref.kind} kept changing; nothing applied",
            f"{run.what()} failed: the {run.ref.kind} changed concurrently; nothing applied",
        )

    async def verify(self, run: RunContext, generation: int | None, phase: str) -> Verified:
        kind = run.ref.kind
        cluster = await run.cluster()
        old_hashes = (
            frozenset(run.snapshot.get("podTemplateHashes") or ()) if phase == "verify" else None
        )

        async def look() -> tuple[bool, bool, str]:
            obj = await _read_or_unavailable(run, phase)
            if kind in WORKLOAD_KINDS:
                try:
                    pods = await cluster.pods(
                        run.ref.namespace, label_selector(obj["spec"].get("selector"))
                    )
                except ApiError as error:
                    raise ClusterUnavailable(f"cannot list the pods: {error}") from error
                state = assess_workload(
                    kind, obj, pods, generation=generation or 0, old_hashes=old_hashes
                )
                floor = _availability_floor(run) if phase == "verify" else None
                if floor is not None and not state.done:
                    return _kept_availability(obj, generation or 0, floor, state.summary)
                return state.done, state.broken, state.summary
            expected = run.change.is_applied if phase == "verify" else run.change.is_restored
            if not expected(obj):
                return False, True, f"{run.change.path} does not read back as set"
            return self._settled(run, obj, phase)

        return await _poll(run, phase, look)

    def _settled(
        self, run: RunContext, obj: Mapping[str, Any], phase: str
    ) -> tuple[bool, bool, str]:
        """Beyond the fields reading back: has the kind's controller done its part?"""
        kind = run.ref.kind
        if kind == "Pod" and run.action == "quarantine_pod" and phase == "verify":
            owner = controller_of(obj)
            if owner is not None:
                return False, False, f"still owned by {owner.get('kind')} {owner.get('name')}"
            return True, False, "the pod is quarantined and released by its controller"
        if kind == "PersistentVolumeClaim":
            for failure in ("ControllerResizeError", "NodeResizeError"):
                condition = condition_of(obj, failure)
                if condition is not None and condition.get("status") == "True":
                    return False, True, f"{failure}: {condition.get('message', '')}"
            capacity = ((obj.get("status") or {}).get("capacity") or {}).get("storage", "unknown")
            return True, False, f"the claim requests the new size (capacity now {capacity})"
        return True, False, f"{run.change.path} reads back as set"

    async def restore(self, run: RunContext, failure: str) -> tuple[Outcome, str]:
        change = run.change
        what = run.what()
        generation: int | None = None
        restored_line = ""
        for _ in range(_MAX_CONFLICTS):
            current = await run.read()
            if change.is_restored(current):
                generation = current["metadata"].get("generation")
                restored_line = f"rollback: the snapshot's {change.path} is in place"
                break
            if not change.is_applied(current):
                run.fail(
                    f"rollback: failed: the {run.ref.kind} changed concurrently after the change; "
                    "not restoring over someone else's change",
                    f"{what}: verification failed ({failure}); the rollback was not applied "
                    f"because the {run.ref.kind} changed concurrently",
                )
            marks = self._marks(run, change, "restore", has_annotations(current))
            try:
                restored = await self._patch(
                    run, change.restore_patch(current["metadata"]["resourceVersion"], marks)
                )
            except ApiError as error:
                if error.conflict:
                    continue
                run.fail(
                    f"rollback: failed: the API server rejected the restore ({error})",
                    f"{what}: verification failed ({failure}); the rollback failed: {error}",
                )
            generation = restored["metadata"].get("generation")
            restored_line = f"rollback: restored {change.path} from the snapshot"
            break
        else:
            run.fail(
                f"rollback: failed: the {run.ref.kind} kept changing; not restored",
                f"{what}: verification failed ({failure}); the rollback was not applied",
            )
        run.stage(restored_line + _generation(generation))
        run.row.generation = None if generation is None else int(generation)
        await run.save()  # a crash from here on verifies the restore, not the change
        if run.ref.kind == "StatefulSet" and changes_template(change):
            await _unstick_statefulset(run)
        verified = await self.verify(run, run.row.generation, "rollback verify")
        if verified.ok:
            return ROLLED_BACK, (
                f"{what}: {change.summary}; verification failed: {failure}; rolled back to the "
                f"snapshot and verified: {verified.summary}"
            )
        return ROLLED_BACK, (
            f"{what}: {change.summary}; verification failed: {failure}; rolled back to the "
            f"snapshot, but the restored {run.ref.kind} is not healthy either: {verified.summary}"
        )


async def _unstick_statefulset(run: RunContext) -> None:
    """Delete the pods of the failed template that never became ready. A StatefulSet does
    not replace them by itself when its template is restored (Kubernetes' "forced
    rollback"): it waits for them forever, and the rollback would never heal."""
    cluster = await run.cluster()
    ref = run.ref
    statefulset = await run.read()
    old = frozenset(run.snapshot.get("podTemplateHashes") or ())
    try:
        pods = await cluster.pods(
            ref.namespace, label_selector(statefulset["spec"].get("selector"))
        )
    except ApiError as error:
        raise ClusterUnavailable(f"cannot list the StatefulSet's pods: {error}") from error
    stuck = [
        pod
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and (pod["metadata"].get("labels") or {}).get(template_hash_label("StatefulSet")) not in old
        and (condition_of(pod, "Ready") or {}).get("status") != "True"
    ]
    for pod in stuck:
        meta = pod["metadata"]
        try:
            await cluster.delete("Pod", ref.namespace, meta["name"], dry_run=False, uid=meta["uid"])
        except ApiError as error:
            if not (error.not_found or error.conflict):  # gone, or replaced already
                run.fail(
                    f"rollback: failed: deleting pod {meta['name']} of the failed revision: "
                    f"{error}",
                    f"{run.what()}: the rollback could not delete a stuck pod: {error}",
                )
    if stuck:
        names = ", ".join(p["metadata"]["name"] for p in stuck)
        run.stage(
            f"rollback: deleted pods of the failed revision that never became ready ({names}); "
            "a StatefulSet does not replace them by itself"
        )


def _generation(generation: Any) -> str:
    return "" if generation is None else f" (generation {generation})"


def _refused_by_api(run: RunContext, error: ApiError, stage: str) -> NoReturn:
    if error.conflict:
        run.fail(
            f"{stage}: failed: the {run.ref.kind} changed concurrently; nothing applied",
            f"{run.what()} failed: the {run.ref.kind} changed concurrently",
        )
    run.fail(
        f"{stage}: failed: the API server rejected the change ({error}); nothing applied",
        f"{run.what()} failed in the {stage}: {error.message or error}",
    )


class DeletePodOperation(Operation):
    """delete_pod: the pod with the uid read at the start, and only that one."""

    async def plan(self, run: RunContext, target: dict[str, Any]) -> Change:
        owner = controller_of(target)
        if owner is None:
            run.fail(
                "plan: failed: the pod has no controller; nothing would replace it",
                f"{run.what()} failed: the pod has no controller to replace it",
            )
        uid = target["metadata"]["uid"]
        return Change(
            f"pod deleted (uid {uid}); its {owner.get('kind')} {owner.get('name')} replaces it",
            (),
        )

    def _grace(self, run: RunContext) -> int | None:
        params = run.request.action.delete_pod
        return params.grace_period_seconds if params.HasField("grace_period_seconds") else None

    async def dry_run(self, run: RunContext, target: dict[str, Any], change: Change) -> None:
        try:
            await (await run.cluster()).delete(
                "Pod",
                run.ref.namespace,
                run.ref.name,
                dry_run=True,
                uid=target["metadata"]["uid"],
                grace_period_seconds=self._grace(run),
            )
        except ApiError as error:
            _refused_by_api(run, error, "dry-run")
        run.stage("dry-run: ok: the API server accepted the deletion (dryRun=All)")

    async def apply(self, run: RunContext) -> int | None:
        uid = run.snapshot["uid"]
        try:
            await (await run.cluster()).delete(
                "Pod",
                run.ref.namespace,
                run.ref.name,
                dry_run=False,
                uid=uid,
                grace_period_seconds=self._grace(run),
            )
            run.stage(f"apply: {run.change.summary}")
        except ApiError as error:
            if error.not_found or error.conflict:  # gone, or a new pod took the name
                run.stage(f"apply: the pod (uid {uid}) is gone already")
            else:
                run.fail(
                    f"apply: failed: the API server rejected the deletion ({error})",
                    f"{run.what()} failed: {error.message or error}",
                )
        return None

    async def verify(self, run: RunContext, generation: int | None, phase: str) -> Verified:
        uid = run.snapshot["uid"]

        async def look() -> tuple[bool, bool, str]:
            try:
                pod = await run.read()
            except ApiError as error:
                if error.not_found:
                    return True, False, f"the pod (uid {uid}) is gone"
                raise ClusterUnavailable(f"cannot read the pod: {error}") from error
            if pod["metadata"].get("uid") != uid:
                return True, False, f"the pod (uid {uid}) is gone; a new pod has its name"
            return False, False, "the pod is still terminating"

        return await _poll(run, phase, look)

    async def restore(self, run: RunContext, failure: str) -> tuple[Outcome, str]:
        run.stage("rollback: not possible: a deleted pod cannot come back")
        return FAILED, (
            f"{run.what()}: {run.change.summary}; verification failed: {failure}; not reversible"
        )


class DrainOperation(PatchOperation):
    """drain_node: cordon (a patch), then evictions until only DaemonSet and mirror pods are
    left; a PodDisruptionBudget's refusal (429) is retried until the timeout."""

    async def _pods(self, run: RunContext) -> list[dict[str, Any]]:
        pods = await (await run.cluster()).list_objects(
            "Pod", "", fields=f"spec.nodeName={run.ref.name}"
        )
        return [p for p in pods if evictable(p)]

    async def plan(self, run: RunContext, target: dict[str, Any]) -> Change:
        try:
            pods = await self._pods(run)
        except ApiError as error:
            run.fail(
                f"plan: failed: listing the node's pods: {error}", f"{run.what()} failed: {error}"
            )
        bare = [namespaced_name(p) for p in pods if controller_of(p) is None]
        if bare:
            run.fail(
                f"plan: failed: pods without a controller would be lost: {', '.join(bare)}",
                f"{run.what()} failed: pods without a controller on the node: {', '.join(bare)}",
            )
        cordoned = (target.get("spec") or {}).get("unschedulable") is True
        names = ", ".join(namespaced_name(p) for p in pods) or "none"
        summary = f"{len(pods)} pods to evict ({names})"
        if cordoned:
            return Change(f"node cordoned already; {summary}", ())
        cordon = compute_change(target, _CORDON, PlanContext(at=run.row.started_at, kind="Node"))
        return Change(f"node cordoned; {summary}", cordon.edits)

    async def dry_run(self, run: RunContext, target: dict[str, Any], change: Change) -> None:
        if change.edits:
            await super().dry_run(run, target, change)
        grace = _drain_grace(run)
        blocked = []
        cluster = await run.cluster()
        for pod in await self._pods(run):
            meta = pod["metadata"]
            try:
                await cluster.evict(
                    meta["namespace"],
                    meta["name"],
                    dry_run=True,
                    uid=meta["uid"],
                    grace_period_seconds=grace,
                )
            except ApiError as error:
                if error.status == 429:
                    blocked.append(namespaced_name(pod))
                elif not error.not_found:
                    _refused_by_api(run, error, "dry-run")
        note = (
            f"; {len(blocked)} evictions blocked by PodDisruptionBudgets for now "
            f"({', '.join(blocked)}), retried until the timeout"
            if blocked
            else ""
        )
        run.stage(f"dry-run: ok: the evictions were accepted (dryRun=All){note}")

    async def apply(self, run: RunContext) -> int | None:
        if run.change.edits:
            return await super().apply(run)
        run.stage("apply: the node is cordoned already")
        return None

    async def verify(self, run: RunContext, generation: int | None, phase: str) -> Verified:
        if phase != "verify":
            return await super().verify(run, generation, phase)
        cluster = await run.cluster()
        grace = _drain_grace(run)
        timeout = run.request.action.drain_node.timeout_seconds
        evicted: set[str] = set()

        async def look() -> tuple[bool, bool, str]:
            try:
                pods = await self._pods(run)
            except ApiError as error:
                raise ClusterUnavailable(f"cannot list the node's pods: {error}") from error
            if not pods:
                return True, False, f"the node is drained ({len(evicted)} pods evicted)"
            await _record_evicted(run, pods)
            blocked = []
            for pod in pods:
                meta = pod["metadata"]
                if meta.get("deletionTimestamp"):
                    continue
                try:
                    await cluster.evict(
                        meta["namespace"],
                        meta["name"],
                        dry_run=False,
                        uid=meta["uid"],
                        grace_period_seconds=grace,
                    )
                    evicted.add(namespaced_name(pod))
                except ApiError as error:
                    if error.status == 429:
                        blocked.append(namespaced_name(pod))
                    elif not (error.not_found or error.conflict):
                        return False, True, f"evicting {namespaced_name(pod)} failed: {error}"
            left = ", ".join(namespaced_name(p) for p in pods)
            why = f"; blocked by PodDisruptionBudgets: {', '.join(blocked)}" if blocked else ""
            return False, False, f"{len(pods)} pods left ({left}){why}"

        return await _poll(run, phase, look, timeout=float(timeout) or None)

    async def restore(self, run: RunContext, failure: str) -> tuple[Outcome, str]:
        if not run.change.edits:
            run.stage("rollback: nothing to undo: the node was cordoned before the action")
            return FAILED, f"{run.what()}: {run.change.summary}; verification failed: {failure}"
        outcome, message = await super().restore(run, failure)
        return outcome, message + "; evicted pods stay where their controllers put them"


_CORDON: Final = remediation_pb2.ActionParams(cordon_node=remediation_pb2.CordonNodeParams())


async def _record_evicted(run: RunContext, pods: list[dict[str, Any]]) -> None:
    """Add the pods not yet in the snapshot's record of evicted pods, and store it, before
    they are evicted: what was displaced (checks.NodePodsRelocated reads it)."""
    extra = run.snapshot.setdefault("extra", {})
    recorded = extra.setdefault(_EVICTED, [])
    known = {(p.get("namespace"), p.get("name")) for p in recorded}
    added = False
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (meta.get("namespace"), meta.get("name")) in known:
            continue
        entry: dict[str, Any] = {"namespace": meta.get("namespace"), "name": meta.get("name")}
        if (workload := workload_of(pod)) is not None:
            entry["workload"] = {"kind": workload[0], "name": workload[2]}
        recorded.append(entry)
        added = True
    if added:
        await run.save()


def displaced_workloads(snapshot: Mapping[str, Any] | None) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of each workload whose pods a drain_node (its snapshot)
    evicted; empty for a drain stored before drains recorded them."""
    recorded = ((snapshot or {}).get("extra") or {}).get(_EVICTED) or []
    return {
        (str(w["kind"]), str(p.get("namespace") or ""), str(w["name"]))
        for p in recorded
        if isinstance(w := p.get("workload"), Mapping) and w.get("kind") in WORKLOAD_KINDS
    }


def workload_of(pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of the Deployment, StatefulSet or DaemonSet a pod belongs
    to; None for other pods. A ReplicaSet's Deployment is read off its name (the
    Deployment's name and the pod-template-hash): no read of the ReplicaSet."""
    owner = controller_of(pod)
    if owner is None:
        return None
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    kind, name = str(owner.get("kind") or ""), str(owner.get("name") or "")
    if kind in WORKLOAD_KINDS:
        return kind, namespace, name
    template_hash = (meta.get("labels") or {}).get(POD_TEMPLATE_HASH)
    if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
        return "Deployment", namespace, name.removesuffix(f"-{template_hash}")
    return None


def _drain_grace(run: RunContext) -> int | None:
    params = run.request.action.drain_node
    return params.grace_period_seconds if params.HasField("grace_period_seconds") else None


def namespaced_name(pod: Mapping[str, Any]) -> str:
    """A pod's (or any namespaced object's) "namespace/name"."""
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def evictable(pod: Mapping[str, Any]) -> bool:
    """What `kubectl drain` evicts: not a DaemonSet's pod (it would come straight back),
    not a mirror pod (the kubelet owns it), not one that has finished."""
    meta = pod.get("metadata") or {}
    if _MIRROR in (meta.get("annotations") or {}):
        return False
    owner = controller_of(pod)
    if owner is not None and owner.get("kind") == "DaemonSet":
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


_evictable = evictable  # its earlier name


class RerunJobOperation(Operation):
    """rerun_failed_job: a new Job from the failed one's template."""

    def _body(self, run: RunContext, job: Mapping[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        suffix = f"-rerun-{run.row.action_id[:8]}"
        name = meta["name"][: 63 - len(suffix)] + suffix
        spec = copy.deepcopy(job["spec"])
        for key in ("selector", "manualSelector"):
            spec.pop(key, None)
        spec["suspend"] = False
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta["labels"] = {
            k: v
            for k, v in (template_meta.get("labels") or {}).items()
            if k not in _JOB_CONTROLLER_LABELS
        }
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": {
                    k: v
                    for k, v in (meta.get("labels") or {}).items()
                    if k not in _JOB_CONTROLLER_LABELS
                },
                "annotations": {RERUN_OF: meta["name"], ACTION_ID: run.row.action_id},
            },
            "spec": spec,
        }

    async def plan(self, run: RunContext, target: dict[str, Any]) -> Change:
        failed = condition_of(target, "Failed")
        if failed is None or failed.get("status") != "True":
            run.fail(
                "plan: failed: the Job has not failed (no condition Failed=True)",
                f"{run.what()} failed: the Job has not failed",
            )
        body = self._body(run, target)
        return Change(
            f"new Job {body['metadata']['name']} from the template of the failed Job "
            f"({failed.get('reason', 'failed')})",
            (),
        )

    def snapshot_extra(self, run: RunContext, target: dict[str, Any]) -> dict[str, Any]:
        return {"create": self._body(run, target)}

    async def dry_run(self, run: RunContext, target: dict[str, Any], change: Change) -> None:
        try:
            await (await run.cluster()).create(
                "Job", run.ref.namespace, self._body(run, target), dry_run=True
            )
        except ApiError as error:
            _refused_by_api(run, error, "dry-run")
        run.stage("dry-run: ok: the API server accepted the new Job (dryRun=All)")

    def _new_name(self, run: RunContext) -> str:
        name: str = run.snapshot["extra"]["create"]["metadata"]["name"]
        return name

    async def apply(self, run: RunContext) -> int | None:
        cluster = await run.cluster()
        body = run.snapshot["extra"]["create"]
        try:
            await cluster.create("Job", run.ref.namespace, body, dry_run=False)
            run.stage(f"apply: {run.change.summary}")
        except ApiError as error:
            if error.status != 409:
                run.fail(
                    f"apply: failed: the API server rejected the new Job ({error})",
                    f"{run.what()} failed: {error.message or error}",
                )
            existing = await cluster.get("Job", run.ref.namespace, self._new_name(run))
            annotations = existing["metadata"].get("annotations") or {}
            if annotations.get(ACTION_ID) != run.row.action_id:
                run.fail(
                    f"apply: failed: a Job named {self._new_name(run)} exists and is not this "
                    "action's",
                    f"{run.what()} failed: Job {self._new_name(run)} exists already",
                )
            run.stage(f"apply: Job {self._new_name(run)} created by an earlier attempt")
        return None

    async def verify(self, run: RunContext, generation: int | None, phase: str) -> Verified:
        cluster = await run.cluster()
        name = self._new_name(run)

        async def look() -> tuple[bool, bool, str]:
            try:
                job = await cluster.get("Job", run.ref.namespace, name)
            except ApiError as error:
                if error.not_found:
                    return False, True, f"Job {name} was deleted"
                raise ClusterUnavailable(f"cannot read Job {name}: {error}") from error
            failed = condition_of(job, "Failed")
            if failed is not None and failed.get("status") == "True":
                return False, True, f"Job {name} failed: {failed.get('message', '')}"
            status = job.get("status") or {}
            started = int(status.get("active") or 0) + int(status.get("succeeded") or 0)
            if started:
                return (
                    True,
                    False,
                    (
                        f"Job {name} runs ({status.get('active', 0)} active, "
                        f"{status.get('succeeded', 0)} succeeded)"
                    ),
                )
            return False, False, f"Job {name} has not started a pod yet"

        return await _poll(run, phase, look)

    async def restore(self, run: RunContext, failure: str) -> tuple[Outcome, str]:
        name = self._new_name(run)
        try:
            await (await run.cluster()).delete("Job", run.ref.namespace, name, dry_run=False)
        except ApiError as error:
            if not error.not_found:
                run.fail(
                    f"rollback: failed: deleting Job {name}: {error}",
                    f"{run.what()}: verification failed ({failure}); deleting the new Job "
                    f"failed: {error}",
                )
        run.stage(f"rollback: deleted Job {name}")
        return ROLLED_BACK, (
            f"{run.what()}: {run.change.summary}; verification failed: {failure}; the new Job "
            "was deleted"
        )


class DiagnosticsOperation(Operation):
    """collect_diagnostics: reads only; the bundle goes with the record."""

    changes_cluster = False

    async def observe(self, run: RunContext, target: dict[str, Any] | None) -> tuple[str, str]:
        assert target is not None
        ref = run.ref
        cluster = await run.cluster()
        settings = run.settings
        lines = run.request.action.collect_diagnostics.log_lines or settings.diagnostics_log_lines
        described = copy.deepcopy(target)
        described.get("metadata", {}).pop("managedFields", None)
        bundle: dict[str, Any] = {"object": described, "events": [], "logs": {}}
        fields = f"involvedObject.name={ref.name},involvedObject.kind={ref.kind}"
        try:
            events = await cluster.list_objects("Event", ref.namespace, fields=fields, limit=100)
            bundle["events"] = [
                {
                    "type": e.get("type"),
                    "reason": e.get("reason"),
                    "message": e.get("message"),
                    "count": e.get("count"),
                    "lastTimestamp": e.get("lastTimestamp") or e.get("eventTime"),
                }
                for e in events
            ]
        except ApiError as error:
            bundle["events_error"] = str(error)
        pods: list[dict[str, Any]] = []
        if ref.kind == "Pod":
            pods = [target]
        elif ref.kind in WORKLOAD_KINDS:
            selector = label_selector((target.get("spec") or {}).get("selector"))
            try:
                pods = (await cluster.pods(ref.namespace, selector))[:_DIAGNOSTIC_PODS]
            except ApiError as error:
                bundle["pods_error"] = str(error)
        elif ref.kind == "Node":
            try:
                on_node = await cluster.list_objects("Pod", "", fields=f"spec.nodeName={ref.name}")
                bundle["pods"] = [namespaced_name(p) for p in on_node]
            except ApiError as error:
                bundle["pods_error"] = str(error)
        budget = settings.diagnostics_max_bytes // 2  # the other half: object and events
        per_container = max(budget // max(sum(_containers(p) for p in pods), 1), 256)
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            for container in (pod.get("spec") or {}).get("containers") or []:
                key = f"{pod_name}/{container['name']}"
                try:
                    bundle["logs"][key] = await cluster.logs(
                        ref.namespace,
                        pod_name,
                        container["name"],
                        tail_lines=lines,
                        limit_bytes=per_container,
                    )
                except (ApiError, ClusterUnavailable) as error:
                    bundle["logs"][key] = f"(logs unavailable: {error})"
        details = _bounded_json(bundle, settings.diagnostics_max_bytes)
        summary = (
            f"collected the {ref.kind}, {len(bundle['events'])} events and the logs of "
            f"{len(bundle['logs'])} containers ({len(details)} bytes)"
        )
        run.stage(f"collect: {summary}")
        return summary, details


def _containers(pod: Mapping[str, Any]) -> int:
    return len((pod.get("spec") or {}).get("containers") or [])


def _bounded_json(bundle: dict[str, Any], limit: int) -> str:
    """The bundle as JSON within `limit` bytes: logs are cut first, then events."""
    text = json.dumps(bundle, sort_keys=True, default=str)
    while len(text.encode()) > limit:
        logs = bundle.get("logs") or {}
        longest = max(logs, key=lambda k: len(logs[k]), default=None)
        if longest is not None and len(logs[longest]) > 64:
            logs[longest] = "(cut) " + logs[longest][len(logs[longest]) // 2 :]
        elif bundle.get("events"):
            bundle["events"] = bundle["events"][: len(bundle["events"]) // 2]
            bundle["events_cut"] = True
        else:
            bundle["object"] = {"cut": "the object was too large to keep"}
            text = json.dumps(bundle, sort_keys=True, default=str)
            break
        text = json.dumps(bundle, sort_keys=True, default=str)
    return text


class NotifyOperation(Operation):
    """notify_only: nothing happens to the cluster."""

    changes_cluster = False
    reads_target = False

    async def observe(self, run: RunContext, target: dict[str, Any] | None) -> tuple[str, str]:
        message = run.request.action.notify_only.message
        run.stage("notify: nothing changed; people are to be told")
        return f"notify only, nothing changed: {message}", ""


class UndoPatchOperation(PatchOperation):
    """RollbackAction of a patch: the recorded change, inverted. Only onto a target that
    still holds what the action set; anything else is someone else's change, kept."""

    def __init__(self, original: ActionRow) -> None:
        self.original = original

    async def plan(self, run: RunContext, target: dict[str, Any]) -> Change:
        assert self.original.change is not None
        done = self.original.change
        inverse = Change(
            f"undo: {done.summary}", tuple(Edit(e.path, e.after, e.before) for e in done.edits)
        )
        if not inverse.edits:
            run.fail(
                "plan: failed: the action changed no field of the target; nothing to undo",
                f"{run.what()} failed: the action changed no field of the target",
            )
        if inverse.is_applied(target):
            run.fail(
                f"plan: failed: {done.path} is as before the action already; nothing to undo",
                f"{run.what()} failed: the target is as before the action already",
            )
        if not inverse.is_restored(target):
            run.fail(
                f"plan: failed: {done.path} changed since the action; not undoing over "
                "someone else's change",
                f"{run.what()} failed: the target changed since the action",
            )
        if (
            run.ref.kind == "Deployment"
            and changes_template(inverse)
            and target["spec"].get("paused")
        ):
            run.fail(
                "plan: failed: the Deployment is paused (a paused Deployment does not roll out)",
                f"{run.what()} failed: the Deployment is paused",
            )
        return inverse

    def _settled(
        self, run: RunContext, obj: Mapping[str, Any], phase: str
    ) -> tuple[bool, bool, str]:
        return True, False, f"{run.change.path} reads back as set"

    def _cause(self, run: RunContext, phase: str) -> str:
        original = f"{run.action} {self.original.action_id}"
        if phase == "restore":
            return f"{original} put back after its undo failed verification"
        return f"undo of {original}"


class UndoRerunOperation(Operation):
    """RollbackAction of rerun_failed_job: delete the Job it made (and its pods)."""

    def __init__(self, original: ActionRow) -> None:
        self.original = original

    @property
    def job(self) -> str:
        assert self.original.snapshot is not None
        name: str = self.original.snapshot["extra"]["create"]["metadata"]["name"]
        return name

    async def plan(self, run: RunContext, target: dict[str, Any]) -> Change:
        try:
            job = await (await run.cluster()).get("Job", run.ref.namespace, self.job)
        except ApiError as error:
            if error.not_found:
                run.fail(
                    f"plan: failed: Job {self.job} is gone already; nothing to undo",
                    f"{run.what()} failed: Job {self.job} is gone already",
                )
            raise ClusterUnavailable(f"cannot read Job {self.job}: {error}") from error
        if (job["metadata"].get("annotations") or {}).get(ACTION_ID) != self.original.action_id:
            run.fail(
                f"plan: failed: Job {self.job} was not made by action {self.original.action_id}",
                f"{run.what()} failed: Job {self.job} is not the action's",
            )
        return Change(f"undo: delete Job {self.job} (uid {job['metadata']['uid']})", ())

    def snapshot_extra(self, run: RunContext, target: dict[str, Any]) -> dict[str, Any]:
        return {"job": self.job}

    async def dry_run(self, run: RunContext, target: dict[str, Any], change: Change) -> None:
        try:
            await (await run.cluster()).delete("Job", run.ref.namespace, self.job, dry_run=True)
        except ApiError as error:
            _refused_by_api(run, error, "dry-run")
        run.stage("dry-run: ok: the API server accepted the deletion (dryRun=All)")

    async def apply(self, run: RunContext) -> int | None:
        try:
            await (await run.cluster()).delete("Job", run.ref.namespace, self.job, dry_run=False)
            run.stage(f"apply: {run.change.summary}")
        except ApiError as error:
            if not error.not_found:
                run.fail(
                    f"apply: failed: the API server rejected the deletion ({error})",
                    f"{run.what()} failed: {error.message or error}",
                )
            run.stage(f"apply: Job {self.job} is gone already")
        return None

    async def verify(self, run: RunContext, generation: int | None, phase: str) -> Verified:
        cluster = await run.cluster()

        async def look() -> tuple[bool, bool, str]:
            try:
                await cluster.get("Job", run.ref.namespace, self.job)
            except ApiError as error:
                if error.not_found:
                    return True, False, f"Job {self.job} is gone"
                raise ClusterUnavailable(f"cannot read Job {self.job}: {error}") from error
            return False, False, f"Job {self.job} is still being deleted"

        return await _poll(run, phase, look)

    async def restore(self, run: RunContext, failure: str) -> tuple[Outcome, str]:
        run.stage("rollback: not possible: a deleted Job cannot come back")
        return FAILED, f"{run.what()}: {run.change.summary}; verification failed: {failure}"


def undo_operation_for(original: ActionRow) -> Operation:
    """How RollbackAction undoes `original` (a reversible action that succeeded)."""
    name = original.request.action.WhichOneof("params")
    if name == "rerun_failed_job":
        return UndoRerunOperation(original)
    return UndoPatchOperation(original)


_OPERATIONS: Final[Mapping[str, Operation]] = {
    "delete_pod": DeletePodOperation(),
    "drain_node": DrainOperation(),
    "rerun_failed_job": RerunJobOperation(),
    "collect_diagnostics": DiagnosticsOperation(),
    "notify_only": NotifyOperation(),
}
_PATCH: Final = PatchOperation()


def operation_for(action: str) -> Operation:
    return _OPERATIONS.get(action, _PATCH)
