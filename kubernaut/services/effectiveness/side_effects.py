"""Side effects: alerts that started after an action, within its reach, attributed to it
with a confidence (README: Judging a fix).

    high    an alert about the target itself or one of its pods (other than the alert the
            action answered); a Warning event since the action on a pod the action made
            (one that was not there when the assessment was scheduled) or on the workload
            or its ReplicaSets
    medium  an alert about something else in the target's namespace; more neighbour pods
            not Ready behind the target's Services or on its nodes than before the action
            (kube-state-metrics in Prometheus)
    low     an alert about one of the nodes the target's pods run on

An alert that started before the action is not the action's doing. A side effect keeps an
action from being judged effective; a high or medium one at the final checkpoint makes it
ineffective.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.services.effectiveness.assessment import (
    MAX_PODS_NAMED,
    ActiveAlert,
    Baseline,
    Judgement,
    alert_matches,
)
from kubernaut.services.signals import SUBJECT_LABELS, WORKLOAD_LABELS, NeighbourChange

# An alert that started this soon after the action is still counted as after it: the
# action's own clock and AlertManager's are not the same clock.
CLOCK_SKEW: Final = dt.timedelta(seconds=1)


class Confidence(enum.Enum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True)
class SideEffect:
    confidence: Confidence
    what: str

    @property
    def line(self) -> str:
        return f"side effect ({self.confidence.value}): {self.what}"


@dataclass(frozen=True)
class SideEffectEvidence:
    effects: tuple[SideEffect, ...]
    # Where was looked ("alerts in namespace shop and on nodes n1, n2 since the action").
    looked: str = ""
    # Why nothing could be looked at ("" when something was).
    missing: str = ""

    @classmethod
    def none(cls, reason: str) -> SideEffectEvidence:
        return cls((), missing=reason)

    @property
    def serious(self) -> bool:
        return any(e.confidence is not Confidence.LOW for e in self.effects)

    @property
    def facts(self) -> tuple[str, ...]:
        if self.missing:
            return (f"side effects: not looked for: {self.missing}",)
        if not self.effects:
            return (f"side effects: none ({self.looked})",)
        lines = [e.line for e in self.effects[:MAX_PODS_NAMED]]
        if len(self.effects) > MAX_PODS_NAMED:
            lines.append(f"side effects: and {len(self.effects) - MAX_PODS_NAMED} more")
        return tuple(lines)


def _started(alert: ActiveAlert) -> dt.datetime | None:
    try:
        started = dt.datetime.fromisoformat(alert.starts_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return started if started.tzinfo is not None else None


def _subject(labels: Mapping[str, str]) -> str:
    named = [f"{key}={labels[key]}" for key in SUBJECT_LABELS if labels.get(key)]
    return ", ".join(named) or "no object named"


def alert_side_effects(
    held: Sequence[ActiveAlert],
    answered: alert_pb2.Alert,
    target: alert_pb2.ResourceRef,
    pod_names: Iterable[str],
    nodes: Iterable[str],
    acted_at: dt.datetime,
) -> tuple[SideEffect, ...]:
    """The alerts of `held` that started after the action and are within its reach."""
    pods, on_nodes = set(pod_names), set(nodes)
    workload_label = WORKLOAD_LABELS.get(target.kind)
    effects = []
    seen = set()
    for alert in held:
        labels = dict(alert.labels)
        started = _started(alert)
        if alert.state == "resolved" or started is None or started < acted_at - CLOCK_SKEW:
            continue
        if alert_matches(labels, answered, target, pods):
            continue  # the alert the action answered, still firing: judged as such
        key = tuple(sorted(labels.items()))
        if key in seen:
            continue
        seen.add(key)
        name = labels.get("alertname", "an alert")
        when = f"started {alert.starts_at}, after the action"
        if target.namespace and labels.get("namespace") == target.namespace:
            mine = (workload_label and labels.get(workload_label) == target.name) or (
                labels.get("pod") in pods
            )
            confidence = Confidence.HIGH if mine else Confidence.MEDIUM
            where = "the target" if mine else f"namespace {target.namespace}"
            effects.append(
                SideEffect(confidence, f"{name} on {where} ({_subject(labels)}), {when}")
            )
        elif labels.get("node") in on_nodes:
            effects.append(
                SideEffect(
                    Confidence.LOW,
                    f"{name} on node {labels['node']}, where the target's pods run, {when}",
                )
            )
    return by_confidence(effects)


def by_confidence(effects: Iterable[SideEffect]) -> tuple[SideEffect, ...]:
    """High first, then medium, then low; in their order within each."""
    order = {Confidence.HIGH: 0, Confidence.MEDIUM: 1, Confidence.LOW: 2}
    return tuple(sorted(effects, key=lambda e: order[e.confidence]))


def event_side_effects(
    context: context_api_pb2.ResourceContext, baseline: Baseline, acted_at: dt.datetime
) -> tuple[SideEffect, ...]:
    """Warning events seen since the action on what the action made: a pod that is new
    since the schedule (without a baseline no pod is known to be new), the workload, or
    its ReplicaSets. Events of pods that were there before are the problem the action
    answered, judged by the pods' own evidence."""
    before = set(baseline.restarts or {}) if baseline.restarts is not None else None
    current = {pod.name for pod in context.pods}
    workload = context.workload.name
    effects = []
    for event in context.events:
        if event.type != "Warning" or not event.HasField("last_seen"):
            continue
        if event.last_seen.ToDatetime(dt.UTC) < acted_at - CLOCK_SKEW:
            continue
        kind, _, name = event.object.partition("/")
        if kind == "Pod":
            new_pod = before is not None and name in current and name not in before
            if not new_pod:
                continue
        elif not (name == workload or (kind == "ReplicaSet" and name.startswith(f"{workload}-"))):
            continue
        message = event.message if len(event.message) <= 200 else event.message[:200] + "…"
        effects.append(
            SideEffect(
                Confidence.HIGH,
                f"Warning {event.reason} on {event.object} since the action (x{event.count}):"
                f" {message}",
            )
        )
    return tuple(effects)


