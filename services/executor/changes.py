"""What an action changes, computed from the Deployment as the API server returned it (plain
JSON, camelCase) and the action's parameters; and how a rollout is judged. No I/O here.

Every change is one value at one JSON pointer of the Deployment: `/spec/replicas` for a
scale, `/spec/template` for the others (the whole pod template, so that the dry-run, the
apply and the restore all send exactly the object that is meant, and a restore puts back
every byte of the template the snapshot holds). The apply and the restore are JSON patches
that also set `/metadata/resourceVersion`, which the API server treats as a precondition: a
Deployment changed by someone else since it was read answers 409 Conflict, never clobbered.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Final

from kubernaut.common.v1 import remediation_pb2

# The `kubernetes` package's parser (it ships no type information).
from kubernetes.utils.quantity import (  # type: ignore[import-untyped]
    parse_quantity as _parse_quantity,
)

from services.executor.catalogue import action_name

__all__ = [
    "POD_TEMPLATE_HASH",
    "RESTARTED_AT",
    "REVISION",
    "Change",
    "ChangeRefused",
    "RolloutState",
    "assess_rollout",
    "compute_change",
    "equivalent",
    "format_memory",
    "label_selector",
    "parse_quantity",
    "pointer_get",
    "scale_memory",
    "spec_json",
]

REVISION: Final = "deployment.kubernetes.io/revision"
POD_TEMPLATE_HASH: Final = "pod-template-hash"
RESTARTED_AT: Final = "kubectl.kubernetes.io/restartedAt"

SCALE_PATH: Final = "/spec/replicas"
TEMPLATE_PATH: Final = "/spec/template"

# Kubernetes quantity suffixes, largest first.
_EXPONENTS: Final = ((6, "E"), (5, "P"), (4, "T"), (3, "G"), (2, "M"), (1, "k"))
_BINARY: Final = tuple((f"{s.upper()}i", 1024**n) for n, s in _EXPONENTS)
_DECIMAL: Final = tuple((s, 1000**n) for n, s in _EXPONENTS)
# Waiting reasons that mean a new pod will not become healthy by waiting.
CRASH_REASONS: Final = frozenset({"CrashLoopBackOff"})


class ChangeRefused(ValueError):
    """The action cannot be computed for this Deployment (no such container, no memory
    limit, no earlier revision, nothing to change, ...): the action FAILS with this reason
    and nothing is sent to the cluster."""


@dataclass(frozen=True)
class Change:
    """One value of the Deployment, before and after: what is applied, dry-run first, and
    what a rollback restores. Stored as JSON so that a retry re-applies the same change."""

    summary: str
    path: str
    before: Any
    after: Any

    def patch(self, resource_version: str) -> list[dict[str, Any]]:
        return _patch(self.path, self.after, resource_version)

    def restore_patch(self, resource_version: str) -> list[dict[str, Any]]:
        return _patch(self.path, self.before, resource_version)

    def is_applied(self, deployment: Mapping[str, Any]) -> bool:
        return equivalent(pointer_get(deployment, self.path), self.after)

    def is_restored(self, deployment: Mapping[str, Any]) -> bool:
        return equivalent(pointer_get(deployment, self.path), self.before)

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "path": self.path,
            "before": self.before,
            "after": self.after,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        return cls(str(data["summary"]), str(data["path"]), data["before"], data["after"])


def _patch(path: str, value: Any, resource_version: str) -> list[dict[str, Any]]:
    # Setting resourceVersion makes it a precondition: 409 Conflict when it is not current.
    return [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version},
        {"op": "replace", "path": path, "value": value},
    ]


# -- JSON helpers -----------------------------------------------------------------------------


def pointer_get(document: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or None when any step is missing."""
    node = document
    for raw in pointer.lstrip("/").split("/") if pointer else ():
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def equivalent(a: Any, b: Any, *, quantities: bool = False) -> bool:
    """Equal as JSON, except that resource quantities (under `limits`, `requests` or
    `resources`) compare by value: the API server stores "1.5Gi" as "1536Mi"."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return False
        return all(
            equivalent(a[k], b[k], quantities=quantities or k in ("limits", "requests")) for k in a
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            equivalent(x, y, quantities=quantities) for x, y in zip(a, b, strict=True)
        )
    if quantities and isinstance(a, str | int) and isinstance(b, str | int) and a != b:
        try:
            return parse_quantity(a) == parse_quantity(b)
        except ValueError:
            return False
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def spec_json(deployment: Mapping[str, Any]) -> str:
    """The Deployment's spec as compact JSON with sorted keys (stable for comparisons)."""
    return json.dumps(deployment.get("spec") or {}, sort_keys=True, separators=(",", ":"))


