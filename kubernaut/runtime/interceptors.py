"""The server interceptor every service runs: the RPC's span (W3C trace context from the
caller), request ids and logs, metrics, authorization against the call table, request
validation and error mapping.

It starts the calls' span itself rather than behind OpenTelemetry's grpc interceptor: one
interceptor layer instead of two, and no span attributes built for spans that are not
recorded (most, without a collector). bench/rpc_overhead.py measured that interceptor
alone at some 0.4x of a bare server's CPU per call.

Unary and server-streaming calls (WatchWorkflow, health Watch) get all of it; a stream's
span, metrics and log line cover its whole life, and it counts the messages it sent. Calls
that stream requests (reflection) are only authorized.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status
from opentelemetry.trace import StatusCode as SpanStatus

from kubernaut.runtime import edges, validation
from kubernaut.runtime.access import Access, AccessSettings, Denied, Unauthenticated
from kubernaut.runtime.identity import peer_of
from kubernaut.runtime.logs import incident_id_var, request_id_var
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.principals import ANONYMOUS, Principal, PrincipalKind, principal_var
from kubernaut.runtime.registry import service_of_path
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.runtime.telemetry import RPC_HANDLED, RPC_MESSAGES_SENT, RPC_SECONDS

log = logging.getLogger("kubernaut.rpc")

REQUEST_ID_HEADER = "x-request-id"
# A request without an id gets this process's random prefix and a count: unique like a
# uuid4 hex (32 hex digits), without reading the kernel's random source for every call.
_REQUEST_ID_PREFIX: Final = os.urandom(8).hex()
_request_ids = itertools.count()


def new_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):016x}"


# Downstream failures that mean "try again later" to our own caller.
RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def incident_id_of(request: Message) -> str:
    """The incident a request is about (its `incident_id`, or its `incident`'s), for the
    logs of everything the call does; "" when it names none."""
    fields = request.DESCRIPTOR.fields_by_name
    named: Any = request  # checked against the descriptor, not the static type
    if "incident_id" in fields:
        return str(named.incident_id)
    if "incident" in fields and request.HasField("incident"):
        return str(named.incident.incident_id)
    return ""


def bad_request_status(violations: list[tuple[str, str]]) -> grpc.Status:
    """INVALID_ARGUMENT carrying google.rpc.BadRequest with one violation a field."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    summary = "; ".join(f"{field}: {description}" for field, description in violations)
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message=f"invalid request: {summary}",
            details=[detail],
        )
    )


async def abort_invalid(
    context: grpc.aio.ServicerContext[Any, Any], field: str, description: str
) -> None:
    """Refuse a request that protovalidate passed but the service's own rules refuse."""
    await context.abort_with_status(bad_request_status([(field, description)]))


def violations_of(message: Message) -> list[tuple[str, str]]:
    """The protovalidate rule violations of a message, as (field path, description).

    The rules are compiled to plain Python (protovalidate's CEL costs milliseconds an
    alert); types with rules the fast path does not compile go to protovalidate itself.
    """
    return validation.violations_of(message)


def _text_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The call's text metadata (binary `-bin` values left out), read once per call."""
    pairs = context.invocation_metadata() or ()
    return {name: value for name, value in pairs if isinstance(value, str)}


class CallAudit(Protocol):
    """Records audited calls (kubernaut.runtime.audit.AuditTrail); never raises."""

    def audits(self, service: ServiceName, method: str) -> bool: ...

    async def record(
        self,
        service: ServiceName,
        method: str,
        request: Message,
        code: grpc.StatusCode,
        message: str = "",
        response: Message | None = None,
    ) -> None: ...


@dataclass(slots=True)
class _StreamCall:
    """One server-streaming call as the interceptor follows it. Its span, request id,
    incident and principal are made current only while the servicer's code runs (`current`),
    never across a message handed to grpc: between two messages grpc's own code runs, and a
    stream that grpc abandons is finished later in another task, where the context
    variables set in this one could not be reset."""

    path: str
    metadata: dict[str, str]
    span: Any
    span_context: otel_context.Context
    request_id: str
    incident_id: str
    started: float
    principal: Principal | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    sent: int = 0
    # The task that serves it, and whether end_streams cancelled it (the server stops).
    task: asyncio.Task[Any] | None = None
    ended_by_server: bool = False

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        span_token = otel_context.attach(self.span_context)
        request_token = request_id_var.set(self.request_id)
        incident_token = incident_id_var.set(self.incident_id)
        principal_token = None if self.principal is None else principal_var.set(self.principal)
        try:
            yield
        finally:
            if principal_token is not None:
                principal_var.reset(principal_token)
            incident_id_var.reset(incident_token)
            request_id_var.reset(request_token)
            otel_context.detach(span_token)


class KubernautServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        service: ServiceName,
        settings: RuntimeSettings,
        access: Access | None = None,
        audit: CallAudit | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        # Records the audited calls once they have an outcome; None records nothing.
        self.audit = audit
        # Who may call: read once, when the server is made.
        self.access = access or Access(AccessSettings())
        self._tracer = trace.get_tracer("kubernaut.runtime.interceptors")
        # The wrapped handler of each method, made on its first call: the handlers a server
        # serves are fixed once it starts, and wrapping depends on nothing but the method.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        # The server-streaming calls open now, by the task that serves each (end_streams).
        self._streams: dict[asyncio.Task[Any], _StreamCall] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        path: str = handler_call_details.method
        if (wrapped := self._wrapped.get(path)) is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap(path, handler)
        self._wrapped[path] = wrapped
        return wrapped

    # A metric's child of each label set, looked up once (labels() takes a lock and builds
    # a key on every call); bounded by the served methods and the status codes.
    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one interceptor per server, for its life
    def _handled(self, service: str, method: str, code: grpc.StatusCode) -> Any:
        return RPC_HANDLED.labels(service, method, code.name)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - as above
    def _seconds(self, service: str, method: str) -> Any:
        return RPC_SECONDS.labels(service, method)

    def _wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(
                request: Message, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                return await self._handle(path, request, context, inner)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(path, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Methods that stream requests (reflection) only need the authorization check.
        kind = next(k for k in ("stream_unary", "stream_stream") if getattr(handler, k))
        inner_stream = getattr(handler, kind)
        streaming: Callable[[Any, Any], Any]
        if inspect.isasyncgenfunction(inner_stream):

            async def streaming_generator(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await self._authorize(path, context)
                async for item in inner_stream(request, context):
                    yield item

            streaming = streaming_generator
        else:

            async def streaming_coroutine(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                await self._authorize(path, context)
                return await inner_stream(request, context)

            streaming = streaming_coroutine
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(
            streaming,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _authorize(
        self,
        path: str,
        context: grpc.aio.ServicerContext[Any, Any],
        metadata: dict[str, str] | None = None,
    ) -> Principal:
        """Who calls, if they may make this call; else abort UNAUTHENTICATED (a credential
        that does not hold) or PERMISSION_DENIED (saying what is missing)."""
        full_service = path.lstrip("/").partition("/")[0]
        if full_service == edges.HEALTH_SERVICE:
            return ANONYMOUS
        peer = peer_of(context, self.settings)
        try:
            principal = await self.access.principal(
                peer, _text_metadata(context) if metadata is None else metadata
            )
        except Unauthenticated as error:
            log.warning(
                "unauthenticated", extra={"rpc": path, "peer": peer.label, "error": str(error)}
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
            raise AssertionError("unreachable") from error  # abort raises
        if (
            full_service in edges.REFLECTION_SERVICES
            and principal.kind is not PrincipalKind.ANONYMOUS
        ):
            return principal
        target = service_of_path(path)
        reason = f"{principal.label} may not call {path} (not in Kubernaut's call table)"
        if target is not None and target[0] is self.service:
            try:
                self.access.check(principal, *target)
                return principal
            except Denied as error:
                reason = str(error)
        log.warning("permission denied", extra={"rpc": path, "peer": principal.label})
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        raise AssertionError("unreachable")  # abort raises

    async def _handle(
        self,
        path: str,
        request: Message,
        context: grpc.aio.ServicerContext[Any, Any],
        inner: Callable[[Message, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
    ) -> Any:
        metadata = _text_metadata(context)
        # The caller's trace context (traceparent, baggage), as OpenTelemetry's grpc
        # instrumentation reads it; the span is current for the logs and downstream calls.
        parent = propagate.extract(metadata)
        span = self._tracer.start_span(
            path,
            context=parent,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        span_token = otel_context.attach(trace.set_span_in_context(span, parent))
        request_id = metadata.get(REQUEST_ID_HEADER) or new_request_id()
        token = request_id_var.set(request_id)
        incident_token = incident_id_var.set(incident_id_of(request))
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        peer_label = "?"
        principal_token = None
        response: Any = None
        try:
            principal = await self._authorize(path, context, metadata)
            peer_label = principal.label
            principal_token = principal_var.set(principal)
            violations = violations_of(request)
            if violations:
                await context.abort_with_status(bad_request_status(violations))
            response = await inner(request, context)
            return response
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except grpc.aio.AioRpcError as error:
            # A downstream call failed and the servicer did not map it.
            code = (
                grpc.StatusCode.UNAVAILABLE
                if error.code() in RETRYABLE
                else grpc.StatusCode.INTERNAL
            )
            log.warning(
                "downstream call failed",
                extra={
                    "rpc": path,
                    "downstream_code": error.code().name,
                    "detail": error.details(),
                },
            )
            await context.abort(
                code, f"a downstream call failed: {error.code().name}: {error.details()}"
            )
        except Exception as error:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error", extra={"rpc": path})
            if span.is_recording():
                span.record_exception(error)
            await context.abort(code, f"internal error (request id {request_id})")
        finally:
            if code is grpc.StatusCode.OK and context.code() not in (None, grpc.StatusCode.OK):
                code = context.code()
            # On the record before the response goes out (an abort's status goes out as it
            # aborts: then just after), while the principal is still the call's.
            await self._ended(
                path,
                request,
                context,
                span,
                code,
                started,
                peer_label,
                authorized=principal_token is not None,
                response=response,
            )
            request_id_var.reset(token)
            incident_id_var.reset(incident_token)
            if principal_token is not None:
                principal_var.reset(principal_token)
            otel_context.detach(span_token)
            span.end()

    async def _ended(
        self,
        path: str,
        request: Message,
        context: grpc.aio.ServicerContext[Any, Any],
        span: Any,
        code: grpc.StatusCode,
        started: float,
        peer_label: str,
        *,
        authorized: bool,
        response: Any = None,
        sent: int | None = None,
    ) -> None:
        """A call's outcome in its metrics, its log line, the audit trail (an authorized
        call of an audited method) and its span's attributes; `sent`: the messages a
        stream sent."""
        full_service, _, method = path.lstrip("/").partition("/")
        elapsed = time.perf_counter() - started
        self._handled(full_service, method, code).inc()
        self._seconds(full_service, method).observe(elapsed)
        fields: dict[str, Any] = {
            "rpc": path,
            "code": code.name,
            "peer": peer_label,
            "duration_ms": round(elapsed * 1000, 3),
        }
        if sent is not None:
            fields["messages"] = sent
        log.info("rpc", extra=fields)
        if self.audit is not None and authorized and self.audit.audits(self.service, method):
            await self.audit.record(
                self.service, method, request, code, context.details() or "", response
            )
        if span.is_recording():
            # The attributes OpenTelemetry's grpc instrumentation sets.
            span.set_attributes(
                {
                    "rpc.system": "grpc",
                    "rpc.service": full_service,
                    "rpc.method": method,
                    "rpc.grpc.status_code": code.value[0],
                }
            )
            if sent is not None:
                span.set_attribute("rpc.messages_sent", sent)
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(SpanStatus.ERROR, f"{code.name}"))

    # -- server-streaming calls ----------------------------------------------------------------

    def _unary_stream(self, path: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        """`inner` (a servicer's server-streaming method) with the span, request id, logs,
        metrics, authorization, validation and error mapping of a unary call; an async
        generator for one, a coroutine for one that writes with `context.write`."""
        full_service, _, method = path.lstrip("/").partition("/")
        sent_counter = RPC_MESSAGES_SENT.labels(full_service, method)

        if inspect.isasyncgenfunction(inner):

            async def generator(
                request: Message, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                call = self._stream_started(path, request, context)
                responses: Any = None
                try:
                    with call.current():
                        await self._admit(call, request, context)
                        responses = inner(request, context)
                    while True:
                        with call.current():
                            try:
                                response = await anext(responses)
                            except StopAsyncIteration:
                                break
                        yield response
                        call.sent += 1
                        sent_counter.inc()
                except BaseException as error:
                    await self._stream_failed(call, context, error)
                    raise
                finally:
                    if responses is not None:
                        # The servicer's own clean-up, now: a stream the client left ends here.
                        with call.current():
                            await responses.aclose()
                    await self._stream_ended(call, request, context, counted=True)

            return generator

        async def writer(request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = self._stream_started(path, request, context)
            try:
                with call.current():
                    await self._admit(call, request, context)
                with call.current():
                    return await inner(request, context)
            except BaseException as error:
                await self._stream_failed(call, context, error)
                raise
            finally:
                # Its messages go out through context.write, unseen here.
                await self._stream_ended(call, request, context, counted=False)

        return writer

    def end_streams(self) -> int:
        """End the server-streaming calls open now with UNAVAILABLE, for their clients to
        reconnect (to another replica, or this service once it is back): the server is
        stopping. A stream may never end by itself (a watch of a workflow that waits for a
        person); left open it would hold the shutdown for its whole grace period. Returns
        how many it ended."""
        for task, call in list(self._streams.items()):
            call.ended_by_server = True
            task.cancel()
        return len(self._streams)

    def _stream_started(
        self, path: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> _StreamCall:
        metadata = _text_metadata(context)
        parent = propagate.extract(metadata)
        span = self._tracer.start_span(
            path,
            context=parent,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        call = _StreamCall(
            path=path,
            metadata=metadata,
            span=span,
            span_context=trace.set_span_in_context(span, parent),
            request_id=metadata.get(REQUEST_ID_HEADER) or new_request_id(),
            incident_id=incident_id_of(request),
            started=time.perf_counter(),
        )
        call.task = asyncio.current_task()
        if call.task is not None:
            self._streams[call.task] = call
        return call

    async def _admit(
        self, call: _StreamCall, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Authorize the stream's caller and validate its request, or abort."""
        call.principal = await self._authorize(call.path, context, call.metadata)
        violations = violations_of(request)
        if violations:
            await context.abort_with_status(bad_request_status(violations))

    async def _stream_failed(
        self,
        call: _StreamCall,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException,
    ) -> None:
        """Note how a stream ended with `error`. One the servicer did not map becomes a
        status, as for a unary call (this aborts); the caller raises the others."""
        if isinstance(error, grpc.aio.AbortError):
            call.code = context.code() or grpc.StatusCode.UNKNOWN
        elif isinstance(error, asyncio.CancelledError) and call.ended_by_server:
            call.code = grpc.StatusCode.UNAVAILABLE
            await context.abort(call.code, "the server is stopping; reconnect")
        elif isinstance(error, asyncio.CancelledError | GeneratorExit):
            # The client went away (or cancelled it).
            call.code = grpc.StatusCode.CANCELLED
        elif isinstance(error, grpc.aio.AioRpcError):
            call.code = (
                grpc.StatusCode.UNAVAILABLE
                if error.code() in RETRYABLE
                else grpc.StatusCode.INTERNAL
            )
            with call.current():
                log.warning(
                    "downstream call failed",
                    extra={
                        "rpc": call.path,
                        "downstream_code": error.code().name,
                        "detail": error.details(),
                    },
                )
            await context.abort(
                call.code, f"a downstream call failed: {error.code().name}: {error.details()}"
            )
        elif isinstance(error, Exception):
            call.code = grpc.StatusCode.INTERNAL
            with call.current():
                log.exception("unhandled error", extra={"rpc": call.path})
            if call.span.is_recording():
                call.span.record_exception(error)
            await context.abort(call.code, f"internal error (request id {call.request_id})")
        else:
            call.code = grpc.StatusCode.UNKNOWN

    async def _stream_ended(
        self,
        call: _StreamCall,
        request: Message,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        counted: bool,
    ) -> None:
        if call.task is not None:
            self._streams.pop(call.task, None)
        code = call.code
        if code is grpc.StatusCode.OK and context.code() not in (None, grpc.StatusCode.OK):
            code = context.code()
        peer_label = "?" if call.principal is None else call.principal.label
        try:
            with call.current():
                await self._ended(
                    call.path,
                    request,
                    context,
                    call.span,
                    code,
                    call.started,
                    peer_label,
                    authorized=call.principal is not None,
                    sent=call.sent if counted else None,
                )
        finally:
            call.span.end()
