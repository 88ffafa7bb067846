"""Rules for a Deployment's pods: crash loops, OOM kills, missing replicas and stuck
rollouts, decided by what the context API saw of its pods and revisions."""

from __future__ import annotations

from dataclasses import dataclass

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.services.ai_analysis.rules._common import (
    Case,
    RulesSettings,
    container_label,
    describe,
    needs_kind,
    no_action,
    remediate,
)

# Waiting reasons a restart cannot clear: the pod template itself is wrong.
CANNOT_START = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
)

_CONFIDENCE_CRASHLOOP = 0.6
_CONFIDENCE_OOM = 0.7
_CONFIDENCE_REPLICAS_BLIND = 0.5
_CONFIDENCE_RESTART_STUCK = 0.6
_CONFIDENCE_SCALE_TO_FIT = 0.55
_CONFIDENCE_ROLLOUT = 0.7
_CONFIDENCE_ROLLBACK = 0.8

_NO_RECENT_ROLLOUT = "no revision was rolled out shortly before the crashes"


@dataclass(frozen=True)
class _Rollout:
    """A rollout to blame, with its evidence."""

    # The newest revision that is not Kubernaut's own: the one rolled back.
    current: context_api_pb2.Revision
    # The revision before it that is not Kubernaut's own: the one rolled back to.
    previous: context_api_pb2.Revision
    # The failing pods, all of which run `current` (or Kubernaut's changes on top of it).
    failing: tuple[str, ...]
    # Kubernaut's own revisions newer than `current`, passed over.
    own: tuple[context_api_pb2.Revision, ...]
    # Ready pods of `previous` (and of Kubernaut's own revisions made on top of it).
    ready: int


def _own_change(revision: context_api_pb2.Revision) -> str:
    """E.g. "revision 3 is Kubernaut's own restart_deployment (action a-1)". The change-cause
    names the action only when it is this revision's (the annotation is sticky)."""
    action_id = revision.kubernaut_action_id
    cause = revision.change_cause
    what = "change"
    if cause.startswith("kubernaut: ") and cause.endswith(f"(action {action_id})"):
        what = cause.removeprefix("kubernaut: ").removesuffix(f"(action {action_id})").strip()
    return f"revision {revision.number} is Kubernaut's own {what} (action {action_id})"


