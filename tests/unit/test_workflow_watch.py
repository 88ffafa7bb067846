"""WatchWorkflow's logic without gRPC (a scripted `load`), and what `kubernaut workflows
watch` prints of a stream and how it reconnects (a scripted stub)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import pytest
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.cli import workflows as cli
from kubernaut.services.workflow.store import StoreUnavailable
from kubernaut.services.workflow.watch import WorkflowGone, changed_steps, watch

W = workflow_pb2
T0 = dt.datetime(2025, 3, 1, 12, 0, 0)


def _at(seconds: int) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(T0 + dt.timedelta(seconds=seconds))
    return stamp


def _step(
    kind: workflow_pb2.StepKind.ValueType,
    state: workflow_pb2.StepState.ValueType,
    message: str = "",
    started: int | None = None,
    finished: int | None = None,
    attempts: int = 0,
) -> workflow_pb2.StepRun:
    step = W.StepRun(kind=kind, state=state, message=message, attempts=attempts)
    if started is not None:
        step.started_at.CopyFrom(_at(started))
    if finished is not None:
        step.finished_at.CopyFrom(_at(finished))
    return step


def _workflow(
    state: workflow_pb2.WorkflowState.ValueType,
    steps: Sequence[workflow_pb2.StepRun],
    message: str = "",
    updated: int = 0,
) -> workflow_pb2.Workflow:
    workflow = W.Workflow(
        workflow_id="4b3c2d1e-0000-4000-8000-000000000001",
        incident_id="4b3c2d1e-0000-4000-8000-000000000002",
        state=state,
        message=message,
        steps=list(steps),
        plan=W.WorkflowPlan(action="restart_deployment"),
    )
    workflow.plan.target.namespace = "shop"
    workflow.plan.target.kind = "Deployment"
    workflow.plan.target.name = "web"
    workflow.updated_at.CopyFrom(_at(updated))
    return workflow


PENDING, RUNNING, DONE, FAILED = (
    W.STEP_STATE_PENDING,
    W.STEP_STATE_RUNNING,
    W.STEP_STATE_DONE,
    W.STEP_STATE_FAILED,
)

# A run of a workflow as the store shows it, poll after poll.
VALIDATING = _workflow(
    W.WORKFLOW_STATE_RUNNING,
    [
        _step(W.STEP_KIND_VALIDATE, RUNNING, started=1, attempts=1),
        _step(W.STEP_KIND_APPLY, PENDING),
    ],
    "running",
    updated=1,
)
APPLYING = _workflow(
    W.WORKFLOW_STATE_RUNNING,
    [
        _step(W.STEP_KIND_VALIDATE, DONE, "ok", started=1, finished=2, attempts=1),
        _step(W.STEP_KIND_APPLY, RUNNING, "applying", started=2, attempts=1),
    ],
    "running",
    updated=2,
)
SUCCEEDED = _workflow(
    W.WORKFLOW_STATE_SUCCEEDED,
    [
        _step(W.STEP_KIND_VALIDATE, DONE, "ok", started=1, finished=2, attempts=1),
        _step(W.STEP_KIND_APPLY, DONE, "applied", started=2, finished=5, attempts=1),
    ],
    "remediated",
    updated=5,
)


class Script:
    """A `load` that answers each call with the next of its answers (an exception is
    raised), and the last one for ever after."""

    def __init__(self, answers: Iterable[workflow_pb2.Workflow | Exception | None]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self) -> workflow_pb2.Workflow | None:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


async def _all(load: Script, limit: int = 50) -> list[workflow_pb2.WatchWorkflowResponse]:
    got = []
    async for message in watch(load, 0):
        got.append(message)
        assert len(got) < limit, "the watch did not end"
    return got


def _indexes(message: workflow_pb2.WatchWorkflowResponse) -> list[int]:
    return [event.index for event in message.events]


async def test_the_first_message_holds_every_step_and_later_ones_only_the_changes() -> None:
    load = Script([VALIDATING, VALIDATING, APPLYING, APPLYING, SUCCEEDED])
    first, applying, succeeded = await _all(load)
    assert first.workflow == VALIDATING
    assert _indexes(first) == [0, 1]
    assert [e.step for e in first.events] == list(VALIDATING.steps)
    # The second poll saw nothing new: no message for it.
    assert applying.workflow == APPLYING
    assert _indexes(applying) == [0, 1]
    assert succeeded.workflow == SUCCEEDED
    assert _indexes(succeeded) == [1]  # the first step did not change
    assert succeeded.events[0].step == SUCCEEDED.steps[1]
    # It ended after the final state: nothing was read after it.
    assert load.calls == 5


async def test_a_changed_workflow_without_changed_steps_is_a_message_without_events() -> None:
    told = _workflow(W.WORKFLOW_STATE_RUNNING, VALIDATING.steps, "still validating", updated=1)
    later = _workflow(W.WORKFLOW_STATE_RUNNING, VALIDATING.steps, "still validating", updated=3)
    _, message, touched, *_ = await _all(Script([VALIDATING, told, later, SUCCEEDED]))
    assert (message.workflow.message, list(message.events)) == ("still validating", [])
    assert (touched.workflow.updated_at, list(touched.events)) == (_at(3), [])


async def test_a_finished_workflow_is_one_message() -> None:
    load = Script([SUCCEEDED])
    (only,) = await _all(load)
    assert only.workflow == SUCCEEDED
    assert _indexes(only) == [0, 1]
    assert load.calls == 1


@pytest.mark.parametrize(
    "state",
    [W.WORKFLOW_STATE_FAILED, W.WORKFLOW_STATE_ROLLED_BACK, W.WORKFLOW_STATE_REFUSED],
    ids=lambda s: W.WorkflowState.Name(s),
)
async def test_every_final_state_ends_the_watch(
    state: workflow_pb2.WorkflowState.ValueType,
) -> None:
    ended = _workflow(state, APPLYING.steps, "over", updated=9)
    load = Script([VALIDATING, ended, VALIDATING])
    *_, last = await _all(load)
    assert last.workflow.state == state
    assert load.calls == 2


async def test_a_workflow_waiting_for_approval_keeps_the_watch_open() -> None:
    waiting = _workflow(
        W.WORKFLOW_STATE_WAITING_APPROVAL,
        [_step(W.STEP_KIND_APPROVAL, RUNNING, "waiting for approval", started=1, attempts=1)],
        "waiting for approval",
        updated=1,
    )
    decided = _workflow(
        W.WORKFLOW_STATE_REFUSED,
        [_step(W.STEP_KIND_APPROVAL, FAILED, "rejected by bob", started=1, finished=60)],
        "rejected by bob",
        updated=60,
    )
    load = Script([waiting] * 20 + [decided])
    first, last = await _all(load)
    assert first.workflow.state == W.WORKFLOW_STATE_WAITING_APPROVAL
    # It read the waiting workflow again and again, sending nothing, until it was decided.
    assert load.calls == 21
    assert last.workflow.state == W.WORKFLOW_STATE_REFUSED
    assert _indexes(last) == [0]


async def test_a_workflow_that_is_not_there_or_disappears_is_an_error() -> None:
    with pytest.raises(WorkflowGone) as never:
        await _all(Script([None]))
    assert not never.value.seen

    got = []
    with pytest.raises(WorkflowGone) as gone:
        async for message in watch(Script([VALIDATING, VALIDATING, None]), 0):
            got.append(message)
    assert gone.value.seen
    assert "disappeared" in str(gone.value)
    assert [m.workflow for m in got] == [VALIDATING]


async def test_the_store_failing_ends_the_watch_with_its_error() -> None:
    with pytest.raises(StoreUnavailable):
        await _all(Script([VALIDATING, StoreUnavailable("workflow store unavailable: down")]))


def test_new_steps_are_changes_too() -> None:
    before = list(VALIDATING.steps[:1])
    assert [e.index for e in changed_steps(before, VALIDATING.steps)] == [1]
    assert changed_steps(VALIDATING.steps, VALIDATING.steps) == []


# -- what `kubernaut workflows watch` prints -------------------------------------------------


def _message(
    workflow: workflow_pb2.Workflow, indexes: Iterable[int] | None = None
) -> workflow_pb2.WatchWorkflowResponse:
    chosen = range(len(workflow.steps)) if indexes is None else indexes
    return W.WatchWorkflowResponse(
        workflow=workflow, events=[W.StepEvent(index=i, step=workflow.steps[i]) for i in chosen]
    )


def test_a_step_line_says_when_which_step_what_state_and_what_it_does() -> None:
    step = _step(
        W.STEP_KIND_APPLY, RUNNING, "draining kwok-node-1\n(3 pods)", started=63, attempts=1
    )
    step.node = "drain"
    workflow = _workflow(W.WORKFLOW_STATE_RUNNING, [_step(W.STEP_KIND_VALIDATE, DONE)] * 3 + [step])
    line = cli.step_line(workflow, W.StepEvent(index=3, step=step))
    assert line == "12:01:03  step 4 apply (drain)  RUNNING  draining kwok-node-1 (3 pods)"

    done = _step(W.STEP_KIND_VERIFY, DONE, "", started=63, finished=70, attempts=2)
    assert cli.step_line(workflow, W.StepEvent(index=0, step=done)) == (
        "12:01:10  step 1 verify  DONE (attempt 2)"
    )
    # A step that never ran (skipped) happened when the workflow changed.
    skipped = _step(W.STEP_KIND_SNAPSHOT, W.STEP_STATE_SKIPPED, "not needed")
    workflow.updated_at.CopyFrom(_at(75))
    assert cli.step_line(workflow, W.StepEvent(index=1, step=skipped)) == (
        "12:01:15  step 2 snapshot  SKIPPED  not needed"
    )


def test_the_printer_prints_what_happened_once_and_the_final_state_is_left_to_the_end() -> None:
    printer = cli.WatchPrinter()
    first = printer.lines(_message(VALIDATING))
    assert first == [
        "workflow 4b3c2d1e-0000-4000-8000-000000000001 (incident"
        " 4b3c2d1e-0000-4000-8000-000000000002): restart_deployment on"
        " Deployment shop/web; times UTC",
        "12:00:01  step 1 validate  RUNNING",  # the pending step is no news
        "12:00:01  workflow  RUNNING  running",
    ]
    assert printer.lines(_message(APPLYING)) == [
        "12:00:02  step 1 validate  DONE  ok",
        "12:00:02  step 2 apply  RUNNING  applying",
    ]
    # A reconnect's first message repeats every step: only what changed since is printed.
    assert printer.lines(_message(APPLYING)) == []
    assert printer.lines(_message(SUCCEEDED)) == ["12:00:05  step 2 apply  DONE  applied"]
    assert cli.final_line(SUCCEEDED) == (
        "workflow 4b3c2d1e-0000-4000-8000-000000000001 SUCCEEDED: remediated"
    )
    assert cli.watch_exit_code(SUCCEEDED) == 0
    for state in (W.WORKFLOW_STATE_FAILED, W.WORKFLOW_STATE_ROLLED_BACK, W.WORKFLOW_STATE_REFUSED):
        assert cli.watch_exit_code(_workflow(state, [])) == 1


def test_the_printer_says_when_a_workflow_waits_for_approval() -> None:
    printer = cli.WatchPrinter()
    printer.lines(_message(VALIDATING))
    waiting = _workflow(W.WORKFLOW_STATE_WAITING_APPROVAL, VALIDATING.steps, "waiting", updated=4)
    assert printer.lines(_message(waiting, [])) == ["12:00:04  workflow  WAITING_APPROVAL  waiting"]


class _Stream:
    """One scripted WatchWorkflow call: its messages, then an error or the end."""

    def __init__(
        self,
        messages: Sequence[workflow_pb2.WatchWorkflowResponse],
        error: grpc.StatusCode | None = None,
    ) -> None:
        self.messages = messages
        self.error = error

    async def __aiter__(self) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        for message in self.messages:
            yield message
        if self.error is not None:
            raise grpc.aio.AioRpcError(
                self.error, grpc.aio.Metadata(), grpc.aio.Metadata(), details="scripted"
            )


class _Stub:
    def __init__(self, streams: Sequence[_Stream]) -> None:
        self.streams = list(streams)
        self.requests: list[workflow_pb2.WatchWorkflowRequest] = []

    def WatchWorkflow(self, request: workflow_pb2.WatchWorkflowRequest) -> _Stream:
        self.requests.append(request)
        return self.streams.pop(0)


async def _follow(stub: _Stub, key: str, reconnects: int = 3) -> tuple[Any, list[str]]:
    lines: list[str] = []
    ended = await cli.follow_workflow(
        stub,  # type: ignore[arg-type]
        key,
        lines.append,
        reconnects=reconnects,
        backoff_seconds=0,
    )
    return ended, lines


async def test_watch_reconnects_when_the_stream_is_lost_and_prints_only_what_is_new(
    capsys: pytest.CaptureFixture[str],
) -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    stub = _Stub(
        [
            # The key is an incident's: no workflow has its id.
            _Stream([], grpc.StatusCode.NOT_FOUND),
            _Stream([_message(VALIDATING)], unavailable),
            _Stream([], unavailable),
            _Stream([_message(APPLYING)]),  # ends before the workflow did: lost too
            _Stream([_message(APPLYING), _message(SUCCEEDED, [1])]),
        ]
    )
    key = VALIDATING.incident_id
    ended, lines = await _follow(stub, key)
    assert ended == SUCCEEDED
    assert [r.WhichOneof("key") for r in stub.requests] == [
        "workflow_id",
        "incident_id",
        "workflow_id",
        "workflow_id",
        "workflow_id",
    ]
    assert stub.requests[0].workflow_id == key
    # Found once, then followed by its own id.
    assert {r.workflow_id for r in stub.requests[2:]} == {VALIDATING.workflow_id}
    assert lines[1:] == [
        "12:00:01  step 1 validate  RUNNING",
        "12:00:01  workflow  RUNNING  running",
        "12:00:02  step 1 validate  DONE  ok",
        "12:00:02  step 2 apply  RUNNING  applying",
        "12:00:05  step 2 apply  DONE  applied",
    ]
    assert capsys.readouterr().err.count("reconnecting") == 3


async def test_watch_gives_up_after_its_reconnects_and_on_other_errors() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    stub = _Stub([_Stream([_message(VALIDATING)], unavailable)] + [_Stream([], unavailable)] * 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _follow(stub, VALIDATING.workflow_id, reconnects=2)
    assert caught.value.code() is unavailable
    assert len(stub.requests) == 3

    stub = _Stub([_Stream([], grpc.StatusCode.PERMISSION_DENIED)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _follow(stub, VALIDATING.workflow_id)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert len(stub.requests) == 1

    # Neither a workflow's id nor an incident's.
    stub = _Stub([_Stream([], grpc.StatusCode.NOT_FOUND)] * 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _follow(stub, VALIDATING.workflow_id)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert [r.WhichOneof("key") for r in stub.requests] == ["workflow_id", "incident_id"]


def test_people_who_may_read_may_watch_and_the_command_is_there() -> None:
    from kubernaut.cli.main import parser
    from kubernaut.runtime.audit import AUDITED
    from kubernaut.runtime.edges import Role, role_needed
    from kubernaut.runtime.names import ServiceName

    # A read (NO_SIDE_EFFECTS in the proto): viewers may watch; nothing to audit.
    assert role_needed(ServiceName.WORKFLOW, "WatchWorkflow") is Role.VIEWER
    assert (ServiceName.WORKFLOW, "WatchWorkflow") not in AUDITED
    args = parser().parse_args(["workflows", "watch", "4b3c2d1e-0000-4000-8000-000000000002"])
    assert (args.action, args.workflow_id) == ("watch", "4b3c2d1e-0000-4000-8000-000000000002")
