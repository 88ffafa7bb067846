"""The rule table: one entry per alert name, with the names it is known by in the wild.

Every alert of the upstream kubernetes-mixin's workload, resource, storage, kubelet and
system groups has an entry here, and so has every alert name of the public webhook corpus:
each either acts on evidence or says why it does not (NOT_ACTIONABLE). docs/alert-coverage.md
is rendered from this table (`kubernaut render alert-coverage`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kubernaut.common.v1 import remediation_pb2

import kubernaut.services.ai_analysis.rules._deployments as _deployments
import kubernaut.services.ai_analysis.rules._nodes as _nodes
import kubernaut.services.ai_analysis.rules._workloads as _workloads
from kubernaut.services.ai_analysis.rules._common import Case, no_action

__all__ = ["RULES", "Rule", "canonical_name", "rule_for"]

Decide = Callable[[Case], remediation_pb2.Analysis]


@dataclass(frozen=True)
class Rule:
    """How the rules answer one alert."""

    alert: str
    # The upstream rule group, or where else the name comes from.
    group: str
    decide: Decide
    # The catalogue actions `decide` may choose; empty: never acts (NOT_ACTIONABLE).
    actions: tuple[str, ...]
    # How it decides, for the docs.
    decision: str
    # What it reads to decide, for the docs.
    evidence: str
    # Other names of the same condition.
    aliases: tuple[str, ...] = ()


def _not_actionable(
    alert: str,
    group: str,
    reason: str,
    evidence: str = "the alert's name",
    aliases: tuple[str, ...] = (),
) -> Rule:
    def decide(case: Case) -> remediation_pb2.Analysis:
        return no_action(f"{case.name}: {reason}")

    return Rule(alert, group, decide, (), f"NOT_ACTIONABLE: {reason}", evidence, aliases)


_APPS = "kubernetes-apps"
_RESOURCES = "kubernetes-resources"
_STORAGE = "kubernetes-storage"
_KUBELET = "kubernetes-system-kubelet"
_SYSTEM = "kubernetes-system"
_APISERVER = "kubernetes-system-apiserver"
_CONTROL_PLANE = "kubernetes-system (control plane)"
_OURS = "not upstream"
_WILD = "seen in the wild"

_PODS = "the subject's kind; its pods' phase, readiness, waiting reason and scheduling"
_ROLLOUT = "its Deployment's revisions (age, images, Ready pods, Kubernaut's own)"

_CONTROLLER_LAG = (
    "the controller has not observed the latest spec; that is the controller manager's "
    "problem (or one it reports in the object's conditions), and no change to the workload "
    "helps until it does."
)
_CAPACITY = (
    "the cluster's requests exceed what it can hold if a node fails; that takes capacity "
    "(or smaller requests decided by their owners), not a change to one workload."
)
_QUOTA_POLICY = (
    "the namespaces' quotas promise more than the cluster has; setting quotas is a policy "
    "decision, and no catalogue action changes one."
)
_QUOTA_USE = (
    "a namespace's quota is (nearly) used up; raising a quota is a budget decision and no "
    "catalogue action changes one."
)
_CONTROL = (
    "a control-plane component is unhealthy or unreachable; Kubernaut acts through it, so "
    "it is left to a person."
)
_CERTS = "kubelet certificates are issued and renewed by the cluster's PKI, which a person runs."
_OUTSIDE = (
    "the alert names no Kubernetes workload, node or volume Kubernaut can act on; it is "
    "left to its owners."
)
_TEST = "a test notification: nothing is wrong, so nothing is done."

RULES: tuple[Rule, ...] = (
    # -- kubernetes-apps -----------------------------------------------------------------
    Rule(
        "KubePodCrashLooping",
        _APPS,
        _deployments.crash_looping,
        ("restart_deployment", "rollback_deployment"),
        "rollback_deployment to the previous revision when a recent rollout brought the "
        "crashes, else restart_deployment; Deployments only",
        f"{_PODS}; {_ROLLOUT}",
        ("PodCrashLooping", "KubePodCrashLoopBackOff", "PodCrashLoopBackOff", "CrashLoopBackOff"),
    ),
    Rule(
        "KubePodNotReady",
        _APPS,
        _workloads.pod_not_ready,
        ("restart_deployment", "rollback_deployment", "delete_pod", "restart_daemonset"),
        "by the pods: stuck (Running, not Ready) pods restart the Deployment or delete the "
        "stuck StatefulSet/DaemonSet pod; crashes follow KubePodCrashLooping; unstartable "
        "pods of a fresh rollout roll it back; unschedulable pods and no evidence: "
        "NOT_ACTIONABLE",
        f"{_PODS}; {_ROLLOUT}",
        ("PodNotReady", "KubePodNotHealthy"),
    ),
    _not_actionable("KubeDeploymentGenerationMismatch", _APPS, _CONTROLLER_LAG),
    Rule(
        "KubeDeploymentReplicasMismatch",
        _APPS,
        _deployments.replicas_mismatch,
        ("restart_deployment", "rollback_deployment", "scale_deployment"),
        "no room for the missing replicas: scale_deployment to what runs; stuck pods: "
        "restart_deployment; crashes or unstartable pods of a fresh rollout: "
        "rollback_deployment; no evidence: restart_deployment at low confidence",
        f"{_PODS}; unschedulable pods and quota events; {_ROLLOUT}",
    ),
    Rule(
        "KubeDeploymentRolloutStuck",
        _APPS,
        _deployments.rollout_stuck,
        ("rollback_deployment",),
        "rollback_deployment to the previous revision; Deployments only; NOT_ACTIONABLE "
        "when the evidence shows no earlier revision",
        "the subject's kind; its Deployment's revisions",
    ),
    Rule(
        "KubeStatefulSetReplicasMismatch",
        _APPS,
        _workloads.statefulset_replicas,
        ("delete_pod",),
        "delete_pod on the lowest-ordinal pod that runs but is not Ready; unschedulable, "
        "crashing or unstartable pods and no evidence: NOT_ACTIONABLE",
        _PODS,
    ),
    _not_actionable("KubeStatefulSetGenerationMismatch", _APPS, _CONTROLLER_LAG),
    Rule(
        "KubeStatefulSetUpdateNotRolledOut",
        _APPS,
        _workloads.statefulset_update,
        ("delete_pod",),
        "delete_pod on the lowest-ordinal stuck pod the update waits on; failing pods and "
        "no evidence: NOT_ACTIONABLE",
        _PODS,
    ),
    Rule(
        "KubeDaemonSetRolloutStuck",
        _APPS,
        _workloads.daemonset_rollout,
        ("delete_pod", "restart_daemonset"),
        "one stuck pod: delete_pod; several: restart_daemonset; failing or unschedulable "
        "pods and no evidence: NOT_ACTIONABLE",
        _PODS,
    ),
    Rule(
        "KubeContainerWaiting",
        _APPS,
        _workloads.container_waiting,
        ("restart_deployment", "rollback_deployment"),
        "reason CrashLoopBackOff: as KubePodCrashLooping; an image or config error "
        "(ImagePullBackOff, ErrImagePull, InvalidImageName, CreateContainerConfigError) "
        "after a recent rollout: rollback_deployment; other waits: NOT_ACTIONABLE",
        f"the alert's reason label; {_PODS}; {_ROLLOUT}",
        ("ContainerWaiting", "KubePodImagePullBackOff", "ImagePullBackOff"),
    ),
    _not_actionable(
        "KubeDaemonSetNotScheduled",
        _APPS,
        "some nodes that should run the DaemonSet's pod do not (taints, resources or node "
        "selectors); that takes a change to the nodes or the DaemonSet a person decides.",
    ),
    _not_actionable(
        "KubeDaemonSetMisScheduled",
        _APPS,
        "pods run on nodes their DaemonSet no longer selects, usually after node labels "
        "changed; the DaemonSet controller removes them, or a person fixes the labels.",
    ),
    _not_actionable(
        "KubeJobNotCompleted",
        _APPS,
        "the Job still runs; stopping or rerunning a Job that has not failed could repeat "
        "or lose its work.",
        aliases=("KubeJobCompletion", "KubeCronJobRunning"),
    ),
    Rule(
        "KubeJobFailed",
        _APPS,
        _workloads.job_failed,
        ("rerun_failed_job",),
        "rerun_failed_job once (never a rerun of Kubernaut's own); unstartable pods and no "
        "evidence: NOT_ACTIONABLE",
        "the Job's name; its pods' waiting reasons and OOM kills",
        ("JobFailed",),
    ),
    _not_actionable(
        "KubeHpaReplicasMismatch",
        _APPS,
        "the autoscaler cannot reach the replica count it wants, usually for lack of "
        "capacity or quota; raising its bounds would not place the pods.",
    ),
    Rule(
        "KubeHpaMaxedOut",
        _APPS,
        _workloads.hpa_maxed_out,
        ("update_hpa",),
        "update_hpa raising maxReplicas by hpa_max_factor (at least +1), capped at "
        "hpa_max_replicas_cap, minReplicas kept; NOT_ACTIONABLE when it is no longer at its "
        "maximum, is pinned (minReplicas = maxReplicas), is at the cap already, its scale "
        "target does not exist, or with no evidence",
        "the subject's kind; the autoscaler's minReplicas, maxReplicas, currentReplicas, "
        "ScalingLimited condition and whether its scale target exists",
    ),
    _not_actionable(
        "KubePdbNotEnoughHealthyPods",
        _APPS,
        "the pods behind the PodDisruptionBudget are unhealthy; their own alerts drive the fix.",
    ),
    # -- kubernetes-resources ------------------------------------------------------------
    _not_actionable("KubeCPUOvercommit", _RESOURCES, _CAPACITY),
    _not_actionable("KubeMemoryOvercommit", _RESOURCES, _CAPACITY),
    _not_actionable("KubeCPUQuotaOvercommit", _RESOURCES, _QUOTA_POLICY),
    _not_actionable("KubeMemoryQuotaOvercommit", _RESOURCES, _QUOTA_POLICY),
    _not_actionable("KubeQuotaAlmostFull", _RESOURCES, _QUOTA_USE),
    _not_actionable("KubeQuotaFullyUsed", _RESOURCES, _QUOTA_USE),
    _not_actionable("KubeQuotaExceeded", _RESOURCES, _QUOTA_USE),
    Rule(
        "CPUThrottlingHigh",
        _RESOURCES,
        _workloads.cpu_throttling,
        ("increase_cpu_limit",),
        "increase_cpu_limit of the alert's container by cpu_factor, capped at cpu_cap, on "
        "its Deployment, StatefulSet or DaemonSet",
        "the subject's kind; the alert's container label",
        ("ContainerCPUThrottling", "CPUThrottling"),
    ),
    # -- kubernetes-storage --------------------------------------------------------------
    Rule(
        "KubePersistentVolumeFillingUp",
        _STORAGE,
        _workloads.pvc_filling_up,
        ("expand_pvc",),
        "expand_pvc to its size times pvc_growth_factor, rounded up to whole Gi, capped at "
        "pvc_size_cap; NOT_ACTIONABLE when its StorageClass does not allow expansion, it is "
        "not Bound, a resize is under way or failed, it is at the cap already, or with no "
        "evidence",
        "the subject's kind; the claim's phase, requested size, capacity and resize "
        "conditions; its StorageClass's allowVolumeExpansion",
        ("PersistentVolumeFillingUp", "PVCFillingUp"),
    ),
    _not_actionable(
        "KubePersistentVolumeInodesFillingUp",
        _STORAGE,
        "the volume is running out of inodes: many small files must be cleaned up, and "
        "growing the volume does not add inodes on every filesystem.",
    ),
    _not_actionable(
        "KubePersistentVolumeErrors",
        _STORAGE,
        "the PersistentVolume is Failed or Pending: its storage provider must be looked at "
        "by a person.",
    ),
    # -- kubernetes-system-kubelet -------------------------------------------------------
    Rule(
        "KubeNodeNotReady",
        _KUBELET,
        _nodes.node_not_ready,
        ("cordon_node",),
        "cordon_node (never a drain by the rules alone); no evidence: NOT_ACTIONABLE",
        "the subject's kind; that the context API could read the node",
        ("NodeNotReady", "KubernetesNodeNotReady", "KubernetesNodeReady"),
    ),
    _not_actionable(
        "KubeNodePressure",
        _KUBELET,
        "the kubelet already taints the node and evicts pods under memory, disk or PID "
        "pressure; the pods' own alerts drive their fix.",
        aliases=("NodeMemoryPressure", "NodeDiskPressure"),
    ),
    _not_actionable(
        "KubeNodeUnreachable",
        _KUBELET,
        "the node controller has already tainted the node unreachable, which keeps new pods "
        "off it and evicts its pods; the machine needs a person.",
    ),
    _not_actionable(
        "KubeletTooManyPods",
        _KUBELET,
        "the node runs near its pod capacity, which the scheduler already respects; more "
        "room takes more nodes.",
    ),
    Rule(
        "KubeNodeReadinessFlapping",
        _KUBELET,
        _nodes.readiness_flapping,
        ("cordon_node",),
        "cordon_node; no evidence: NOT_ACTIONABLE",
        "the subject's kind; that the context API could read the node",
    ),
    _not_actionable(
        "KubeNodeEviction",
        _KUBELET,
        "the kubelet evicts pods because the node crossed an eviction threshold; the "
        "evicted pods' own alerts drive their fix.",
    ),
    Rule(
        "KubeletPlegDurationHigh",
        _KUBELET,
        _nodes.pleg_slow,
        ("cordon_node",),
        "cordon_node; no evidence: NOT_ACTIONABLE",
        "the subject's kind; that the context API could read the node",
    ),
    _not_actionable(
        "KubeletPodStartUpLatencyHigh",
        _KUBELET,
        "pods start slowly on the node (image pulls, volume mounts); that is not one "
        "workload's fault and no catalogue action speeds it up.",
    ),
    _not_actionable("KubeletClientCertificateExpiration", _KUBELET, _CERTS),
    _not_actionable("KubeletServerCertificateExpiration", _KUBELET, _CERTS),
    _not_actionable("KubeletClientCertificateRenewalErrors", _KUBELET, _CERTS),
    _not_actionable("KubeletServerCertificateRenewalErrors", _KUBELET, _CERTS),
    _not_actionable("KubeletDown", _KUBELET, _CONTROL),
    # -- kubernetes-system and the control plane -----------------------------------------
    _not_actionable(
        "KubeVersionMismatch",
        _SYSTEM,
        "components run different Kubernetes versions, usually during an upgrade; "
        "upgrades are a person's job.",
    ),
    _not_actionable(
        "KubeClientErrors",
        _SYSTEM,
        "a client of the API server gets errors; its credentials or the API server must be "
        "looked at by a person.",
    ),
    _not_actionable("KubeAPIErrorBudgetBurn", _APISERVER, _CONTROL),
    _not_actionable("KubeAPIDown", _CONTROL_PLANE, _CONTROL),
    _not_actionable("KubeAPITerminatedRequests", _APISERVER, _CONTROL),
    _not_actionable("KubeAggregatedAPIErrors", _APISERVER, _CONTROL),
    _not_actionable("KubeAggregatedAPIDown", _APISERVER, _CONTROL),
    _not_actionable("KubeClientCertificateExpiration", _APISERVER, _CERTS),
    _not_actionable("KubeSchedulerDown", _CONTROL_PLANE, _CONTROL),
    _not_actionable("KubeControllerManagerDown", _CONTROL_PLANE, _CONTROL),
    _not_actionable("KubeProxyDown", _CONTROL_PLANE, _CONTROL),
    # -- not upstream ------------------------------------------------------------------
    Rule(
        "KubeContainerOOMKilled",
        _OURS,
        _deployments.oom,
        ("increase_memory_limit",),
        "increase_memory_limit of the alert's container by memory_factor, capped at "
        "memory_cap; Deployments only. Any alert whose reason label is OOMKilled, or whose "
        "pods were OOM-killed, is decided so first",
        "the subject's kind; the alert's container and reason labels; its pods' last "
        "termination reasons",
        ("ContainerOOMKilled", "KubePodOOMKilled", "PodOOMKilled", "OOMKilled"),
    ),
    # -- seen in the wild (the public webhook corpus) ----------------------------------
    _not_actionable(
        "HighMemoryUsage",
        _WILD,
        "memory use is high but nothing was OOM-killed; raising a limit before a kill is "
        "a guess (an OOM kill seen on the pods is acted on).",
        aliases=("High memory usage", "Memory (copy)"),
    ),
    _not_actionable(
        "DatabaseOutage",
        _WILD,
        "an application-level outage; restarting or scaling a database automatically risks "
        "its data, so it is left to a person.",
    ),
    _not_actionable(
        "NodeFilesystemAlmostOutOfSpace",
        _WILD,
        "a node's filesystem is filling up; no catalogue action frees a node's disk.",
        aliases=("DiskSpaceLow",),
    ),
    _not_actionable(
        "TargetDown",
        _WILD,
        "a Prometheus scrape target is down; " + _OUTSIDE,
        aliases=("InstanceDown",),
    ),
    _not_actionable("ICMP ping failed", _WILD, "a host does not answer pings; " + _OUTSIDE),
    _not_actionable("High CPU Temperature", _WILD, "a machine runs hot; " + _OUTSIDE),
    _not_actionable(
        "High CPU usage",
        _WILD,
        "CPU use is high, with no throttling or failure named; " + _OUTSIDE,
    ),
    _not_actionable("服务异常告警", _WILD, "a service outside Kubernetes is abnormal; " + _OUTSIDE),
    _not_actionable(
        "OpenBaoRaftQuorumAtRisk",
        _WILD,
        "a consensus cluster's quorum is at risk; restarting members automatically could "
        "lose it, so it is left to a person.",
    ),
    _not_actionable(
        "Deployment",
        _WILD,
        "an alert named after a kind says nothing of what is wrong, so nothing is done "
        "automatically.",
    ),
    _not_actionable(
        "TestAlert",
        _WILD,
        _TEST,
        aliases=(
            "TestCPUAlert",
            "Test alert",
            "Second webhook test",
            "alert1",
            "GMP_WebhookTest",
            "KubernautTestAlwaysFiring",
        ),
    ),
)

_BY_NAME: dict[str, Rule] = {}
for _rule in RULES:
    for _name in (_rule.alert, *_rule.aliases):
        if _name in _BY_NAME:
            raise RuntimeError(f"alert name {_name!r} is in the rule table twice")
        _BY_NAME[_name] = _rule
# Names in the wild differ in case too ("KubePodCrashlooping"): matched case-blind.
_BY_FOLDED = {name.casefold(): rule for name, rule in _BY_NAME.items()}


def rule_for(alert_name: str) -> Rule | None:
    """The rule for an alert name, its aliases and case variants included; None: none."""
    return _BY_NAME.get(alert_name) or _BY_FOLDED.get(alert_name.casefold())


def canonical_name(alert_name: str) -> str:
    """The rule table's name for `alert_name` (the kubernetes-mixin's where there is one),
    or `alert_name` itself when no rule has it."""
    rule = rule_for(alert_name)
    return rule.alert if rule is not None else alert_name
