"""Metrics in an assessment: what the workload's signals (kubernaut.services.signals) say
about an action lowers its verdict, never raises it (README: Judging a fix)."""

from __future__ import annotations

from kubernaut.common.v1 import remediation_pb2

from kubernaut.services.effectiveness.assessment import Judgement
from kubernaut.services.signals import MetricEvidence


def weigh_metrics(
    judgement: Judgement, metrics: MetricEvidence, *, final: bool, required: bool
) -> Judgement:
    """The verdict of pods and alert (`assessment.judge`), with what the metrics say: they
    only ever lower it. A signal that got worse, or the alert's own condition still holding
    for the target, makes the final checkpoint INEFFECTIVE and an earlier one at best
    UNKNOWN (not settled yet). When Prometheus is configured (`required`), EFFECTIVE also
    needs a metric with data: none (Prometheus down, no series for the target) is UNKNOWN,
    as no evidence always is. Without Prometheus the metrics are only noted as missing."""
    V = remediation_pb2
    problems = [f"the {s.name} signal got worse" for s in metrics.worse]
    alert = metrics.signal("alert")
    if alert is not None and alert.good_after is False:
        problems.append("the alert's own expression still holds for the target")
    verdict, reason = judgement.verdict, judgement.reason
    if problems and verdict != V.VERDICT_INEFFECTIVE:
        said = "; ".join(problems)
        if final:
            verdict, reason = V.VERDICT_INEFFECTIVE, f"{said} at the final checkpoint"
        elif verdict == V.VERDICT_EFFECTIVE:
            verdict, reason = V.VERDICT_UNKNOWN, f"{said}; not settled yet"
    elif verdict == V.VERDICT_EFFECTIVE and required and metrics.score is None:
        verdict = V.VERDICT_UNKNOWN
        reason = f"{reason}, but no metric had data: not judged on pods and alert alone"
    facts = judgement.evidence[1:] if judgement.evidence else ()
    return Judgement(verdict, reason, (reason, *facts, *metrics.facts))
