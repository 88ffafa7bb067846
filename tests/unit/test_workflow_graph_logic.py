"""The plan graph's plain logic: what makes a graph unable to run, which steps start or are
skipped from the stored steps, the order of compensation, retry backoff and attempt ids."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.services.workflow.graph import (
    compensations,
    graph_actions,
    graph_problems,
    next_moves,
)
from kubernaut.services.workflow.graph_run import attempt_id, backoff_seconds, compensation_id
from kubernaut.services.workflow.planning import Approval, approval_for, approvals_required
from kubernaut.services.workflow.settings import PlanningSettings
from kubernaut.services.workflow.store import Step, StepStatus

K = workflow_pb2
T0 = dt.datetime(2026, 12, 8, 3, 0, tzinfo=dt.UTC)


def action(name: str, **fields: object) -> workflow_pb2.PlanNode:
    return workflow_pb2.PlanNode(
        name=name,
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name=name),
        **fields,  # type: ignore[arg-type]
    )


def check(name: str, **fields: object) -> workflow_pb2.PlanNode:
    return workflow_pb2.PlanNode(
        name=name,
        check=remediation_pb2.CheckParams(workload_ready=remediation_pb2.WorkloadReadyCheck()),
        **fields,  # type: ignore[arg-type]
    )


def plan_of(*nodes: workflow_pb2.PlanNode) -> workflow_pb2.WorkflowPlan:
    return workflow_pb2.WorkflowPlan(nodes=nodes, max_parallel=2)


def step(
    index: int,
    node: str,
    state: StepStatus = StepStatus.PENDING,
    *,
    kind: workflow_pb2.StepKind.ValueType = K.STEP_KIND_ACTION,
    outcome: str = "",
    finished: int | None = None,
) -> Step:
    return Step(
        index=index,
        kind=kind,
        state=state,
        attempts=0 if state is StepStatus.PENDING else 1,
        message="",
        started_at=None,
        finished_at=None if finished is None else T0 + dt.timedelta(seconds=finished),
        node=node,
        outcome=outcome,
    )


UNDO = workflow_pb2.Compensation(undo=True)


@pytest.mark.parametrize(
    ("nodes", "problem"),
    [
        ([action("a"), action("a")], "step 'a' is named twice"),
        ([action("a", depends_on=["b"])], "depends on 'b', which is not a step"),
        ([action("a", depends_on=["a"])], "step 'a' depends on itself"),
        (
            [action("a", depends_on=["b"]), action("b", depends_on=["a"])],
            "in a cycle: ",
        ),
        ([workflow_pb2.PlanNode(name="a")], "neither an action nor a check"),
        ([check("a", compensation=UNDO)], "is a check: it changes nothing to compensate"),
        (
            [action("a", compensation=workflow_pb2.Compensation())],
            "compensation needs undo or an action",
        ),
        ([action("a", when="steps.(")], "step 'a': when: 'steps.(' is not valid CEL"),
    ],
)
def test_graph_problems(nodes: list[workflow_pb2.PlanNode], problem: str) -> None:
    found = graph_problems(nodes)
    assert any(problem in line for line in found), found


def test_a_sound_graph_has_no_problems_and_names_its_actions() -> None:
    nodes = [
        action("a", compensation=UNDO),
        action(
            "b",
            depends_on=["a"],
            compensation=workflow_pb2.Compensation(
                action=remediation_pb2.ActionParams(
                    uncordon_node=remediation_pb2.UncordonNodeParams()
                )
            ),
        ),
        check("c", depends_on=["a", "b"], when='steps.b.state == "done"'),
    ]
    assert graph_problems(nodes) == []
    assert graph_actions(nodes) == ["restart_deployment", "uncordon_node"]


def test_ready_steps_start_and_the_others_wait() -> None:
    plan = plan_of(action("a"), action("b", depends_on=["a"]), action("c"))
    moves = next_moves(plan, [step(1, "a"), step(2, "b"), step(3, "c")])
    assert [s.node for s in moves.start] == ["a", "c"]
    assert moves.skip == [] and moves.failed is None


def test_a_step_without_a_condition_needs_its_dependencies_done() -> None:
    plan = plan_of(action("a", continue_on_failure=True), action("b", depends_on=["a"]))
    moves = next_moves(plan, [step(1, "a", StepStatus.FAILED), step(2, "b")])
    assert [(s.node, why) for s, why in moves.skip] == [
        ("b", "not run: it needs its dependencies done (a failed)")
    ]
    assert moves.failed is None  # a tolerated failure


def test_a_failure_skips_every_pending_step_and_resumes_the_running_ones() -> None:
    plan = plan_of(action("a"), action("b"), action("c", depends_on=["a"]))
    steps = [step(1, "a", StepStatus.FAILED), step(2, "b", StepStatus.RUNNING), step(3, "c")]
    moves = next_moves(plan, steps)
    assert moves.failed is not None and moves.failed.node == "a"
    assert [s.node for s in moves.resume] == ["b"]
    assert [(s.node, why) for s, why in moves.skip] == [("c", "not run: step a failed")]
    assert moves.start == []


def test_conditions_see_states_and_outcomes() -> None:
    plan = plan_of(
        check("probe", continue_on_failure=True),
        action("fix", depends_on=["probe"], when='steps.probe.outcome == "not_passed"'),
        action("skip", depends_on=["probe"], when='steps.probe.state == "done"'),
        action("broken", depends_on=["probe"], when="steps.nosuch.state == 'x'"),
    )
    probe = step(1, "probe", StepStatus.FAILED, kind=K.STEP_KIND_CHECK, outcome="NOT_PASSED")
    moves = next_moves(plan, [probe, step(2, "fix"), step(3, "skip"), step(4, "broken")])
    assert [s.node for s in moves.start] == ["fix"]
    assert [s.node for s, _ in moves.skip] == ["skip"]
    assert [s.node for s, _ in moves.fail] == ["broken"]


def test_compensations_run_last_finished_first_and_only_for_applied_actions() -> None:
    plan = plan_of(
        action("a", compensation=UNDO),
        action("b", compensation=UNDO),
        action("c", compensation=UNDO),
        check("d"),
    )
    steps = [
        step(1, "a", StepStatus.DONE, outcome="SUCCEEDED", finished=1),
        step(2, "b", StepStatus.DONE, outcome="SUCCEEDED", finished=5),
        step(3, "c", StepStatus.FAILED, outcome="ROLLED_BACK", finished=6),
        step(4, "d", StepStatus.SKIPPED, kind=K.STEP_KIND_CHECK),
        step(5, "c", kind=K.STEP_KIND_COMPENSATE),
        step(6, "b", kind=K.STEP_KIND_COMPENSATE),
        step(7, "a", kind=K.STEP_KIND_COMPENSATE),
    ]
    planned = compensations(plan, steps)
    assert [s.node for s in planned.run] == ["b", "a"]
    assert [(s.node, why) for s, why in planned.skip] == [("c", "nothing to undo: step c failed")]


def test_no_compensation_when_the_plan_did_not_fail() -> None:
    plan = plan_of(action("a", compensation=UNDO))
    steps = [
        step(1, "a", StepStatus.DONE, outcome="SUCCEEDED", finished=1),
        step(2, "a", kind=K.STEP_KIND_COMPENSATE),
    ]
    planned = compensations(plan, steps)
    assert planned.run == [] and [why for _, why in planned.skip] == [
        "not needed: the plan did not fail"
    ]


def test_backoff_doubles_up_to_its_cap() -> None:
    retry = workflow_pb2.RetryPolicy(attempts=5, backoff_seconds=2, max_backoff_seconds=5)
    assert [backoff_seconds(retry, n) for n in (1, 2, 3, 4)] == [2, 4, 5, 5]
    uncapped = workflow_pb2.RetryPolicy(attempts=5, backoff_seconds=1)
    assert backoff_seconds(uncapped, 4) == 8


def test_attempt_and_compensation_ids_are_stable_and_distinct() -> None:
    workflow = str(uuid.uuid4())
    assert attempt_id(workflow, "a", 1) == attempt_id(workflow, "a", 1)
    ids = {
        attempt_id(workflow, "a", 1),
        attempt_id(workflow, "a", 2),
        attempt_id(workflow, "b", 1),
        compensation_id(workflow, "a"),
        attempt_id(str(uuid.uuid4()), "a", 1),
    }
    assert len(ids) == 5


# -- the policy's part in planning ------------------------------------------------------------


def _decision(
    outcome: workflow_pb2.PolicyOutcome.ValueType, approvers: int = 0, rule: str = "r"
) -> workflow_pb2.PolicyDecision:
    return workflow_pb2.PolicyDecision(
        outcome=outcome, rule=rule, approvers=approvers, reason="because"
    )


def _recommendation(confidence: float = 0.95, **fields: object) -> remediation_pb2.Recommendation:
    return remediation_pb2.Recommendation(
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web"),
        confidence=confidence,
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("decision", "guard", "analysis_asks", "required", "approvers", "why"),
    [
        (_decision(K.POLICY_OUTCOME_ALLOW), None, False, False, 0, "policy rule r"),
        (_decision(K.POLICY_OUTCOME_REQUIRE_APPROVAL, 2), None, False, True, 2, "policy rule r"),
        (_decision(K.POLICY_OUTCOME_DENY), None, False, False, 0, "denied by policy rule r"),
        # The guard and the analysis only ever add approval, whatever the policy allows.
        (_decision(K.POLICY_OUTCOME_ALLOW), "failed before", False, True, 1, "failed before"),
        (_decision(K.POLICY_OUTCOME_ALLOW), None, True, True, 1, "the model chose"),
        # Without a policy file the thresholds decide (low risk, confident: no approval).
        (None, None, False, False, 0, "low risk"),
    ],
)
def test_approval_from_the_policy_the_guard_and_the_analysis(
    decision: workflow_pb2.PolicyDecision | None,
    guard: str | None,
    analysis_asks: bool,
    required: bool,
    approvers: int,
    why: str,
) -> None:
    recommendation = _recommendation(
        approval_required=analysis_asks, approval_reason="the model chose" if analysis_asks else ""
    )
    held = Approval(True, guard) if guard else None
    settings = PlanningSettings()
    low = remediation_pb2.RISK_LEVEL_LOW
    approval = approval_for(recommendation, low, settings, held, decision)
    assert (approval.required, approvals_required(approval, low, settings, decision)) == (
        required,
        approvers,
    )
    assert why in approval.reason


def test_high_risk_keeps_the_settings_number_of_approvers_under_a_policy() -> None:
    settings = PlanningSettings(high_risk_approvers=3)
    decision = _decision(K.POLICY_OUTCOME_REQUIRE_APPROVAL, 2)
    high = remediation_pb2.RISK_LEVEL_HIGH
    approval = approval_for(_recommendation(), high, settings, None, decision)
    assert approvals_required(approval, high, settings, decision) == 3
