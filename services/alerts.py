"""What an alert is about and its fingerprint, from its labels alone: the gateway dedups by
it, the alert processor refines it with the owning workload. No gRPC here."""

from __future__ import annotations

import hashlib

from kubernaut.common.v1 import alert_pb2

# alert.proto's limits on Alert.annotations (a test reads them from the proto), and
# ResourceRef.cluster's: a longer cluster label names no cluster.
MAX_ANNOTATIONS = 128
MAX_ANNOTATION_VALUE_CHARS = 16384
MAX_CLUSTER_CHARS = 253

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
