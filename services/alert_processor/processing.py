"""Alert processing logic: filter, find the subject, fingerprint. No gRPC here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kubernaut.common.v1 import alert_pb2, remediation_pb2

# Labels that name an alert's subject, most specific workload first. The kubernetes-mixin
# alerts carry these (kube-state-metrics label names).
SUBJECT_LABELS: tuple[tuple[str, str], ...] = (
    ("deployment", "Deployment"),
    ("statefulset", "StatefulSet"),
    ("daemonset", "DaemonSet"),
    ("job_name", "Job"),
    ("cronjob", "CronJob"),
    ("persistentvolumeclaim", "PersistentVolumeClaim"),
    ("pod", "Pod"),
    ("node", "Node"),
)
CLUSTER_SCOPED = {"Node"}

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
    fingerprint: str


def subject_of(alert: alert_pb2.Alert) -> alert_pb2.ResourceRef | None:
    """The object the alert is about, from its labels; None when it names none."""
    labels = alert.labels
    for label, kind in SUBJECT_LABELS:
        if labels.get(label):
            namespace = "" if kind in CLUSTER_SCOPED else labels.get("namespace", "")
            return alert_pb2.ResourceRef(
                cluster=labels.get("cluster", ""),
                namespace=namespace,
                kind=kind,
                name=labels[label],
            )
    return None


def fingerprint_of(alert: alert_pb2.Alert, subject: alert_pb2.ResourceRef | None) -> str:
    """Stable for one problem on one object, whatever else changes in the labels."""
    if subject is None:
        key = "\x1f".join([alert.name, *sorted(f"{k}={v}" for k, v in alert.labels.items())])
    else:
        key = "\x1f".join(
            [subject.cluster, subject.namespace, alert.name, subject.kind, subject.name]
        )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def triage(alert: alert_pb2.Alert) -> Triage:
    """Decide whether an alert becomes work. Resolved alerts never do."""
    subject = subject_of(alert)
    fingerprint = fingerprint_of(alert, subject)
    if alert.status == alert_pb2.ALERT_STATUS_RESOLVED:
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_IGNORED_RESOLVED,
            "the alert is resolved; resolved alerts never become work",
            subject,
            fingerprint,
        )
    if alert.name in PIPELINE_ALERTS:
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_FILTERED,
            PIPELINE_ALERTS[alert.name],
            subject,
            fingerprint,
        )
    if alert.labels.get("severity") in ("none", "info"):
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_FILTERED,
            f"severity {alert.labels['severity']!r} is informational",
            subject,
            fingerprint,
        )
    if subject is None:
        return Triage(
            remediation_pb2.ALERT_DISPOSITION_FILTERED,
            "the alert names no Kubernetes object (no deployment, pod, node or similar label)",
            None,
            fingerprint,
        )
    return Triage(remediation_pb2.ALERT_DISPOSITION_ANALYZED, "firing", subject, fingerprint)
