"""Staged assessments of one action, as plain functions: the evidence from the target's pods
and from AlertManager, and the verdict it supports. No gRPC, no database here.

The rules (DESIGN.md: "an assessment with no samples is unknown, never effective"):

- the pods are unhealthy (a desired replica not Ready or not available, a pod with more
  restarts than at schedule time, a pod in CrashLoopBackOff) -> INEFFECTIVE;
- the alert is still active at the final checkpoint -> INEFFECTIVE;
- the alert is still active at an earlier checkpoint -> UNKNOWN ("the alert has not
  resolved yet"): alerts resolve some time after their cause, by their rule's `for:`;
- the pods are healthy and the alert is not active -> EFFECTIVE;
- anything else (some evidence is missing and none is negative) -> UNKNOWN.

So EFFECTIVE needs both kinds of evidence, and both good. Evidence that could not be had
(no cluster, AlertManager not configured or unreachable) is missing, never assumed good.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.services.signals import SUBJECT_LABELS, WORKLOAD_LABELS, describe_ref

# The storage record's limits (kubernaut.storage.v1.Assessment.evidence).
MAX_EVIDENCE_LINES: Final = 64
MAX_EVIDENCE_CHARS: Final = 1024
# Pods named one by one in the evidence; the rest are counted.
MAX_PODS_NAMED: Final = 10

CRASH_LOOP: Final = "CrashLoopBackOff"

# The namespace of assessment ids: uuid5(this, "<action_id>@<delay in µs>us").
ASSESSMENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://kubernaut.ai/assessments")


def assessment_id(action_id: str, delay: dt.timedelta) -> str:
    """The assessment id of one checkpoint: the same for the same action and delay, so a
    re-record after a crash is the same record (RecordAssessment is idempotent by it)."""
    micros = delay // dt.timedelta(microseconds=1)
    return str(uuid.uuid5(ASSESSMENT_NAMESPACE, f"{uuid.UUID(action_id)}@{micros}us"))


def format_delay(delay: dt.timedelta) -> str:
    """30s, 2m, 1h30m, 1.5s: as an operator writes it."""
    total = delay.total_seconds()
    if total < 60 and total != int(total):
        return f"{total:g}s"
    seconds = int(total)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


# -- evidence ---------------------------------------------------------------------------------


class PodHealth(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    MISSING = "missing"


class AlertState(enum.Enum):
    # No alert like the one the action answered is active.
    RESOLVED = "resolved"
    ACTIVE = "active"
    MISSING = "missing"


@dataclass(frozen=True)
class PodEvidence:
    health: PodHealth
    # One fact a line, for the record.
    facts: tuple[str, ...]

    @classmethod
    def missing(cls, reason: str) -> PodEvidence:
        return cls(PodHealth.MISSING, (f"pods: no evidence: {reason}",))


@dataclass(frozen=True)
class AlertEvidence:
    state: AlertState
    facts: tuple[str, ...]

    @classmethod
    def missing(cls, reason: str) -> AlertEvidence:
        return cls(AlertState.MISSING, (f"alert: no evidence: {reason}",))


@dataclass(frozen=True)
class Baseline:
    """The workload's pods and their restart counts when the assessment was scheduled.
    `restarts` None: it could not be taken (`note` says why)."""

    restarts: Mapping[str, int] | None
    note: str = ""


def _named(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_PODS_NAMED])
    more = len(items) - MAX_PODS_NAMED
    return f"{shown} and {more} more" if more > 0 else shown


def pod_evidence(context: context_api_pb2.ResourceContext, baseline: Baseline) -> PodEvidence:
    """What the workload's pods say, as context_api saw them.

    Unhealthy: fewer Ready or available replicas than desired; a pod not Ready (pods that
    completed, phase Succeeded, are fine); a pod waiting in CrashLoopBackOff; a pod with
    more restarts than at schedule time (a pod that is new since then counts from 0).
    Missing: the workload has no pods and desires none (nothing to look at)."""
    pods = list(context.pods)
    workload = describe_ref(context.workload if context.HasField("workload") else context.resource)
    desired = context.rollout.desired_replicas if context.HasField("rollout") else None
    if not pods and not desired:
        return PodEvidence.missing(f"{workload} has no pods to look at")
    problems: list[str] = []
    facts: list[str] = []
    if desired:
        ready, available = context.rollout.ready_replicas, context.rollout.available_replicas
        line = f"{ready} of {desired} desired replicas Ready, {available} available"
        if ready < desired or available < desired:
            problems.append(f"pods: {workload}: only {line}")
        else:
            facts.append(f"pods: {workload}: {line}")
    crash_looping = [p.name for p in pods if p.waiting_reason == CRASH_LOOP]
    if crash_looping:
        problems.append(f"pods: in {CRASH_LOOP}: {_named(crash_looping)}")
    not_ready = [
        f"{p.name} ({p.phase or 'no phase'}{f', {p.waiting_reason}' if p.waiting_reason else ''})"
        for p in pods
        if not p.ready and p.phase != "Succeeded" and p.waiting_reason != CRASH_LOOP
    ]
    if not_ready:
        problems.append(f"pods: not Ready: {_named(not_ready)}")
    if baseline.restarts is None:
        facts.append(f"pods: restarts not compared: {baseline.note or 'no baseline was taken'}")
    else:
        restarted = []
        for pod in pods:
            before = baseline.restarts.get(pod.name, 0)  # a new pod counts from 0
            if pod.restarts > before:
                restarted.append(f"{pod.name} (+{pod.restarts - before}, {pod.restarts} now)")
        if restarted:
            problems.append(f"pods: restarted since the action: {_named(restarted)}")
        else:
            new = sum(1 for p in pods if p.name not in baseline.restarts)
            facts.append(
                f"pods: no new restarts in {len(pods)} pod(s)"
                + (f" ({new} new since the action)" if new else "")
            )
    if problems:
        return PodEvidence(PodHealth.UNHEALTHY, tuple(problems + facts))
    ready_pods = sum(1 for p in pods if p.ready)
    facts.insert(
        0, f"pods: {ready_pods} of {len(pods)} pod(s) of {workload} Ready, none crash-looping"
    )
    return PodEvidence(PodHealth.HEALTHY, tuple(facts))


@dataclass(frozen=True)
class ActiveAlert:
    """One alert AlertManager holds (API v2 /alerts)."""

    labels: Mapping[str, str]
    # "active", "suppressed" (silenced or inhibited) or "unprocessed": all still firing.
    state: str
    starts_at: str = ""
    # Empty, or when AlertManager will consider it resolved if not re-sent.
    ends_at: str = ""


def alert_matches(
    candidate: Mapping[str, str],
    alert: alert_pb2.Alert,
    target: alert_pb2.ResourceRef,
    pod_names: Iterable[str] = (),
) -> bool:
    """Whether an alert AlertManager holds is the alert the action answered, still firing:
    the same alertname, the target's namespace (and the alert's cluster label, if it had
    one), and the same subject: the same subject labels as the original alert, or labels
    naming the target workload, or one of the workload's pods (now or at schedule time)."""
    labels = alert.labels
    if candidate.get("alertname") != alert.name:
        return False
    if target.namespace and candidate.get("namespace") != target.namespace:
        return False
    if labels.get("cluster") and candidate.get("cluster") != labels["cluster"]:
        return False
    subject = {key: labels[key] for key in SUBJECT_LABELS if labels.get(key)}
    if not subject:
        return True  # the alert names no object: its name (and namespace) is all there is
    if all(candidate.get(key) == value for key, value in subject.items()):
        return True
    workload_label = WORKLOAD_LABELS.get(target.kind)
    if workload_label and candidate.get(workload_label) == target.name:
        return True
    pod = candidate.get("pod")
    return bool(pod) and pod in set(pod_names)


