"""The rule-based analyzer: decides when no model is configured (or none answers), and is
the guard's baseline when one is.

`table.RULES` holds one entry per alert name (the kubernetes-mixin's, and the names seen in
the wild for the same conditions); each acts on the evidence or says why it does not. The
rules by subject live in `_deployments`, `_workloads` and `_nodes`; docs/alert-coverage.md is
rendered from the table by `coverage.render_markdown`.
"""

from __future__ import annotations

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.runtime.validation import violations_of
from kubernaut.services.ai_analysis.history import HistoryUnavailable, weigh_history
from kubernaut.services.ai_analysis.rules._common import Case, RulesSettings, no_action
from kubernaut.services.ai_analysis.rules._deployments import oom, oom_seen
from kubernaut.services.ai_analysis.rules.table import RULES, Rule, canonical_name, rule_for

__all__ = ["ANALYZER", "RULES", "Rule", "RulesSettings", "analyze", "canonical_name", "rule_for"]

ANALYZER = "rules"


def analyze(
    alert: alert_pb2.Alert,
    subject: alert_pb2.ResourceRef,
    knowledge: context_api_pb2.AlertKnowledge | None,
    settings: RulesSettings,
    evidence: context_api_pb2.ResourceContext | None = None,
    history: context_api_pb2.IncidentHistory | HistoryUnavailable | None = None,
) -> remediation_pb2.Analysis:
    """Decide what to do about one firing alert whose subject is `subject`, using what the
    context API saw of the workload (`evidence`) when there is any, and weighing the
    decision against the incident's `history` when it was asked for (None: not asked).

    Raises ValueError for an alert that is not firing (a resolved alert never triggers an
    action, so callers must not send one) and for a recommendation that would fail
    validation (only possible with a malformed subject).
    """
    if alert.status == alert_pb2.ALERT_STATUS_RESOLVED:
        raise ValueError("resolved alerts are not analysed; callers must not send them")
    if alert.status != alert_pb2.ALERT_STATUS_FIRING:
        # An unknown status is no evidence of a live problem, so never act on one.
        raise ValueError(f"alert status must be FIRING, got {alert.status}")

    analysis = _decide(Case(alert, subject, settings, evidence))
    analysis = _within_opt_in(analysis, evidence)
    if history is not None:
        weigh_history(analysis, history, settings.history)
    analysis.analyzer = ANALYZER
    # Only a runbook for this very alert; a mismatched entry would mislead the operator.
    if knowledge is not None and knowledge.alert_name == alert.name:
        analysis.runbook_url = knowledge.runbook_url
    if analysis.HasField("recommendation"):
        # Never hand on an action the executor would refuse: fail here, loudly.
        # The compiled validator: protovalidate's CEL would cost ~30 ms an analysis.
        found = violations_of(analysis.recommendation)
        if found:
            raise ValueError(f"the rules made an invalid recommendation: {found}")
    return analysis


def _within_opt_in(
    analysis: remediation_pb2.Analysis, evidence: context_api_pb2.ResourceContext | None
) -> remediation_pb2.Analysis:
    """A fix for a workload that is not Kubernaut's to change (no kubernaut.ai/managed
    label on it or its namespace, as context_api read it) is declined here, with what it
    would have been: planning it would only have the executor refuse it later."""
    if analysis.decision != remediation_pb2.DECISION_REMEDIATE or evidence is None:
        return analysis
    if evidence.managed or not evidence.managed_reason:
        return analysis  # managed, or context_api did not say
    action = analysis.recommendation.action.WhichOneof("params")
    return no_action(
        f"Not Kubernaut's to change: {evidence.managed_reason}. The rules would have chosen "
        f"{action}: "
        f"{' '.join(analysis.reasons)}"[:1024]
    )


def _decide(case: Case) -> remediation_pb2.Analysis:
    # OOM first, whatever the alert's name: a known cause beats the symptom-level rules.
    if (
        canonical_name(case.name) == "KubeContainerOOMKilled"
        or case.alert.labels.get("reason", "") == "OOMKilled"
        or oom_seen(case.evidence)
    ):
        return oom(case)
    rule = rule_for(case.name)
    if rule is None:
        return no_action(
            f"Alert {case.name!r} is in no rule of Kubernaut's table (docs/alert-coverage.md) "
            "under its name or a known alias; nothing is done automatically."
        )
    return rule.decide(case)