def label_selector(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector (matchLabels and matchExpressions) as a selector string."""
    selector = selector or {}
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = ",".join(sorted(expression.get("values") or []))
        if operator == "In":
            terms.append(f"{key} in ({values})")
        elif operator == "NotIn":
            terms.append(f"{key} notin ({values})")
        elif operator == "Exists":
            terms.append(key)
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            raise ValueError(f"unknown label selector operator {operator!r}")
    return ",".join(terms)


# -- quantities -------------------------------------------------------------------------------


def parse_quantity(value: str | int | float | Decimal) -> Decimal:
    """A Kubernetes quantity ("512Mi", "1.5G", "100m") as a Decimal; ValueError when it
    is not one."""
    try:
        parsed = _parse_quantity(value)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from exc
    if not isinstance(parsed, Decimal) or not parsed.is_finite():
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return parsed


def _is_decimal_si(quantity: str) -> bool:
    """True for "500M"-style suffixes; binary ("Mi") and plain numbers are not."""
    return quantity[-1:] in {"k", "M", "G", "T", "P", "E"}


def format_memory(value: Decimal, *, decimal_si: bool = False) -> str:
    """A byte count as the API server would print it: whole bytes (rounded up), with the
    largest suffix of the family that divides it exactly ("1536Mi", "1500M", "1000")."""
    whole = int(value.to_integral_value(rounding=ROUND_CEILING))
    if whole <= 0:
        return str(whole)
    for suffix, size in _DECIMAL if decimal_si else _BINARY:
        if whole % size == 0:
            return f"{whole // size}{suffix}"
    return str(whole)


def scale_memory(current: str, factor: float, cap: str) -> tuple[str, bool]:
    """min(current x factor, cap) as a quantity string, and whether the cap applied.

    The product is rounded up to a whole MiB (a whole MB for "M"-style limits; KiB/kB below
    that), so that "100Mi" x 1.3 is "130Mi", not a byte count. Raises ChangeRefused when
    the result would not be above the current limit (it sits at or above the cap)."""
    try:
        old = parse_quantity(current)
    except ValueError as exc:
        raise ChangeRefused(f"the current memory limit {current!r} is not a quantity") from exc
    try:
        ceiling = parse_quantity(cap)
    except ValueError as exc:
        raise ChangeRefused(f"max_limit {cap!r} is not a quantity") from exc
    decimal_si = _is_decimal_si(current)
    raw = old * Decimal(repr(factor))
    step = Decimal(1000**2 if decimal_si else 1024**2)
    if raw < step:
        step = Decimal(1000 if decimal_si else 1024)
    if raw < step:
        step = Decimal(1)
    new = (raw / step).to_integral_value(rounding=ROUND_CEILING) * step
    capped = new >= ceiling
    if capped:
        new = ceiling
        decimal_si = _is_decimal_si(cap)
    if new <= old:
        raise ChangeRefused(
            f"the memory limit {current} is already at or above max_limit {cap}; nothing to raise"
        )
    return format_memory(new, decimal_si=decimal_si), capped


# -- computing a change -----------------------------------------------------------------------


def _name(deployment: Mapping[str, Any]) -> str:
    meta = deployment.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _revision(obj: Mapping[str, Any]) -> int:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(REVISION) or 0)
    except ValueError:
        return 0


def _owned_by(replica_set: Mapping[str, Any], uid: str) -> bool:
    owners = (replica_set.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("uid") == uid and o.get("controller") for o in owners)


def _template_of_revision(replica_set: Mapping[str, Any]) -> dict[str, Any]:
    """The ReplicaSet's pod template as a Deployment template: without the
    pod-template-hash label the controller adds (as `kubectl rollout undo` does)."""
    template: dict[str, Any] = copy.deepcopy(replica_set["spec"]["template"])
    labels = (template.get("metadata") or {}).get("labels")
    if labels is not None:
        labels.pop(POD_TEMPLATE_HASH, None)
    return template


def _rollback(
    deployment: Mapping[str, Any],
    params: remediation_pb2.RollbackDeploymentParams,
    replica_sets: Sequence[Mapping[str, Any]],
) -> Change:
    uid = (deployment.get("metadata") or {}).get("uid", "")
    current = _revision(deployment)
    by_revision: dict[int, Mapping[str, Any]] = {}
    for replica_set in replica_sets:
        if _owned_by(replica_set, uid) and (number := _revision(replica_set)) > 0:
            by_revision[number] = replica_set
    retained = ", ".join(str(n) for n in sorted(by_revision)) or "none"
    if params.to_revision == 0:
        earlier = [n for n in by_revision if n < current]
        if not earlier:
            raise ChangeRefused(
                f"Deployment {_name(deployment)} has no revision before {current} "
                f"(retained revisions: {retained})"
            )
        target = max(earlier)
    else:
        target = params.to_revision
        if target == current:
            raise ChangeRefused(f"Deployment {_name(deployment)} is at revision {target} already")
        if target not in by_revision:
            raise ChangeRefused(
                f"revision {target} of Deployment {_name(deployment)} is not retained "
                f"(retained revisions: {retained})"
            )
    before = deployment["spec"]["template"]
    after = _template_of_revision(by_revision[target])
    if equivalent(before, after):
        raise ChangeRefused(
            f"revision {target} has the same pod template as the current revision {current}"
        )
    images = ", ".join(c.get("image", "?") for c in after.get("spec", {}).get("containers", []))
    return Change(
        f"pod template from revision {current} back to revision {target} ({images})",
        TEMPLATE_PATH,
        before,
        after,
    )


def _restart(deployment: Mapping[str, Any], at: dt.datetime) -> Change:
    if (deployment["spec"].get("replicas") or 0) == 0:
        raise ChangeRefused(f"Deployment {_name(deployment)} has 0 replicas; nothing to restart")
    before = deployment["spec"]["template"]
    after = copy.deepcopy(before)
    stamp = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    after.setdefault("metadata", {}).setdefault("annotations", {})[RESTARTED_AT] = stamp
    return Change(f"pod template annotation {RESTARTED_AT}={stamp}", TEMPLATE_PATH, before, after)


def _scale(deployment: Mapping[str, Any], params: remediation_pb2.ScaleDeploymentParams) -> Change:
    before = deployment["spec"].get("replicas")
    before = 1 if before is None else int(before)
    if before == params.replicas:
        raise ChangeRefused(
            f"Deployment {_name(deployment)} has {before} replicas already; nothing to change"
        )
    return Change(f"replicas {before} -> {params.replicas}", SCALE_PATH, before, params.replicas)


def _memory(
    deployment: Mapping[str, Any], params: remediation_pb2.IncreaseMemoryLimitParams
) -> Change:
    before = deployment["spec"]["template"]
    containers = (before.get("spec") or {}).get("containers") or []
    names = [c.get("name", "") for c in containers]
    if params.container:
        if params.container not in names:
            raise ChangeRefused(
                f"Deployment {_name(deployment)} has no container {params.container!r} "
                f"(containers: {', '.join(names)})"
            )
        index = names.index(params.container)
    elif len(containers) == 1:
        index = 0
    else:
        raise ChangeRefused(
            f"Deployment {_name(deployment)} has {len(containers)} containers "
            f"({', '.join(names)}); name the one to change"
        )
    name = names[index]
    limit = ((containers[index].get("resources") or {}).get("limits") or {}).get("memory")
    if limit is None:
        raise ChangeRefused(f"container {name!r} has no memory limit to raise")
    new, capped = scale_memory(str(limit), params.factor, params.max_limit)
    after = copy.deepcopy(before)
    after["spec"]["containers"][index]["resources"]["limits"]["memory"] = new
    note = f" (capped at max_limit {params.max_limit})" if capped else ""
    return Change(
        f"container {name!r} memory limit {limit} -> {new}{note}", TEMPLATE_PATH, before, after
    )


def compute_change(
    deployment: Mapping[str, Any],
    params: remediation_pb2.ActionParams,
    *,
    at: dt.datetime,
    replica_sets: Sequence[Mapping[str, Any]] = (),
) -> Change:
    """The change `params` makes to `deployment`. `at` is the action's time (the restart
    annotation); `replica_sets` are the namespace's ReplicaSets of the Deployment's
    selector (rollback only). Raises ChangeRefused with the reason."""
    name = action_name(params)
    if name == "rollback_deployment":
        return _rollback(deployment, params.rollback_deployment, replica_sets)
    if name == "restart_deployment":
        return _restart(deployment, at)
    if name == "scale_deployment":
        return _scale(deployment, params.scale_deployment)
    if name == "increase_memory_limit":
        return _memory(deployment, params.increase_memory_limit)
    raise ChangeRefused(f"the executor does not implement {name}")


def changes_template(params: remediation_pb2.ActionParams) -> bool:
    """Whether the action rolls out a new pod template (all but scale)."""
    return action_name(params) != "scale_deployment"


# -- judging a rollout ------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutState:
    """One look at a Deployment and its pods during verification."""

    # The rollout completed and every pod is healthy.
    done: bool
    # It cannot become healthy by waiting (crash loop, progress deadline exceeded).
    broken: bool
    # What was seen, one line, e.g. "3/3 updated, 3 ready, 3 available".
    summary: str


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _waiting_reasons(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    reasons = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                reasons.append(str(waiting["reason"]))
    return reasons


def _unschedulable(pod: Mapping[str, Any]) -> str:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            text = str(condition.get("message") or condition.get("reason") or "unschedulable")
            # The scheduler's first sentence says why; the rest is about preemption.
            return text.split(". ", 1)[0].rstrip(".")
    return ""


def assess_rollout(
    deployment: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    generation: int,
    old_hashes: frozenset[str] | None = None,
) -> RolloutState:
    """Whether the rollout of `generation` completed: the controller observed it, updated ==
    ready == available == desired replicas and no old replicas remain, the pods are there
    (none at all for 0 replicas), and none waits in CrashLoopBackOff. With `old_hashes` (the
    pod-template hashes before the change), a pod with another hash belongs to the new
    template: a crash loop there is `broken` at once. ProgressDeadlineExceeded is too."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    replicas = spec.get("replicas")
    desired = 1 if replicas is None else int(replicas)
    observed = int(status.get("observedGeneration") or 0)
    counts = {
        key: int(status.get(key) or 0)
        for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
    }
    live = [p for p in pods if not _terminating(p)]
    crashing = [
        (p.get("metadata") or {}).get("name", "?")
        for p in live
        if CRASH_REASONS.intersection(_waiting_reasons(p))
    ]
    new_crashing = [
        name
        for p in live
        if old_hashes is not None
        and (name := (p.get("metadata") or {}).get("name", "?")) in crashing
        and ((p.get("metadata") or {}).get("labels") or {}).get(POD_TEMPLATE_HASH) not in old_hashes
    ]
    summary = (
        f"{counts['updatedReplicas']}/{desired} updated, {counts['readyReplicas']} ready, "
        f"{counts['availableReplicas']} available, {len(live)} pods"
    )
    if observed < generation:
        summary = f"generation {generation} not yet observed (at {observed}); " + summary
    pending = [msg for p in live if (msg := _unschedulable(p))]
    if pending:
        summary += f"; {len(pending)} pods unschedulable: {pending[0]}"
    if crashing:
        summary += f"; in CrashLoopBackOff: {', '.join(sorted(crashing))}"
    deadline = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        ),
        None,
    )
    if observed >= generation and deadline is not None:
        return RolloutState(False, True, f"progress deadline exceeded: {summary}")
    if new_crashing:
        return RolloutState(False, True, summary)
    complete = observed >= generation and all(count == desired for count in counts.values())
    pods_there = len(pods) == 0 if desired == 0 else len(live) == desired
    if complete and pods_there and not crashing:
        return RolloutState(True, False, summary)
    if complete and pods_there and crashing:
        # Every pod left is of the new template: it crashes.
        return RolloutState(False, True, summary)
    return RolloutState(False, False, summary)