def _recent_rollout(
    alert: alert_pb2.Alert,
    evidence: context_api_pb2.ResourceContext | None,
    settings: RulesSettings,
) -> tuple[_Rollout | None, str]:
    """The rollout the failures follow, or None and which piece of evidence is missing.

    Kubernaut's own revisions (a restart's, a raised limit's) are never blamed nor rolled
    back to. The newest other revision is blamed only when it was created shortly before
    the alert started, the failing pods run its template (or Kubernaut's changes on top of
    it), the previous other revision still has Ready pods (or Kubernaut's own revisions made
    on top of it do), and the rollout never became
    fully available (a release that ran healthy and crashed later is not blamed by the
    rules alone)."""
    if evidence is None or not evidence.rollout.revisions:
        return None, _NO_RECENT_ROLLOUT
    revisions = sorted(evidence.rollout.revisions, key=lambda r: r.number, reverse=True)
    theirs = [r for r in revisions if not r.kubernaut_action_id]
    if not theirs:
        own = "; ".join(_own_change(r) for r in revisions)
        return None, f"every retained revision is Kubernaut's own ({own})"
    current = theirs[0]
    newer_own = tuple(r for r in revisions if r.number > current.number)
    passed_over = "; ".join(_own_change(r) for r in newer_own)
    skipped = f" ({passed_over}, not blamed)" if passed_over else ""
    started = alert.starts_at.ToSeconds() if alert.HasField("starts_at") else 0
    if (
        not current.HasField("created_at")
        or current.created_at.ToSeconds() < started - settings.recent_rollout_seconds
    ):
        if newer_own:
            return None, f"{_NO_RECENT_ROLLOUT}{skipped}"
        return None, _NO_RECENT_ROLLOUT
    earlier = [r for r in revisions if r.number < current.number]
    previous = next((r for r in earlier if not r.kubernaut_action_id), None)
    if previous is None:
        if earlier:
            own = "; ".join(_own_change(r) for r in earlier)
            return None, (
                f"revision {current.number} is recent, but no earlier revision other than "
                f"Kubernaut's own is retained to roll back to ({own})"
            )
        return None, f"revision {current.number} is recent, but no earlier revision is retained"

    missing: list[str] = []
    hashes = {current.pod_template_hash, *(r.pod_template_hash for r in newer_own)} - {""}
    failing = [pod for pod in evidence.pods if pod.waiting_reason or not pod.ready]
    elsewhere = [pod.name for pod in failing if pod.pod_template_hash not in hashes]
    if not failing:
        missing.append("no pod is failing now")
    elif elsewhere:
        missing.append(
            f"failing pods do not run revision {current.number}'s template "
            f"({', '.join(elsewhere[:5])})"
        )
    # Kubernaut's own revisions between the two are its changes on top of the previous
    # one (a restart of it, say): their Ready pods show that its template works, too.
    lineage = [
        previous,
        *(r for r in earlier if previous.number < r.number and r.kubernaut_action_id),
    ]
    ready = sum(r.ready_replicas for r in lineage)
    if ready < 1:
        missing.append(
            f"revision {previous.number}'s pods are not Ready now, so it is not known to work"
        )
    if evidence.rollout.rollout_completed:
        newest = revisions[0]
        whose = "" if newest.number == current.number else ", Kubernaut's own,"
        missing.append(
            f"revision {newest.number}{whose} became fully available before the crashes "
            f"({evidence.rollout.progressing_reason})"
        )
    if missing:
        return None, f"revision {current.number} is recent{skipped}, but " + "; ".join(missing)
    return _Rollout(current, previous, tuple(pod.name for pod in failing), newer_own, ready), ""


def oom_seen(evidence: context_api_pb2.ResourceContext | None) -> bool:
    return evidence is not None and any(
        pod.last_terminated_reason == "OOMKilled" for pod in evidence.pods
    )


def crash_loop_over(case: Case) -> str:
    """Why the crash loop the alert reports is over, or "": the pod it names is gone and
    every pod of the workload is Ready with nothing waiting. (A pod still there may only be
    between two crashes, so its being Ready proves nothing.)"""
    evidence = case.evidence
    pod = case.alert.labels.get("pod", "")
    if evidence is None or not evidence.pods or not pod:
        return ""
    if any(p.name == pod for p in evidence.pods):
        return ""
    if any(p.waiting_reason or not p.ready for p in evidence.pods):
        return ""
    return f"its pod {pod} is gone and all {len(evidence.pods)} pods of {case.what} are Ready now"


def crash_looping(case: Case, symptom: str = "") -> remediation_pb2.Analysis:
    """Roll back a recent rollout the crashes followed; otherwise restart."""
    refusal = needs_kind(case, "restart_deployment")
    if refusal is not None:
        return refusal
    symptom = symptom or f"{case.name}: pods of {case.what} are in CrashLoopBackOff."
    rollout, why_not = _recent_rollout(case.alert, case.evidence, case.settings)
    if rollout is not None:
        return _roll_back(rollout, case.subject, symptom)
    over = crash_loop_over(case)
    if over:
        # Typically a second alert of a bad rollout another incident already rolled back:
        # a restart now would change a workload that works.
        return no_action(
            f"{symptom} But {over}: the crash loop is over, so nothing is done (if it comes "
            "back, the alert fires again)."
        )
    return remediate(
        remediation_pb2.ActionParams(restart_deployment=remediation_pb2.RestartDeploymentParams()),
        case.subject,
        _CONFIDENCE_CRASHLOOP,
        [
            symptom,
            "A rolling restart clears crashes caused by transient start-up failures "
            "at low risk; a crash that repeats deterministically will fail verification.",
            f"Rollback not chosen: {why_not}.",
        ],
    )