def neighbour_side_effects(changes: Sequence[NeighbourChange]) -> tuple[SideEffect, ...]:
    """Neighbours that went unready since the action: more pods not Ready, other than the
    target's, behind one of its Services or on one of its nodes than just before it."""
    effects = []
    for change in changes:
        if change.now <= change.before:
            continue
        where = "behind" if change.scope.startswith("Service") else "on"
        effects.append(
            SideEffect(
                Confidence.MEDIUM,
                f"{change.now - change.before} more neighbour pod(s) not Ready {where}"
                f" {change.scope} than before the action ({change.before} then, {change.now}"
                f" now: {', '.join(change.pods)})",
            )
        )
    return tuple(effects)


def weigh_side_effects(
    judgement: Judgement, side_effects: SideEffectEvidence, *, final: bool
) -> Judgement:
    """Side effects only ever lower a verdict: never EFFECTIVE with one, and INEFFECTIVE at
    the final checkpoint with a high or medium one."""
    V = remediation_pb2
    verdict, reason = judgement.verdict, judgement.reason
    if side_effects.effects and verdict != V.VERDICT_INEFFECTIVE:
        first = side_effects.effects[0]
        said = f"a side effect followed the action ({first.confidence.value}: {first.what})"
        if final and side_effects.serious:
            verdict, reason = V.VERDICT_INEFFECTIVE, said
        elif verdict == V.VERDICT_EFFECTIVE:
            verdict, reason = V.VERDICT_UNKNOWN, f"{said}; not judged effective"
    facts = judgement.evidence[1:] if judgement.evidence else ()
    return Judgement(verdict, reason, (reason, *facts, *side_effects.facts))
