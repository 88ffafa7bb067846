"""The scope stage: may this action touch this target at all?

Refused: kinds the action does not act on, a namespace missing (or given for a
cluster-scoped kind), protected namespaces and nodes, namespaces outside the cluster's
allow list or inside its deny list, control-plane nodes, and objects that have not opted in
(kubernaut.ai/managed=true on the object or its namespace). FAILED when the target does not
exist. Returns the target as read (None for an action that reads nothing).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Final, NoReturn, Protocol

from kubernaut.common.v1 import alert_pb2

from kubernaut.runtime.kube import MANAGED_LABEL, is_managed
from kubernaut.services.executor import catalogue
from kubernaut.services.executor.cluster import KINDS, ApiError, Cluster
from kubernaut.services.executor.run import Run, where
from kubernaut.services.executor.settings import ExecutorSettings

CONTROL_PLANE_LABELS: Final = (
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
)


def _matches(name: str, patterns: tuple[str, ...] | frozenset[str]) -> str | None:
    return next((p for p in sorted(patterns) if fnmatch.fnmatchcase(name, p)), None)


class ScopeContext(Protocol):
    """What the scope checks use of one call: an action's Run, or a RunCheck's
    (kubernaut.services.executor.checks). `refuse` and `fail` raise."""

    ref: alert_pb2.ResourceRef
    settings: ExecutorSettings
    cluster_name: str
    seen: dict[str, Any] | None

    def stage(self, line: str) -> None: ...
    def refuse(self, line: str, message: str) -> NoReturn: ...
    def fail(self, line: str, message: str) -> NoReturn: ...
    def what(self) -> str: ...
    async def cluster(self) -> Cluster: ...
    async def read(self) -> dict[str, Any]: ...


async def check_scope(run: Run) -> dict[str, Any] | None:
    ref = run.ref
    definition = catalogue.describe_action(run.action)
    if ref.kind not in definition.target_kinds:
        run.refuse(
            f"scope: refused: {run.action} acts on {', '.join(definition.target_kinds)}, "
            f"not {ref.kind or 'an unnamed kind'}",
            f"{run.action} cannot act on {ref.kind or 'an unnamed kind'}",
        )
    check_placement(run)
    if not run.operation.reads_target:
        run.stage("scope: ok: the action reads and changes nothing")
        return None
    return await read_in_scope(run)


def check_placement(run: ScopeContext) -> None:
    """What the reference alone decides: a namespace where the kind has one (and none
    where it has not), protected namespaces, the cluster's allow and deny lists, protected
    nodes. The kind must be one of KINDS."""
    ref, settings = run.ref, run.settings
    namespaced = KINDS[ref.kind].namespaced
    if namespaced and not ref.namespace:
        run.refuse("scope: refused: the target names no namespace", "no namespace given")
    if not namespaced and ref.namespace:
        run.refuse(
            f"scope: refused: a {ref.kind} has no namespace (got {ref.namespace})",
            f"{run.what()} refused: a {ref.kind} has no namespace",
        )
    if namespaced:
        _namespace_scope(run, ref.namespace)
    elif ref.kind == "Node" and (pattern := _matches(ref.name, settings.protected_nodes)):
        run.refuse(
            f"scope: refused: node {ref.name} is protected ({pattern} in "
            "KUBERNAUT_EXECUTOR_PROTECTED_NODES)",
            f"{run.what()} refused: node {ref.name} is protected",
        )


async def read_in_scope(run: ScopeContext) -> dict[str, Any]:
    """Read the target and check what the object decides: not a control-plane node, and
    opted in (kubernaut.ai/managed=true on it or its namespace) unless the settings say
    otherwise. Returns the target as read. Call check_placement first."""
    ref, settings = run.ref, run.settings
    namespaced = KINDS[ref.kind].namespaced
    cluster = await run.cluster()
    try:
        target = await run.read()
    except ApiError as error:
        _read_error(run, error, f"{KINDS[ref.kind].plural} {ref.name}")
    run.seen = target
    labels = (target.get("metadata") or {}).get("labels") or {}
    if ref.kind == "Node" and (
        role := next((k for k in CONTROL_PLANE_LABELS if k in labels), None)
    ):
        run.refuse(
            f"scope: refused: node {ref.name} is a control-plane node ({role})",
            f"{run.what()} refused: node {ref.name} is a control-plane node",
        )
    if not settings.require_opt_in:
        run.stage("scope: ok: opt-in not required by the settings")
    elif is_managed(labels):
        run.stage(f"scope: ok: the {ref.kind} carries {MANAGED_LABEL}=true")
    elif not namespaced:
        run.refuse(
            f"scope: refused: {where(ref)} does not carry the label {MANAGED_LABEL}=true "
            "(not opted in)",
            f"{run.what()} refused: not opted in (label {MANAGED_LABEL}=true on the {ref.kind})",
        )
    else:
        try:
            namespace = await cluster.namespace(ref.namespace)
        except ApiError as error:
            _read_error(run, error, f"namespaces {ref.namespace}")
        if is_managed((namespace.get("metadata") or {}).get("labels")):
            run.stage(f"scope: ok: namespace {ref.namespace} carries {MANAGED_LABEL}=true")
        else:
            run.refuse(
                f"scope: refused: neither {where(ref)} nor its namespace carries the label "
                f"{MANAGED_LABEL}=true (not opted in)",
                f"{run.what()} refused: not opted in (label {MANAGED_LABEL}=true on the "
                f"{ref.kind} or its namespace)",
            )
    return target


def _namespace_scope(run: ScopeContext, namespace: str) -> None:
    settings = run.settings
    if namespace in settings.protected_namespaces:
        run.refuse(
            f"scope: refused: namespace {namespace} is protected "
            "(KUBERNAUT_EXECUTOR_PROTECTED_NAMESPACES)",
            f"{run.what()} refused: namespace {namespace} is protected",
        )
    scope = settings.cluster_scopes.get(run.cluster_name)
    if scope is None:
        return
    if pattern := _matches(namespace, scope.deny):
        run.refuse(
            f"scope: refused: namespace {namespace} is in cluster {run.cluster_name}'s deny "
            f"list ({pattern}; KUBERNAUT_EXECUTOR_CLUSTER_SCOPES)",
            f"{run.what()} refused: namespace {namespace} is denied in cluster {run.cluster_name}",
        )
    if scope.allow and not _matches(namespace, scope.allow):
        run.refuse(
            f"scope: refused: namespace {namespace} is not in cluster {run.cluster_name}'s "
            f"allow list ({', '.join(scope.allow)}; KUBERNAUT_EXECUTOR_CLUSTER_SCOPES)",
            f"{run.what()} refused: namespace {namespace} is not allowed in cluster "
            f"{run.cluster_name}",
        )


def _read_error(run: ScopeContext, error: ApiError, what: str) -> NoReturn:
    if error.not_found:
        run.fail(
            f"scope: failed: {error.message or what + ' not found'}",
            f"{run.what()} failed: the target does not exist ({error.message})",
        )
    if error.forbidden:
        run.refuse(
            f"scope: refused: the executor's identity may not get {what}: {error.message}",
            f"{run.what()} refused: the executor may not read {what}",
        )
    run.fail(f"scope: failed: reading {what}: {error}", f"{run.what()} failed: {error}")
