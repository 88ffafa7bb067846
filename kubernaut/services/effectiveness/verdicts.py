"""Verdicts on actions from their outcome statistics and the uncertainty of the success
rate (its 95% Wilson interval, from intelligence): a few lucky attempts are not a record.
No evidence is never "effective"."""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from kubernaut.common.v1 import alert_pb2, remediation_pb2
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


class RecurrenceSource(Protocol):
    """The intelligence call recurrence needs (an IntelligenceServiceStub satisfies it)."""

    def GetRecurringIncidents(
        self, request: intelligence_pb2.GetRecurringIncidentsRequest, **kwargs: Any
    ) -> Any: ...


async def recurrence_of(
    intelligence: RecurrenceSource, subject: alert_pb2.ResourceRef, alert_name: str
) -> intelligence_pb2.RecurringIncident | str | None:
    """The workload's alert as a recurring incident (the fix does not hold), None when it
    does not recur, or why that could not be read: an aid to the verdicts, whose outage
    leaves them standing."""
    try:
        found = await intelligence.GetRecurringIncidents(
            intelligence_pb2.GetRecurringIncidentsRequest(subject=subject, alert_name=alert_name)
        )
    except grpc.aio.AioRpcError as error:
        return f"intelligence: {error.code().name}: {error.details()}"
    recurring: list[intelligence_pb2.RecurringIncident] = list(found.recurring)
    return recurring[0] if recurring else None
