"""What an alert is about and its two keys: the gateway dedups by the object its labels
name (`dedup_key_of`), the alert processor keys incidents by the workload that owns it
(`incident_key_of`). No gRPC here."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.parse

from google.protobuf.timestamp_pb2 import Timestamp
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
    ("horizontalpodautoscaler", "HorizontalPodAutoscaler"),
    ("pod", "Pod"),
    ("node", "Node"),
)
CLUSTER_SCOPED = {"Node"}

# Alerts that report one kind of problem, so one's past is evidence for another's: similar
# incidents are looked for within the family (kubernetes-mixin names, and the variants seen
# in the wild). An alert in no family is compared with every alert on the same kind.
ALERT_FAMILIES: tuple[frozenset[str], ...] = (
    frozenset(
        {
            "KubePodCrashLooping",
            "PodCrashLooping",
            "KubeContainerWaiting",
            "KubePodNotReady",
            "KubeContainerOOMKilled",
        }
    ),
    frozenset(
        {
            "KubeDeploymentReplicasMismatch",
            "KubeDeploymentRolloutStuck",
            "KubeDeploymentGenerationMismatch",
            "KubeStatefulSetReplicasMismatch",
            "KubeStatefulSetGenerationMismatch",
            "KubeStatefulSetUpdateNotRolledOut",
            "KubeDaemonSetRolloutStuck",
            "KubeDaemonSetNotScheduled",
            "KubeDaemonSetMisScheduled",
        }
    ),
    frozenset(
        {
            "KubeNodeNotReady",
            "KubeNodeUnreachable",
            "KubeNodeReadinessFlapping",
            "KubeNodePressure",
            "KubeNodeEviction",
            "KubeletTooManyPods",
            "KubeletDown",
            "NodeNotReady",
        }
    ),
    frozenset({"KubeJobFailed", "KubeJobNotCompleted", "KubeCronJobRunning", "KubeJobCompletion"}),
    frozenset({"KubeHpaReplicasMismatch", "KubeHpaMaxedOut"}),
    frozenset(
        {
            "KubePersistentVolumeFillingUp",
            "KubePersistentVolumeInodesFillingUp",
            "KubePersistentVolumeErrors",
        }
    ),
    frozenset({"CPUThrottlingHigh", "KubeCPUOvercommit", "KubeMemoryOvercommit"}),
)


def subject_text(ref: alert_pb2.ResourceRef) -> str:
    """'Deployment shop/web', or 'Node worker-1' for a cluster-scoped object."""
    if ref.namespace:
        return f"{ref.kind} {ref.namespace}/{ref.name}"
    return f"{ref.kind} {ref.name}"


def alert_family(alert_name: str) -> list[str]:
    """The alert names of `alert_name`'s family, sorted; empty when it is in none."""
    for family in ALERT_FAMILIES:
        if alert_name in family:
            return sorted(family)
    return []


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


def dedup_key_of(alert: alert_pb2.Alert) -> str:
    """The gateway's key for an alert's life: the alert and the object its labels name
    (a pod, say), whatever else changes in the labels."""
    return fingerprint_of(alert, subject_of(alert))


def incident_key_of(alert: alert_pb2.Alert, workload: alert_pb2.ResourceRef) -> str:
    """The incident's key: the alert and the workload that owns its object (the pod's
    Deployment), so that every pod's alert is one problem."""
    return fingerprint_of(alert, workload)


def fingerprint_of(alert: alert_pb2.Alert, subject: alert_pb2.ResourceRef | None) -> str:
    """Stable for one problem on one object, whatever else changes in the labels: the
    digest both keys above are made of."""
    if subject is None:
        key = "\x1f".join([alert.name, *sorted(f"{k}={v}" for k, v in alert.labels.items())])
    else:
        key = "\x1f".join(
            [subject.cluster, subject.namespace, alert.name, subject.kind, subject.name]
        )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


_EPOCH = dt.datetime(1970, 1, 1)
_STATUS_NAMES = {v.number: v.name for v in alert_pb2.AlertStatus.DESCRIPTOR.values}
_SOURCE_NAMES = {v.number: v.name for v in alert_pb2.AlertSource.DESCRIPTOR.values}


def _rfc3339(stamp: Timestamp) -> str:
    moment = _EPOCH + dt.timedelta(seconds=stamp.seconds)
    return f"{moment.isoformat(timespec='seconds')}.{stamp.nanos:09d}Z"


def alert_json(alert: alert_pb2.Alert) -> str:
    """`alert` as proto3 JSON with proto field names, as json_format writes it (up to
    spacing and the digits of a time's fraction), for a jsonb column: the gateway writes
    one per new alert, and json_format's generic walk cost more than the rest of its
    intake. A test checks that every field of Alert comes back."""
    fields: dict[str, object] = {}
    if alert.name:
        fields["name"] = alert.name
    if alert.status:
        fields["status"] = _STATUS_NAMES.get(alert.status, alert.status)
    if alert.labels:
        fields["labels"] = dict(alert.labels)
    if alert.annotations:
        fields["annotations"] = dict(alert.annotations)
    if alert.HasField("starts_at"):
        fields["starts_at"] = _rfc3339(alert.starts_at)
    if alert.HasField("ends_at"):
        fields["ends_at"] = _rfc3339(alert.ends_at)
    if alert.generator_url:
        fields["generator_url"] = alert.generator_url
    if alert.source_fingerprint:
        fields["source_fingerprint"] = alert.source_fingerprint
    if alert.source:
        fields["source"] = _SOURCE_NAMES.get(alert.source, alert.source)
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def alert_expression(alert: alert_pb2.Alert) -> str:
    """The PromQL expression of the rule that fired, from the alert's generator URL
    (Prometheus writes it as g0.expr), or ""."""
    if not alert.generator_url:
        return ""
    query = urllib.parse.urlsplit(alert.generator_url).query
    found = urllib.parse.parse_qs(query).get("g0.expr", [])
    return found[0] if found else ""
