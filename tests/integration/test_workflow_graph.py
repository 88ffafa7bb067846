"""Runbook plans run as graphs by the workflow engine, against a real PostgreSQL, with plain
async functions standing in for the downstream operations (no gRPC): dependencies, parallel
branches within max_parallel, conditions, retries with backoff, and compensation in
reverse order. A runner killed with SIGKILL at every step boundary: test_workflow_graph_kill."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from kubernaut.common.v1 import alert_pb2
from kubernaut.notification.v1 import notification_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.services.workflow.engine import WorkflowEngine
from kubernaut.services.workflow.graph_run import attempt_id, compensation_id
from kubernaut.services.workflow.settings import RunnerSettings
from kubernaut.services.workflow.store import (
    State,
    StepStatus,
    Workflow,
    WorkflowDatabase,
    WorkflowStore,
)
from tests.fixtures.graphs import (
    FAILED,
    OK,
    REFUSED,
    UNDO,
    Cluster,
    ready,
    runbook_plan,
    scale,
    states,
    three_steps,
)
from tests.fixtures.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SETTINGS = RunnerSettings(
    lease_seconds=30.0,
    poll_seconds=0.05,
    retry_initial_seconds=0.01,
    retry_max_seconds=0.05,
    progress_poll_seconds=0.05,
)


# -- fixtures ---------------------------------------------------------------------------------


async def create(engine: WorkflowEngine, nodes: Sequence[workflow_pb2.PlanNode], **kw: Any) -> str:
    recommendation, planned = runbook_plan(nodes, **kw)
    fired = alert_pb2.Alert(name="KubeDeploymentRolloutStuck", status=alert_pb2.ALERT_STATUS_FIRING)
    workflow, created = await engine.create(str(uuid.uuid4()), fired, recommendation, planned)
    assert created
    return workflow.workflow_id


async def finished(store: WorkflowStore, workflow_id: str, timeout: float = 30.0) -> Workflow:
    async def check() -> Workflow | None:
        workflow = await store.get(workflow_id)
        assert workflow is not None
        return workflow if workflow.state is not State.RUNNING else None

    return await eventually(check, f"workflow {workflow_id} to finish", timeout, interval=0.02)


async def run_to_end(
    workflow_database: WorkflowDatabase,
    cluster: Cluster,
    nodes: Sequence[workflow_pb2.PlanNode],
    **kw: Any,
) -> Workflow:
    engine = WorkflowEngine(workflow_database.store, cluster, SETTINGS)
    engine.start()
    try:
        workflow_id = await create(engine, nodes, **kw)
        return await finished(await workflow_database.store(), workflow_id)
    finally:
        await engine.stop()


# -- the graph --------------------------------------------------------------------------------


async def test_a_plan_that_succeeds_runs_its_branches_in_parallel_and_compensates_nothing(
    workflow_database: WorkflowDatabase,
) -> None:
    cluster = Cluster(seconds=0.3)
    nodes = [
        scale("a", compensation=UNDO),
        scale("b", depends_on=["a"], compensation=UNDO),
        scale("c", depends_on=["a"]),
        ready("d", "c", depends_on=["b", "c"]),
    ]
    workflow = await run_to_end(workflow_database, cluster, nodes, max_parallel=2)

    assert workflow.state is State.SUCCEEDED, workflow.message
    assert states(workflow) == {
        "VALIDATE": "DONE",
        "ACTION a": "DONE",
        "ACTION b": "DONE",
        "ACTION c": "DONE",
        "CHECK d": "DONE",
        "COMPENSATE b": "SKIPPED",
        "COMPENSATE a": "SKIPPED",
        "NOTIFY": "DONE",
    }
    # b and c ran at the same time; a before both, d after both.
    assert cluster.most_at_once == 2
    order = [name for kind, name, _ in cluster.acted]
    assert order[0] == "a" and sorted(order[1:]) == ["b", "c"]
    assert cluster.checked == ["c"]
    assert storage_pb2.INCIDENT_STATUS_REMEDIATED in cluster.updates
    assert len(cluster.assessed) == 3
    assert workflow.outcome == OK
    assert any(line.startswith("step d (check) done") for line in workflow.stages)


async def test_max_parallel_one_runs_the_branches_one_after_the_other(
    workflow_database: WorkflowDatabase,
) -> None:
    cluster = Cluster(seconds=0.2)
    nodes = [scale("a"), scale("b"), scale("c")]
    workflow = await run_to_end(workflow_database, cluster, nodes, max_parallel=1)
    assert workflow.state is State.SUCCEEDED
    assert cluster.most_at_once == 1


async def test_a_failed_step_is_retried_with_backoff_and_a_new_action_id(
    workflow_database: WorkflowDatabase,
) -> None:
    cluster = Cluster(outcomes={"a": [FAILED, storage_pb2.ACTION_OUTCOME_ROLLED_BACK, OK]})
    retry = workflow_pb2.RetryPolicy(attempts=3, backoff_seconds=0.2)
    workflow = await run_to_end(workflow_database, cluster, [scale("a", retry=retry)])

    assert workflow.state is State.SUCCEEDED, workflow.message
    step = next(s for s in workflow.steps if s.node == "a")
    assert step.attempts == 3
    assert cluster.executed("a") == [attempt_id(workflow.action_id, "a", n) for n in (1, 2, 3)]
    assert step.action_id == attempt_id(workflow.action_id, "a", 3)
    assert "attempt 3 of 3" in step.message
    # The backoff doubled: at least 0.2 s, then 0.4 s between the attempts.
    first, second, third = (cluster.arrived[key] for key in cluster.executed("a"))
    assert second - first >= 0.2 and third - second >= 0.4


async def test_a_refused_step_is_not_retried_and_nothing_changed_is_refused(
    workflow_database: WorkflowDatabase,
) -> None:
    cluster = Cluster(outcomes={"a": [REFUSED]})
    retry = workflow_pb2.RetryPolicy(attempts=3, backoff_seconds=0.01)
    workflow = await run_to_end(
        workflow_database, cluster, [scale("a", retry=retry), scale("b", depends_on=["a"])]
    )

    assert workflow.state is State.REFUSED
    assert states(workflow)["ACTION b"] == "SKIPPED"
    assert len(cluster.executed("a")) == 1
    assert storage_pb2.INCIDENT_STATUS_NO_ACTION in cluster.updates


async def test_a_failure_compensates_the_finished_steps_in_reverse_order(
    workflow_database: WorkflowDatabase,
) -> None:
    cluster = Cluster(checks={"c": [False]}, seconds=0.05)
    workflow = await run_to_end(workflow_database, cluster, three_steps())

    assert workflow.state is State.ROLLED_BACK, workflow.message
    assert states(workflow) == {
        "VALIDATE": "DONE",
        "ACTION a": "DONE",
        "ACTION b": "DONE",
        "CHECK c": "FAILED",
        "COMPENSATE b": "DONE",
        "COMPENSATE a": "DONE",
        "NOTIFY": "DONE",
    }
    # b finished after a, so it is undone first: its own compensating action, then a's
    # rollback from its snapshot.
    assert cluster.acted[-2:] == [
        ("execute", "b-back", compensation_id(workflow.action_id, "b")),
        (
            "rollback",
            attempt_id(workflow.action_id, "a", 1),
            compensation_id(workflow.action_id, "a"),
        ),
    ]
    assert "step c failed" in workflow.message and "compensated b, a" in workflow.message
    assert storage_pb2.INCIDENT_STATUS_FAILED in cluster.updates
    assert notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK in cluster.reports


async def test_conditions_choose_the_branch_and_a_tolerated_failure_does_not_fail_the_plan(
    workflow_database: WorkflowDatabase,
) -> None:
    cluster = Cluster(checks={"web": [False]})
    nodes = [
        ready("probe", "web", continue_on_failure=True),
        scale("fix", depends_on=["probe"], when='steps.probe.state == "failed"'),
        scale("extra", depends_on=["probe"], when='steps.probe.outcome == "passed"'),
        scale("after", depends_on=["fix", "extra"]),
    ]
    workflow = await run_to_end(workflow_database, cluster, nodes)

    assert workflow.state is State.SUCCEEDED, workflow.message
    steps = states(workflow)
    assert steps["CHECK probe"] == "FAILED"
    assert steps["ACTION fix"] == "DONE"
    assert steps["ACTION extra"] == "SKIPPED"
    # Without a condition a step needs every dependency done: extra was skipped.
    assert steps["ACTION after"] == "SKIPPED"
    skipped = next(s for s in workflow.steps if s.node == "extra")
    assert "condition is false" in skipped.message


async def test_a_condition_that_cannot_be_evaluated_fails_its_step(
    workflow_database: WorkflowDatabase,
) -> None:
    cluster = Cluster()
    nodes = [scale("a"), scale("b", depends_on=["a"], when="steps.nosuch.state == 'done'")]
    workflow = await run_to_end(workflow_database, cluster, nodes)
    assert workflow.state is State.FAILED
    failed = next(s for s in workflow.steps if s.node == "b")
    assert failed.state is StepStatus.FAILED and "could not be evaluated" in failed.message
    assert cluster.executed("b") == []
