"""The quiet period after an incident closed: is an alert of its fingerprint the tail of the
old failure (counted on the closed incident), or a new failure (a new incident)?

The upstream crash-loop rule looks back minutes and AlertManager repeats an alert until it
resolves, so the alert keeps coming after a fix: a new incident for each would analyse the
fixed workload again and could act twice. But a new rollout that fails the same way fires
the same alert, and counting it on the old incident hides it. The workload's state tells
them apart: the state verified after the fix (the last SUCCEEDED action's observed_after)
against the state now. Pure logic, no database.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernaut.common.v1 import remediation_pb2

from kubernaut.runtime.durations import human_duration
from kubernaut.runtime.workload_state import changes_since


@dataclass(frozen=True)
class QuietDecision:
    # True: open a new incident with `status_reason`; False: count on the closed one.
    opens: bool
    # For the answer (OpenIncidentResponse.quiet_period).
    note: str
    # The new incident's status_reason (empty when it counts).
    status_reason: str = ""


def decide(
    *,
    alert_name: str,
    closed_incident_id: str,
    closed_seconds_ago: float,
    baseline: remediation_pb2.WorkloadState | None,
    current: remediation_pb2.WorkloadState | None,
) -> QuietDecision:
    """Open a new incident when the workload changed since the closed incident's verified fix
    (`baseline`), else count on it. Without a baseline or a current state nothing can be
    compared, and the alert is counted, as it always was."""
    ago = human_duration(closed_seconds_ago)
    counted = f"counted on incident {closed_incident_id}, closed {ago} ago"
    if baseline is None:
        return QuietDecision(
            False, f"{counted}; no workload state was verified after its fix to compare with"
        )
    if current is None:
        return QuietDecision(
            False, f"{counted}; the workload's current state is unknown, so nothing to compare"
        )
    changes = changes_since(baseline, current)
    if not changes:
        return QuietDecision(False, f"{counted}; the workload has not changed since its fix")
    what = ", ".join(changes)
    return QuietDecision(
        True,
        f"incident {closed_incident_id} closed {ago} ago but the workload changed since its"
        f" fix ({what}): opened a new incident",
        f"opened by alert {alert_name}: incident {closed_incident_id} was fixed {ago} ago, but"
        f" the workload changed since ({what})",
    )
