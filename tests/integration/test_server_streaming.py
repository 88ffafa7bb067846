"""The shared runtime around server-streaming RPCs, over real gRPC on loopback: the server
interceptor authorizes, validates, maps errors, counts and logs a stream as it does a unary
call, and keeps the call's principal, request id and trace current while the servicer's
generator runs; the clients' interceptor names the caller and sets no deadline on a stream.
A scripted WatchWorkflow stands in for the servicer, so that each way a stream can end is
shown on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from kubernaut.runtime.access import Access, AccessSettings
from kubernaut.runtime.audit import AuditSettings, AuditTrail, StorageAuditSink
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.interceptors import KubernautServerInterceptor
from kubernaut.runtime.logs import request_id_var
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.principals import current_principal
from kubernaut.runtime.server import RunningService, ServiceSpec
from kubernaut.runtime.settings import RuntimeSettings, Transport
from kubernaut.runtime.telemetry import RPC_HANDLED, RPC_MESSAGES_SENT, RPC_SECONDS
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

SERVICE = "kubernaut.workflow.v1.WorkflowService"
METHOD = "WatchWorkflow"
SETTINGS = RuntimeSettings(transport=Transport.INSECURE, call_timeout_seconds=0.5)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"

Handler = Callable[..., Any]


@dataclass
class Served:
    server: grpc.aio.Server
    port: int
    interceptor: KubernautServerInterceptor
    health: health.aio.HealthServicer


@contextlib.asynccontextmanager
async def _serving(handler: Handler) -> AsyncIterator[int]:
    async with _server(handler) as served:
        yield served.port


@contextlib.asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[Served]:
    """A server with the runtime's interceptor whose WatchWorkflow is `handler`, and the
    health service (SERVING)."""
    interceptor = KubernautServerInterceptor(
        ServiceName.WORKFLOW, SETTINGS, access=Access(AccessSettings(shared_operator=True))
    )
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    METHOD: grpc.unary_stream_rpc_method_handler(
                        handler,
                        request_deserializer=workflow_pb2.WatchWorkflowRequest.FromString,
                        response_serializer=workflow_pb2.WatchWorkflowResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Served(server, port, interceptor, health_servicer)
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def _stub(
    port: int, account: str = "operator", token_file: Path | None = None
) -> AsyncIterator[WorkflowServiceStub]:
    clients = Clients(
        SETTINGS,
        account,
        addresses={ServiceName.WORKFLOW: f"127.0.0.1:{port}"},
        token_file=token_file,
    )
    try:
        yield clients.stub(WorkflowServiceStub)
    finally:
        await clients.close()


def _request() -> workflow_pb2.WatchWorkflowRequest:
    return workflow_pb2.WatchWorkflowRequest(workflow_id=str(uuid.uuid4()))


def _said(text: str) -> workflow_pb2.WatchWorkflowResponse:
    return workflow_pb2.WatchWorkflowResponse(workflow=workflow_pb2.Workflow(message=text))


def _handled(code: str) -> float:
    value: float = RPC_HANDLED.labels(SERVICE, METHOD, code)._value.get()
    return value


async def _counted(code: str, expected: float) -> None:
    """Wait for the count of `code`: an abort's status goes out as it aborts, and the
    interceptor counts it just after."""

    async def reached() -> bool:
        return _handled(code) == expected

    await eventually(reached, f"{METHOD} to be counted {code}", 5, 0.02)


def _sent() -> float:
    value: float = RPC_MESSAGES_SENT.labels(SERVICE, METHOD)._value.get()
    return value


async def _messages(
    stub: WorkflowServiceStub, request: workflow_pb2.WatchWorkflowRequest, **kwargs: Any
) -> list[str]:
    return [m.workflow.message async for m in stub.WatchWorkflow(request, **kwargs)]


async def test_a_stream_runs_as_its_caller_with_its_request_id_and_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(
        request: workflow_pb2.WatchWorkflowRequest, context: Any
    ) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        for n in range(3):
            # What the servicer sees each time it runs again, after grpc sent a message.
            trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
            yield _said(f"{n} {current_principal().label} {request_id_var.get()} {trace_id}")
            # Longer than the clients' default deadline (0.5 s): a stream has none.
            await asyncio.sleep(0.3)

    before_ok, before_sent = _handled("OK"), _sent()
    before_seconds = RPC_SECONDS.labels(SERVICE, METHOD)._sum.get()
    caplog.set_level(logging.INFO, logger="kubernaut.rpc")
    async with _serving(handler) as port, _stub(port) as stub:
        # The caller's trace is the current one where it calls, as in a service: the
        # client's instrumentation sends it (a traceparent header of the test's own would be
        # replaced by the client span's whenever a tracer provider is installed).
        caller = propagate.extract({"traceparent": TRACEPARENT})
        token = otel_context.attach(caller)
        try:
            metadata = (("x-request-id", "req-watch-1"),)
            got = await _messages(stub, _request(), metadata=metadata)
        finally:
            otel_context.detach(token)
    assert got == [f"{n} operator:operator req-watch-1 {TRACE_ID}" for n in range(3)]
    assert _handled("OK") == before_ok + 1
    assert _sent() == before_sent + 3
    # The stream's whole life.
    assert RPC_SECONDS.labels(SERVICE, METHOD)._sum.get() - before_seconds >= 0.9
    (line,) = [r for r in caplog.records if getattr(r, "rpc", "").endswith(METHOD)]
    assert (line.code, line.messages, line.peer) == ("OK", 3, "operator:operator")  # type: ignore[attr-defined]
    # Nothing of the call leaked into this task.
    assert request_id_var.get() == ""


async def test_a_stream_is_authorized_and_its_request_validated_before_it_starts() -> None:
    started = 0

    async def handler(
        request: workflow_pb2.WatchWorkflowRequest, context: Any
    ) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        nonlocal started
        started += 1
        yield _said("never for them")

    async with _serving(handler) as port:
        before = _handled("PERMISSION_DENIED")
        async with _stub(port, ServiceName.AI_ANALYSIS.account) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _messages(stub, _request())
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "not in Kubernaut's call table" in (caught.value.details() or "")
        await _counted("PERMISSION_DENIED", before + 1)

        async with _stub(port) as stub:
            for request, field in [
                (workflow_pb2.WatchWorkflowRequest(workflow_id="wf-1"), "workflow_id"),
                (workflow_pb2.WatchWorkflowRequest(), "key"),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _messages(stub, request)
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert any(field in name for name in field_violations(caught.value)), field
    assert started == 0


async def test_a_persons_token_goes_with_a_stream(tmp_path: Path) -> None:
    async def handler(
        request: workflow_pb2.WatchWorkflowRequest, context: Any
    ) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        yield _said(current_principal().label)

    token = tmp_path / "me.token"
    token.write_text("header.claims.signature\n")
    async with _serving(handler) as port, _stub(port, token_file=token) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _messages(stub, _request())
    # The server saw the token (and has no issuer to check it with): the call is the
    # person's, never the certificate's.
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "a bearer token was presented" in (caught.value.details() or "")


async def test_what_a_stream_did_not_map_becomes_a_status_after_the_messages_sent() -> None:
    downstream = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "storage down"
    )

    async def handler(
        request: workflow_pb2.WatchWorkflowRequest, context: Any
    ) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        yield _said("first")
        if request.workflow_id.endswith("0"):
            raise downstream
        if request.workflow_id.endswith("1"):
            raise RuntimeError("a bug")
        await context.abort(grpc.StatusCode.NOT_FOUND, "gone")

    async with _serving(handler) as port, _stub(port) as stub:
        for last, code, detail in [
            ("0", grpc.StatusCode.UNAVAILABLE, "a downstream call failed: UNAVAILABLE"),
            ("1", grpc.StatusCode.INTERNAL, "internal error (request id "),
            ("2", grpc.StatusCode.NOT_FOUND, "gone"),
        ]:
            before = _handled(code.name)
            request = workflow_pb2.WatchWorkflowRequest(workflow_id=str(uuid.uuid4())[:-1] + last)
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for message in stub.WatchWorkflow(request):
                    received.append(message.workflow.message)
            assert received == ["first"]
            assert caught.value.code() is code
            assert detail in (caught.value.details() or "")
            await _counted(code.name, before + 1)


async def test_a_stream_the_client_leaves_is_cleaned_up_and_counted_cancelled() -> None:
    cleaned = asyncio.Event()

    async def handler(
        request: workflow_pb2.WatchWorkflowRequest, context: Any
    ) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        try:
            while True:
                yield _said("tick")
                await asyncio.sleep(0.05)
        finally:
            cleaned.set()

    before = _handled("CANCELLED")
    async with _serving(handler) as port, _stub(port) as stub:
        call = stub.WatchWorkflow(_request())
        async for message in call:
            assert message.workflow.message == "tick"
            break
        call.cancel()
        await asyncio.wait_for(cleaned.wait(), 5)
        await _counted("CANCELLED", before + 1)


async def test_a_stream_that_writes_through_its_context_is_served_alike() -> None:
    async def handler(request: workflow_pb2.WatchWorkflowRequest, context: Any) -> None:
        await context.write(_said(current_principal().label))
        await context.write(_said("second"))

    before = _handled("OK")
    async with _serving(handler) as port:
        async with _stub(port) as stub:
            assert await _messages(stub, _request()) == ["operator:operator", "second"]
        async with _stub(port, ServiceName.AI_ANALYSIS.account) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _messages(stub, _request())
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert _handled("OK") == before + 1


async def test_health_watch_streams_to_anyone() -> None:
    async def handler(
        request: workflow_pb2.WatchWorkflowRequest, context: Any
    ) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        yield _said("unused")

    # No identity at all, as a kubelet probe: health is open to every peer.
    async with (
        _serving(handler) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await asyncio.wait_for(call.read(), 5)
        call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_stopping_server_ends_its_streams_at_once_for_their_clients_to_reconnect() -> None:
    cleaned = asyncio.Event()

    async def handler(
        request: workflow_pb2.WatchWorkflowRequest, context: Any
    ) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        try:
            yield _said("waiting for a person")
            await asyncio.sleep(3600)  # never ends by itself
        finally:
            cleaned.set()

    # A long grace period, which unary calls would get: the stream must not hold it.
    settings = SETTINGS.model_copy(
        update={"shutdown_drain_seconds": 0, "shutdown_grace_seconds": 30}
    )
    before = _handled("UNAVAILABLE")
    async with _server(handler) as served, _stub(served.port) as stub:
        clients = Clients(settings)
        running = RunningService(
            ServiceName.WORKFLOW,
            settings,
            served.server,
            served.port,
            None,
            served.health,
            ServiceSpec(servicer=None),
            clients,
            AuditTrail(ServiceName.WORKFLOW, StorageAuditSink(clients), AuditSettings()),
            served.interceptor,
        )
        received = []
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for message in stub.WatchWorkflow(_request()):
                received.append(message.workflow.message)
                shutdown = asyncio.create_task(running.shutdown())
        await shutdown
        assert time.monotonic() - started < 10
    assert received == ["waiting for a person"]
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "the server is stopping; reconnect" in (caught.value.details() or "")
    assert cleaned.is_set()
    assert _handled("UNAVAILABLE") == before + 1
    assert served.interceptor.end_streams() == 0  # none left open
