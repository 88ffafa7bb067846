"""Turn a recommendation and its catalogue entry into the steps a workflow runs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.runtime.durations import human_duration
from kubernaut.services.workflow.graph import check_graph
from kubernaut.services.workflow.policy import ApprovalPolicy, PolicyFacts
from kubernaut.services.workflow.settings import PlanningSettings

RISK_NAMES = {
    remediation_pb2.RISK_LEVEL_LOW: "low",
    remediation_pb2.RISK_LEVEL_MEDIUM: "medium",
    remediation_pb2.RISK_LEVEL_HIGH: "high",
}


# Outcomes after which the workload was left as it was before, or worse: the fix failed.
FAILED_OUTCOMES = frozenset(
    {storage_pb2.ACTION_OUTCOME_FAILED, storage_pb2.ACTION_OUTCOME_ROLLED_BACK}
)


@dataclass(frozen=True)
class Approval:
    required: bool
    reason: str


@dataclass(frozen=True)
class TargetHistory:
    """What was done to the recommendation's target before (its action records, newest
    first), or why that could not be read."""

    records: Sequence[storage_pb2.ActionRecord] = ()
    unreadable: str = ""


def guard_for(
    recommendation: remediation_pb2.Recommendation,
    history: TargetHistory,
    now: dt.datetime,
    settings: PlanningSettings,
) -> Approval | None:
    """The hard guard, independent of how similar past incidents look: a person must
    approve a plan for a workload where a fix failed recently, any repeat of an action
    with the same parameters that failed there before, and any plan for a workload another
    fix changed moments ago. None when it does not apply."""
    target = recommendation.target
    where = _where(target)
    if history.unreadable:
        # Fail closed: without the target's past, a repeat of a failed fix cannot be ruled out.
        return Approval(
            True,
            f"what was done to {where} before could not be read ({history.unreadable}); "
            "a person decides",
        )
    action = recommendation.action.WhichOneof("params") or ""
    failed = [r for r in history.records if r.outcome in FAILED_OUTCOMES]
    for record in failed:
        same_params = not record.HasField("params") or record.params == recommendation.action
        if record.action == action and same_params:
            return Approval(
                True,
                f"{action} with the same parameters {_how(record, now)} on {where}; it is "
                "never repeated automatically",
            )
    hold = settings.failed_target_hold_seconds
    failed_recently = _within(failed, hold, now)
    if failed_recently is not None:
        return Approval(
            True,
            f"{failed_recently.action} {_how(failed_recently, now)} on {where}; no automatic "
            f"action on it for {human_duration(hold)} after a failed fix "
            "(KUBERNAUT_WORKFLOW_FAILED_TARGET_HOLD_SECONDS)",
        )
    succeeded = [r for r in history.records if r.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED]
    oscillating = oscillation(succeeded, now, settings)
    if oscillating:
        return Approval(True, f"{where} oscillates: {oscillating}; a person decides")
    settle = settings.settle_seconds
    changed_recently = _within(succeeded, settle, now)
    if changed_recently is not None:
        return Approval(
            True,
            f"{changed_recently.action} {_how(changed_recently, now)} on {where}; its effect "
            f"is still being judged, so another change within {human_duration(settle)} of it "
            "waits for a person (KUBERNAUT_WORKFLOW_SETTLE_SECONDS)",
        )
    return None


def _canonical(spec_json: str) -> str | None:
    try:
        return json.dumps(json.loads(spec_json), sort_keys=True) if spec_json else None
    except ValueError:
        return None


def oscillation(
    succeeded: Sequence[storage_pb2.ActionRecord], now: dt.datetime, settings: PlanningSettings
) -> str:
    """Why the successful actions on one workload (newest first) within the oscillation
    window are an oscillation, or "": too many of them, or one that undid another (its
    spec after is the other's spec before)."""
    window = settings.oscillation_window_seconds
    if not window:
        return ""
    recent = [r for r in succeeded if (now - _finished_at(r)).total_seconds() < window]
    span = human_duration(window)
    limit = settings.oscillation_actions
    if limit and len(recent) >= limit - 1:
        done = ", ".join(f"{r.action} {_how(r, now)}" for r in recent)
        return (
            f"{len(recent)} actions within {span} ({done}); the next would be number"
            f" {len(recent) + 1} (KUBERNAUT_WORKFLOW_OSCILLATION_ACTIONS)"
        )
    for index, later in enumerate(recent):
        after = _canonical(later.spec_after_json)
        for earlier in recent[index + 1 :]:
            if after is not None and after == _canonical(earlier.spec_before_json):
                return (
                    f"{later.action} (action {later.action_id}) undid {earlier.action} "
                    f"(action {earlier.action_id}) within {span}: the workload is back as it "
                    "was before (KUBERNAUT_WORKFLOW_OSCILLATION_WINDOW_SECONDS)"
                )
    return ""


def _within(
    records: Sequence[storage_pb2.ActionRecord], seconds: float, now: dt.datetime
) -> storage_pb2.ActionRecord | None:
    """The first of `records` that finished less than `seconds` ago (0: none)."""
    if not seconds:
        return None
    for record in records:
        if (now - _finished_at(record)).total_seconds() < seconds:
            return record
    return None


def _finished_at(record: storage_pb2.ActionRecord) -> dt.datetime:
    stamp = record.finished_at if record.HasField("finished_at") else record.started_at
    return stamp.ToDatetime(dt.UTC)


def _how(record: storage_pb2.ActionRecord, now: dt.datetime) -> str:
    ended = {
        storage_pb2.ACTION_OUTCOME_FAILED: "failed",
        storage_pb2.ACTION_OUTCOME_ROLLED_BACK: "failed verification and was undone",
        storage_pb2.ACTION_OUTCOME_SUCCEEDED: "succeeded",
    }.get(record.outcome, "ended")
    ago = human_duration((now - _finished_at(record)).total_seconds())
    incident = f", incident {record.incident_id}" if record.incident_id else ""
    return f"{ended} {ago} ago (action {record.action_id}{incident})"


def _where(target: alert_pb2.ResourceRef) -> str:
    return f"{target.kind} {target.namespace}/{target.name}".replace(" /", " ")


def approval_for(
    recommendation: remediation_pb2.Recommendation,
    risk: remediation_pb2.RiskLevel.ValueType,
    settings: PlanningSettings,
    guard: Approval | None = None,
    policy: workflow_pb2.PolicyDecision | None = None,
) -> Approval:
    """Whether a person must approve: the guard and the analysis can only add approval;
    then a policy file's decision (`policy`) or, without one, the thresholds decide."""
    if guard is not None and guard.required:
        return guard
    if recommendation.approval_required:
        return Approval(
            True, recommendation.approval_reason or "the analysis asks for a person's approval"
        )
    if policy is not None and policy.rule != THRESHOLDS_RULE:
        outcome = policy.outcome
        why = f"policy rule {policy.rule}: {policy.reason}"
        if outcome == workflow_pb2.POLICY_OUTCOME_DENY:
            return Approval(False, f"denied by {why}")
        return Approval(outcome != workflow_pb2.POLICY_OUTCOME_ALLOW, why)
    return threshold_approval(recommendation, risk, settings)


def threshold_approval(
    recommendation: remediation_pb2.Recommendation,
    risk: remediation_pb2.RiskLevel.ValueType,
    settings: PlanningSettings,
) -> Approval:
    """The built-in policy, without a policy file: risk and confidence thresholds."""
    risk_name = RISK_NAMES.get(risk, "unknown")
    if risk >= settings.approval_min_risk or risk == remediation_pb2.RISK_LEVEL_UNSPECIFIED:
        return Approval(True, f"{risk_name} risk actions need approval")
    if recommendation.confidence < settings.approval_min_confidence:
        return Approval(
            True,
            f"confidence {recommendation.confidence:.2f} is below "
            f"{settings.approval_min_confidence:.2f}",
        )
    return Approval(False, f"{risk_name} risk and confidence {recommendation.confidence:.2f}")


# The rule a decision names when no policy file is configured and the thresholds decided.
THRESHOLDS_RULE = "thresholds"


def policy_decision(
    policy: ApprovalPolicy | None,
    facts: PolicyFacts,
    recommendation: remediation_pb2.Recommendation,
    risk: remediation_pb2.RiskLevel.ValueType,
    settings: PlanningSettings,
) -> workflow_pb2.PolicyDecision:
    """The approval policy's decision on a plan, with the facts it saw: the policy file's,
    or the thresholds' (rule "thresholds") when none is configured. Recorded either way,
    so that `kubernaut policy test` can try a policy file on any past plan."""
    if policy is not None:
        return policy.decide(facts)
    approval = threshold_approval(recommendation, risk, settings)
    outcome = (
        workflow_pb2.POLICY_OUTCOME_REQUIRE_APPROVAL
        if approval.required
        else workflow_pb2.POLICY_OUTCOME_ALLOW
    )
    return workflow_pb2.PolicyDecision(
        outcome=outcome,
        rule=THRESHOLDS_RULE,
        approvers=approvals_required(approval, risk, settings),
        reason=approval.reason,
        policy=(
            "built-in thresholds (KUBERNAUT_WORKFLOW_APPROVAL_MIN_RISK="
            f"{_risk_name(settings.approval_min_risk)}, "
            f"KUBERNAUT_WORKFLOW_APPROVAL_MIN_CONFIDENCE={settings.approval_min_confidence:g})"
        ),
        input_json=facts.to_json(),
    )


def plan(
    recommendation: remediation_pb2.Recommendation,
    definition: executor_pb2.ActionDefinition,
    settings: PlanningSettings,
    guard: Approval | None = None,
    policy: workflow_pb2.PolicyDecision | None = None,
) -> workflow_pb2.WorkflowPlan:
    target = recommendation.target
    where = _where(target)
    approval = approval_for(recommendation, definition.risk, settings, guard, policy)
    kinds = workflow_pb2
    steps = [
        (kinds.STEP_KIND_VALIDATE, f"check the {definition.name} parameters and {where}'s scope"),
    ]
    if approval.required:
        step = _approval_step(approval, definition.risk, settings, policy)
        steps.append((step.kind, step.description))
    steps += [
        (kinds.STEP_KIND_DRY_RUN, f"server-side dry-run of {definition.name} on {where}"),
        (kinds.STEP_KIND_SNAPSHOT, f"snapshot {where} for rollback"),
        (kinds.STEP_KIND_APPLY, definition.description),
        (kinds.STEP_KIND_VERIFY, definition.verification),
        (kinds.STEP_KIND_NOTIFY, "tell the configured channels how it went"),
    ]
    return workflow_pb2.WorkflowPlan(
        action=definition.name,
        target=target,
        risk=definition.risk,
        requires_approval=approval.required,
        approval_reason=approval.reason,
        steps=[workflow_pb2.WorkflowStep(kind=kind, description=text) for kind, text in steps],
        rollback=definition.rollback,
        approvals_required=approvals_required(approval, definition.risk, settings, policy),
        policy=policy,
    )


def plan_runbook(
    recommendation: remediation_pb2.Recommendation,
    runbook: workflow_pb2.RunbookRef,
    nodes: Sequence[workflow_pb2.PlanNode],
    max_parallel: int,
    definitions: Mapping[str, executor_pb2.ActionDefinition],
    settings: PlanningSettings,
    guard: Approval | None = None,
    policy: workflow_pb2.PolicyDecision | None = None,
) -> workflow_pb2.WorkflowPlan:
    """The plan of a runbook: VALIDATE, APPROVAL when needed, one step per graph node, the
    compensations (last node first), NOTIFY. `definitions` holds the catalogue entry of
    every action the graph runs (its nodes' and compensations'); the plan's risk is the
    highest of them. GraphError for a graph that cannot run."""
    check_graph(nodes)
    unknown = remediation_pb2.RISK_LEVEL_UNSPECIFIED
    risk = max((d.risk for d in definitions.values()), default=unknown)
    approval = approval_for(recommendation, risk, settings, guard, policy)
    kinds = workflow_pb2
    named = f"runbook {runbook.name} {runbook.version}"
    steps = [
        workflow_pb2.WorkflowStep(
            kind=kinds.STEP_KIND_VALIDATE,
            description=f"check {named}'s {len(nodes)} steps against the executor's catalogue",
        )
    ]
    if approval.required:
        steps.append(_approval_step(approval, risk, settings, policy))
    for node in nodes:
        where = _where(node.target)
        if node.HasField("check"):
            kind = kinds.STEP_KIND_CHECK
            what = f"check {node.check.WhichOneof('check')} on {where}"
        else:
            kind = kinds.STEP_KIND_ACTION
            action = node.action.WhichOneof("params") or ""
            what = f"{action} on {where}: {definitions[action].description}"
        steps.append(
            workflow_pb2.WorkflowStep(
                kind=kind, description=node.description or what, node=node.name
            )
        )
    for node in reversed(nodes):
        if node.HasField("compensation"):
            how = node.compensation
            undo = (
                "put back what it changed, from its snapshot"
                if how.WhichOneof("how") == "undo"
                else f"run {how.action.WhichOneof('params')}"
            )
            steps.append(
                workflow_pb2.WorkflowStep(
                    kind=kinds.STEP_KIND_COMPENSATE,
                    description=f"if a later step fails, undo {node.name}: {undo}",
                    node=node.name,
                )
            )
    steps.append(
        workflow_pb2.WorkflowStep(
            kind=kinds.STEP_KIND_NOTIFY, description="tell the configured channels how it went"
        )
    )
    undone = [n.name for n in reversed(nodes) if n.HasField("compensation")]
    return workflow_pb2.WorkflowPlan(
        action=recommendation.action.WhichOneof("params") or "",
        target=recommendation.target,
        risk=risk,
        requires_approval=approval.required,
        approval_reason=approval.reason,
        steps=steps,
        rollback=(
            f"when a step fails, the steps done are compensated, last first ({', '.join(undone)})"
            if undone
            else "no step of this runbook is compensated"
        ),
        approvals_required=approvals_required(approval, risk, settings, policy),
        nodes=nodes,
        max_parallel=max(1, max_parallel),
        runbook=runbook,
        policy=policy,
    )


def _approval_step(
    approval: Approval,
    risk: remediation_pb2.RiskLevel.ValueType,
    settings: PlanningSettings,
    policy: workflow_pb2.PolicyDecision | None,
) -> workflow_pb2.WorkflowStep:
    needed = approvals_required(approval, risk, settings, policy)
    who = f" by {needed} different people" if needed > 1 else ""
    return workflow_pb2.WorkflowStep(
        kind=workflow_pb2.STEP_KIND_APPROVAL,
        description=f"wait for approval{who}: {approval.reason}",
    )


def approvals_required(
    approval: Approval,
    risk: remediation_pb2.RiskLevel.ValueType,
    settings: PlanningSettings,
    policy: workflow_pb2.PolicyDecision | None = None,
) -> int:
    """How many different people must approve: none without approval; else the policy
    file's number when it asks for approval, and at least the setting's number for high
    risk and above (KUBERNAUT_WORKFLOW_HIGH_RISK_APPROVERS), else one."""
    if not approval.required:
        return 0
    needed = settings.high_risk_approvers if risk >= remediation_pb2.RISK_LEVEL_HIGH else 1
    if (
        policy is not None
        and policy.rule != THRESHOLDS_RULE
        and policy.outcome == workflow_pb2.POLICY_OUTCOME_REQUIRE_APPROVAL
    ):
        needed = max(needed, policy.approvers)
    return needed


def _risk_name(risk: int) -> str:
    return RISK_NAMES.get(remediation_pb2.RiskLevel.ValueType(risk), "unknown")
