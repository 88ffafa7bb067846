"""What the workflow engine tells of a workflow besides its result, as plain logic: the plan
(ACTION_PLANNED) and an approval that nobody decided in time (ESCALATED, not REFUSED)."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.services.notification.rendering import Changed, what_changed
from kubernaut.services.workflow.engine import (
    EXPIRED_APPROVAL,
    escalation_stages,
    expired_approval,
    plan_stages,
)
from kubernaut.services.workflow.planning import plan
from kubernaut.services.workflow.settings import PlanningSettings
from kubernaut.services.workflow.store import State, Step, StepStatus, Workflow

NOW = dt.datetime(2025, 3, 14, 9, 31, 2, tzinfo=dt.UTC)


def workflow(
    *, confidence: float = 0.9, approval: tuple[StepStatus, str] | None = None
) -> Workflow:
    recommendation = remediation_pb2.Recommendation(
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web"),
        confidence=confidence,
        reasons=["pods crash-loop after a config change", "the rules' runbook says restart"],
    )
    definition = executor_pb2.ActionDefinition(
        name="restart_deployment",
        description="rolling restart of the deployment",
        risk=remediation_pb2.RISK_LEVEL_LOW,
        verification="all replicas Ready",
        rollback="restore the previous pod template",
    )
    planned = plan(recommendation, definition, PlanningSettings(approval_min_confidence=0.8))
    steps = []
    for index, step in enumerate(planned.steps):
        state, message = StepStatus.PENDING, ""
        if step.kind == workflow_pb2.STEP_KIND_APPROVAL and approval is not None:
            state, message = approval
        steps.append(Step(index, step.kind, state, 1, message, None, None))
    return Workflow(
        workflow_id="9c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
        incident_id="3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b",
        alert=alert_pb2.Alert(name="KubePodCrashLooping"),
        recommendation=recommendation,
        plan=planned,
        state=State.RUNNING,
        action_id="",
        message="",
        outcome=None,
        outcome_message="",
        stages=[],
        acted_at=None,
        result=None,
        lease_owner=None,
        lease_expires_at=None,
        created_at=NOW,
        updated_at=NOW,
        steps=tuple(steps),
    )


def test_the_plan_says_why_whether_it_waits_and_each_step() -> None:
    stages = plan_stages(workflow())
    assert stages[:3] == [
        "why: pods crash-loop after a config change",
        "why: the rules' runbook says restart",
        "runs without approval: low risk and confidence 0.90",
    ]
    assert "step 4 (apply): rolling restart of the deployment" in stages
    assert stages[-1] == "if the change does not verify: restore the previous pod template"
    # Nothing in a plan reads as a change made: channels must not say "applied".
    assert what_changed(stages) is Changed.UNKNOWN


def test_a_plan_that_waits_for_a_person_says_so_first() -> None:
    stages = plan_stages(workflow(confidence=0.2))
    assert "waits for approval first: confidence 0.20 is below 0.80" in stages
    assert any(line.startswith("step 2 (approval): wait for approval") for line in stages)


@pytest.mark.parametrize(
    ("approval", "expired"),
    [
        # Nobody decided in time (the engine's expiry records it as a rejection).
        ((StepStatus.FAILED, f"{EXPIRED_APPROVAL}no decision within 1h"), True),
        # A person said no, whatever words they chose.
        ((StepStatus.FAILED, "rejected by alice@example.com: expired: certificate"), False),
        ((StepStatus.DONE, "approved by alice@example.com"), False),
        ((StepStatus.RUNNING, "waiting for approval: high risk"), False),
        (None, False),  # no approval step at all
    ],
)
def test_only_an_approval_nobody_decided_is_an_expiry(
    approval: tuple[StepStatus, str] | None, expired: bool
) -> None:
    found = expired_approval(workflow(confidence=0.2, approval=approval))
    assert (found is not None) is expired
    if expired:
        assert found == f"{EXPIRED_APPROVAL}no decision within 1h"


def test_an_escalation_says_what_waited_that_time_ran_out_and_whose_it_is() -> None:
    waited = workflow(
        confidence=0.2, approval=(StepStatus.FAILED, f"{EXPIRED_APPROVAL}no decision within 1h")
    )
    assert escalation_stages(waited, f"{EXPIRED_APPROVAL}no decision within 1h") == [
        "asked for approval to run restart_deployment on Deployment shop/web: "
        "confidence 0.20 is below 0.80",
        "the approval expired: no decision within 1h",
        "nothing was changed, and Kubernaut will not act on this incident: it is yours now",
    ]
