"""Verdicts on actions from their outcome statistics. No evidence is never "effective"."""

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
    elif stats.success_rate >= settings.effective_rate:
        verdict = remediation_pb2.VERDICT_EFFECTIVE
        reason = f"{stats.succeeded} of {stats.attempts} attempts succeeded"
    else:
        verdict = remediation_pb2.VERDICT_INEFFECTIVE
        reason = (
            f"only {stats.succeeded} of {stats.attempts} attempts succeeded "
            f"(below {settings.effective_rate:.0%})"
        )
    return effectiveness_pb2.ActionEffectiveness(
        action=stats.action,
        verdict=verdict,
        attempts=stats.attempts,
        success_rate=stats.success_rate,
        reason=reason,
    )
