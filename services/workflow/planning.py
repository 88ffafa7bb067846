"""Turn a recommendation and its catalogue entry into the steps a workflow runs."""

from __future__ import annotations

from dataclasses import dataclass

from kubernaut.common.v1 import remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.workflow.v1 import workflow_pb2
from pydantic_settings import BaseSettings, SettingsConfigDict

RISK_NAMES = {
    remediation_pb2.RISK_LEVEL_LOW: "low",
    remediation_pb2.RISK_LEVEL_MEDIUM: "medium",
    remediation_pb2.RISK_LEVEL_HIGH: "high",
}


class PlanningSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_WORKFLOW_", frozen=True, extra="ignore")

    # Actions at or above this risk wait for a person's approval.
    approval_min_risk: int = remediation_pb2.RISK_LEVEL_HIGH
    # Recommendations less sure than this wait for approval too.
    approval_min_confidence: float = 0.5


@dataclass(frozen=True)
class Approval:
    required: bool
    reason: str


def approval_for(
    recommendation: remediation_pb2.Recommendation,
    risk: remediation_pb2.RiskLevel.ValueType,
    settings: PlanningSettings,
) -> Approval:
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


def plan(
    recommendation: remediation_pb2.Recommendation,
    definition: executor_pb2.ActionDefinition,
    settings: PlanningSettings,
) -> workflow_pb2.WorkflowPlan:
    target = recommendation.target
    where = f"{target.kind} {target.namespace}/{target.name}".replace(" /", " ")
    approval = approval_for(recommendation, definition.risk, settings)
    kinds = workflow_pb2
    steps = [
        (kinds.STEP_KIND_VALIDATE, f"check the {definition.name} parameters and {where}'s scope"),
    ]
    if approval.required:
        steps.append((kinds.STEP_KIND_APPROVAL, f"wait for approval: {approval.reason}"))
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
    )
