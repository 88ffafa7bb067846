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
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Final

from kubernaut.common.v1 import remediation_pb2

from kubernaut.runtime.kube import ACTION_ID_ANNOTATION, TEMPLATE_DIGEST_ANNOTATION
from kubernaut.runtime.quantity import parse_quantity as _parse_quantity
from kubernaut.services.executor.catalogue import action_name

__all__ = [
    "ABSENT",
    "CONTROLLER_REVISION_HASH",
    "POD_TEMPLATE_HASH",
    "QUARANTINED",
    "RESTARTED_AT",
    "REVISION",
    "WORKLOAD_KINDS",
    "Change",
    "ChangeRefused",
    "Edit",
    "PlanContext",
    "RolloutState",
    "allowed_pointer",
    "assess_rollout",
    "assess_workload",
    "changes_template",
    "compute_change",
    "edit_at",
    "equivalent",
    "format_cpu",
    "format_memory",
    "has_annotations",
    "label_selector",
    "mark_ops",
    "mark_template",
    "own_taints",
    "parse_quantity",
    "pointer_get",
    "pointer_lookup",
    "scale_cpu",
    "scale_memory",
    "single",
    "spec_json",
    "template_after",
    "template_hash_label",
    "terminating",
    "unschedulable_reason",
    "waiting_reasons",
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


class _Absent:
    """A field that is not there (a JSON patch adds or removes it), as opposed to null."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()


@dataclass(frozen=True)
class Edit:
    """One value at one JSON pointer, before and after (either may be ABSENT)."""

    path: str
    before: Any
    after: Any

    def forward(self) -> dict[str, Any]:
        return _set_op(self.path, self.before, self.after)

    def backward(self) -> dict[str, Any]:
        return _set_op(self.path, self.after, self.before)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path}
        if self.before is not ABSENT:
            data["before"] = self.before
        if self.after is not ABSENT:
            data["after"] = self.after
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Edit:
        return cls(str(data["path"]), data.get("before", ABSENT), data.get("after", ABSENT))


def _set_op(path: str, old: Any, new: Any) -> dict[str, Any]:
    # "replace" and "remove" need the member to exist and "add" needs it absent, as the
    # resourceVersion precondition guarantees it is (the object is as planned).
    if new is ABSENT:
        return {"op": "remove", "path": path}
    return {"op": "add" if old is ABSENT else "replace", "path": path, "value": new}


@dataclass(frozen=True)
class Change:
    """What an action changes in its target, before and after: what is applied, dry-run
    first, and what a rollback restores. Stored as JSON so that a retry re-applies the same
    change."""

    summary: str
    edits: tuple[Edit, ...]

    @property
    def path(self) -> str:
        """The changed fields, for messages."""
        return ", ".join(e.path for e in self.edits)

    def patch(
        self, resource_version: str, marks: Sequence[dict[str, Any]] = ()
    ) -> list[dict[str, Any]]:
        """The JSON patch; `marks` (mark_ops) set Kubernaut's annotations in the same write."""
        return [_precondition(resource_version), *(e.forward() for e in self.edits), *marks]

    def restore_patch(
        self, resource_version: str, marks: Sequence[dict[str, Any]] = ()
    ) -> list[dict[str, Any]]:
        return [_precondition(resource_version), *(e.backward() for e in self.edits), *marks]

    def is_applied(self, obj: Mapping[str, Any]) -> bool:
        return all(_holds(obj, e.path, e.after) for e in self.edits)

    def is_restored(self, obj: Mapping[str, Any]) -> bool:
        return all(_holds(obj, e.path, e.before) for e in self.edits)

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "edits": [e.to_json() for e in self.edits]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        if "edits" not in data:  # a row stored before changes had several edits
            return cls(
                str(data["summary"]), (Edit(str(data["path"]), data["before"], data["after"]),)
            )
        return cls(str(data["summary"]), tuple(Edit.from_json(e) for e in data["edits"]))


def single(summary: str, path: str, before: Any, after: Any) -> Change:
    return Change(summary, (Edit(path, before, after),))


def _precondition(resource_version: str) -> dict[str, Any]:
    # Setting resourceVersion makes it a precondition: 409 Conflict when it is not current.
    return {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version}


def _holds(obj: Mapping[str, Any], path: str, value: Any) -> bool:
    current = pointer_lookup(obj, path)
    if path == TAINTS_PATH:  # the node controller's own taints come and go
        return equivalent(own_taints(current), own_taints(value))
    if value is ABSENT or current is ABSENT:
        return current is value
    return equivalent(current, value)


TAINTS_PATH: Final = "/spec/taints"
# Taints the node lifecycle controller sets and clears by itself (a cordon adds
# node.kubernetes.io/unschedulable), and puts back if lost.
CONTROLLER_TAINTS: Final = "node.kubernetes.io/"


def own_taints(taints: Any) -> list[Any]:
    """A node's taints without the node controller's own (ABSENT: none)."""
    if taints is ABSENT or not taints:
        return []
    return [t for t in taints if not str(t.get("key", "")).startswith(CONTROLLER_TAINTS)]


# -- JSON helpers -----------------------------------------------------------------------------


def pointer_parts(pointer: str) -> list[str]:
    """A JSON pointer's reference tokens, unescaped."""
    return [
        raw.replace("~1", "/").replace("~0", "~")
        for raw in (pointer.lstrip("/").split("/") if pointer else ())
    ]


def pointer_join(parts: Sequence[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def pointer_lookup(document: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or ABSENT when any step is missing."""
    node = document
    for part in pointer_parts(pointer):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return ABSENT
    return node


def pointer_get(document: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or None when any step is missing."""
    value = pointer_lookup(document, pointer)
    return None if value is ABSENT else value


def edit_at(document: Mapping[str, Any], pointer: str, value: Any) -> Edit:
    """The edit that sets `pointer` to `value`, made where the document's existing fields
    end: setting /data/k in a ConfigMap without `data` edits /data with {"k": value}."""
    parts = pointer_parts(pointer)
    node: Any = document
    for depth, part in enumerate(parts):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            continue
        if not isinstance(node, Mapping):
            raise ChangeRefused(f"{pointer_join(parts[:depth]) or '/'} is not an object")
        nested: Any = value
        for inner in reversed(parts[depth + 1 :]):
            nested = {inner: nested}
        return Edit(pointer_join(parts[: depth + 1]), ABSENT, nested)
    return Edit(pointer, copy.deepcopy(node), value)


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


def _limit_and_cap(resource: str, current: str, cap: str) -> tuple[Decimal, Decimal]:
    """The current limit and the cap as numbers; ChangeRefused naming the one that is not."""
    try:
        old = parse_quantity(current)
    except ValueError as exc:
        raise ChangeRefused(f"the current {resource} limit {current!r} is not a quantity") from exc
    try:
        return old, parse_quantity(cap)
    except ValueError as exc:
        raise ChangeRefused(f"max_limit {cap!r} is not a quantity") from exc


def scale_memory(current: str, factor: float, cap: str) -> tuple[str, bool]:
    """min(current x factor, cap) as a quantity string, and whether the cap applied.

    The product is rounded up to a whole MiB (a whole MB for "M"-style limits; KiB/kB below
    that), so that "100Mi" x 1.3 is "130Mi", not a byte count. Raises ChangeRefused when
    the result would not be above the current limit (it sits at or above the cap)."""
    old, ceiling = _limit_and_cap("memory", current, cap)
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

QUARANTINED: Final = "kubernaut.ai/quarantined"
KUBERNAUT_LABELS: Final = "kubernaut.ai/"


@dataclass(frozen=True)
class PlanContext:
    """What a change is computed from besides the target and the parameters."""

    # The action's time (the restart annotation's value).
    at: dt.datetime
    # The target's kind (Deployment, Node, ...).
    kind: str
    # rollback_deployment: the namespace's ReplicaSets of the Deployment's selector.
    replica_sets: Sequence[Mapping[str, Any]] = ()
    # patch_resource: kind -> allowed JSON pointers (a trailing "/*" allows what is below).
    patch_allowed_fields: Mapping[str, Sequence[str]] = field(default_factory=dict)


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    if meta.get("namespace"):
        return f"{meta['namespace']}/{meta.get('name', '')}"
    return str(meta.get("name", ""))


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
    return single(
        f"pod template from revision {current} back to revision {target} ({images})",
        TEMPLATE_PATH,
        before,
        after,
    )


def _restart(obj: Mapping[str, Any], at: dt.datetime, kind: str) -> Change:
    if kind != "DaemonSet" and (obj["spec"].get("replicas") or 0) == 0:
        raise ChangeRefused(f"{kind} {_name(obj)} has 0 replicas; nothing to restart")
    before = obj["spec"]["template"]
    after = copy.deepcopy(before)
    stamp = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    after.setdefault("metadata", {}).setdefault("annotations", {})[RESTARTED_AT] = stamp
    return single(f"pod template annotation {RESTARTED_AT}={stamp}", TEMPLATE_PATH, before, after)


def _scale(obj: Mapping[str, Any], replicas: int, kind: str) -> Change:
    before = obj["spec"].get("replicas")
    before = 1 if before is None else int(before)
    if before == replicas:
        raise ChangeRefused(f"{kind} {_name(obj)} has {before} replicas already; nothing to change")
    return single(f"replicas {before} -> {replicas}", SCALE_PATH, before, replicas)


def _container_index(obj: Mapping[str, Any], wanted: str, kind: str) -> int:
    containers = ((obj["spec"]["template"].get("spec") or {}).get("containers")) or []
    names = [c.get("name", "") for c in containers]
    if wanted:
        if wanted not in names:
            raise ChangeRefused(
                f"{kind} {_name(obj)} has no container {wanted!r} (containers: {', '.join(names)})"
            )
        return names.index(wanted)
    if len(containers) == 1:
        return 0
    raise ChangeRefused(
        f"{kind} {_name(obj)} has {len(containers)} containers ({', '.join(names)}); "
        "name the one to change"
    )


def scale_cpu(current: str, factor: float, cap: str) -> tuple[str, bool]:
    """min(current x factor, cap) as a CPU quantity rounded up to a whole millicore ("1500m",
    "2"), and whether the cap applied; ChangeRefused when it would not rise."""
    old, ceiling = _limit_and_cap("CPU", current, cap)
    new = (old * Decimal(repr(factor)) * 1000).to_integral_value(rounding=ROUND_CEILING) / 1000
    capped = new >= ceiling
    if capped:
        new = ceiling
    if new <= old:
        raise ChangeRefused(
            f"the CPU limit {current} is already at or above max_limit {cap}; nothing to raise"
        )
    return format_cpu(new), capped


def format_cpu(value: Decimal) -> str:
    millis = int((value * 1000).to_integral_value(rounding=ROUND_CEILING))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _raise_limit(
    obj: Mapping[str, Any], kind: str, resource: str, container: str, factor: float, cap: str
) -> Change:
    before = obj["spec"]["template"]
    index = _container_index(obj, container, kind)
    target = before["spec"]["containers"][index]
    name = target.get("name", "")
    limit = ((target.get("resources") or {}).get("limits") or {}).get(resource)
    if limit is None:
        raise ChangeRefused(f"container {name!r} has no {resource} limit to raise")
    scaler = scale_memory if resource == "memory" else scale_cpu
    new, capped = scaler(str(limit), factor, cap)
    after = copy.deepcopy(before)
    after["spec"]["containers"][index]["resources"]["limits"][resource] = new
    note = f" (capped at max_limit {cap})" if capped else ""
    return single(
        f"container {name!r} {resource} limit {limit} -> {new}{note}", TEMPLATE_PATH, before, after
    )


def _requests(
    obj: Mapping[str, Any], kind: str, params: remediation_pb2.UpdateResourceRequestsParams
) -> Change:
    before = obj["spec"]["template"]
    index = _container_index(obj, params.container, kind)
    target = before["spec"]["containers"][index]
    name = target.get("name", "")
    resources = target.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    wanted = {k: v for k, v in (("cpu", params.cpu), ("memory", params.memory)) if v}
    changed = []
    for resource, value in wanted.items():
        try:
            new = parse_quantity(value)
        except ValueError as exc:
            raise ChangeRefused(f"{resource} {value!r} is not a quantity") from exc
        if resource in limits and new > parse_quantity(limits[resource]):
            raise ChangeRefused(
                f"the {resource} request {value} would exceed container {name!r}'s limit "
                f"{limits[resource]}"
            )
        old = requests.get(resource)
        if old is None or parse_quantity(old) != new:
            changed.append(f"{resource} {old or 'unset'} -> {value}")
    if not changed:
        raise ChangeRefused(f"container {name!r} already requests {wanted}; nothing to change")
    after = copy.deepcopy(before)
    resources_after = after["spec"]["containers"][index].setdefault("resources", {})
    resources_after.setdefault("requests", {}).update(wanted)
    return single(f"container {name!r} requests {', '.join(changed)}", TEMPLATE_PATH, before, after)


def _hpa(obj: Mapping[str, Any], params: remediation_pb2.UpdateHpaParams) -> Change:
    spec = obj.get("spec") or {}
    old_min = int(spec.get("minReplicas") or 1)
    old_max = int(spec.get("maxReplicas") or 0)
    new_min = params.min_replicas or old_min
    new_max = params.max_replicas or old_max
    if new_min > new_max:
        raise ChangeRefused(
            f"minReplicas {new_min} would exceed maxReplicas {new_max} of "
            f"HorizontalPodAutoscaler {_name(obj)}"
        )
    edits = []
    parts = []
    if new_min != old_min:
        edits.append(Edit("/spec/minReplicas", spec.get("minReplicas", ABSENT), new_min))
        parts.append(f"minReplicas {old_min} -> {new_min}")
    if new_max != old_max:
        edits.append(Edit("/spec/maxReplicas", old_max, new_max))
        parts.append(f"maxReplicas {old_max} -> {new_max}")
    if not edits:
        raise ChangeRefused(
            f"HorizontalPodAutoscaler {_name(obj)} has minReplicas {old_min} and maxReplicas "
            f"{old_max} already; nothing to change"
        )
    return Change(", ".join(parts), tuple(edits))


def _cordon(node: Mapping[str, Any], cordon: bool) -> Change:
    current = pointer_lookup(node, "/spec/unschedulable")
    cordoned = current is True
    if cordoned == cordon:
        state = "cordoned" if cordon else "schedulable"
        raise ChangeRefused(f"Node {_name(node)} is {state} already; nothing to change")
    # Uncordoning removes the field, which is how the API server stores false.
    after: Any = True if cordon else ABSENT
    verb = "cordoned (unschedulable)" if cordon else "uncordoned (schedulable)"
    return single(f"node {verb}", "/spec/unschedulable", current, after)


_EFFECTS: Final = {
    remediation_pb2.TAINT_EFFECT_NO_SCHEDULE: "NoSchedule",
    remediation_pb2.TAINT_EFFECT_PREFER_NO_SCHEDULE: "PreferNoSchedule",
    remediation_pb2.TAINT_EFFECT_NO_EXECUTE: "NoExecute",
}


def _taint(node: Mapping[str, Any], params: remediation_pb2.TaintNodeParams) -> Change:
    before = pointer_lookup(node, "/spec/taints")
    taints = [] if before is ABSENT else copy.deepcopy(list(before))
    effect = _EFFECTS[params.effect]
    taint: dict[str, Any] = {"key": params.key, "effect": effect}
    if params.value:
        taint["value"] = params.value
    same = [t for t in taints if t.get("key") == params.key and t.get("effect") == effect]
    if same and same[0].get("value", "") == params.value:
        raise ChangeRefused(f"Node {_name(node)} has the taint {_taint_text(taint)} already")
    after = [t for t in taints if t not in same] + [taint]
    return single(f"taint {_taint_text(taint)} added", "/spec/taints", before, after)


def _untaint(node: Mapping[str, Any], params: remediation_pb2.UntaintNodeParams) -> Change:
    before = pointer_lookup(node, "/spec/taints")
    taints = [] if before is ABSENT else list(before)
    effect = _EFFECTS.get(params.effect)
    gone = [
        t
        for t in taints
        if t.get("key") == params.key and (effect is None or t.get("effect") == effect)
    ]
    if not gone:
        raise ChangeRefused(
            f"Node {_name(node)} has no taint {params.key}{':' + effect if effect else ''}"
        )
    kept = [copy.deepcopy(t) for t in taints if t not in gone]
    # An empty list is stored as no field at all.
    after: Any = kept if kept else ABSENT
    removed = ", ".join(_taint_text(t) for t in gone)
    return single(f"taint {removed} removed", "/spec/taints", before, after)


def _taint_text(taint: Mapping[str, Any]) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


def _expand(pvc: Mapping[str, Any], params: remediation_pb2.ExpandPvcParams) -> Change:
    path = "/spec/resources/requests/storage"
    current = pointer_get(pvc, path)
    if current is None:
        raise ChangeRefused(f"PersistentVolumeClaim {_name(pvc)} requests no storage")
    try:
        grows = parse_quantity(params.size) > parse_quantity(str(current))
    except ValueError as exc:
        raise ChangeRefused(str(exc)) from exc
    if not grows:
        raise ChangeRefused(
            f"PersistentVolumeClaim {_name(pvc)} requests {current}; {params.size} is not larger "
            "(a volume cannot shrink)"
        )
    return single(f"storage request {current} -> {params.size}", path, current, params.size)


def _quarantine(pod: Mapping[str, Any]) -> Change:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(QUARANTINED) == "true":
        raise ChangeRefused(f"Pod {_name(pod)} is quarantined already")
    # Every label but Kubernaut's own goes: Services and controllers select pods by labels,
    # so the pod leaves both (its controller releases it and starts a replacement); it
    # keeps running, and keeps its opt-in, so the quarantine can be undone.
    before = labels if labels else ABSENT
    kept = {k: v for k, v in labels.items() if k.startswith(KUBERNAUT_LABELS)}
    gone = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in kept) or "none"
    return single(
        f"pod labels ({gone}) replaced by {QUARANTINED}=true",
        "/metadata/labels",
        before,
        {**kept, QUARANTINED: "true"},
    )


def _configmap_key(
    configmap: Mapping[str, Any], params: remediation_pb2.UpdateConfigMapKeyParams
) -> Change:
    if params.key in (configmap.get("binaryData") or {}):
        raise ChangeRefused(f"ConfigMap {_name(configmap)} holds {params.key!r} as binary data")
    if (configmap.get("data") or {}).get(params.key) == params.value:
        raise ChangeRefused(
            f"ConfigMap {_name(configmap)} has that value for {params.key!r} already"
        )
    edit = edit_at(configmap, pointer_join(["data", params.key]), params.value)
    old = (configmap.get("data") or {}).get(params.key)
    was = "unset" if old is None else f"{len(old)} characters"
    return Change(f"key {params.key!r} ({was}) set to {len(params.value)} characters", (edit,))


def _suspend(cronjob: Mapping[str, Any], suspend: bool) -> Change:
    current = pointer_lookup(cronjob, "/spec/suspend")
    if (current is True) == suspend:
        state = "suspended" if suspend else "not suspended"
        raise ChangeRefused(f"CronJob {_name(cronjob)} is {state} already; nothing to change")
    return single(
        "suspended: no new Jobs start" if suspend else "resumed: Jobs start on schedule again",
        "/spec/suspend",
        current,
        suspend,
    )


def allowed_pointer(kind: str, pointer: str, allowed: Mapping[str, Sequence[str]]) -> bool:
    """Whether patch_resource may set `pointer` of a `kind`: an exact entry, or one ending
    in "/*" that is a proper prefix of it."""
    for rule in allowed.get(kind, ()):
        if rule.endswith("/*"):
            if pointer.startswith(rule[:-1]) and len(pointer) > len(rule) - 1:
                return True
        elif pointer == rule:
            return True
    return False


def _patch_resource(
    obj: Mapping[str, Any], params: remediation_pb2.PatchResourceParams, ctx: PlanContext
) -> Change:
    if not allowed_pointer(ctx.kind, params.path, ctx.patch_allowed_fields):
        allowed = ", ".join(ctx.patch_allowed_fields.get(ctx.kind, ())) or "nothing"
        raise ChangeRefused(
            f"patch_resource may not set {params.path} of a {ctx.kind} (allowed: {allowed}; "
            "KUBERNAUT_EXECUTOR_PATCH_ALLOWED_FIELDS)"
        )
    try:
        value = json.loads(params.value_json)
    except ValueError as exc:
        raise ChangeRefused(f"value_json is not JSON: {exc}") from exc
    edit = edit_at(obj, params.path, value)
    if edit.before is not ABSENT and equivalent(edit.before, edit.after):
        raise ChangeRefused(f"{params.path} has that value already; nothing to change")
    return Change(f"{params.path} set to {_clip(params.value_json, 200)}", (edit,))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compute_change(
    obj: Mapping[str, Any], params: remediation_pb2.ActionParams, ctx: PlanContext
) -> Change:
    """The change `params` makes to the target `obj` (plain JSON as the API server sent it).
    Raises ChangeRefused with the reason; ValueError for an action that changes no fields
    (delete_pod, drain_node, rerun_failed_job, collect_diagnostics, notify_only)."""
    name = action_name(params)
    kind = ctx.kind
    match name:
        case "rollback_deployment":
            return _rollback(obj, params.rollback_deployment, ctx.replica_sets)
        case "restart_deployment" | "restart_statefulset" | "restart_daemonset":
            return _restart(obj, ctx.at, kind)
        case "scale_deployment":
            return _scale(obj, params.scale_deployment.replicas, kind)
        case "scale_statefulset":
            return _scale(obj, params.scale_statefulset.replicas, kind)
        case "increase_memory_limit":
            p = params.increase_memory_limit
            return _raise_limit(obj, kind, "memory", p.container, p.factor, p.max_limit)
        case "increase_cpu_limit":
            q = params.increase_cpu_limit
            return _raise_limit(obj, kind, "cpu", q.container, q.factor, q.max_limit)
        case "update_resource_requests":
            return _requests(obj, kind, params.update_resource_requests)
        case "update_hpa":
            return _hpa(obj, params.update_hpa)
        case "cordon_node":
            return _cordon(obj, True)
        case "uncordon_node":
            return _cordon(obj, False)
        case "taint_node":
            return _taint(obj, params.taint_node)
        case "untaint_node":
            return _untaint(obj, params.untaint_node)
        case "expand_pvc":
            return _expand(obj, params.expand_pvc)
        case "quarantine_pod":
            return _quarantine(obj)
        case "update_configmap_key":
            return _configmap_key(obj, params.update_configmap_key)
        case "suspend_cronjob":
            return _suspend(obj, True)
        case "resume_cronjob":
            return _suspend(obj, False)
        case "patch_resource":
            return _patch_resource(obj, params.patch_resource, ctx)
    raise ValueError(f"{name} changes no fields of its target")


def changes_template(change: Change) -> bool:
    """Whether the change rolls out a new pod template."""
    return any(e.path.startswith(TEMPLATE_PATH) for e in change.edits)


# -- Kubernaut's marks ------------------------------------------------------------------------


def _in_template(path: str) -> bool:
    return path == TEMPLATE_PATH or path.startswith(TEMPLATE_PATH + "/")


def _apply_edit(document: Any, edit: Edit) -> None:
    """Apply one edit to `document` in place (the paths edit_at and the actions build)."""
    parts = pointer_parts(edit.path)
    node = document
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        if edit.after is ABSENT:
            del node[int(last)]
        elif last == "-":
            node.append(copy.deepcopy(edit.after))
        else:
            node[int(last)] = copy.deepcopy(edit.after)
    elif edit.after is ABSENT:
        node.pop(last, None)
    else:
        node[last] = copy.deepcopy(edit.after)


def template_after(obj: Mapping[str, Any], change: Change) -> dict[str, Any]:
    """The workload's pod template once the change's template edits are applied."""
    document = {"spec": {"template": copy.deepcopy(obj["spec"]["template"])}}
    for edit in change.edits:
        if _in_template(edit.path):
            _apply_edit(document, edit)
    template: dict[str, Any] = document["spec"]["template"]
    return template


def mark_template(obj: Mapping[str, Any], change: Change, digest: str, action_id: str) -> Change:
    """The change with its template edits made one edit of the whole pod template, which
    carries `digest` (pod_spec_digest of the new template's spec as the API server stores
    it) in the annotation kubernaut.ai/template-digest, and the action's id. A revision made
    of it is then known as Kubernaut's, also once the object's sticky annotations are
    copied onto a person's later revision (whose changed spec no longer matches the
    digest). The restore still puts back the snapshot's template, byte for byte."""
    if not changes_template(change):
        return change
    after = template_after(obj, change)
    metadata = after.setdefault("metadata", {})
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        TEMPLATE_DIGEST_ANNOTATION: digest,
        ACTION_ID_ANNOTATION: action_id,
    }
    kept = tuple(e for e in change.edits if not _in_template(e.path))
    before = copy.deepcopy(obj["spec"]["template"])
    return Change(change.summary, (*kept, Edit(TEMPLATE_PATH, before, after)))


def has_annotations(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("annotations"))


def mark_ops(annotated: bool, marks: Mapping[str, str]) -> list[dict[str, Any]]:
    """JSON patch operations that set `marks` in the object's metadata.annotations.
    `annotated`: the object has annotations at the resourceVersion the patch carries (its
    precondition, so this cannot have changed): then one "add" per key (which replaces an
    existing key), else the whole map."""
    if not marks:
        return []
    if not annotated:
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(marks)}]
    return [
        {"op": "add", "path": pointer_join(["metadata", "annotations", key]), "value": value}
        for key, value in marks.items()
    ]


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


def terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def waiting_reasons(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    reasons = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                reasons.append(str(waiting["reason"]))
    return reasons


def unschedulable_reason(pod: Mapping[str, Any]) -> str:
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
    live = [p for p in pods if not terminating(p)]
    crashing = [
        (p.get("metadata") or {}).get("name", "?")
        for p in live
        if CRASH_REASONS.intersection(waiting_reasons(p))
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
    pending = [msg for p in live if (msg := unschedulable_reason(p))]
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


# The label that tells a workload's pods of one template from another.
CONTROLLER_REVISION_HASH: Final = "controller-revision-hash"
WORKLOAD_KINDS: Final = frozenset({"Deployment", "StatefulSet", "DaemonSet"})


def template_hash_label(kind: str) -> str:
    return POD_TEMPLATE_HASH if kind == "Deployment" else CONTROLLER_REVISION_HASH


def _pods_verdict(
    kind: str,
    pods: Sequence[Mapping[str, Any]],
    *,
    complete: bool,
    desired: int,
    summary: str,
    old_hashes: frozenset[str] | None,
) -> RolloutState:
    """The pod-level half of judging a StatefulSet's or DaemonSet's rollout."""
    label = template_hash_label(kind)
    live = [p for p in pods if not terminating(p)]
    crashing = sorted(
        (p.get("metadata") or {}).get("name", "?")
        for p in live
        if CRASH_REASONS.intersection(waiting_reasons(p))
    )
    new_crashing = [
        p
        for p in live
        if old_hashes is not None
        and (p.get("metadata") or {}).get("name", "?") in crashing
        and ((p.get("metadata") or {}).get("labels") or {}).get(label) not in old_hashes
    ]
    pending = [msg for p in live if (msg := unschedulable_reason(p))]
    if pending:
        summary += f"; {len(pending)} pods unschedulable: {pending[0]}"
    if crashing:
        summary += f"; in CrashLoopBackOff: {', '.join(crashing)}"
    if new_crashing:
        return RolloutState(False, True, summary)
    pods_there = len(pods) == 0 if desired == 0 else len(live) == desired
    if complete and pods_there and not crashing:
        return RolloutState(True, False, summary)
    return RolloutState(False, complete and pods_there and bool(crashing), summary)


def assess_statefulset(
    statefulset: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    generation: int,
    old_hashes: frozenset[str] | None = None,
) -> RolloutState:
    """A StatefulSet's rollout is done when the controller observed `generation`, every
    replica is updated, ready and available, and current and update revisions agree."""
    spec, status = statefulset.get("spec") or {}, statefulset.get("status") or {}
    desired = 1 if spec.get("replicas") is None else int(spec["replicas"])
    observed = int(status.get("observedGeneration") or 0)
    counts = {
        k: int(status.get(k) or 0)
        for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
    }
    same_revision = status.get("currentRevision") == status.get("updateRevision")
    summary = (
        f"{counts['updatedReplicas']}/{desired} updated, {counts['readyReplicas']} ready, "
        f"{counts['availableReplicas']} available, {len(pods)} pods"
    )
    if observed < generation:
        summary = f"generation {generation} not yet observed (at {observed}); " + summary
    complete = (
        observed >= generation
        and all(c == desired for c in counts.values())
        and (same_revision or desired == 0)
    )
    return _pods_verdict(
        "StatefulSet",
        pods,
        complete=complete,
        desired=desired,
        summary=summary,
        old_hashes=old_hashes,
    )


def assess_daemonset(
    daemonset: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    generation: int,
    old_hashes: frozenset[str] | None = None,
) -> RolloutState:
    """A DaemonSet's rollout is done when the controller observed `generation` and every
    node that should run a pod runs an updated, ready, available one."""
    status = daemonset.get("status") or {}
    desired = int(status.get("desiredNumberScheduled") or 0)
    observed = int(status.get("observedGeneration") or 0)
    counts = {
        k: int(status.get(k) or 0)
        for k in (
            "currentNumberScheduled",
            "updatedNumberScheduled",
            "numberReady",
            "numberAvailable",
        )
    }
    summary = (
        f"{counts['updatedNumberScheduled']}/{desired} updated, {counts['numberReady']} ready, "
        f"{counts['numberAvailable']} available, {len(pods)} pods"
    )
    if observed < generation:
        summary = f"generation {generation} not yet observed (at {observed}); " + summary
    complete = (
        observed >= generation
        and all(c == desired for c in counts.values())
        and not int(status.get("numberMisscheduled") or 0)
    )
    return _pods_verdict(
        "DaemonSet",
        pods,
        complete=complete,
        desired=desired,
        summary=summary,
        old_hashes=old_hashes,
    )


def assess_workload(
    kind: str,
    obj: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    generation: int,
    old_hashes: frozenset[str] | None = None,
) -> RolloutState:
    assess = {
        "Deployment": assess_rollout,
        "StatefulSet": assess_statefulset,
        "DaemonSet": assess_daemonset,
    }[kind]
    return assess(obj, pods, generation=generation, old_hashes=old_hashes)
