"""The rule-based analyzer: decides when no LLM is configured (or none answers).

It maps a handful of well-understood alerts to one catalogue action each. Alert labels and
annotations are data, never instructions: annotations are not read at all, and only the
`reason` and `container` labels are read, each by an explicit rule below.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import protovalidate
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.services.ai_analysis.history import (
    HistorySettings,
    HistoryUnavailable,
    weigh_history,
)

__all__ = ["ANALYZER", "RulesSettings", "analyze"]

ANALYZER = "rules"

_DEPLOYMENT = "Deployment"
_POD = "Pod"

# Mirrors IncreaseMemoryLimitParams' validation, so bad settings fail at start-up, not on
# the first OOM alert.
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MAX_FACTOR = 4.0
_MAX_QUANTITY_LEN = 32
# A container name is a DNS-1123 label; anything else in the label is not acted on.
_CONTAINER = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_CONTAINER_LEN = 63
# Waiting reasons a restart cannot clear: the pod template itself is wrong.
_CANNOT_START = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
)

_CONFIDENCE_CRASHLOOP = 0.6
_CONFIDENCE_OOM = 0.7
_CONFIDENCE_REPLICAS_BLIND = 0.5
_CONFIDENCE_RESTART_STUCK = 0.6
_CONFIDENCE_SCALE_TO_FIT = 0.55
_CONFIDENCE_ROLLOUT = 0.7
_CONFIDENCE_ROLLBACK = 0.8


@dataclass(frozen=True)
class RulesSettings:
    """How the rules size a memory increase and what counts as a recent rollout."""

    # The new limit is the old one times this factor (1 < factor <= 4).
    memory_factor: float = 1.5
    # The limit never goes above this quantity (Kubernetes notation).
    memory_cap: str = "4Gi"
    # A revision created this long before the alert started, or later, is "recent": the
    # crashes probably followed it.
    recent_rollout_seconds: float = 3600.0
    # How the past weighs on a decision.
    history: HistorySettings = field(default_factory=HistorySettings)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.memory_factor) and 1.0 < self.memory_factor <= _MAX_FACTOR):
            raise ValueError(
                f"memory_factor must be above 1 and at most {_MAX_FACTOR}, "
                f"got {self.memory_factor!r}"
            )
        if len(self.memory_cap) > _MAX_QUANTITY_LEN or not _QUANTITY.fullmatch(self.memory_cap):
            raise ValueError(
                f"memory_cap must be a Kubernetes quantity such as '4Gi', got {self.memory_cap!r}"
            )


def analyze(
    alert: alert_pb2.Alert,
    subject: alert_pb2.ResourceRef,
    knowledge: context_api_pb2.AlertKnowledge | None,
    settings: RulesSettings,
    evidence: context_api_pb2.ResourceContext | None = None,
    history: context_api_pb2.IncidentHistory | HistoryUnavailable | None = None,
) -> remediation_pb2.Analysis:
    """Decide what to do about one firing alert whose subject is `subject`, using what the
    context API saw of the workload (`evidence`) when there is any, and weighing the
    decision against the incident's `history` when it was asked for (None: not asked).

    Raises ValueError for an alert that is not firing (a resolved alert never triggers an
    action, so callers must not send one) and for a recommendation that would fail
    validation (only possible with a malformed subject).
    """
    if alert.status == alert_pb2.ALERT_STATUS_RESOLVED:
        raise ValueError("resolved alerts are not analysed; callers must not send them")
    if alert.status != alert_pb2.ALERT_STATUS_FIRING:
        # An unknown status is no evidence of a live problem, so never act on one.
        raise ValueError(f"alert status must be FIRING, got {alert.status}")

    analysis = _decide(alert, subject, settings, evidence)
    if history is not None:
        weigh_history(analysis, history, settings.history)
    analysis.analyzer = ANALYZER
    # Only a runbook for this very alert; a mismatched entry would mislead the operator.
    if knowledge is not None and knowledge.alert_name == alert.name:
        analysis.runbook_url = knowledge.runbook_url
    if analysis.HasField("recommendation"):
        # Never hand on an action the executor would refuse: fail here, loudly.
        protovalidate.validate(analysis.recommendation)
    return analysis


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


def _oom_seen(evidence: context_api_pb2.ResourceContext | None) -> bool:
    return evidence is not None and any(
        pod.last_terminated_reason == "OOMKilled" for pod in evidence.pods
    )


def _decide(
    alert: alert_pb2.Alert,
    subject: alert_pb2.ResourceRef,
    settings: RulesSettings,
    evidence: context_api_pb2.ResourceContext | None,
) -> remediation_pb2.Analysis:
    name = alert.name
    reason = alert.labels.get("reason", "")
    what = _describe(subject)

    # OOM first: a known cause beats the symptom-level rules below.
    if name == "KubeContainerOOMKilled" or reason == "OOMKilled" or _oom_seen(evidence):
        return _oom(alert, subject, settings)

    if name == "KubePodCrashLooping" or (
        name == "KubeContainerWaiting" and reason == "CrashLoopBackOff"
    ):
        refusal = _needs_deployment(name, subject, "restart_deployment")
        if refusal is not None:
            return refusal
        return _crash_looping(alert, subject, settings, evidence)

    if name == "KubeDeploymentReplicasMismatch":
        refusal = _needs_deployment(name, subject, "restart_deployment")
        if refusal is not None:
            return refusal
        return _replicas_mismatch(alert, subject, settings, evidence)

    if name == "KubeDeploymentRolloutStuck":
        refusal = _needs_deployment(name, subject, "rollback_deployment")
        if refusal is not None:
            return refusal
        return _remediate(
            remediation_pb2.ActionParams(
                rollback_deployment=remediation_pb2.RollbackDeploymentParams(to_revision=0)
            ),
            subject,
            _CONFIDENCE_ROLLOUT,
            [
                f"{name}: the rollout of {what} is not progressing.",
                "Rolling back to the previous revision restores the last pod template that "
                "ran, while the new revision is fixed.",
            ],
        )

    return _no_action(f"No rule handles alert {name!r}; nothing is done automatically.")


def _crash_looping(
    alert: alert_pb2.Alert,
    subject: alert_pb2.ResourceRef,
    settings: RulesSettings,
    evidence: context_api_pb2.ResourceContext | None,
    symptom: str = "",
) -> remediation_pb2.Analysis:
    """Roll back a recent rollout the crashes followed; otherwise restart."""
    what = _describe(subject)
    symptom = symptom or f"{alert.name}: pods of {what} are in CrashLoopBackOff."
    rollout, why_not = _recent_rollout(alert, evidence, settings)
    if rollout is not None:
        return _roll_back(rollout, subject, symptom)
    return _remediate(
        remediation_pb2.ActionParams(restart_deployment=remediation_pb2.RestartDeploymentParams()),
        subject,
        _CONFIDENCE_CRASHLOOP,
        [
            symptom,
            "A rolling restart clears crashes caused by transient start-up failures "
            "at low risk; a crash that repeats deterministically will fail verification.",
            f"Rollback not chosen: {why_not}.",
        ],
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
    return _remediate(
        remediation_pb2.ActionParams(
            rollback_deployment=remediation_pb2.RollbackDeploymentParams(
                to_revision=previous.number
            )
        ),
        subject,
        _CONFIDENCE_ROLLBACK,
        reasons,
    )


def _replicas_mismatch(
    alert: alert_pb2.Alert,
    subject: alert_pb2.ResourceRef,
    settings: RulesSettings,
    evidence: context_api_pb2.ResourceContext | None,
) -> remediation_pb2.Analysis:
    """Scale or restart by what the pods and events show: no room for the missing
    replicas is answered by scaling to what runs, stuck pods by a restart, crashes and
    unpullable images of a fresh rollout by rolling it back."""
    name, what = alert.name, _describe(subject)
    symptom = f"{name}: {what} has had fewer available replicas than desired for 15 minutes."
    if evidence is None:
        return _remediate(
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

    no_room = _no_room(evidence)
    if no_room:
        running = evidence.rollout.available_replicas
        desired = evidence.rollout.desired_replicas
        if running < 1:
            return _no_action(
                f"{symptom} The cluster has no room for its pods ({no_room}) and none "
                "runs; scaling down would not help, so capacity must be added by a person."
            )
        return _remediate(
            remediation_pb2.ActionParams(
                scale_deployment=remediation_pb2.ScaleDeploymentParams(replicas=running)
            ),
            subject,
            _CONFIDENCE_SCALE_TO_FIT,
            [
                symptom,
                f"The missing replicas cannot be placed: {no_room}.",
                f"Scaling from {desired} to the {running} replica(s) that run keeps the "
                "serving capacity, frees the pending pods' reservations and lets rollouts "
                "progress; restore the count once capacity is added.",
                "A restart was not chosen: new pods would meet the same lack of room.",
            ],
        )

    waiting = {pod.waiting_reason for pod in evidence.pods if pod.waiting_reason}
    if waiting & _CANNOT_START:
        rollout, why_not = _recent_rollout(alert, evidence, settings)
        reasons = ", ".join(sorted(waiting & _CANNOT_START))
        if rollout is not None:
            return _roll_back(rollout, subject, f"{symptom} Its new pods cannot start: {reasons}.")
        return _no_action(
            f"{symptom} Its pods cannot start ({reasons}) and no recent rollout explains it; "
            "a restart would meet the same error, so nothing is done automatically. "
            f"Rollback not chosen: {why_not}."
        )
    if "CrashLoopBackOff" in waiting:
        return _crash_looping(
            alert, subject, settings, evidence, f"{symptom} Its pods are in CrashLoopBackOff."
        )

    stuck = [pod.name for pod in evidence.pods if pod.phase == "Running" and not pod.ready]
    if stuck:
        return _remediate(
            remediation_pb2.ActionParams(
                restart_deployment=remediation_pb2.RestartDeploymentParams()
            ),
            subject,
            _CONFIDENCE_RESTART_STUCK,
            [
                symptom,
                f"{len(stuck)} pod(s) run but are not Ready ({', '.join(stuck[:5])}), with "
                "room in the cluster for them.",
                "A rolling restart replaces pods stuck in a bad state.",
            ],
        )
    return _no_action(
        f"{symptom} Its pods show no cause Kubernaut can fix (no pending, stuck or "
        "crashing pod), so nothing is done automatically."
    )


def _no_room(evidence: context_api_pb2.ResourceContext) -> str:
    """Why the cluster cannot run the missing replicas (the scheduler's or the quota's
    words), or "" when nothing says so."""
    for pod in evidence.pods:
        if pod.phase == "Pending" and pod.unschedulable:
            return f"pod {pod.name} is unschedulable: {pod.unschedulable}"
    for event in evidence.events:
        if event.reason == "FailedCreate" and "exceeded quota" in event.message:
            return f"{event.object} cannot create pods: {event.message}"
    return ""


def _oom(
    alert: alert_pb2.Alert, subject: alert_pb2.ResourceRef, settings: RulesSettings
) -> remediation_pb2.Analysis:
    refusal = _needs_deployment(alert.name, subject, "increase_memory_limit")
    if refusal is not None:
        return refusal
    container = alert.labels.get("container", "")
    if container and (len(container) > _MAX_CONTAINER_LEN or not _CONTAINER.fullmatch(container)):
        # Not echoed: the value is untrusted and may be long or crafted.
        return _no_action(
            f"{alert.name}: the alert's container label is not a valid container name, so "
            "the container to change is unknown."
        )
    which = f"container {container!r}" if container else "the only container"
    return _remediate(
        remediation_pb2.ActionParams(
            increase_memory_limit=remediation_pb2.IncreaseMemoryLimitParams(
                container=container,
                factor=settings.memory_factor,
                max_limit=settings.memory_cap,
            )
        ),
        subject,
        _CONFIDENCE_OOM,
        [
            f"{alert.name}: {which} of {_describe(subject)} was OOM-killed.",
            f"Raising its memory limit x{settings.memory_factor:g}, capped at "
            f"{settings.memory_cap}, gives the working set room.",
            "A memory leak would be killed again; verification watches for a repeat kill.",
        ],
    )


def _needs_deployment(
    alert_name: str, subject: alert_pb2.ResourceRef, action: str
) -> remediation_pb2.Analysis | None:
    """NO_ACTION unless the subject is a Deployment, the only kind these actions act on."""
    if subject.kind == _DEPLOYMENT:
        return None
    if subject.kind == _POD:
        return _no_action(
            f"{alert_name}: the owning workload of {_describe(subject)} is not resolved; "
            f"{action} needs its Deployment, so nothing is done automatically."
        )
    return _no_action(
        f"{alert_name}: {action} acts only on Deployments and the subject is {_describe(subject)}."
    )


def _describe(subject: alert_pb2.ResourceRef) -> str:
    where = f"{subject.namespace}/{subject.name}" if subject.namespace else subject.name
    return f"{subject.kind} {where}"


def _remediate(
    action: remediation_pb2.ActionParams,
    subject: alert_pb2.ResourceRef,
    confidence: float,
    reasons: list[str],
) -> remediation_pb2.Analysis:
    target = alert_pb2.ResourceRef()
    target.CopyFrom(subject)  # a copy: the caller's message stays theirs
    return remediation_pb2.Analysis(
        decision=remediation_pb2.DECISION_REMEDIATE,
        recommendation=remediation_pb2.Recommendation(
            action=action, target=target, confidence=confidence, reasons=reasons
        ),
        reasons=reasons,
    )


def _no_action(reason: str) -> remediation_pb2.Analysis:
    return remediation_pb2.Analysis(decision=remediation_pb2.DECISION_NO_ACTION, reasons=[reason])
