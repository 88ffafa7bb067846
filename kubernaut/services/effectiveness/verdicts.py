"""Verdicts on actions from their outcome statistics and the uncertainty of the success
rate (its 95% Wilson interval, from intelligence): a few lucky attempts are not a record.
No evidence is never "effective"."""

from __future__ import annotations

from kubernaut.common.v1 import remediation_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.intelligence.v1 import intelligence_pb2

from kubernaut.services.effectiveness.settings import VerdictSettings


def verdict_of(
    stats: intelligence_pb2.ActionStats, settings: VerdictSettings
) -> effectiveness_pb2.ActionEffectiveness:
    if stats.attempts < settings.min_attempts:
        verdict = remediation_pb2.VERDICT_UNKNOWN
        reason = (
            f"{stats.attempts} attempt(s); at least {settings.min_attempts} are needed to judge"
        )
    else:
        interval = (
            f"{stats.succeeded} of {stats.attempts} attempts succeeded, 95% interval "
            f"{stats.success_lower_bound:.0%}-{stats.success_upper_bound:.0%}"
        )
        if stats.success_lower_bound >= settings.effective_lower_bound:
            verdict = remediation_pb2.VERDICT_EFFECTIVE
            reason = interval
        elif stats.success_upper_bound < settings.effective_rate:
            verdict = remediation_pb2.VERDICT_INEFFECTIVE
            reason = f"{interval}: below {settings.effective_rate:.0%} even at best"
        else:
            verdict = remediation_pb2.VERDICT_UNKNOWN
            reason = (
                f"{interval}: too uncertain to judge (effective from a lower bound of "
                f"{settings.effective_lower_bound:.0%})"
            )
    return effectiveness_pb2.ActionEffectiveness(
        action=stats.action,
        verdict=verdict,
        attempts=stats.attempts,
        success_rate=stats.success_rate,
        reason=reason,
        success_lower_bound=stats.success_lower_bound,
        success_upper_bound=stats.success_upper_bound,
    )