def cannot_start(case: Case, symptom: str, reasons: str) -> remediation_pb2.Analysis:
    """Pods that cannot start (bad image, bad config): roll back the rollout that brought
    them, or leave it to a person; a restart would meet the same error."""
    if case.subject.kind == "Deployment":
        rollout, why_not = _recent_rollout(case.alert, case.evidence, case.settings)
        if rollout is not None:
            return _roll_back(
                rollout, case.subject, f"{symptom} Its new pods cannot start: {reasons}."
            )
    else:
        why_not = f"rollback_deployment acts only on Deployments and the subject is {case.what}"
    return no_action(
        f"{symptom} Its pods cannot start ({reasons}) and no recent rollout explains it; "
        "a restart would meet the same error, so nothing is done automatically. "
        f"Rollback not chosen: {why_not}."
    )


def _roll_back(
    rollout: _Rollout,
    subject: alert_pb2.ResourceRef,
    symptom: str,
) -> remediation_pb2.Analysis:
    current, previous = rollout.current, rollout.previous
    failing = ", ".join(rollout.failing[:5]) + (", ..." if len(rollout.failing) > 5 else "")
    reasons = [
        symptom,
        f"Revision {current.number} ({', '.join(current.images)}) rolled out "
        f"shortly before the failures and never became fully available; the failing pods "
        f"({failing}) run its template; revision {previous.number} "
        f"({', '.join(previous.images)}) ran before it and {rollout.ready} of its "
        "pods are Ready.",
    ]
    if rollout.own:
        reasons.append("Not blamed: " + "; ".join(_own_change(r) for r in rollout.own) + ".")
    reasons.append(
        f"Rolling back to revision {previous.number} restores the pod template "
        "that ran, while the new one is fixed."
    )
    return remediate(
        remediation_pb2.ActionParams(
            rollback_deployment=remediation_pb2.RollbackDeploymentParams(
                to_revision=previous.number
            )
        ),
        subject,
        _CONFIDENCE_ROLLBACK,
        reasons,
    )


def rollout_stuck(case: Case) -> remediation_pb2.Analysis:
    refusal = needs_kind(case, "rollback_deployment")
    if refusal is not None:
        return refusal
    if case.evidence is not None and len(case.evidence.rollout.revisions) < 2:
        # A first rollout that never progressed has nothing to go back to.
        return no_action(
            f"{case.name}: the rollout of {case.what} is not progressing, but no earlier "
            "revision is retained to roll back to, so nothing is done automatically."
        )
    return remediate(
        remediation_pb2.ActionParams(
            rollback_deployment=remediation_pb2.RollbackDeploymentParams(to_revision=0)
        ),
        case.subject,
        _CONFIDENCE_ROLLOUT,
        [
            f"{case.name}: the rollout of {case.what} is not progressing.",
            "Rolling back to the previous revision restores the last pod template that "
            "ran, while the new revision is fixed.",
        ],
    )


def replicas_mismatch(case: Case) -> remediation_pb2.Analysis:
    """Scale or restart by what the pods and events show: no room for the missing
    replicas is answered by scaling to what runs, stuck pods by a restart, crashes and
    unpullable images of a fresh rollout by rolling it back."""
    refusal = needs_kind(case, "restart_deployment")
    if refusal is not None:
        return refusal
    evidence, subject = case.evidence, case.subject
    symptom = (
        f"{case.name}: {case.what} has had fewer available replicas than desired for 15 minutes."
    )
    if evidence is None:
        return remediate(
            remediation_pb2.ActionParams(
                restart_deployment=remediation_pb2.RestartDeploymentParams()
            ),
            subject,
            _CONFIDENCE_REPLICAS_BLIND,
            [
                symptom,
                "No evidence about its pods could be read; a rolling restart replaces pods "
                "stuck in a bad state.",
                "Confidence is low: a lack of capacity or quota causes the same alert, and a "
                "restart does not fix that.",
            ],
        )

    room = no_room(evidence)
    if room:
        running = evidence.rollout.available_replicas
        desired = evidence.rollout.desired_replicas
        if running < 1:
            return no_action(
                f"{symptom} The cluster has no room for its pods ({room}) and none "
                "runs; scaling down would not help, so capacity must be added by a person."
            )
        return remediate(
            remediation_pb2.ActionParams(
                scale_deployment=remediation_pb2.ScaleDeploymentParams(replicas=running)
            ),
            subject,
            _CONFIDENCE_SCALE_TO_FIT,
            [
                symptom,
                f"The missing replicas cannot be placed: {room}.",
                f"Scaling from {desired} to the {running} replica(s) that run keeps the "
                "serving capacity, frees the pending pods' reservations and lets rollouts "
                "progress; restore the count once capacity is added.",
                "A restart was not chosen: new pods would meet the same lack of room.",
            ],
        )

    return diagnose_pods(
        case,
        symptom,
        evidence,
        "Its pods show no cause Kubernaut can fix (no pending, stuck or crashing pod), so "
        "nothing is done automatically.",
    )


