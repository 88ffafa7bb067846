"""Following one workflow live (WatchWorkflow), without gRPC: read it, hand out the whole of
it, then read it again every so often and hand out what changed, until it finished.

The workflow's state lives in PostgreSQL and any replica may be running it, so the watch
polls the store rather than listening to the runner of this process: one read of one
workflow per poll, and a message only when something a watcher sees changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

from kubernaut.workflow.v1 import workflow_pb2

# The states a workflow does not leave: the stream ends after the message that shows one.
FINAL_STATES: Final = frozenset(
    {
        workflow_pb2.WORKFLOW_STATE_SUCCEEDED,
        workflow_pb2.WORKFLOW_STATE_FAILED,
        workflow_pb2.WORKFLOW_STATE_ROLLED_BACK,
        workflow_pb2.WORKFLOW_STATE_REFUSED,
    }
)

Load = Callable[[], Awaitable[workflow_pb2.Workflow | None]]


class WorkflowGone(Exception):
    """The workflow watched is not there: never was (`seen` False), or no longer is."""

    def __init__(self, seen: bool) -> None:
        super().__init__(
            "the workflow disappeared while it was watched" if seen else "no such workflow"
        )
        self.seen = seen


def is_final(workflow: workflow_pb2.Workflow) -> bool:
    return workflow.state in FINAL_STATES


def changed_steps(
    before: Sequence[workflow_pb2.StepRun], after: Sequence[workflow_pb2.StepRun]
) -> list[workflow_pb2.StepEvent]:
    """An event for each step of `after` that is new or differs from the one at its index
    in `before`, in step order."""
    return [
        workflow_pb2.StepEvent(index=index, step=step)
        for index, step in enumerate(after)
        if index >= len(before) or before[index] != step
    ]


def _headline_changed(before: workflow_pb2.Workflow, after: workflow_pb2.Workflow) -> bool:
    return (
        before.state != after.state
        or before.message != after.message
        or before.updated_at != after.updated_at
    )


async def watch(
    load: Load, poll_seconds: float
) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
    """The workflow `load` reads, as WatchWorkflow streams it: first the whole of it (an
    event for every step), then, every `poll_seconds`, a message when its state, message or
    update time, or any step, changed (the events: only the steps that did). Ends after the
    message that shows a final state; a workflow waiting for approval is watched on.

    Raises WorkflowGone when `load` finds nothing (first or later); what `load` raises
    (the store unreachable) goes to the caller as it is."""
    current = await load()
    if current is None:
        raise WorkflowGone(seen=False)
    yield workflow_pb2.WatchWorkflowResponse(
        workflow=current, events=changed_steps((), current.steps)
    )
    while not is_final(current):
        await asyncio.sleep(poll_seconds)
        latest = await load()
        if latest is None:
            raise WorkflowGone(seen=True)
        events = changed_steps(current.steps, latest.steps)
        if events or _headline_changed(current, latest):
            yield workflow_pb2.WatchWorkflowResponse(workflow=latest, events=events)
        current = latest
