"""WatchWorkflow over gRPC in the in-process stack, and `kubernaut workflows watch` against
it: a workflow that waits for approval keeps its stream open; decided, its steps come in
order until the stream ends with the final state. (The in-process stack has no cluster:
an approved workflow fails at its dry-run, a rejected one is REFUSED.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.workflows import watch_workflow
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.telemetry import RPC_HANDLED, RPC_MESSAGES_SENT
from kubernaut.services.workflow.watch import FINAL_STATES
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.workflows import restart_workflow

pytestmark = pytest.mark.integration

W = workflow_pb2
SERVICE = "kubernaut.workflow.v1.WorkflowService"
TARGET = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="watched")
# How far a step's state may have come: it never goes back.
_ORDER = {
    W.STEP_STATE_PENDING: 0,
    W.STEP_STATE_RUNNING: 1,
    W.STEP_STATE_DONE: 2,
    W.STEP_STATE_FAILED: 2,
    W.STEP_STATE_SKIPPED: 2,
}


@pytest_asyncio.fixture
async def operator(stack: InProcessStack) -> AsyncIterator[WorkflowServiceStub]:
    clients = stack.clients()
    try:
        yield clients.stub(WorkflowServiceStub)
    finally:
        await clients.close()


def _alert() -> alert_pb2.Alert:
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": "shop"},
    )
    alert.starts_at.GetCurrentTime()
    return alert


async def _waiting_for_approval(stack: InProcessStack) -> tuple[str, W.Workflow]:
    """A new workflow on an open incident, below the approval threshold: (incident id,
    the workflow as created)."""
    clients = stack.clients()
    analysis = stack.clients(ServiceName.AI_ANALYSIS.account)
    try:
        return await restart_workflow(
            clients.stub(StorageServiceStub),
            analysis.stub(WorkflowServiceStub),
            _alert(),
            TARGET,
            confidence=0.2,
        )
    finally:
        await clients.close()
        await analysis.close()


class Recorded:
    """A WatchWorkflow stream read in the background."""

    def __init__(self, stub: WorkflowServiceStub, request: W.WatchWorkflowRequest) -> None:
        self.messages: list[W.WatchWorkflowResponse] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(stub, request))

    async def _read(self, stub: WorkflowServiceStub, request: W.WatchWorkflowRequest) -> None:
        async for message in stub.WatchWorkflow(request):
            self.messages.append(message)
            self.changed.set()

    async def until(self, state: int, timeout: float = 30) -> W.Workflow:
        async def reached() -> W.Workflow:
            while not self.messages or self.messages[-1].workflow.state != state:
                assert not self.task.done(), f"the stream ended: {self.task!r}"
                self.changed.clear()
                await self.changed.wait()
            return self.messages[-1].workflow

        return await asyncio.wait_for(reached(), timeout)


async def test_the_stream_follows_a_workflow_through_approval_to_its_final_state(
    stack: InProcessStack, operator: WorkflowServiceStub
) -> None:
    incident_id, created = await _waiting_for_approval(stack)
    ok_before = RPC_HANDLED.labels(SERVICE, "WatchWorkflow", "OK")._value.get()
    sent_before = RPC_MESSAGES_SENT.labels(SERVICE, "WatchWorkflow")._value.get()
    # By its incident, as the approval email names it.
    stream = Recorded(operator, W.WatchWorkflowRequest(incident_id=incident_id))
    waiting = await stream.until(W.WORKFLOW_STATE_WAITING_APPROVAL)
    first = stream.messages[0]
    assert first.workflow.workflow_id == created.workflow_id
    assert [e.index for e in first.events] == list(range(len(first.workflow.steps)))
    assert [e.step for e in first.events] == list(first.workflow.steps)

    # Waiting for a person keeps the stream open, and nothing changes meanwhile.
    count = len(stream.messages)
    await asyncio.sleep(1.5)  # three polls
    assert not stream.task.done()
    assert len(stream.messages) == count

    decided = await operator.DecideApproval(
        W.DecideApprovalRequest(
            workflow_id=waiting.workflow_id,
            decision=W.APPROVAL_DECISION_APPROVE,
            reason="watching it",
        )
    )
    assert decided.decided
    await asyncio.wait_for(stream.task, 30)  # the stream ended by itself
    last = stream.messages[-1].workflow
    assert last.state == W.WORKFLOW_STATE_FAILED  # no cluster to act on
    assert all(m.workflow.state not in FINAL_STATES for m in stream.messages[:-1])
    got = (await operator.GetWorkflow(W.GetWorkflowRequest(workflow_id=last.workflow_id))).workflow
    assert list(got.steps) == list(last.steps)

    # After the first, each message holds only steps that changed, in step order, and each
    # step's states come in the order they happened.
    seen = {e.index: e.step for e in first.events}
    for message in stream.messages[1:]:
        indexes = [e.index for e in message.events]
        assert indexes == sorted(set(indexes))
        for event in message.events:
            assert event.step != seen[event.index], event
            assert _ORDER[event.step.state] >= _ORDER[seen[event.index].state], event
            assert message.workflow.steps[event.index] == event.step
            seen[event.index] = event.step
    assert [seen[i] for i in sorted(seen)] == list(last.steps)
    kinds = [s.kind for s in last.steps]
    approval = kinds.index(W.STEP_KIND_APPROVAL)
    dry_run = kinds.index(W.STEP_KIND_DRY_RUN)
    changed = [[e.index for e in m.events] for m in stream.messages[1:]]
    # The approval finished before the dry-run ran.
    first_approval = next(n for n, c in enumerate(changed) if approval in c)
    first_dry_run = next(n for n, c in enumerate(changed) if dry_run in c)
    assert first_approval <= first_dry_run
    assert last.steps[approval].state == W.STEP_STATE_DONE
    assert last.steps[dry_run].state == W.STEP_STATE_FAILED

    assert RPC_HANDLED.labels(SERVICE, "WatchWorkflow", "OK")._value.get() == ok_before + 1
    sent = RPC_MESSAGES_SENT.labels(SERVICE, "WatchWorkflow")._value.get()
    assert sent == sent_before + len(stream.messages)


async def test_an_unknown_workflow_is_not_found_and_a_malformed_id_invalid(
    operator: WorkflowServiceStub,
) -> None:
    for request in (
        W.WatchWorkflowRequest(workflow_id=str(uuid.uuid4())),
        W.WatchWorkflowRequest(incident_id=str(uuid.uuid4())),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in operator.WatchWorkflow(request):
                pytest.fail("no message for an unknown workflow")
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        key = request.WhichOneof("key")
        assert f"no workflow for {key} {getattr(request, key or '')}" == caught.value.details()

    for request, field in (
        (W.WatchWorkflowRequest(workflow_id="wf-1"), "workflow_id"),
        (W.WatchWorkflowRequest(incident_id="incident 7"), "incident_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in operator.WatchWorkflow(request):
                pytest.fail("no message for a malformed id")
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)


async def test_services_outside_the_call_table_may_not_watch(stack: InProcessStack) -> None:
    clients = stack.clients(ServiceName.AI_ANALYSIS.account)
    try:
        stub = clients.stub(WorkflowServiceStub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.WatchWorkflow(
                W.WatchWorkflowRequest(workflow_id=str(uuid.uuid4()))
            ):
                pytest.fail("no message for a caller outside the call table")
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        await clients.close()


async def test_the_cli_prints_each_step_as_it_changes_then_the_final_state(
    stack: InProcessStack, operator: WorkflowServiceStub, capsys: pytest.CaptureFixture[str]
) -> None:
    incident_id, created = await _waiting_for_approval(stack)
    clients = stack.clients()
    try:
        # By the incident's id, as `workflows show` takes it.
        watching = asyncio.create_task(watch_workflow(clients, incident_id))
        waiting = Recorded(operator, W.WatchWorkflowRequest(workflow_id=created.workflow_id))
        await waiting.until(W.WORKFLOW_STATE_WAITING_APPROVAL)
        waiting.task.cancel()
        await asyncio.sleep(1)  # the CLI's stream reached the waiting workflow too
        assert not watching.done()
        await operator.DecideApproval(
            W.DecideApprovalRequest(
                workflow_id=created.workflow_id,
                decision=W.APPROVAL_DECISION_REJECT,
                reason="not now",
            )
        )
        code = await asyncio.wait_for(watching, 30)
    finally:
        await clients.close()
    out = capsys.readouterr().out.splitlines()
    assert code == 1  # REFUSED is not SUCCEEDED
    assert out[0].startswith(f"workflow {created.workflow_id} (incident {incident_id}):")
    assert "restart_deployment on Deployment shop/watched; times UTC" in out[0]
    assert any("step 1 validate  DONE" in line for line in out), out
    assert any("workflow  WAITING_APPROVAL  waiting for approval" in line for line in out), out
    assert any("step 2 approval  FAILED  rejected by operator: not now" in line for line in out)
    assert any("SKIPPED" in line for line in out), out
    assert out[-1].startswith(f"workflow {created.workflow_id} REFUSED: ")
    # Each line once: a step's state is printed when it changes, not again.
    assert len(out) == len(set(out)), out
    # In the order they happened: the approval's decision before the skipped steps.
    decided = next(n for n, line in enumerate(out) if "step 2 approval  FAILED" in line)
    assert all(n > decided for n, line in enumerate(out) if "SKIPPED" in line)


async def test_the_cli_refuses_what_is_not_a_workflow(
    operator: WorkflowServiceStub, stack: InProcessStack, capsys: pytest.CaptureFixture[str]
) -> None:
    clients = stack.clients()
    try:
        assert await watch_workflow(clients, str(uuid.uuid4())) == 1
        assert "NOT_FOUND: no workflow for incident_id" in capsys.readouterr().err
        assert await watch_workflow(clients, "wf-1") == 1
        assert "INVALID_ARGUMENT" in capsys.readouterr().err
    finally:
        await clients.close()