def alert_evidence(
    held: Sequence[ActiveAlert],
    alert: alert_pb2.Alert,
    target: alert_pb2.ResourceRef,
    pod_names: Iterable[str],
    source: str = "AlertManager",
) -> AlertEvidence:
    """Whether `source` (which answered with `held`) still has the alert the action answered."""
    names = set(pod_names)
    firing = [
        a for a in held if a.state != "resolved" and alert_matches(a.labels, alert, target, names)
    ]
    if not firing:
        return AlertEvidence(
            AlertState.RESOLVED,
            (f"alert: {source} has no active {alert.name} alert for {describe_ref(target)}",),
        )
    facts = []
    for entry in firing[:MAX_PODS_NAMED]:
        subject = ", ".join(
            f"{key}={entry.labels[key]}" for key in SUBJECT_LABELS if entry.labels.get(key)
        )
        state = "" if entry.state == "active" else f" ({entry.state})"
        since = f" since {entry.starts_at}" if entry.starts_at else ""
        facts.append(
            f"alert: {source} still has {alert.name} active{state}"
            f"{f' for {subject}' if subject else ''}{since}"
        )
    if len(firing) > MAX_PODS_NAMED:
        facts.append(f"alert: and {len(firing) - MAX_PODS_NAMED} more like it")
    return AlertEvidence(AlertState.ACTIVE, tuple(facts))


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    verdict: remediation_pb2.Verdict.ValueType
    # Why, in one line; the first line of the evidence.
    reason: str
    evidence: tuple[str, ...]


