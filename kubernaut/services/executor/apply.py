"""The stages that act, after scope and rbac admitted the action: guards, plan, dry-run,
snapshot, apply, verify, rollback; and, for an action that changes nothing, the observation.

They decide whether the change may run now (`admit`: one action at a time per target, a
cooldown per (target, action), a rate per cluster; guards.py), what it is and
whether the API server takes it (`prepare`; the executor's dry-run mode ends there), that
nobody else changed the target since the snapshot (`apply_change`), whether it took
(`verify_change`), and what is restored when it did not (`restore_change`). How each action
plans, applies, verifies and undoes is its Operation (kubernaut.services.executor.operations).
"""

from __future__ import annotations

from typing import Any

from kubernaut.services.executor import guards
from kubernaut.services.executor.changes import (
    WORKLOAD_KINDS,
    Change,
    assess_workload,
    label_selector,
    template_hash_label,
)
from kubernaut.services.executor.cluster import ApiError
from kubernaut.services.executor.gitops import gitops_owner, proposed_patch
from kubernaut.services.executor.gitops_pr import refuse_with_pull_request
from kubernaut.services.executor.operations import DRY_RUN, SUCCEEDED, Outcome, Verified, content_of
from kubernaut.services.executor.record import record_view
from kubernaut.services.executor.run import Finished, Run, now, where
from kubernaut.services.executor.settings import GitOpsChanges
from kubernaut.services.executor.store import ActionState, ExecutorStoreUnavailable


async def observe(run: Run, target: dict[str, Any] | None) -> tuple[Outcome, str]:
    """An action that changes nothing: what it saw is its outcome."""
    message, details = await run.operation.observe(run, target)
    run.details = details
    if run.settings.dry_run:
        return DRY_RUN, f"{run.what()}: dry-run mode (nothing changes either way): {message}"
    return SUCCEEDED, f"{run.what()}: {message}"


async def admit(run: Run) -> None:
    settings = run.settings
    try:
        await guards.admit(
            run.session.connection,
            action_id=run.row.action_id,
            action=run.guarded_action,
            target=run.target_key,
            cooldown_seconds=settings.cooldown_seconds,
            max_per_minute=settings.max_actions_per_cluster_per_minute,
            now=now(),
        )
    except guards.GuardRefused as refused:
        if run.row.state is not ActionState.STARTED:
            # A resumed action whose target another action took meanwhile: wait.
            raise ExecutorStoreUnavailable(
                f"cannot resume: {refused.reason}; retry later"
            ) from refused
        run.refuse(f"guards: refused: {refused.reason}", f"{run.what()} refused: {refused.reason}")
    run.admitted = True
    if run.row.state is ActionState.STARTED:
        run.stage("guards: ok: the target is free, not cooling down, within the cluster's rate")


async def prepare(run: Run, target: dict[str, Any]) -> None:
    """Plan, dry-run and snapshot; the row is then PLANNED."""
    operation = run.operation
    change = await operation.plan(run, target)
    run.stage(f"plan: {change.summary}")
    await operation.dry_run(run, target, change)
    await run.save()  # the stages so far, for GetActionProgress
    owner = gitops_owner(target)
    if owner is not None and run.settings.gitops is GitOpsChanges.PULL_REQUEST:
        # The change as a pull request on the manifests (or, failing that, as with notify).
        await refuse_with_pull_request(run, target, change, owner)
    if owner is not None and run.settings.gitops is GitOpsChanges.NOTIFY:
        patch = proposed_patch(run.ref, change)
        run.refuse(
            f"gitops: refused: {owner.describe()} manages {where(run.ref)} and would revert "
            f"a patch (KUBERNAUT_EXECUTOR_GITOPS=notify); proposed change: {patch}",
            f"{run.what()} not applied: {where(run.ref)} is managed by {owner.describe()}, "
            f"which would revert it; change it in Git instead. Proposed change "
            f"({change.summary}): {patch}",
        )
    if owner is not None:
        run.stage(f"gitops: {owner.describe()} manages it; applying anyway (GITOPS=apply)")
    if run.settings.dry_run:
        raise Finished(DRY_RUN, f"{run.what()}: dry-run only, not applied: {change.summary}")
    await _snapshot(run, target, change)


async def _snapshot(run: Run, target: dict[str, Any], change: Change) -> None:
    ref = run.ref
    hashes: list[str] = []
    rolled_out = True
    if ref.kind in WORKLOAD_KINDS:  # its pods' template hashes tell new pods from old
        try:
            pods = await (await run.cluster()).pods(
                ref.namespace, label_selector(target["spec"].get("selector"))
            )
        except ApiError as error:
            run.fail(f"snapshot: failed: listing pods: {error}", f"{run.what()} failed: {error}")
        generation = int(target["metadata"].get("generation") or 0)
        rolled_out = assess_workload(ref.kind, target, pods, generation=generation).done
        label = template_hash_label(ref.kind)
        hashes = sorted(
            {
                h
                for pod in pods
                if (h := ((pod.get("metadata") or {}).get("labels") or {}).get(label))
            }
        )
    meta = target["metadata"]
    run.row.snapshot = {
        "resourceVersion": meta["resourceVersion"],
        "generation": meta.get("generation"),
        "uid": meta.get("uid"),
        "content": content_of(target),
        "view": record_view(target, change),
        "podTemplateHashes": hashes,
        # Whether the workload was rolled out (every replica updated and Ready) and how
        # available it was: a scale of one that was not is judged on keeping what was
        # available (operations.PatchOperation.verify).
        "rolledOutBefore": rolled_out,
        "availableBefore": int((target.get("status") or {}).get("availableReplicas") or 0),
        "extra": run.operation.snapshot_extra(run, target),
    }
    run.row.change = change
    run.stage(
        f"snapshot: stored the {ref.kind} at resourceVersion {meta['resourceVersion']} and the "
        "change"
    )
    await run.save(ActionState.PLANNED)
    await run.reached("snapshot")


async def apply_change(run: Run) -> None:
    """Apply the planned change; the row is then APPLIED."""
    row = run.row
    row.generation = await run.operation.apply(run)
    # One transaction: a crash cannot leave an applied action without the time its
    # cooldown runs from.
    async with run.session.connection.transaction():
        await run.save(ActionState.APPLIED)
        await guards.mark_applied(run.session.connection, row.action_id, now())
    await run.reached("apply")


async def verify_change(run: Run) -> Verified:
    """Verify the applied change; when it did not take, the row is then RESTORING."""
    row = run.row
    # Saved so that GetActionProgress can say how long verification has run.
    row.verify_started_at = now()
    await run.save()
    verified = await run.operation.verify(run, row.generation, "verify")
    if not verified.ok:
        await run.save(ActionState.RESTORING)
        await run.reached("verify")
    return verified


async def restore_change(run: Run, failure: str) -> tuple[Outcome, str]:
    """Restore the snapshot after failed verification (`failure` says how it failed; empty
    when resumed, then the first call's verification line says why)."""
    row = run.row
    if not failure:
        failure = next(
            (
                s.removeprefix("verify: failed: ")
                for s in reversed(row.stages)
                if s.startswith("verify: failed")
            ),
            "verification failed",
        )
    outcome, message = await run.operation.restore(run, failure)
    await run.save()
    return outcome, message