def diagnose_pods(
    case: Case, symptom: str, evidence: context_api_pb2.ResourceContext, no_cause: str
) -> remediation_pb2.Analysis:
    """A Deployment's pods, where the cluster has room for them: images or config that
    cannot start (roll back a fresh rollout), a crash loop, or pods that run but stay
    unready (restart); else `no_cause`."""
    waiting = {pod.waiting_reason for pod in evidence.pods if pod.waiting_reason}
    if waiting & CANNOT_START:
        return cannot_start(case, symptom, ", ".join(sorted(waiting & CANNOT_START)))
    if "CrashLoopBackOff" in waiting:
        return crash_looping(case, f"{symptom} Its pods are in CrashLoopBackOff.")
    stuck = [pod.name for pod in evidence.pods if pod.phase == "Running" and not pod.ready]
    if stuck:
        return remediate(
            remediation_pb2.ActionParams(
                restart_deployment=remediation_pb2.RestartDeploymentParams()
            ),
            case.subject,
            _CONFIDENCE_RESTART_STUCK,
            [
                symptom,
                f"{len(stuck)} pod(s) run but are not Ready ({', '.join(stuck[:5])}), with "
                "room in the cluster for them.",
                "A rolling restart replaces pods stuck in a bad state.",
            ],
        )
    return no_action(f"{symptom} {no_cause}")


def no_room(evidence: context_api_pb2.ResourceContext) -> str:
    """Why the cluster cannot run the missing replicas (the scheduler's or the quota's
    words), or "" when nothing says so."""
    for pod in evidence.pods:
        if pod.phase == "Pending" and pod.unschedulable:
            return f"pod {pod.name} is unschedulable: {pod.unschedulable}"
    for event in evidence.events:
        if event.reason == "FailedCreate" and "exceeded quota" in event.message:
            return f"{event.object} cannot create pods: {event.message}"
    return ""


def oom(case: Case) -> remediation_pb2.Analysis:
    refusal = needs_kind(case, "increase_memory_limit")
    if refusal is not None:
        return refusal
    container, bad = container_label(case)
    if bad is not None:
        return bad
    settings = case.settings
    which = f"container {container!r}" if container else "the only container"
    return remediate(
        remediation_pb2.ActionParams(
            increase_memory_limit=remediation_pb2.IncreaseMemoryLimitParams(
                container=container,
                factor=settings.memory_factor,
                max_limit=settings.memory_cap,
            )
        ),
        case.subject,
        _CONFIDENCE_OOM,
        [
            f"{case.name}: {which} of {describe(case.subject)} was OOM-killed.",
            f"Raising its memory limit x{settings.memory_factor:g}, capped at "
            f"{settings.memory_cap}, gives the working set room.",
            "A memory leak would be killed again; verification watches for a repeat kill.",
        ],
    )


__all__ = [
    "CANNOT_START",
    "cannot_start",
    "crash_looping",
    "no_room",
    "oom",
    "oom_seen",
    "replicas_mismatch",
    "rollout_stuck",
]
