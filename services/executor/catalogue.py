"""The executor's action catalogue: one typed entry per field of `ActionParams`.

The catalogue is data. The executor, the approval policy, the LLM prompt and the Helm RBAC
all read it, so an action's risk or permissions are stated once, here.
"""

from __future__ import annotations

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

    def to_proto(self) -> executor_pb2.PermissionRule:
        return executor_pb2.PermissionRule(
            api_group=self.api_group,
            resource=self.resource,
            subresource=self.subresource,
            verbs=list(self.verbs),
        )


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

_COMMON_PRECONDITIONS: tuple[str, ...] = (
    "The target Deployment exists in the named namespace.",
    "The Deployment or its namespace carries the label kubernaut.ai/managed=true "
    "(unless opt-in is disabled in the settings).",
    "The namespace is not a protected namespace.",
    "A SelfSubjectAccessReview allows every permission this action lists.",
    "A server-side dry-run (dryRun=All) of the change succeeds.",
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
        target_kinds=("Deployment",),
        permissions=(_PATCH_DEPLOYMENT, _LIST_PODS, _GET_NAMESPACE),
        preconditions=(
            *_COMMON_PRECONDITIONS,
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
        rollback="Restore the container's resources from the snapshot.",
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