def judge(pods: PodEvidence, alert: AlertEvidence, *, final: bool) -> Judgement:
    """The verdict the evidence supports (see the module's docstring for the rules)."""
    V = remediation_pb2
    if pods.health is PodHealth.UNHEALTHY:
        verdict, reason = V.VERDICT_INEFFECTIVE, "the pods are not healthy after the action"
    elif alert.state is AlertState.ACTIVE and final:
        verdict = V.VERDICT_INEFFECTIVE
        reason = "the alert is still active at the final checkpoint"
        if pods.health is PodHealth.HEALTHY:
            reason += ", although the pods recovered"
    elif alert.state is AlertState.ACTIVE:
        verdict = V.VERDICT_UNKNOWN
        reason = (
            "pods recovered; the alert has not resolved yet"
            if pods.health is PodHealth.HEALTHY
            else "the alert has not resolved yet, and there is no pod evidence"
        )
    elif pods.health is PodHealth.HEALTHY and alert.state is AlertState.RESOLVED:
        verdict, reason = V.VERDICT_EFFECTIVE, "pods are healthy and the alert resolved"
    elif pods.health is PodHealth.HEALTHY:
        verdict = V.VERDICT_UNKNOWN
        reason = "pods recovered, but whether the alert resolved is not known"
    elif alert.state is AlertState.RESOLVED:
        verdict = V.VERDICT_UNKNOWN
        reason = "the alert is not active, but there is no pod evidence"
    else:
        verdict, reason = (
            V.VERDICT_UNKNOWN,
            "no evidence: neither pods nor the alert could be checked",
        )
    return Judgement(verdict, reason, (reason, *pods.facts, *alert.facts))


def evidence_lines(lines: Iterable[str]) -> list[str]:
    """`lines` within the storage record's limits: at most 64 lines of at most 1024
    characters, without NUL characters (PostgreSQL text cannot hold them)."""
    out = []
    for line in lines:
        text = line.replace("\x00", "")
        if len(text) > MAX_EVIDENCE_CHARS:
            text = text[: MAX_EVIDENCE_CHARS - 1] + "…"
        out.append(text)
    if len(out) > MAX_EVIDENCE_LINES:
        dropped = len(out) - (MAX_EVIDENCE_LINES - 1)
        out = [*out[: MAX_EVIDENCE_LINES - 1], f"… and {dropped} more line(s)"]
    return out
