"""A runbook plan's graph (WorkflowPlan.nodes), as plain logic over the stored steps: is it
well formed, which steps may start now, which are skipped and why, and which finished
steps are compensated, in which order, when the plan fails.

Everything here is decided from what is stored, so a runner that resumes a workflow after
a crash takes the same decisions as the one that died.
"""

from __future__ import annotations

import graphlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.services.workflow.conditions import Condition, ConditionError
from kubernaut.services.workflow.store import Step, StepStatus

K = workflow_pb2

# The steps that run a plan node (one each), and the compensations of finished ones.
NODE_KINDS: Final = frozenset({K.STEP_KIND_ACTION, K.STEP_KIND_CHECK})
GRAPH_KINDS: Final = NODE_KINDS | {K.STEP_KIND_COMPENSATE}

# How a check's attempt ended, as stored in a step's outcome.
PASSED: Final = "PASSED"
NOT_PASSED: Final = "NOT_PASSED"
# Action outcomes after which the cluster holds the node's change.
APPLIED: Final = "SUCCEEDED"


class GraphError(ValueError):
    """A plan graph that cannot run: each problem, one a line."""


def graph_problems(nodes: Sequence[workflow_pb2.PlanNode]) -> list[str]:
    """What is wrong with a graph: duplicate names, unknown or self dependencies, cycles,
    nodes without an action or a check, compensations of checks, conditions that do not
    compile. Empty when it can run."""
    problems: list[str] = []
    names = [node.name for node in nodes]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            problems.append(f"step {name!r} is named twice")
        seen.add(name)
    for node in nodes:
        where = f"step {node.name!r}"
        run = node.WhichOneof("run")
        if run is None:
            problems.append(f"{where} has neither an action nor a check")
        if run == "check" and node.HasField("compensation"):
            problems.append(f"{where} is a check: it changes nothing to compensate")
        if node.HasField("compensation") and node.compensation.WhichOneof("how") is None:
            problems.append(f"{where}: compensation needs undo or an action")
        for dependency in node.depends_on:
            if dependency == node.name:
                problems.append(f"{where} depends on itself")
            elif dependency not in seen:
                problems.append(f"{where} depends on {dependency!r}, which is not a step")
        if node.when:
            try:
                Condition.compile(node.when)
            except ConditionError as error:
                problems.append(f"{where}: when: {error}")
    sorter = graphlib.TopologicalSorter(
        {node.name: [d for d in node.depends_on if d in seen and d != node.name] for node in nodes}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        cycle = " -> ".join(error.args[1])
        problems.append(f"the steps depend on each other in a cycle: {cycle}")
    return problems


def check_graph(nodes: Sequence[workflow_pb2.PlanNode]) -> None:
    """GraphError listing every problem of `nodes`, if any."""
    problems = graph_problems(nodes)
    if problems:
        raise GraphError("\n".join(problems))


def condition_facts(steps: Sequence[Step]) -> dict[str, Any]:
    """What a step's `when` sees: `steps.<name>.state` ("pending", "running", "done",
    "failed", "skipped") and `.outcome` ("succeeded", "rolled_back", "passed", ...; "" when
    it did not end yet), for every node step."""
    return {
        "steps": {
            step.node: {"state": step.state.value.lower(), "outcome": step.outcome.lower()}
            for step in steps
            if step.kind in NODE_KINDS
        }
    }


@dataclass(frozen=True)
class Moves:
    """What to do next with a graph's node steps."""

    # Steps found RUNNING: an attempt was in flight (or waiting for its retry) when the
    # runner stopped; they go on with the same executor id.
    resume: list[Step] = field(default_factory=list)
    # PENDING steps whose dependencies finished and whose condition holds.
    start: list[Step] = field(default_factory=list)
    # PENDING steps that will never run, with why.
    skip: list[tuple[Step, str]] = field(default_factory=list)
    # PENDING steps whose condition could not be evaluated: they fail, with why.
    fail: list[tuple[Step, str]] = field(default_factory=list)
    # The step whose failure fails the plan, once one has.
    failed: Step | None = None


def nodes_by_name(plan: workflow_pb2.WorkflowPlan) -> dict[str, workflow_pb2.PlanNode]:
    return {node.name: node for node in plan.nodes}


def plan_failure(plan: workflow_pb2.WorkflowPlan, steps: Sequence[Step]) -> Step | None:
    """The first node step (in plan order) that failed and may not fail alone."""
    nodes = nodes_by_name(plan)
    for step in steps:
        if step.kind in NODE_KINDS and step.state is StepStatus.FAILED:
            node = nodes.get(step.node)
            if node is None or not node.continue_on_failure:
                return step
    return None


def next_moves(plan: workflow_pb2.WorkflowPlan, steps: Sequence[Step]) -> Moves:
    """From the stored steps: which to resume, start, skip or fail now. Once a step failed
    the plan, nothing new starts: every PENDING step is skipped (the ones running finish)."""
    nodes = nodes_by_name(plan)
    node_steps = [s for s in steps if s.kind in NODE_KINDS]
    by_node = {s.node: s for s in node_steps}
    failed = plan_failure(plan, steps)
    moves = Moves(
        resume=[s for s in node_steps if s.state is StepStatus.RUNNING],
        failed=failed,
    )
    pending = [s for s in node_steps if s.state is StepStatus.PENDING]
    if failed is not None:
        moves.skip.extend((s, f"not run: step {failed.node} failed") for s in pending)
        return moves
    facts = condition_facts(steps)
    for step in pending:
        node = nodes[step.node]
        dependencies = [by_node[name] for name in node.depends_on if name in by_node]
        if not all(d.state.finished for d in dependencies):
            continue
        if node.when:
            try:
                holds = Condition.compile(node.when).evaluate(facts)
            except ConditionError as error:
                moves.fail.append((step, f"its condition could not be evaluated: {error}"))
                continue
            if holds:
                moves.start.append(step)
            else:
                moves.skip.append((step, f"not run: its condition is false ({node.when})"))
            continue
        unfinished = [d for d in dependencies if d.state is not StepStatus.DONE]
        if unfinished:
            why = ", ".join(f"{d.node} {d.state.value.lower()}" for d in unfinished)
            moves.skip.append((step, f"not run: it needs its dependencies done ({why})"))
        else:
            moves.start.append(step)
    return moves


@dataclass(frozen=True)
class Compensations:
    """The COMPENSATE steps of a plan that failed: to run, in this order (the reverse of the
    order their nodes finished), and to skip, with why."""

    run: list[Step]
    skip: list[tuple[Step, str]]


def compensations(plan: workflow_pb2.WorkflowPlan, steps: Sequence[Step]) -> Compensations:
    """Which compensations run, once every node step finished. When the plan did not fail,
    none: each is skipped. When it failed, those of the action steps that were applied
    (DONE, the executor's outcome SUCCEEDED), the last finished first; a compensation that
    already finished (a resumed runner) is neither run nor skipped again."""
    by_node: Mapping[str, Step] = {s.node: s for s in steps if s.kind in NODE_KINDS}
    pending = [s for s in steps if s.kind == K.STEP_KIND_COMPENSATE and not s.state.finished]
    failed = plan_failure(plan, steps)
    if failed is None:
        return Compensations([], [(s, "not needed: the plan did not fail") for s in pending])
    run: list[Step] = []
    skip: list[tuple[Step, str]] = []
    for step in pending:
        undone = by_node.get(step.node)
        if undone is None or undone.state is not StepStatus.DONE or undone.outcome != APPLIED:
            state = "did not run" if undone is None else undone.state.value.lower()
            skip.append((step, f"nothing to undo: step {step.node} {state}"))
        else:
            run.append(step)

    def finished(step: Step) -> tuple[float, int]:
        undone = by_node[step.node]
        at = undone.finished_at.timestamp() if undone.finished_at is not None else 0.0
        return (at, undone.index)

    run.sort(key=finished, reverse=True)
    return Compensations(run, skip)


def graph_actions(nodes: Sequence[workflow_pb2.PlanNode]) -> list[str]:
    """The catalogue actions a graph runs: its nodes' and their compensations', once each."""
    found: dict[str, None] = {}
    for node in nodes:
        if node.HasField("action"):
            found[node.action.WhichOneof("params") or ""] = None
        how = node.compensation
        if how.WhichOneof("how") == "action":
            found[how.action.WhichOneof("params") or ""] = None
    return [name for name in found if name]
