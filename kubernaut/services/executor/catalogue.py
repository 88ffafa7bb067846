"""The executor's action catalogue: one typed entry per field of `ActionParams`.

The catalogue is data. The executor, the approval policy, the LLM prompt and the Helm RBAC
all read it, so an action's risk or permissions are stated once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor
from kubernaut.common.v1 import remediation_pb2
from kubernaut.executor.v1 import executor_pb2

__all__ = [
    "UnknownAction",
    "action_name",
    "describe_action",
    "list_actions",
]

# The oneof whose field names are the catalogue's action names.
_ONEOF = "params"


class UnknownAction(LookupError):
    """No catalogue action has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no action named {name!r} in the catalogue")
        self.name = name


@dataclass(frozen=True)
class _Permission:
    api_group: str  # "" is the core group
    resource: str
    verbs: tuple[str, ...]
    subresource: str = ""
    # Needed only for targets of these kinds (empty: always).
    target_kinds: tuple[str, ...] = ()

    def to_proto(self) -> executor_pb2.PermissionRule:
        return executor_pb2.PermissionRule(
            api_group=self.api_group,
            resource=self.resource,
            subresource=self.subresource,
            verbs=list(self.verbs),
            target_kinds=list(self.target_kinds),
        )

    def only_for(self, *kinds: str) -> _Permission:
        return dataclasses.replace(self, target_kinds=kinds)


@dataclass(frozen=True)
class _Action:
    name: str
    params: Descriptor  # the generated descriptor, so the type name cannot drift
    description: str
    when_to_use: str
    when_not_to_use: str
    risk: remediation_pb2.RiskLevel.ValueType
    target_kinds: tuple[str, ...]
    permissions: tuple[_Permission, ...]
    preconditions: tuple[str, ...]
    verification: str
    rollback: str
    reversible: bool = True

    def to_proto(self) -> executor_pb2.ActionDefinition:
        return executor_pb2.ActionDefinition(
            name=self.name,
            description=self.description,
            when_to_use=self.when_to_use,
            when_not_to_use=self.when_not_to_use,
            risk=self.risk,
            target_kinds=list(self.target_kinds),
            permissions=[p.to_proto() for p in self.permissions],
            parameters_type=self.params.full_name,
            preconditions=list(self.preconditions),
            verification=self.verification,
            rollback=self.rollback,
            reversible=self.reversible,
        )


# Permissions every action needs besides its own patch: the snapshot and verification read
# the Deployment, verification lists its pods, and the opt-in check
# (`kubernaut.ai/managed=true` on the object or its namespace) reads the Namespace.
# SelfSubjectAccessReview is left out: every authenticated identity has it via
# system:basic-user. A server-side dry-run (dryRun=All) needs the same verb as the real
# write, so `patch` covers both.
_PATCH_DEPLOYMENT = _Permission("apps", "deployments", ("get", "patch"))
_LIST_PODS = _Permission("", "pods", ("list",))
_GET_NAMESPACE = _Permission("", "namespaces", ("get",))

_SCOPE = (
    "The namespace is not protected and is allowed by the cluster's allow and deny lists.",
    "A SelfSubjectAccessReview allows every permission this action lists.",
)
_OPT_IN = (
    "The target or its namespace carries the label kubernaut.ai/managed=true (unless opt-in "
    "is disabled in the settings)."
)
_DRY_RUN = "A server-side dry-run (dryRun=All) of the change succeeds."


def _preconditions(kind: str, *extra: str, dry_run: bool = True) -> tuple[str, ...]:
    return (
        f"The target {kind} exists in the named namespace.",
        _OPT_IN,
        *_SCOPE,
        *((_DRY_RUN,) if dry_run else ()),
        *extra,
    )


def _node_preconditions(*extra: str) -> tuple[str, ...]:
    return (
        "The target Node exists and carries the label kubernaut.ai/managed=true (unless "
        "opt-in is disabled in the settings).",
        "The Node is not protected: not a control-plane node and not in "
        "KUBERNAUT_EXECUTOR_PROTECTED_NODES.",
        "A SelfSubjectAccessReview allows every permission this action lists.",
        _DRY_RUN,
        *extra,
    )


_COMMON_PRECONDITIONS: tuple[str, ...] = _preconditions("Deployment")

