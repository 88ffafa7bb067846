"""The decision contract: the only way a model's answer becomes an action.

The model decides by calling the `decide` tool, whose schema is generated from the
executor's catalogue (ListActions): one branch per action it may take, with that action's
parameter schema (from the parameter message and its protovalidate rules) and the targets
it may act on, plus `not_actionable` with a reason. Servers with constrained decoding
cannot even produce anything else; every answer is still validated here, because a remote
model (or a hostile one) may send anything:

- the action is one offered (in the catalogue, fitting a target kind, not a free-form write);
- the target is the alert's resource, its workload, or a node its pods run on, as
  context_api resolved them;
- the parameters parse into the action's message and pass its protovalidate rules, and stay
  within the analysis' own caps (tighter than the proto's: e.g. a scale never beyond twice
  the pods seen, never to zero).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor, json_format
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.executor.v1 import executor_pb2

from kubernaut.runtime.validation import violations_of
from kubernaut.services.ai_analysis.providers.base import JsonObject, ToolSpec
from kubernaut.services.ai_analysis.quantities import quantity

DECIDE = "decide"
REMEDIATE = "remediate"
NOT_ACTIONABLE = "not_actionable"
# Free-form writes (any JSON at any path; any ConfigMap value) are never offered to a
# model: their parameters are exactly where injected text would go.
NEVER_OFFERED = frozenset({"patch_resource", "update_configmap_key"})
MAX_REASON_CHARS = 600
# A model's scale stays within this factor of the pods seen (and at least one).
SCALE_FACTOR_CAP = 2
SCALE_ADD_CAP = 2
# A model's limit increase stays at or below this factor (the proto allows 4).
LIMIT_FACTOR_CAP = 2.0
# A model's volume expansion stays at or below this factor of the claim's size.
PVC_GROWTH_CAP = 2

_ONEOF = remediation_pb2.ActionParams.DESCRIPTOR.oneofs_by_name["params"]


class ContractViolation(ValueError):
    """A model's answer that breaks the contract; the message says how (for the record and
    for the one repair attempt)."""


@dataclass(frozen=True)
class Target:
    ref: alert_pb2.ResourceRef

    @property
    def label(self) -> str:
        """How the model names it: Kind/namespace/name (no namespace for a Node)."""
        ref = self.ref
        return (
            f"{ref.kind}/{ref.namespace}/{ref.name}" if ref.namespace else f"{ref.kind}/{ref.name}"
        )


def targets_of(
    subject: alert_pb2.ResourceRef, evidence: context_api_pb2.ResourceContext | None
) -> list[Target]:
    """What a model may act on: the alert's resource, its workload, and the nodes of its
    pods, in that order, each once."""
    refs = [subject]
    if evidence is not None:
        if evidence.HasField("workload"):
            refs.append(evidence.workload)
        nodes = sorted({pod.node for pod in evidence.pods if pod.node})
        refs += [alert_pb2.ResourceRef(cluster=subject.cluster, kind="Node", name=n) for n in nodes]
    seen: dict[str, Target] = {}
    for ref in refs:
        target = Target(ref)
        seen.setdefault(target.label, target)
    return list(seen.values())


def _field_schema(field: descriptor.FieldDescriptor) -> JsonObject:
    rules = field.GetOptions()
    schema: JsonObject
    if field.type == field.TYPE_ENUM and field.enum_type is not None:
        names = [v.name for v in field.enum_type.values if v.number != 0]
        schema = {"enum": names}
    elif field.type in (field.TYPE_INT32, field.TYPE_INT64):
        schema = {"type": "integer"}
    elif field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        schema = {"type": "number"}
    elif field.type == field.TYPE_BOOL:
        schema = {"type": "boolean"}
    else:
        schema = {"type": "string"}
    constraint = _constraints(rules)
    if field.type in (field.TYPE_INT32, field.TYPE_INT64, field.TYPE_DOUBLE):
        for key, name in (("gte", "minimum"), ("lte", "maximum")):
            if key in constraint:
                schema[name] = constraint[key]
        for key, name in (("gt", "exclusiveMinimum"), ("lt", "exclusiveMaximum")):
            if key in constraint:
                schema[name] = constraint[key]
    # No string lengths or patterns: constrained decoders turn them into repetitions that
    # llama.cpp refuses past a limit (and its server dies of it); the proto's rules check
    # them on the answer.
    return schema


def _constraints(options: Any) -> dict[str, Any]:
    """The scalar protovalidate rules on one field, as {rule: value}."""
    from buf.validate import validate_pb2

    if not options.HasExtension(validate_pb2.field):
        return {}
    rules = options.Extensions[validate_pb2.field]
    kind = rules.WhichOneof("type")
    if kind is None:
        return {}
    typed = json_format.MessageToDict(getattr(rules, kind), preserving_proto_field_name=True)
    return {
        key: (float(v) if isinstance(v, str) and _numeric(v) else v) for key, v in typed.items()
    }


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parameter_schema(message: descriptor.Descriptor) -> JsonObject:
    """A JSON schema of one action's parameter message (its fields by JSON name)."""
    return {
        "type": "object",
        "properties": {field.name: _field_schema(field) for field in message.fields},
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Offer:
    """One action offered to the model, and the targets it may take."""

    action: executor_pb2.ActionDefinition
    targets: tuple[Target, ...]

    @property
    def params(self) -> descriptor.Descriptor:
        field = next(f for f in _ONEOF.fields if f.name == self.action.name)
        assert field.message_type is not None  # every ActionParams member is a message
        return field.message_type


def offers(
    catalogue: Iterable[executor_pb2.ActionDefinition], targets: Sequence[Target]
) -> list[Offer]:
    """The catalogue's actions that fit a target, but the free-form writes."""
    names = {f.name for f in _ONEOF.fields}
    found = []
    for action in catalogue:
        if action.name in NEVER_OFFERED or action.name not in names:
            continue
        fitting = tuple(t for t in targets if t.ref.kind in action.target_kinds)
        if fitting:
            found.append(Offer(action, fitting))
    return found


def decide_tool(choices: Sequence[Offer]) -> ToolSpec:
    """The `decide` tool: one branch per offered action, and not_actionable."""
    branches: list[JsonObject] = [
        {
            "type": "object",
            "properties": {
                "decision": {"const": NOT_ACTIONABLE},
                "reason": {"type": "string"},
            },
            "required": ["decision", "reason"],
            "additionalProperties": False,
        }
    ]
    for offer in choices:
        branches.append(
            {
                "type": "object",
                "properties": {
                    "decision": {"const": REMEDIATE},
                    "action": {"const": offer.action.name},
                    "target": {"enum": [t.label for t in offer.targets]},
                    "parameters": parameter_schema(offer.params),
                    "reason": {"type": "string"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["decision", "action", "target", "parameters", "reason"],
                "additionalProperties": False,
            }
        )
    menu = "; ".join(f"{o.action.name} ({o.action.when_to_use})" for o in choices)
    return ToolSpec(
        DECIDE,
        "Give the decision: one catalogue action on one listed target, or not_actionable "
        f"with the reason. Actions: {menu}",
        {"anyOf": branches},
    )


def validate(
    arguments: Mapping[str, Any],
    choices: Sequence[Offer],
    evidence: context_api_pb2.ResourceContext | None,
    analyzer: str,
) -> remediation_pb2.Analysis:
    """The model's `decide` arguments as an Analysis, or ContractViolation saying why not."""
    decision = arguments.get("decision")
    reason = arguments.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ContractViolation("reason: a decision needs a reason")
    reason = reason.strip()[:MAX_REASON_CHARS]
    if decision == NOT_ACTIONABLE:
        return remediation_pb2.Analysis(
            decision=remediation_pb2.DECISION_NO_ACTION, reasons=[reason], analyzer=analyzer
        )
    if decision != REMEDIATE:
        raise ContractViolation(f"decision: must be {REMEDIATE} or {NOT_ACTIONABLE}")
    name = arguments.get("action")
    offer = next((o for o in choices if o.action.name == name), None)
    if offer is None:
        raise ContractViolation(f"action: {str(name)[:64]!r} is not one offered")
    label = arguments.get("target")
    target = next((t for t in offer.targets if t.label == label), None)
    if target is None:
        raise ContractViolation(f"target: {str(label)[:128]!r} is not one {name} may act on")
    raw = arguments.get("parameters", {})
    if not isinstance(raw, dict):
        raise ContractViolation("parameters: must be an object")
    params = remediation_pb2.ActionParams()
    try:
        json_format.ParseDict({offer.action.name: raw}, params, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise ContractViolation(f"parameters: {_short(error)}") from None
    found = violations_of(params)
    if found:
        path, why = found[0]
        raise ContractViolation(f"parameters: {path}: {why}")
    _within_caps(params, evidence)
    confidence = arguments.get("confidence", 0.5)
    if not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
        raise ContractViolation("confidence: must be a number from 0 to 1")
    recommendation = remediation_pb2.Recommendation(
        action=params, target=target.ref, confidence=float(confidence), reasons=[reason]
    )
    return remediation_pb2.Analysis(
        decision=remediation_pb2.DECISION_REMEDIATE,
        recommendation=recommendation,
        reasons=[reason],
        analyzer=analyzer,
    )


def _short(error: Exception) -> str:
    text = str(error).replace("\n", " ")
    return text[:300]


def _within_caps(
    params: remediation_pb2.ActionParams, evidence: context_api_pb2.ResourceContext | None
) -> None:
    which = params.WhichOneof("params")
    if which in ("scale_deployment", "scale_statefulset"):
        replicas = getattr(params, which).replicas
        seen = len(evidence.pods) if evidence is not None else 0
        cap = max(seen * SCALE_FACTOR_CAP, seen + SCALE_ADD_CAP)
        if not 1 <= replicas <= cap:
            raise ContractViolation(
                f"parameters.replicas: {replicas} is outside 1..{cap} ({seen} pods seen)"
            )
    if which in ("increase_memory_limit", "increase_cpu_limit"):
        factor = getattr(params, which).factor
        if factor > LIMIT_FACTOR_CAP:
            raise ContractViolation(
                f"parameters.factor: {factor} is above the model's cap {LIMIT_FACTOR_CAP}"
            )
    if which == "update_hpa":
        _hpa_within_caps(params.update_hpa, evidence)
    if which == "expand_pvc":
        _pvc_within_caps(params.expand_pvc, evidence)


def _hpa_within_caps(
    params: remediation_pb2.UpdateHpaParams, evidence: context_api_pb2.ResourceContext | None
) -> None:
    """A model's new bounds stay within twice (or two more than) what the HPA has."""
    if evidence is None or not evidence.HasField("hpa"):
        raise ContractViolation("action: no HPA state was read to bound update_hpa")
    hpa = evidence.hpa
    cap = max(hpa.max_replicas * SCALE_FACTOR_CAP, hpa.max_replicas + SCALE_ADD_CAP)
    if not 1 <= params.max_replicas <= cap:
        raise ContractViolation(
            f"parameters.max_replicas: {params.max_replicas} is outside 1..{cap} "
            f"(the HPA's max is {hpa.max_replicas})"
        )
    if params.min_replicas > params.max_replicas:
        raise ContractViolation("parameters.min_replicas: above max_replicas")


def _pvc_within_caps(
    params: remediation_pb2.ExpandPvcParams, evidence: context_api_pb2.ResourceContext | None
) -> None:
    """A model's new size: the StorageClass allows growing, and at most twice the size."""
    if evidence is None or not evidence.HasField("pvc"):
        raise ContractViolation("action: no PVC state was read to bound expand_pvc")
    pvc = evidence.pvc
    if not pvc.expansion_allowed:
        raise ContractViolation(
            f"action: StorageClass {pvc.storage_class or '(none)'} does not allow expansion"
        )
    try:
        now = max(quantity(pvc.requested), quantity(pvc.capacity or pvc.requested))
        wanted = quantity(params.size)
    except ValueError as error:
        raise ContractViolation(f"parameters.size: {error}") from None
    if not now < wanted <= now * PVC_GROWTH_CAP:
        raise ContractViolation(
            f"parameters.size: {params.size} is not above {pvc.requested} and at most "
            f"{PVC_GROWTH_CAP}x it"
        )


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """The arguments as canonical JSON (for the record)."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"))[:4096]
