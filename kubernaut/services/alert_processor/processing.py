"""Alert processing logic: filter and find the subject. No gRPC here."""

from __future__ import annotations

from dataclasses import dataclass

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.runtime.validation import violations_of
from kubernaut.services.alerts import SUBJECT_LABELS, subject_of

# Alerts that exist to prove the pipeline works or to inhibit others, never to be fixed.
PIPELINE_ALERTS = {
    "Watchdog": "Watchdog is the always-firing heartbeat of the alerting pipeline",
    "InfoInhibitor": "InfoInhibitor only inhibits informational alerts",
}


@dataclass(frozen=True)
class Triage:
    disposition: remediation_pb2.AlertDisposition.ValueType
    reason: str
    subject: alert_pb2.ResourceRef | None
    # Why a firing alert that does not become an incident is dropped (recorded as such).
    drop_reason: storage_pb2.AlertDropReason.ValueType = storage_pb2.ALERT_DROP_REASON_UNSPECIFIED


def triage(alert: alert_pb2.Alert) -> Triage:
    """Decide whether an alert becomes work. Resolved alerts never do."""
    subject = subject_of(alert)
    if alert.status == alert_pb2.ALERT_STATUS_RESOLVED:
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_IGNORED_RESOLVED,
            "the alert is resolved; resolved alerts never become work",
            subject,
        )
    if alert.name in PIPELINE_ALERTS:
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_FILTERED,
            PIPELINE_ALERTS[alert.name],
            subject,
            storage_pb2.ALERT_DROP_REASON_PIPELINE,
        )
    if alert.labels.get("severity") in ("none", "info"):
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_FILTERED,
            f"severity {alert.labels['severity']!r} is informational",
            subject,
            storage_pb2.ALERT_DROP_REASON_INFORMATIONAL,
        )
    if subject is None:
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_FILTERED,
            "the alert names no Kubernetes object: none of its labels is one this version maps "
            f"({', '.join(label for label, _ in SUBJECT_LABELS)}); its labels: "
            f"{_label_names(alert)}",
            None,
            storage_pb2.ALERT_DROP_REASON_NO_SUBJECT,
        )
    invalid = violations_of(subject)
    if invalid:
        # Labels no Kubernetes object could have (a namespace "Shop_1", a 300-character
        # name): nothing to look at, and storage would refuse the incident.
        named = "; ".join(f"{field}: {description}" for field, description in invalid)
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_FILTERED,
            f"the alert's labels name no valid Kubernetes object ({named})",
            None,
            storage_pb2.ALERT_DROP_REASON_INVALID_SUBJECT,
        )
    return Triage(remediation_pb2.ALERT_DISPOSITION_ANALYZED, "firing", subject)


_MAX_LABEL_NAMES = 20


def _label_names(alert: alert_pb2.Alert) -> str:
    """The alert's label names (not values: those are untrusted and may be long), bounded."""
    names = sorted(alert.labels)
    shown = ", ".join(name[:64] for name in names[:_MAX_LABEL_NAMES])
    more = len(names) - _MAX_LABEL_NAMES
    return (shown + (f" and {more} more" if more > 0 else "")) or "none"