_WORKLOADS: tuple[str, ...] = ("Deployment", "StatefulSet", "DaemonSet")
# An action on several kinds lists each kind's permission; the pre-check asks only for the
# target's kind.
_PATCH_STATEFULSET = _Permission("apps", "statefulsets", ("get", "patch"))
_PATCH_DAEMONSET = _Permission("apps", "daemonsets", ("get", "patch"))
_PATCH_WORKLOADS = (
    _PATCH_DEPLOYMENT.only_for("Deployment"),
    _PATCH_STATEFULSET.only_for("StatefulSet"),
    _PATCH_DAEMONSET.only_for("DaemonSet"),
)
_WORKLOAD_PODS = _LIST_PODS.only_for(*_WORKLOADS)
# A StatefulSet's rollback deletes the pods of the failed template that never became ready
# (it does not replace them by itself), so its template changes need pods delete too.
_UNSTICK_STATEFULSET = _Permission("", "pods", ("delete",)).only_for("StatefulSet")
_TEMPLATE_ROLLBACK = (
    "Restore the pod template from the snapshot. For a StatefulSet, also delete the pods of "
    "the failed template that never became ready: it does not replace them by itself."
)
_PATCH_NODE = _Permission("", "nodes", ("get", "patch"))
_ROLLOUT_VERIFICATION = (
    "The rollout completes within the verification timeout (the controller observed the new "
    "generation; updated, ready and available replicas equal the desired count) and no new "
    "pod is in CrashLoopBackOff."
)

