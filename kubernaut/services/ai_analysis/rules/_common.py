"""What every rule shares: the settings, the case a rule decides, and how an analysis is
written down. Alert labels and annotations are data, never instructions: annotations are
not read at all, and a label is read only by an explicit rule, through the checks here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.services.ai_analysis.history import HistorySettings

DEPLOYMENT = "Deployment"
STATEFULSET = "StatefulSet"
DAEMONSET = "DaemonSet"
POD = "Pod"
NODE = "Node"
JOB = "Job"
HPA = "HorizontalPodAutoscaler"
PVC = "PersistentVolumeClaim"
WORKLOADS = (DEPLOYMENT, STATEFULSET, DAEMONSET)

# Mirror the validation of the action parameters, so bad settings fail at start-up, not on
# the first alert that uses them.
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_CPU = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
_STORAGE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_MAX_FACTOR = 4.0
_MAX_QUANTITY_LEN = 32
_MAX_REPLICAS = 1000
# A container name is a DNS-1123 label; anything else in the label is not acted on.
_CONTAINER = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_CONTAINER_LEN = 63


@dataclass(frozen=True)
class RulesSettings:
    """How the rules size a change (each factor bounded by a cap) and what counts as a
    recent rollout."""

    # The new memory limit is the old one times this factor (1 < factor <= 4).
    memory_factor: float = 1.5
    # The memory limit never goes above this quantity (Kubernetes notation).
    memory_cap: str = "4Gi"
    # A revision created this long before the alert started, or later, is "recent": the
    # crashes probably followed it.
    recent_rollout_seconds: float = 3600.0
    # How the past weighs on a decision.
    history: HistorySettings = field(default_factory=HistorySettings)
    # The new CPU limit of a throttled container is the old one times this factor
    # (1 < factor <= 4).
    cpu_factor: float = 1.5
    # The CPU limit never goes above this quantity (cores, or millicores with "m").
    cpu_cap: str = "4"
    # A maxed-out autoscaler's maxReplicas is raised by this factor (1 < factor <= 4) ...
    hpa_max_factor: float = 1.5
    # ... and never above this many replicas (1 to 1000).
    hpa_max_replicas_cap: int = 20
    # A filling volume's claim grows by this factor (1 < factor <= 4) ...
    pvc_growth_factor: float = 1.5
    # ... and never above this size (Kubernetes notation).
    pvc_size_cap: str = "500Gi"

    def __post_init__(self) -> None:
        for name in ("memory_factor", "cpu_factor", "hpa_max_factor", "pvc_growth_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 1.0 < value <= _MAX_FACTOR):
                raise ValueError(f"{name} must be above 1 and at most {_MAX_FACTOR}, got {value!r}")
        _check_quantity("memory_cap", self.memory_cap, _MEMORY, "'4Gi'")
        _check_quantity("cpu_cap", self.cpu_cap, _CPU, "'2' or '1500m'")
        _check_quantity("pvc_size_cap", self.pvc_size_cap, _STORAGE, "'500Gi'")
        if isinstance(self.hpa_max_replicas_cap, bool) or not (
            1 <= self.hpa_max_replicas_cap <= _MAX_REPLICAS
        ):
            raise ValueError(
                f"hpa_max_replicas_cap must be from 1 to {_MAX_REPLICAS}, "
                f"got {self.hpa_max_replicas_cap!r}"
            )


def _check_quantity(name: str, value: str, pattern: re.Pattern[str], example: str) -> None:
    if len(value) > _MAX_QUANTITY_LEN or not pattern.fullmatch(value):
        raise ValueError(f"{name} must be a Kubernetes quantity such as {example}, got {value!r}")


@dataclass(frozen=True)
class Case:
    """One firing alert to decide on, with what is known about its subject."""

    alert: alert_pb2.Alert
    subject: alert_pb2.ResourceRef
    settings: RulesSettings
    # What the context API saw of the subject's workload (or node); None: nothing read.
    evidence: context_api_pb2.ResourceContext | None

    @property
    def name(self) -> str:
        return self.alert.name

    @property
    def what(self) -> str:
        return describe(self.subject)


def describe(subject: alert_pb2.ResourceRef) -> str:
    where = f"{subject.namespace}/{subject.name}" if subject.namespace else subject.name
    return f"{subject.kind} {where}"


def container_label(case: Case) -> tuple[str, remediation_pb2.Analysis | None]:
    """The alert's `container` label ("" when absent), or a NO_ACTION when it is not a
    valid container name."""
    container = case.alert.labels.get("container", "")
    if container and (len(container) > _MAX_CONTAINER_LEN or not _CONTAINER.fullmatch(container)):
        # Not echoed: the value is untrusted and may be long or crafted.
        return "", no_action(
            f"{case.name}: the alert's container label is not a valid container name, so "
            "the container to change is unknown."
        )
    return container, None


def needs_kind(
    case: Case, action: str, kinds: tuple[str, ...] = (DEPLOYMENT,)
) -> remediation_pb2.Analysis | None:
    """NO_ACTION unless the subject is of a kind `action` acts on."""
    if case.subject.kind in kinds:
        return None
    wanted = " or ".join(kinds)
    if case.subject.kind == POD:
        return no_action(
            f"{case.name}: the owning workload of {case.what} is not resolved; "
            f"{action} needs its {wanted}, so nothing is done automatically."
        )
    only = "Deployments" if kinds == (DEPLOYMENT,) else ", ".join(f"{k}s" for k in kinds)
    return no_action(f"{case.name}: {action} acts only on {only} and the subject is {case.what}.")


def remediate(
    action: remediation_pb2.ActionParams,
    target: alert_pb2.ResourceRef,
    confidence: float,
    reasons: list[str],
) -> remediation_pb2.Analysis:
    copied = alert_pb2.ResourceRef()
    copied.CopyFrom(target)  # a copy: the caller's message stays theirs
    return remediation_pb2.Analysis(
        decision=remediation_pb2.DECISION_REMEDIATE,
        recommendation=remediation_pb2.Recommendation(
            action=action, target=copied, confidence=confidence, reasons=reasons
        ),
        reasons=reasons,
    )


def no_action(reason: str) -> remediation_pb2.Analysis:
    return remediation_pb2.Analysis(decision=remediation_pb2.DECISION_NO_ACTION, reasons=[reason])
