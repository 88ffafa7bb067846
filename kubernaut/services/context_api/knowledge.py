"""What Kubernaut knows about the alert rules it handles.

Summaries are the upstream rules' own `summary` annotations (kubernetes-mixin), so operators
see the words their AlertManager shows. Subject labels are those the rule's expression keeps,
so the alert processor can name the alert's subject from the alert alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernaut.context_api.v1 import context_api_pb2

__all__ = ["UnknownAlert", "get_alert_knowledge"]

_MIXIN = "kubernetes-mixin"
_KUBERNAUT = "kubernaut"
# The runbooks the kube-prometheus stack links from the same rules.
_RUNBOOK_BASE = "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/"


class UnknownAlert(LookupError):
    """The knowledge base has no entry for this alert name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no knowledge of alert {name!r}")
        self.name = name


@dataclass(frozen=True)
class _Alert:
    name: str
    summary: str
    subject_labels: tuple[str, ...]
    likely_causes: tuple[str, ...]
    origin: str = _MIXIN

    @property
    def runbook_url(self) -> str:
        # Only upstream rules have an upstream runbook; inventing a URL would send people
        # to a 404.
        return _RUNBOOK_BASE + self.name.lower() if self.origin == _MIXIN else ""

    def to_proto(self) -> context_api_pb2.AlertKnowledge:
        return context_api_pb2.AlertKnowledge(
            alert_name=self.name,
            summary=self.summary,
            runbook_url=self.runbook_url,
            subject_labels=list(self.subject_labels),
            likely_causes=list(self.likely_causes),
            origin=self.origin,
        )


_ALERTS: tuple[_Alert, ...] = (
    _Alert(
        name="KubePodCrashLooping",
        summary="Pod is crash looping.",
        subject_labels=("namespace", "pod", "container"),
        likely_causes=(
            "A recent rollout shipped a broken image or configuration.",
            "A missing or wrong ConfigMap, Secret or environment variable.",
            "A dependency (database, API) the process needs at start-up is unreachable.",
            "The container is OOM-killed on every start.",
            "A liveness probe that is too strict kills a healthy but slow process.",
        ),
    ),
    _Alert(
        name="KubePodNotReady",
        summary="Pod has been in a non-ready state for more than 15 minutes.",
        subject_labels=("namespace", "pod"),
        likely_causes=(
            "The pod cannot be scheduled: not enough CPU or memory, or affinity, taints or "
            "node selectors that no node satisfies.",
            "The image cannot be pulled.",
            "A volume cannot be attached or mounted.",
            "The readiness probe keeps failing.",
        ),
    ),
    _Alert(
        name="KubeDeploymentReplicasMismatch",
        summary="Deployment has not matched the expected number of replicas.",
        subject_labels=("namespace", "deployment"),
        likely_causes=(
            "New pods cannot be scheduled for lack of capacity or a ResourceQuota.",
            "Pods crash or fail their readiness probe.",
            "Pods were lost with a node and their replacements cannot start.",
        ),
    ),
    _Alert(
        name="KubeDeploymentRolloutStuck",
        summary="Deployment rollout is not progressing.",
        subject_labels=("namespace", "deployment"),
        likely_causes=(
            "The new revision's pods crash or never become ready (bad image, config or probe).",
            "The new revision's image cannot be pulled.",
            "The new pods cannot be scheduled or exceed a ResourceQuota.",
            "progressDeadlineSeconds is shorter than the workload needs to start.",
        ),
    ),
    _Alert(
        name="KubeContainerWaiting",
        summary="Pod container waiting longer than 1 hour",
        subject_labels=("namespace", "pod", "container"),
        likely_causes=(
            "The image cannot be pulled (ImagePullBackOff, ErrImagePull): a wrong tag, a "
            "missing pull secret or an unreachable registry.",
            "A referenced ConfigMap or Secret is missing (CreateContainerConfigError).",
            "A volume cannot be mounted, leaving the container in ContainerCreating.",
            "The container crashes on start (CrashLoopBackOff).",
        ),
    ),
    _Alert(
        name="KubeNodeNotReady",
        summary="Node is not ready.",
        subject_labels=("node",),
        likely_causes=(
            "The kubelet stopped or cannot reach the API server.",
            "The node is under memory, disk or PID pressure.",
            "The container runtime or the network plugin failed.",
            "The machine was shut down, rebooted or lost its network.",
        ),
    ),
    _Alert(
        name="KubePersistentVolumeFillingUp",
        summary="PersistentVolume is filling up.",
        subject_labels=("namespace", "persistentvolumeclaim"),
        likely_causes=(
            "The application's data grew beyond the volume's size.",
            "Logs, temporary files or old backups are not rotated or cleaned up.",
            "Compaction or retention of a database or queue is not running.",
        ),
    ),
    _Alert(
        name="KubeJobFailed",
        summary="Job failed to complete.",
        subject_labels=("namespace", "job_name"),
        likely_causes=(
            "The job's pods failed backoffLimit times (a bug, bad input or a missing dependency).",
            "The job ran past activeDeadlineSeconds.",
            "The job's pods were evicted or OOM-killed.",
        ),
    ),
    _Alert(
        name="KubeContainerOOMKilled",
        summary="Container was killed for exceeding its memory limit (OOMKilled).",
        subject_labels=("namespace", "pod", "container"),
        likely_causes=(
            "The container's memory limit is below its normal working set.",
            "Load grew and the working set with it.",
            "The process leaks memory.",
            "A runtime heap setting (e.g. JVM -Xmx) is above the container's limit.",
        ),
        origin=_KUBERNAUT,
    ),
)

_BY_NAME: dict[str, _Alert] = {a.name: a for a in _ALERTS}


def get_alert_knowledge(name: str) -> context_api_pb2.AlertKnowledge:
    """The entry for alert rule `name` (exact, case-sensitive, as Prometheus names are).

    Raises `UnknownAlert` when there is none. Returns a fresh message each call.
    """
    alert = _BY_NAME.get(name)
    if alert is None:
        raise UnknownAlert(name)
    return alert.to_proto()