_ACTIONS: tuple[_Action, ...] = (
    _Action(
        name="rollback_deployment",
        params=remediation_pb2.RollbackDeploymentParams.DESCRIPTOR,
        description=(
            "Rolls a Deployment's pod template back to an earlier ReplicaSet revision, as "
            "`kubectl rollout undo` does."
        ),
        when_to_use=(
            "A recent rollout broke the workload: the rollout is stuck or the new pods crash "
            "while the previous revision ran healthily."
        ),
        when_not_to_use=(
            "The failure predates the last rollout, comes from outside the pod template "
            "(a ConfigMap, Secret, dependency or node), or the new revision ran a one-way "
            "change such as a schema migration that the old code cannot read."
        ),
        # MEDIUM: it changes which code and config run; the older revision can bring back
        # fixed bugs or misread data written since.
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("Deployment",),
        permissions=(
            _PATCH_DEPLOYMENT,
            # The revisions live on the Deployment's ReplicaSets.
            _Permission("apps", "replicasets", ("list",)),
            _LIST_PODS,
            _GET_NAMESPACE,
        ),
        preconditions=(
            *_COMMON_PRECONDITIONS,
            "The Deployment is not paused.",
            "The requested revision (or, for to_revision 0, the one before the current) is "
            "still retained as a ReplicaSet and differs from the current pod template.",
        ),
        verification=(
            "The rollout completes within the Deployment's progressDeadlineSeconds "
            "(observedGeneration >= generation; updated, ready and available replicas equal "
            "spec.replicas) and its pods are Ready with no new restarts."
        ),
        rollback=(
            "Patch the pod template back to the snapshot taken before the change; the "
            "controller scales the newer ReplicaSet back up."
        ),
    ),
    _Action(
        name="restart_deployment",
        params=remediation_pb2.RestartDeploymentParams.DESCRIPTOR,
        description=(
            "Restarts a Deployment's pods by a rolling restart: sets the pod template "
            "annotation kubectl.kubernetes.io/restartedAt, as `kubectl rollout restart` does."
        ),
        when_to_use=(
            "Pods are stuck in a bad runtime state (crash loop after a transient dependency "
            "failure, leaked resources, stale connections) that a fresh start clears."
        ),
        when_not_to_use=(
            "The pods fail deterministically (bad image, bad config, too little memory): a "
            "restart only repeats the failure."
        ),
        # LOW: same image and config, only new pods, rolled out within the Deployment's own
        # maxUnavailable/maxSurge; nothing about the workload changes.
        risk=remediation_pb2.RISK_LEVEL_LOW,
        target_kinds=("Deployment",),
        permissions=(_PATCH_DEPLOYMENT, _LIST_PODS, _GET_NAMESPACE),
        preconditions=(
            *_COMMON_PRECONDITIONS,
            "The Deployment is not paused (a paused Deployment does not roll out).",
            "spec.replicas is greater than 0.",
        ),
        verification=(
            "The rollout completes within progressDeadlineSeconds and every pod of the new "
            "ReplicaSet is Ready with no restarts during the verification window."
        ),
        rollback=(
            "Restore the restartedAt annotation from the snapshot; the controller scales the "
            "earlier ReplicaSet back up."
        ),
    ),
    _Action(
        name="scale_deployment",
        params=remediation_pb2.ScaleDeploymentParams.DESCRIPTOR,
        description="Sets a Deployment's spec.replicas to the given count.",
        when_to_use=(
            "The workload lacks capacity for its load, or a replica count was set wrongly "
            "and must be restored."
        ),
        when_not_to_use=(
            "A HorizontalPodAutoscaler manages the Deployment (it would undo the change), the "
            "pods fail whatever their number, or the cluster has no room to schedule more."
        ),
        # MEDIUM: it changes capacity; fewer replicas lose availability (zero is an outage),
        # more can exhaust quota or node capacity shared with others.
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("Deployment",),
        # Patches spec.replicas on the Deployment itself, so no deployments/scale grant.
        permissions=(_PATCH_DEPLOYMENT, _LIST_PODS, _GET_NAMESPACE),
        preconditions=(
            *_COMMON_PRECONDITIONS,
            "No HorizontalPodAutoscaler targets the Deployment.",
            "The requested replica count differs from spec.replicas.",
        ),
        verification=(
            "status.availableReplicas reaches the requested count within "
            "progressDeadlineSeconds and the pods are Ready."
        ),
        rollback="Set spec.replicas back to the count in the snapshot.",
    ),
    _Action(
        name="increase_memory_limit",
        params=remediation_pb2.IncreaseMemoryLimitParams.DESCRIPTOR,
        description=(
            "Raises one container's memory limit to min(current limit x factor, max_limit); "
            "the memory request is left as it is."
        ),
        when_to_use="A container is OOM-killed because its working set has outgrown its limit.",
        when_not_to_use=(
            "The container leaks memory without bound (more memory only delays the kill), the "
            "node itself is under memory pressure, or the limit already sits at max_limit."
        ),
        # MEDIUM: it changes the pod template, so every pod restarts, and bigger pods can
        # exceed quota or stay Pending; the factor and max_limit bound the change.
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=_WORKLOADS,
        permissions=(*_PATCH_WORKLOADS, _WORKLOAD_PODS, _UNSTICK_STATEFULSET, _GET_NAMESPACE),
        preconditions=(
            *_preconditions("workload"),
            "The named container exists in the pod template; with no name, the template has "
            "exactly one container.",
            "The container has a memory limit to multiply.",
            "The new limit, min(limit x factor, max_limit), is above the current limit.",
            "The namespace's ResourceQuota and LimitRange admit the new limit (the dry-run "
            "checks this).",
        ),
        verification=(
            "The rollout completes within progressDeadlineSeconds, the pods are Ready, and the "
            "container is not OOM-killed during the verification window."
        ),
        rollback=_TEMPLATE_ROLLBACK,
    ),
    _Action(
        name="scale_statefulset",
        params=remediation_pb2.ScaleStatefulSetParams.DESCRIPTOR,
        description="Sets a StatefulSet's spec.replicas to the given count.",
        when_to_use=(
            "A stateful workload lacks capacity, or its replica count was set wrongly and "
            "must be restored."
        ),
        when_not_to_use=(
            "The application cannot join or leave members by itself (scaling a quorum "
            "system down can lose quorum), or its volumes cannot be provisioned."
        ),
        # HIGH: members of a stateful set hold data; removing one can lose quorum or data
        # that is not replicated.
        risk=remediation_pb2.RISK_LEVEL_HIGH,
        target_kinds=("StatefulSet",),
        permissions=(_PATCH_STATEFULSET, _LIST_PODS, _GET_NAMESPACE),
        preconditions=_preconditions(
            "StatefulSet", "The requested replica count differs from spec.replicas."
        ),
        verification=_ROLLOUT_VERIFICATION,
        rollback="Set spec.replicas back to the count in the snapshot.",
    ),
    _Action(
        name="restart_statefulset",
        params=remediation_pb2.RestartStatefulSetParams.DESCRIPTOR,
        description=(
            "Restarts a StatefulSet's pods one by one, highest ordinal first, by setting the "
            "pod template annotation kubectl.kubernetes.io/restartedAt."
        ),
        when_to_use="Stateful pods are stuck in a bad runtime state that a fresh start clears.",
        when_not_to_use=(
            "The pods fail deterministically, or the application cannot lose a member for "
            "the time a restart takes."
        ),
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("StatefulSet",),
        permissions=(_PATCH_STATEFULSET, _LIST_PODS, _UNSTICK_STATEFULSET, _GET_NAMESPACE),
        preconditions=_preconditions(
            "StatefulSet",
            "spec.replicas is greater than 0.",
            "The update strategy is RollingUpdate (OnDelete would not restart anything).",
        ),
        verification=_ROLLOUT_VERIFICATION,
        rollback=_TEMPLATE_ROLLBACK,
    ),
    _Action(
        name="restart_daemonset",
        params=remediation_pb2.RestartDaemonSetParams.DESCRIPTOR,
        description=(
            "Restarts a DaemonSet's pods node by node by setting the pod template annotation "
            "kubectl.kubernetes.io/restartedAt."
        ),
        when_to_use="A node agent is stuck in a bad runtime state on several nodes.",
        when_not_to_use=(
            "The agent fails deterministically, or nodes cannot do without it for the "
            "time a restart takes (a CNI or storage agent)."
        ),
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("DaemonSet",),
        permissions=(_PATCH_DAEMONSET, _LIST_PODS, _GET_NAMESPACE),
        preconditions=_preconditions(
            "DaemonSet",
            "The update strategy is RollingUpdate (OnDelete would not restart anything).",
        ),
        verification=_ROLLOUT_VERIFICATION,
        rollback="Restore the pod template from the snapshot.",
    ),
    _Action(
        name="delete_pod",
        params=remediation_pb2.DeletePodParams.DESCRIPTOR,
        description=(
            "Deletes one pod (only the one with the uid read at the start) so that its "
            "controller replaces it."
        ),
        when_to_use=(
            "One pod of several is stuck or misbehaves (a hung process, a bad node-local "
            "state) while its siblings are healthy."
        ),
        when_not_to_use=(
            "The pod has no controller (nothing would replace it), all pods fail alike, or "
            "it is the only replica and the service cannot take the gap."
        ),
        # MEDIUM: one replica is gone until its replacement is ready.
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("Pod",),
        permissions=(_Permission("", "pods", ("get", "delete")), _GET_NAMESPACE),
        preconditions=_preconditions(
            "Pod", "The pod is owned by a controller that will replace it."
        ),
        verification=(
            "The pod with the uid read at the start is gone within the verification timeout."
        ),
        rollback=(
            "Not reversible: a deleted pod cannot come back. Its controller starts a replacement."
        ),
        reversible=False,
    ),
    _Action(
        name="increase_cpu_limit",
        params=remediation_pb2.IncreaseCpuLimitParams.DESCRIPTOR,
        description=(
            "Raises one container's CPU limit to min(current limit x factor, max_limit), "
            "rounded up to a whole millicore; the request is left as it is."
        ),
        when_to_use=(
            "A container is CPU-throttled (high cpu_cfs_throttled ratio) and its latency "
            "suffers while the node has spare CPU."
        ),
        when_not_to_use=(
            "The process spins without doing work (more CPU only burns more), the node is "
            "CPU-saturated, or the limit already sits at max_limit."
        ),
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=_WORKLOADS,
        permissions=(*_PATCH_WORKLOADS, _WORKLOAD_PODS, _UNSTICK_STATEFULSET, _GET_NAMESPACE),
        preconditions=_preconditions(
            "workload",
            "The named container exists (with no name, the template has exactly one).",
            "The container has a CPU limit to multiply, and the new limit is above it.",
        ),
        verification=_ROLLOUT_VERIFICATION,
        rollback=_TEMPLATE_ROLLBACK,
    ),
    _Action(
        name="update_resource_requests",
        params=remediation_pb2.UpdateResourceRequestsParams.DESCRIPTOR,
        description="Sets one container's CPU and/or memory requests to the given quantities.",
        when_to_use=(
            "Requests are far from real use: pods are evicted or mis-scheduled because they "
            "ask for too little, or cannot schedule because they ask for too much."
        ),
        when_not_to_use=(
            "The new request would exceed the container's limit, or the cluster has no room "
            "for larger pods."
        ),
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=_WORKLOADS,
        permissions=(*_PATCH_WORKLOADS, _WORKLOAD_PODS, _UNSTICK_STATEFULSET, _GET_NAMESPACE),
        preconditions=_preconditions(
            "workload",
            "The named container exists (with no name, the template has exactly one).",
            "Each new request is at most the container's limit of that resource.",
        ),
        verification=_ROLLOUT_VERIFICATION,
        rollback=_TEMPLATE_ROLLBACK,
    ),
    _Action(
        name="update_hpa",
        params=remediation_pb2.UpdateHpaParams.DESCRIPTOR,
        description="Sets a HorizontalPodAutoscaler's minReplicas and/or maxReplicas.",
        when_to_use=(
            "The autoscaler sits at maxReplicas while load keeps rising, or its minimum "
            "leaves too little headroom for known peaks."
        ),
        when_not_to_use=(
            "The pods fail whatever their number, or the cluster or quota has no room for "
            "more replicas."
        ),
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("HorizontalPodAutoscaler",),
        permissions=(
            _Permission("autoscaling", "horizontalpodautoscalers", ("get", "patch")),
            _GET_NAMESPACE,
        ),
        preconditions=_preconditions(
            "HorizontalPodAutoscaler", "After the change, minReplicas <= maxReplicas."
        ),
        verification="The autoscaler's spec holds the new bounds when read back.",
        rollback="Restore minReplicas and maxReplicas from the snapshot.",
    ),
    _Action(
        name="cordon_node",
        params=remediation_pb2.CordonNodeParams.DESCRIPTOR,
        description="Marks a node unschedulable (spec.unschedulable), as `kubectl cordon` does.",
        when_to_use=(
            "A node misbehaves (disk, network, kernel) and new pods must stop landing on it "
            "while it is looked at."
        ),
        when_not_to_use="The cluster has no spare capacity on other nodes.",
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("Node",),
        permissions=(_PATCH_NODE,),
        preconditions=_node_preconditions("The node is schedulable."),
        verification="The node reads back as unschedulable.",
        rollback="Uncordon the node (restore spec.unschedulable from the snapshot).",
    ),
    _Action(
        name="uncordon_node",
        params=remediation_pb2.UncordonNodeParams.DESCRIPTOR,
        description="Marks a cordoned node schedulable again, as `kubectl uncordon` does.",
        when_to_use="A cordoned node has been repaired and may take pods again.",
        when_not_to_use="The node's fault is not known to be fixed.",
        risk=remediation_pb2.RISK_LEVEL_LOW,
        target_kinds=("Node",),
        permissions=(_PATCH_NODE,),
        preconditions=_node_preconditions("The node is cordoned."),
        verification="The node reads back as schedulable.",
        rollback="Cordon the node again (restore spec.unschedulable from the snapshot).",
    ),
    _Action(
        name="drain_node",
        params=remediation_pb2.DrainNodeParams.DESCRIPTOR,
        description=(
            "Cordons a node and evicts its pods through the Eviction API, which honours "
            "PodDisruptionBudgets; DaemonSet and mirror pods stay, as with `kubectl drain`."
        ),
        when_to_use=(
            "A node must be emptied (failing hardware, kernel trouble) and its workloads can "
            "run elsewhere."
        ),
        when_not_to_use=(
            "Pods on the node have no controller (they would be lost), or the other nodes "
            "cannot hold its pods."
        ),
        # HIGH: every pod on the node restarts elsewhere; budgets bound it, but capacity may
        # not.
        risk=remediation_pb2.RISK_LEVEL_HIGH,
        target_kinds=("Node",),
        permissions=(
            _PATCH_NODE,
            _Permission("", "pods", ("list",)),
            _Permission("", "pods", ("create",), subresource="eviction"),
        ),
        preconditions=_node_preconditions(
            "Every pod to evict is owned by a controller (a bare pod would be lost).",
            "A dry-run eviction of every pod succeeds.",
        ),
        verification=(
            "No pod but DaemonSet and mirror pods is left on the node within the timeout; "
            "evictions a PodDisruptionBudget refuses are retried until then."
        ),
        rollback=(
            "Uncordon the node. Evicted pods are not moved back; their controllers run "
            "them elsewhere."
        ),
    ),
    _Action(
        name="taint_node",
        params=remediation_pb2.TaintNodeParams.DESCRIPTOR,
        description=(
            "Adds a taint to a node (or changes the value of one with the same key and effect)."
        ),
        when_to_use=(
            "Pods without a matching toleration must stay off a node (NoSchedule) or leave it "
            "(NoExecute) while it is degraded."
        ),
        when_not_to_use="The node is the only one some workload can run on.",
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("Node",),
        permissions=(_PATCH_NODE,),
        preconditions=_node_preconditions("The node does not carry the same taint already."),
        verification="The node reads back with the taint.",
        rollback="Restore the node's taints from the snapshot.",
    ),
    _Action(
        name="untaint_node",
        params=remediation_pb2.UntaintNodeParams.DESCRIPTOR,
        description="Removes the taints with a key (and, if given, an effect) from a node.",
        when_to_use="A taint set for a fault that is fixed keeps pods off a healthy node.",
        when_not_to_use="The taint is managed by a controller, which would put it back.",
        risk=remediation_pb2.RISK_LEVEL_LOW,
        target_kinds=("Node",),
        permissions=(_PATCH_NODE,),
        preconditions=_node_preconditions("The node carries a matching taint."),
        verification="The node reads back without the taint.",
        rollback="Restore the node's taints from the snapshot.",
    ),
    _Action(
        name="expand_pvc",
        params=remediation_pb2.ExpandPvcParams.DESCRIPTOR,
        description=(
            "Grows a PersistentVolumeClaim's storage request; the volume's driver resizes it."
        ),
        when_to_use="A volume is nearly full and its StorageClass allows expansion.",
        when_not_to_use=(
            "Something writes without bound (a bigger disk only buys time), or the "
            "StorageClass does not allow expansion."
        ),
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("PersistentVolumeClaim",),
        permissions=(
            _Permission("", "persistentvolumeclaims", ("get", "patch")),
            _GET_NAMESPACE,
        ),
        preconditions=_preconditions(
            "PersistentVolumeClaim",
            "The claim is bound and its StorageClass has allowVolumeExpansion (the dry-run "
            "checks this).",
            "The new size is larger than the current request.",
        ),
        verification=("The claim reads back with the new request and reports no resize failure."),
        rollback="Not reversible: a volume cannot shrink.",
        reversible=False,
    ),
    _Action(
        name="quarantine_pod",
        params=remediation_pb2.QuarantinePodParams.DESCRIPTOR,
        description=(
            "Takes a pod out of its Services and its controller by replacing its labels "
            "(all but Kubernaut's own kubernaut.ai/*) with kubernaut.ai/quarantined=true; it "
            "keeps running for inspection and its controller starts a replacement."
        ),
        when_to_use=(
            "A pod misbehaves in a way worth inspecting (memory corruption, a suspected "
            "compromise) and must stop taking traffic without being killed."
        ),
        when_not_to_use=(
            "The pod's state is of no interest (delete it instead), or the quarantined pod "
            "would keep doing harm through connections it opens itself."
        ),
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("Pod",),
        permissions=(_Permission("", "pods", ("get", "patch")), _GET_NAMESPACE),
        preconditions=_preconditions("Pod", "The pod is not quarantined already."),
        verification=(
            "The pod reads back with only the quarantine and Kubernaut labels, and its "
            "controller released "
            "it (no controller owner reference) within the timeout."
        ),
        rollback=(
            "Restore the pod's labels from the snapshot; its controller adopts it again and "
            "removes a surplus replica."
        ),
    ),
    _Action(
        name="update_configmap_key",
        params=remediation_pb2.UpdateConfigMapKeyParams.DESCRIPTOR,
        description="Sets one key of a ConfigMap's data to a new value.",
        when_to_use="A bad configuration value is known, and so is the right one.",
        when_not_to_use=(
            "The consumers read the ConfigMap only at start (pair it with a restart), or "
            "the ConfigMap is managed by GitOps, which would revert it."
        ),
        risk=remediation_pb2.RISK_LEVEL_MEDIUM,
        target_kinds=("ConfigMap",),
        permissions=(_Permission("", "configmaps", ("get", "patch")), _GET_NAMESPACE),
        preconditions=_preconditions(
            "ConfigMap", "The ConfigMap is not immutable and the key is not binary data."
        ),
        verification="The ConfigMap reads back with the new value.",
        rollback="Restore the key's old value (or remove a key that was added).",
    ),
    _Action(
        name="suspend_cronjob",
        params=remediation_pb2.SuspendCronJobParams.DESCRIPTOR,
        description="Suspends a CronJob: no new Jobs start; running ones go on.",
        when_to_use="A scheduled job keeps failing or harms something each time it runs.",
        when_not_to_use="The job's work is needed and nothing else does it.",
        risk=remediation_pb2.RISK_LEVEL_LOW,
        target_kinds=("CronJob",),
        permissions=(_Permission("batch", "cronjobs", ("get", "patch")), _GET_NAMESPACE),
        preconditions=_preconditions("CronJob", "The CronJob is not suspended."),
        verification="The CronJob reads back as suspended.",
        rollback="Restore spec.suspend from the snapshot.",
    ),
    _Action(
        name="resume_cronjob",
        params=remediation_pb2.ResumeCronJobParams.DESCRIPTOR,
        description="Resumes a suspended CronJob: Jobs start on its schedule again.",
        when_to_use="The cause of a suspension is fixed.",
        when_not_to_use="The job would harm something again.",
        risk=remediation_pb2.RISK_LEVEL_LOW,
        target_kinds=("CronJob",),
        permissions=(_Permission("batch", "cronjobs", ("get", "patch")), _GET_NAMESPACE),
        preconditions=_preconditions("CronJob", "The CronJob is suspended."),
        verification="The CronJob reads back as not suspended.",
        rollback="Suspend it again (restore spec.suspend from the snapshot).",
    ),
    _Action(
        name="rerun_failed_job",
        params=remediation_pb2.RerunFailedJobParams.DESCRIPTOR,
        description=(
            "Starts a new Job, `<name>-rerun-<id>`, from a failed Job's pod template; the "
            "failed Job stays for inspection."
        ),
        when_to_use="A Job failed for a transient reason (a dependency was down) and must run.",
        when_not_to_use="The Job fails deterministically, or is not safe to run twice.",
        risk=remediation_pb2.RISK_LEVEL_LOW,
        target_kinds=("Job",),
        permissions=(_Permission("batch", "jobs", ("get", "create", "delete")), _GET_NAMESPACE),
        preconditions=_preconditions("Job", "The Job has failed (condition Failed=True)."),
        verification=(
            "The new Job starts a pod (active or succeeded) and has not failed within the timeout."
        ),
        rollback="Delete the new Job (and its pods).",
    ),
    _Action(
        name="patch_resource",
        params=remediation_pb2.PatchResourceParams.DESCRIPTOR,
        description=(
            "Sets one field of one object, where the kind and the field are allow-listed in "
            "the executor's settings (KUBERNAUT_EXECUTOR_PATCH_ALLOWED_FIELDS)."
        ),
        when_to_use=(
            "A known, narrow fix that no typed action covers, on a field operators have allowed."
        ),
        when_not_to_use="A typed action covers the fix: use it.",
        # HIGH: the least constrained action; only the allow list bounds it.
        risk=remediation_pb2.RISK_LEVEL_HIGH,
        target_kinds=(
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "HorizontalPodAutoscaler",
            "StatefulSet",
        ),
        permissions=(
            *_PATCH_WORKLOADS,
            _Permission("autoscaling", "horizontalpodautoscalers", ("get", "patch")).only_for(
                "HorizontalPodAutoscaler"
            ),
            _Permission("", "configmaps", ("get", "patch")).only_for("ConfigMap"),
            _WORKLOAD_PODS,
            _UNSTICK_STATEFULSET,
            _GET_NAMESPACE,
        ),
        preconditions=_preconditions(
            "object", "The kind and the JSON pointer are in the allow list."
        ),
        verification=(
            "The field reads back with the new value; for a workload, its rollout completes "
            "as for a restart."
        ),
        rollback="Restore the field from the snapshot.",
    ),
    _Action(
        name="collect_diagnostics",
        params=remediation_pb2.CollectDiagnosticsParams.DESCRIPTOR,
        description=(
            "Gathers the target as the API server holds it, its recent events and, for pods "
            "(a workload's pods too), the last log lines of each container, bounded in size; "
            "stored in the action's record (spec_after_json)."
        ),
        when_to_use="Before a person (or a riskier action) looks into a fault.",
        when_not_to_use="Never harmful; skip it only when the evidence is already gathered.",
        risk=remediation_pb2.RISK_LEVEL_LOW,
        target_kinds=("DaemonSet", "Deployment", "Node", "Pod", "StatefulSet"),
        permissions=(
            _Permission("apps", "deployments", ("get",)).only_for("Deployment"),
            _Permission("apps", "statefulsets", ("get",)).only_for("StatefulSet"),
            _Permission("apps", "daemonsets", ("get",)).only_for("DaemonSet"),
            _Permission("", "nodes", ("get",)).only_for("Node"),
            _Permission("", "pods", ("get", "list")),
            _Permission("", "pods", ("get",), subresource="log").only_for("Pod", *_WORKLOADS),
            _Permission("", "events", ("list",)),
            _GET_NAMESPACE.only_for("Pod", *_WORKLOADS),
        ),
        preconditions=_preconditions("object", dry_run=False),
        verification="Nothing changes; the bundle is stored.",
        rollback="Nothing to undo: the action only reads.",
        reversible=False,
    ),
    _Action(
        name="notify_only",
        params=remediation_pb2.NotifyOnlyParams.DESCRIPTOR,
        description=(
            "Changes nothing: records that people are to be told, with the message, and "
            "that Kubernaut chose not to act."
        ),
        when_to_use=(
            "No safe automatic fix exists, or the fix needs a person (data loss, external systems)."
        ),
        when_not_to_use="A low-risk typed action is known to fix the fault.",
        risk=remediation_pb2.RISK_LEVEL_LOW,
        target_kinds=(
            "ConfigMap",
            "CronJob",
            "DaemonSet",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Job",
            "Node",
            "PersistentVolumeClaim",
            "Pod",
            "StatefulSet",
        ),
        permissions=(),
        preconditions=("The target's namespace is not protected.",),
        verification="Nothing to verify: nothing changes.",
        rollback="Nothing to undo.",
        reversible=False,
    ),
)

