"""Weighs an analysis against the past: how its action has worked for the alert (by the
lower bound of its success rate's 95% interval, not the mean: a few lucky attempts are no
record), whether this workload's alert keeps coming back after fixes, and how similar
past incidents went. History changes confidence, asks for a person and adds reasons; it
never picks a new action, since a rule's choice rests on evidence about this very
workload."""

from __future__ import annotations

from dataclasses import dataclass

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

__all__ = ["HistorySettings", "HistoryUnavailable", "weigh_history"]

_FAILED_OUTCOMES = {storage_pb2.ACTION_OUTCOME_FAILED, storage_pb2.ACTION_OUTCOME_ROLLED_BACK}


@dataclass(frozen=True)
class HistoryUnavailable:
    """The history was asked for and could not be read."""

    why: str


@dataclass(frozen=True)
class HistorySettings:
    """How much the past counts."""

    # Added to the confidence of an action judged effective for the alert, when the lower
    # bound of its success rate's 95% interval reaches `trusted_lower_bound`.
    effective_bonus: float = 0.1
    trusted_lower_bound: float = 0.5
    # Confidence never exceeds this, however good the record.
    max_confidence: float = 0.95
    # An action judged ineffective, or one that failed on this very workload before, gets
    # at most this confidence, so that the workflow asks a person before repeating it.
    doubtful_confidence: float = 0.3
    # Past incidents farther than this (cosine distance) are not mentioned.
    similar_max_distance: float = 0.35
    # At most this many similar incidents are named in the reasons.
    similar_shown: int = 3

    def __post_init__(self) -> None:
        for name in (
            "effective_bonus",
            "trusted_lower_bound",
            "max_confidence",
            "doubtful_confidence",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if not 0.0 <= self.similar_max_distance <= 2.0:
            raise ValueError("similar_max_distance is a cosine distance, between 0 and 2")
        if self.similar_shown < 0:
            raise ValueError("similar_shown must not be negative")


def weigh_history(
    analysis: remediation_pb2.Analysis,
    history: context_api_pb2.IncidentHistory | HistoryUnavailable,
    settings: HistorySettings,
) -> None:
    """Adjust `analysis` in place by what the past says."""
    if isinstance(history, HistoryUnavailable):
        _add_reason(analysis, f"History: not read ({history.why}); decided without it.")
        return
    if analysis.HasField("recommendation"):
        _weigh_action(analysis, history, settings)
    if history.HasField("recurrence"):
        _recurs(analysis, history.recurrence, settings)
    elif history.recurrence_unavailable_reason:
        _add_reason(
            analysis,
            f"History: whether this recurs is unknown ({history.recurrence_unavailable_reason}).",
        )
    if history.similar_unavailable_reason:
        _add_reason(
            analysis,
            f"History: similar incidents not searched ({history.similar_unavailable_reason}).",
        )
    for past in _similar(history, settings)[: settings.similar_shown]:
        _add_reason(analysis, _describe_past(past))


def _weigh_action(
    analysis: remediation_pb2.Analysis,
    history: context_api_pb2.IncidentHistory,
    settings: HistorySettings,
) -> None:
    recommendation = analysis.recommendation
    action = recommendation.action.WhichOneof("params") or ""
    record = next((e for e in history.action_effectiveness if e.action == action), None)
    if record is None:
        _add_reason(analysis, f"History: {action} has not been tried for {history.alert_name}.")
    elif (
        record.verdict == remediation_pb2.VERDICT_EFFECTIVE
        and record.success_lower_bound < settings.trusted_lower_bound
    ):
        _add_reason(
            analysis,
            f"History: {action} looks effective for {history.alert_name}, but the record is "
            f"thin ({record.reason}: the lower bound is under "
            f"{settings.trusted_lower_bound:.0%}); confidence unchanged.",
        )
    elif record.verdict == remediation_pb2.VERDICT_EFFECTIVE:
        confidence = recommendation.confidence
        raised = max(
            confidence, min(settings.max_confidence, confidence + settings.effective_bonus)
        )
        _add_reason(
            analysis,
            f"History: {action} worked for {history.alert_name} ({record.reason}); "
            f"confidence {confidence:.2f} -> {raised:.2f}.",
        )
        recommendation.confidence = raised
    elif record.verdict == remediation_pb2.VERDICT_INEFFECTIVE:
        _doubt(
            analysis,
            f"History: {action} has not worked for {history.alert_name} ({record.reason})",
            settings,
        )
    else:
        _add_reason(
            analysis,
            f"History: too little to judge {action} for {history.alert_name} ({record.reason}).",
        )

    target = recommendation.target
    for past in history.similar_incidents:
        failed = [
            a
            for a in past.actions
            if a.action == action
            and (a.outcome in _FAILED_OUTCOMES or a.verdict == remediation_pb2.VERDICT_INEFFECTIVE)
        ]
        if failed and _same_object(past.subject, target):
            _doubt(
                analysis,
                f"History: {action} did not fix the same workload in incident "
                f"{past.incident_id} ({_how_it_ended(failed[-1])})",
                settings,
            )
            break


def _recurs(
    analysis: remediation_pb2.Analysis,
    recurrence: intelligence_pb2.RecurringIncident,
    settings: HistorySettings,
) -> None:
    """The workload's alert keeps coming back after fixes that were verified: doing the
    same again treats the symptom. A person decides (the workflow waits for approval)."""
    subject = recurrence.subject
    where = f"{subject.namespace}/{subject.name}" if subject.namespace else subject.name
    tried = ", ".join(recurrence.actions_tried) or "no action"
    since = recurrence.first_seen.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")
    why = (
        f"the fix does not hold: {recurrence.incidents} incidents of {recurrence.alert_name} "
        f"on {subject.kind} {where} since {since}, {recurrence.fixes_not_held} of them after "
        f"a fix that was verified ({tried})"
    )
    if not analysis.HasField("recommendation"):
        _add_reason(analysis, f"History: {why}.")
        return
    _doubt(analysis, f"History: {why}; a person should look for the cause", settings)
    recommendation = analysis.recommendation
    recommendation.approval_required = True
    if not recommendation.approval_reason:
        recommendation.approval_reason = why[:1024]


def _doubt(analysis: remediation_pb2.Analysis, why: str, settings: HistorySettings) -> None:
    recommendation = analysis.recommendation
    confidence = recommendation.confidence
    lowered = min(confidence, settings.doubtful_confidence)
    _add_reason(analysis, f"{why}; confidence {confidence:.2f} -> {lowered:.2f}.")
    recommendation.confidence = lowered


def _similar(
    history: context_api_pb2.IncidentHistory, settings: HistorySettings
) -> list[context_api_pb2.PastIncident]:
    return [p for p in history.similar_incidents if p.distance <= settings.similar_max_distance]


def _same_object(a: alert_pb2.ResourceRef, b: alert_pb2.ResourceRef) -> bool:
    return (a.cluster, a.namespace, a.kind, a.name) == (b.cluster, b.namespace, b.kind, b.name)


def _how_it_ended(action: context_api_pb2.PastAction) -> str:
    outcome = storage_pb2.ActionOutcome.Name(action.outcome).removeprefix("ACTION_OUTCOME_")
    verdict = remediation_pb2.Verdict.Name(action.verdict).removeprefix("VERDICT_")
    return f"{action.action} {outcome.lower()}, verdict {verdict.lower()}"


def _describe_past(past: context_api_pb2.PastIncident) -> str:
    subject = past.subject
    where = f"{subject.namespace}/{subject.name}" if subject.namespace else subject.name
    status = storage_pb2.IncidentStatus.Name(past.status).removeprefix("INCIDENT_STATUS_")
    done = "; ".join(_how_it_ended(a) for a in past.actions) or "no action"
    return (
        f"Similar past incident {past.incident_id} ({past.alert_name} on {subject.kind} "
        f"{where}, distance {past.distance:.2f}): {status.lower()}, {done}."
    )


def _add_reason(analysis: remediation_pb2.Analysis, reason: str) -> None:
    """Both reason lists carry history: the analysis' for people, the recommendation's for
    the workflow and the audit trail."""
    analysis.reasons.append(reason)
    if analysis.HasField("recommendation"):
        analysis.recommendation.reasons.append(reason)
