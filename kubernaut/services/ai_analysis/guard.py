"""The guard: how a model's decision is weighed against the rules' (which always run).

- Both remediate with the same action on the same target: the rules' plan, surer.
- Both decline: the rules' answer, with the model's reason beside it.
- They disagree, or the model acts where no rule does: a person approves the plan (outside
  the namespaces an operator listed in KUBERNAUT_AI_UNGUARDED_NAMESPACES). When the rules
  remediate, their plan is the one proposed; the model's choice is named in the reasons.
- So when the rules remediate in an unguarded namespace, the model cannot change the plan:
  the fix goes ahead at once and the model's view is recorded when it comes (server.py).

The model never lowers a bar: the workflow's approval rules and the executor's checks
apply to whatever comes out of here, and an approval asked for here cannot be dropped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection

from kubernaut.common.v1 import remediation_pb2

REMEDIATE = remediation_pb2.DECISION_REMEDIATE


def _action(analysis: remediation_pb2.Analysis) -> str:
    return analysis.recommendation.action.WhichOneof("params") or ""


def _same_plan(a: remediation_pb2.Analysis, b: remediation_pb2.Analysis) -> bool:
    ra, rb = a.recommendation, b.recommendation
    return _action(a) == _action(b) and (ra.target.kind, ra.target.namespace, ra.target.name) == (
        rb.target.kind,
        rb.target.namespace,
        rb.target.name,
    )


def _describe(analysis: remediation_pb2.Analysis) -> str:
    if analysis.decision != REMEDIATE:
        return "no action"
    target = analysis.recommendation.target
    where = f"{target.kind} {target.namespace}/{target.name}".replace(" /", " ")
    return f"{_action(analysis)} on {where}"


def unguarded(namespace: str, unguarded_namespaces: Collection[str]) -> bool:
    return bool(namespace) and any(
        fnmatch.fnmatchcase(namespace, pattern) for pattern in unguarded_namespaces
    )


def cannot_change(rules: remediation_pb2.Analysis, unguarded_namespaces: Collection[str]) -> bool:
    """Whether no answer of a model could change what is done: the rules remediate in an
    unguarded namespace, so weigh() keeps their plan and asks no approval whatever the model
    says. Only the confidence could differ (agreement raises it), so acting on the rules'
    own confidence is the same bar or a higher one."""
    return rules.decision == REMEDIATE and unguarded(
        rules.recommendation.target.namespace, unguarded_namespaces
    )


def weigh(
    rules: remediation_pb2.Analysis,
    model: remediation_pb2.Analysis,
    unguarded_namespaces: Collection[str] = (),
) -> tuple[remediation_pb2.Analysis, str]:
    """The analysis to act on, and how the guard weighed the two (for the record)."""
    by = model.analyzer
    model_reason = model.reasons[0] if model.reasons else ""
    if rules.decision == REMEDIATE and model.decision == REMEDIATE and _same_plan(rules, model):
        merged = remediation_pb2.Analysis()
        merged.CopyFrom(rules)
        # Two independent judges agreeing: the chance both are wrong is the product.
        rec = merged.recommendation
        rec.confidence = 1 - (1 - rec.confidence) * (1 - model.recommendation.confidence)
        merged.analyzer = f"rules+{by}"
        merged.reasons.append(f"The model ({by}) agrees: {model_reason}")
        return merged, "agreed"
    if rules.decision != REMEDIATE and model.decision != REMEDIATE:
        merged = remediation_pb2.Analysis()
        merged.CopyFrom(rules)
        merged.analyzer = f"rules+{by}"
        merged.reasons.append(f"The model ({by}) agrees nothing should be done: {model_reason}")
        return merged, "agreed"

    if rules.decision == REMEDIATE:
        chosen = remediation_pb2.Analysis()
        chosen.CopyFrom(rules)
        why = f"the model ({by}) would do {_describe(model)} instead: {model_reason}"
        how = "disagreed: the rules' plan"
    else:
        chosen = remediation_pb2.Analysis()
        chosen.CopyFrom(model)
        rules_reason = rules.reasons[0] if rules.reasons else "no rule acts here"
        why = f"no rule backs the model's ({by}) choice; the rules said: {rules_reason}"
        how = "model only"
        chosen.reasons.append(f"The rules would do nothing: {rules_reason}")
    chosen.analyzer = f"rules+{by}"
    chosen.reasons.append(f"The rules and the model disagree: {why}")
    rec = chosen.recommendation
    if unguarded(rec.target.namespace, unguarded_namespaces):
        return chosen, f"{how}; no approval ({rec.target.namespace} is unguarded)"
    rec.approval_required = True
    rec.approval_reason = f"the rules and the model disagree ({why})"[:1024]
    return chosen, f"{how}; approval"