_BY_NAME: dict[str, _Action] = {a.name: a for a in _ACTIONS}


def _check_catalogue(actions: tuple[_Action, ...]) -> None:
    """Fail at import when the catalogue and `ActionParams` disagree.

    A missing entry would leave an action the executor cannot describe; an extra one would
    offer an action nobody can request. Raises rather than asserts so `python -O` keeps it.
    """
    by_name = {a.name: a for a in actions}
    if len(by_name) != len(actions):
        raise RuntimeError("duplicate action names in the catalogue")
    oneof = remediation_pb2.ActionParams.DESCRIPTOR.oneofs_by_name[_ONEOF]
    fields = {f.name: f for f in oneof.fields}
    if set(fields) != set(by_name):
        raise RuntimeError(
            "catalogue and ActionParams differ: "
            f"missing entries {sorted(set(fields) - set(by_name))}, "
            f"extra entries {sorted(set(by_name) - set(fields))}"
        )
    for name, field in fields.items():
        declared = field.message_type.full_name if field.message_type is not None else None
        if by_name[name].params.full_name != declared:
            raise RuntimeError(f"action {name!r} takes {declared}, the catalogue disagrees")


_check_catalogue(_ACTIONS)


def list_actions() -> list[executor_pb2.ActionDefinition]:
    """Every action, sorted by name; fresh messages, so callers may mutate them."""
    return [_BY_NAME[name].to_proto() for name in sorted(_BY_NAME)]


def describe_action(name: str) -> executor_pb2.ActionDefinition:
    """The action with this catalogue name; raises `UnknownAction` when there is none."""
    action = _BY_NAME.get(name)
    if action is None:
        raise UnknownAction(name)
    return action.to_proto()


def action_name(params: remediation_pb2.ActionParams) -> str:
    """The catalogue name of the action `params` holds (its set oneof field).

    Raises ValueError when no action is set.
    """
    name = params.WhichOneof("params")  # a literal: the stubs type the oneof by name
    if name is None:
        raise ValueError("ActionParams has no action set")
    return name
