"""Recurring incidents: the same workload and alert, again and again, after fixes that
were judged successful. An incident closed REMEDIATED (its action succeeded and was
verified) and followed by another incident of the same workload (cluster, namespace,
kind, name) and alert is a fix that did not hold; a workload and alert with at least
`min_incidents` incidents in the window and at least one fix that did not hold is flagged.
Repeated failures without a successful fix are not flagged here: the action statistics
show those."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from typing import Final

from kubernaut.common.v1 import alert_pb2
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.services.intelligence.stats import ATTEMPT_OUTCOMES

DEFAULT_MIN_INCIDENTS: Final = 3
# The incident ids a RecurringIncident lists at most (the oldest).
MAX_INCIDENT_IDS: Final = 50

Workload = tuple[str, str, str, str]


def workload_of(ref: alert_pb2.ResourceRef) -> Workload:
    return (ref.cluster, ref.namespace, ref.kind, ref.name)


def _opened(incident: storage_pb2.Incident) -> dt.datetime:
    return incident.opened_at.ToDatetime(tzinfo=dt.UTC)


def _closed(incident: storage_pb2.Incident) -> dt.datetime | None:
    if not incident.HasField("closed_at"):
        return None
    return incident.closed_at.ToDatetime(tzinfo=dt.UTC)


def fixes_not_held(incidents: list[storage_pb2.Incident]) -> int:
    """Of `incidents` (one workload and alert, oldest first), those closed REMEDIATED that
    another one opened after (at or after the fix's close)."""
    count = 0
    for index, incident in enumerate(incidents):
        if incident.status != storage_pb2.INCIDENT_STATUS_REMEDIATED:
            continue
        closed = _closed(incident) or _opened(incident)
        if any(_opened(later) >= closed for later in incidents[index + 1 :]):
            count += 1
    return count


def recurring_incidents(
    incidents: Iterable[storage_pb2.Incident],
    actions: Iterable[storage_pb2.ActionRecord],
    *,
    min_incidents: int = DEFAULT_MIN_INCIDENTS,
) -> list[intelligence_pb2.RecurringIncident]:
    """The workloads and alerts among `incidents` (those of the window) whose fix does not
    hold, most incidents first; `actions` are the action records of the window (the
    applied ones of the group's incidents are its actions tried)."""
    if min_incidents < 2:
        raise ValueError(f"min_incidents must be at least 2, got {min_incidents}")
    groups: defaultdict[tuple[Workload, str], list[storage_pb2.Incident]] = defaultdict(list)
    for incident in incidents:
        groups[(workload_of(incident.subject), incident.alert_name)].append(incident)
    tried: defaultdict[str, set[str]] = defaultdict(set)
    for record in actions:
        if record.incident_id and record.outcome in ATTEMPT_OUTCOMES:
            tried[record.incident_id].add(record.action)
    found = []
    for (workload, alert_name), group in groups.items():
        if len(group) < min_incidents:
            continue
        group.sort(key=lambda i: (_opened(i), i.incident_id))
        not_held = fixes_not_held(group)
        if not not_held:
            continue
        cluster, namespace, kind, name = workload
        entry = intelligence_pb2.RecurringIncident(
            subject=alert_pb2.ResourceRef(
                cluster=cluster, namespace=namespace, kind=kind, name=name
            ),
            alert_name=alert_name,
            incidents=len(group),
            fixes_not_held=not_held,
            actions_tried=sorted(set().union(*(tried[i.incident_id] for i in group))),
            incident_ids=[i.incident_id for i in group[:MAX_INCIDENT_IDS]],
        )
        entry.first_seen.CopyFrom(group[0].opened_at)
        entry.last_seen.CopyFrom(group[-1].opened_at)
        found.append(entry)
    found.sort(
        key=lambda r: (
            -r.incidents,
            -r.fixes_not_held,
            -r.last_seen.ToNanoseconds(),
            r.alert_name,
            workload_of(r.subject),
        )
    )
    return found
