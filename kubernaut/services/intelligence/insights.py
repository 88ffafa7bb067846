"""The insight report of one window (a week by default): recurring incidents, the least
effective actions, the noisiest alerts and the time saved.

Time saved: an incident closed REMEDIATED that no person approved or acted on. People's
part is on the audit trail: a person's (any principal but a service's) DecideApproval,
CreateWorkflow, ExecuteAction or RollbackAction that ended OK and names the incident.
Each such incident would have cost a person `minutes_per_manual_incident` (a setting,
30 by default)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.services.intelligence.recurring import (
    DEFAULT_MIN_INCIDENTS,
    recurring_incidents,
    workload_of,
)
from kubernaut.services.intelligence.stats import (
    DEFAULT_MIN_ATTEMPTS,
    action_stats,
    least_effective,
)

DEFAULT_WINDOW: Final = dt.timedelta(days=7)
DEFAULT_TOP: Final = 5
# The audited calls by which a person takes part in an incident's remediation.
PERSON_METHODS: Final = ("DecideApproval", "CreateWorkflow", "ExecuteAction", "RollbackAction")
SERVICE_PRINCIPAL: Final = "service:"


@dataclass(frozen=True)
class InsightPolicy:
    min_attempts: int = DEFAULT_MIN_ATTEMPTS
    min_incidents: int = DEFAULT_MIN_INCIDENTS
    minutes_per_manual_incident: float = 30.0


def handled_by_people(entries: Iterable[storage_pb2.AuditEntry]) -> set[str]:
    """The incidents a person approved or acted on, from audit entries."""
    return {
        entry.incident_id
        for entry in entries
        if entry.incident_id
        and entry.method in PERSON_METHODS
        and entry.outcome_code == "OK"
        and not entry.principal.startswith(SERVICE_PRINCIPAL)
    }


def noisiest_alerts(
    incidents: Iterable[storage_pb2.Incident], top: int
) -> list[intelligence_pb2.NoisyAlert]:
    """Alert names by the alerts counted on their incidents, then by incidents; the top."""
    incident_count: defaultdict[str, int] = defaultdict(int)
    occurrences: defaultdict[str, int] = defaultdict(int)
    workloads: defaultdict[str, set[tuple[str, str, str, str]]] = defaultdict(set)
    for incident in incidents:
        incident_count[incident.alert_name] += 1
        occurrences[incident.alert_name] += max(incident.occurrences, 1)
        workloads[incident.alert_name].add(workload_of(incident.subject))
    ranked = sorted(incident_count, key=lambda a: (-occurrences[a], -incident_count[a], a))
    return [
        intelligence_pb2.NoisyAlert(
            alert_name=alert,
            incidents=incident_count[alert],
            occurrences=occurrences[alert],
            workloads=len(workloads[alert]),
        )
        for alert in ranked[:top]
    ]


def time_saved(
    incidents: Iterable[storage_pb2.Incident],
    handled_by_person: set[str],
    minutes_per_incident: float,
) -> intelligence_pb2.TimeSaved:
    remediated = [
        i.incident_id for i in incidents if i.status == storage_pb2.INCIDENT_STATUS_REMEDIATED
    ]
    alone = sum(incident_id not in handled_by_person for incident_id in remediated)
    return intelligence_pb2.TimeSaved(
        remediated=len(remediated),
        without_a_person=alone,
        minutes_per_incident=minutes_per_incident,
        minutes_saved=alone * minutes_per_incident,
    )


def _within(stamp: Timestamp, start: dt.datetime, end: dt.datetime) -> bool:
    return start <= stamp.ToDatetime(tzinfo=dt.UTC) < end


def insight_report(
    incidents: Iterable[storage_pb2.Incident],
    actions: Iterable[storage_pb2.ActionRecord],
    handled_by_person: set[str],
    *,
    window_start: dt.datetime,
    window_end: dt.datetime,
    top: int = DEFAULT_TOP,
    policy: InsightPolicy | None = None,
    truncated: bool = False,
) -> intelligence_pb2.InsightReport:
    """The report of the incidents opened and the actions started in
    [window_start, window_end); `handled_by_person` are the incidents people took part in
    (see handled_by_people)."""
    policy = policy or InsightPolicy()
    in_window = [i for i in incidents if _within(i.opened_at, window_start, window_end)]
    acted = [a for a in actions if _within(a.started_at, window_start, window_end)]
    stats = action_stats(acted, min_attempts=policy.min_attempts, by_alert=True)
    report = intelligence_pb2.InsightReport(
        incidents=len(in_window),
        alerts=sum(max(i.occurrences, 1) for i in in_window),
        recurring=recurring_incidents(in_window, acted, min_incidents=policy.min_incidents)[:top],
        least_effective_actions=least_effective(stats, top),
        noisiest_alerts=noisiest_alerts(in_window, top),
        time_saved=time_saved(in_window, handled_by_person, policy.minutes_per_manual_incident),
        too_few_to_judge=sum(not s.enough_samples for s in stats),
        min_attempts=policy.min_attempts,
        truncated=truncated,
    )
    report.window_start.FromDatetime(window_start)
    report.window_end.FromDatetime(window_end)
    return report
