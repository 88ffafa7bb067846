"""What the gateway's intake decides, as pure functions over the alerts of a batch and the
settings: no database, no Redis, no gRPC. Both backends (`postgres_intake.py`,
`redis_intake.py`) judge freshness, order a batch and word every answer with this module;
only the state they read and write differs.

An alert's fingerprint (cluster, namespace, alert name and subject, from its labels) has a
*life*: it starts with a firing alert and ends when the alert resolves or when the incident
it was counted on closes. Within a life:

- the first firing alert is ACCEPTED: queued for the alert processor (held briefly, so a
  flapping alert or the start of a storm is seen before anything opens);
- every further firing alert is a DUPLICATE: counted, and the count later added to the
  incident, never forwarded;
- a resolved alert ends the life. If the firing alert was still queued it is dropped (it
  never becomes work); otherwise a resolution is queued, and the incident is resolved once
  every fingerprint counted on it has resolved.

A storm is one alert name starting on `storm_threshold` or more resources of one cluster
within `storm_window_seconds`: from then on (and for the members still queued) the alerts
are listed on the storm's one incident instead of opening one each.

Freshness: a firing alert that started longer ago than `max_age_seconds`, or further in the
future than `future_skew_seconds`, is refused or flagged, as the settings say.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from kubernaut.common.v1 import alert_pb2, remediation_pb2

from kubernaut.runtime.durations import human_duration
from kubernaut.services.alerts import (
    MAX_ANNOTATION_VALUE_CHARS,
    MAX_ANNOTATIONS,
    MAX_CLUSTER_CHARS,
    fingerprint_of,
    subject_of,
)
from kubernaut.services.gateway.settings import FreshnessPolicy, GatewaySettings

# Where a flag on a forwarded alert is written, for the analysis and for people.
FLAGS_ANNOTATION: Final = "kubernaut_gateway_flags"

ACCEPTED: Final = remediation_pb2.ALERT_DISPOSITION_ACCEPTED
DUPLICATE: Final = remediation_pb2.ALERT_DISPOSITION_DUPLICATE
STORM: Final = remediation_pb2.ALERT_DISPOSITION_STORM
REFUSED: Final = remediation_pb2.ALERT_DISPOSITION_REFUSED
IGNORED_RESOLVED: Final = remediation_pb2.ALERT_DISPOSITION_IGNORED_RESOLVED


@dataclass(frozen=True, slots=True)
class Outcome:
    fingerprint: str
    disposition: remediation_pb2.AlertDisposition.ValueType
    reason: str
    incident_id: str = ""
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Freshness:
    """Whether the intake refuses an alert (too old, from the future, or a cluster label
    that names no cluster) or flags it."""

    refusal: str = ""
    flags: tuple[str, ...] = ()


def judge_freshness(
    alert: alert_pb2.Alert, now: dt.datetime, settings: GatewaySettings
) -> Freshness:
    """Resolved alerts are never judged: they never become work."""
    if alert.status != alert_pb2.ALERT_STATUS_FIRING:
        return Freshness()
    started = alert.starts_at.ToDatetime(dt.UTC)
    age = (now - started).total_seconds()
    if age > settings.max_age_seconds:
        why = (
            f"stale: started {human_duration(age)} ago, longer than the "
            f"{human_duration(settings.max_age_seconds)} allowed"
        )
        policy = settings.stale_policy
    elif -age > settings.future_skew_seconds:
        why = (
            f"from the future: starts {human_duration(-age)} from now, beyond the "
            f"{human_duration(settings.future_skew_seconds)} clock skew allowed"
        )
        policy = settings.future_policy
    else:
        return Freshness()
    if policy is FreshnessPolicy.REFUSE:
        return Freshness(refusal=why)
    return Freshness(flags=(why,))


def flagged(alert: alert_pb2.Alert, flags: Sequence[str]) -> alert_pb2.Alert:
    """A copy of `alert` carrying `flags` in an annotation, when there is room."""
    if not flags:
        return alert
    copy = alert_pb2.Alert()
    copy.CopyFrom(alert)
    if FLAGS_ANNOTATION in copy.annotations or len(copy.annotations) < MAX_ANNOTATIONS:
        copy.annotations[FLAGS_ANNOTATION] = "; ".join(flags)[:MAX_ANNOTATION_VALUE_CHARS]
    return copy


def storm_id_of(alert_name: str, cluster: str, started: dt.datetime) -> str:
    key = "\x1f".join(["storm", cluster, alert_name, started.isoformat()])
    return "storm-" + hashlib.sha256(key.encode()).hexdigest()[:26]


@dataclass
class IntakeItem:
    """One alert of a batch, with what the intake decides it by."""

    index: int
    alert: alert_pb2.Alert
    fingerprint: str
    cluster: str
    freshness: Freshness = field(default_factory=Freshness)


def items_of(
    alerts: Sequence[alert_pb2.Alert], now: dt.datetime, settings: GatewaySettings
) -> list[IntakeItem]:
    items = []
    for index, alert in enumerate(alerts):
        subject = subject_of(alert)
        cluster = subject.cluster if subject else alert.labels.get("cluster", "")
        judged = judge_freshness(alert, now, settings)
        if len(cluster) > MAX_CLUSTER_CHARS:
            # It names no cluster of ours, and no index could hold it.
            judged = Freshness(
                refusal=f"the cluster label is longer than {MAX_CLUSTER_CHARS} characters"
            )
            cluster = ""
        items.append(IntakeItem(index, alert, fingerprint_of(alert, subject), cluster, judged))
    return items


def decision_parts(
    items: Sequence[IntakeItem],
) -> tuple[list[IntakeItem], list[IntakeItem]]:
    """How a batch is decided, the same for every backend: first the firing alerts, then
    the fingerprints with a resolved alert in the batch (their firing alerts too, so that
    each fingerprint's alerts keep the order they came in). Each part is in fingerprint
    order: rows are locked in that order, so two batches rarely deadlock on them. Deciding
    the firing alerts apart lets PostgreSQL count their duplicates in one statement."""
    resolving = {i.fingerprint for i in items if i.alert.status == alert_pb2.ALERT_STATUS_RESOLVED}
    ordered = sorted(items, key=lambda i: (i.fingerprint, i.index))
    firing = [i for i in ordered if i.fingerprint not in resolving]
    return firing, [i for i in ordered if i.fingerprint in resolving]


def in_decision_order(items: Sequence[IntakeItem]) -> list[IntakeItem]:
    firing, resolving = decision_parts(items)
    return firing + resolving


# What the intake answers, worded once for every backend.


def refused(item: IntakeItem) -> Outcome:
    return Outcome(item.fingerprint, REFUSED, item.freshness.refusal)


def accepted(item: IntakeItem) -> Outcome:
    return Outcome(
        item.fingerprint,
        ACCEPTED,
        "new; queued for the alert processor",
        flags=item.freshness.flags,
    )


def duplicate(
    item: IntakeItem, occurrences: int, incident_id: str, first_queued: bool = False
) -> Outcome:
    """A repeat within a life. Without an incident its first alert is either still queued
    (or being forwarded) or was forwarded and opened none (filtered, dropped): only the
    first is "still queued". An incident named may have closed since; the next count
    learns that and ends the life, so the alert after it is decided afresh."""
    if incident_id:
        where = f"incident {incident_id}"
    elif first_queued:
        where = "its first alert, still queued"
    else:
        where = (
            "its first alert, which was forwarded and opened no incident (dropped, with "
            "why: kubernaut alerts list)"
        )
    return Outcome(
        item.fingerprint,
        DUPLICATE,
        f"counted on {where} ({occurrences} alerts so far); not forwarded",
        incident_id,
        item.freshness.flags,
    )


def in_storm(item: IntakeItem, storm_id: str, size: int) -> Outcome:
    return Outcome(
        item.fingerprint,
        STORM,
        f"storm {storm_id}: {item.alert.name} started on {size} resources at once; listed on "
        "the storm's one incident",
        flags=item.freshness.flags,
    )


def not_firing(item: IntakeItem) -> Outcome:
    return Outcome(
        item.fingerprint,
        IGNORED_RESOLVED,
        "the alert is resolved and nothing of it fires here; resolved alerts never become work",
    )


def dropped_before_forwarding(item: IntakeItem) -> Outcome:
    return Outcome(
        item.fingerprint,
        IGNORED_RESOLVED,
        "resolved before it was forwarded: it never became work",
    )


def resolution_queued(item: IntakeItem, incident_id: str) -> Outcome:
    return Outcome(
        item.fingerprint,
        IGNORED_RESOLVED,
        "resolved; never work. Its incident is resolved once every alert of it resolved",
        incident_id,
    )


def as_joined(outcome: Outcome, joined: dict[str, str]) -> Outcome:
    """An alert accepted earlier in a batch that a storm started later in the same batch
    took in is told so."""
    storm_id = joined.get(outcome.fingerprint)
    if outcome.disposition != ACCEPTED or storm_id is None:
        return outcome
    return Outcome(
        outcome.fingerprint,
        STORM,
        f"storm {storm_id}: listed on the storm's one incident",
        flags=outcome.flags,
    )
