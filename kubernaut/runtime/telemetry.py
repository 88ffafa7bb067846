"""Prometheus metrics and OpenTelemetry tracing, set up once per process."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Server-streaming RPCs (WatchWorkflow): the messages each sent (their handling seconds
# above are the streams' lifetimes).
RPC_MESSAGES_SENT = Counter(
    "grpc_server_msg_sent_total",
    "Messages the server sent on server-streaming RPCs.",
    ["grpc_service", "grpc_method"],
)

# A count that only rises under steady load is a task leak (the soak bench watches it).
ASYNCIO_TASKS = Gauge(
    "kubernaut_asyncio_tasks", "Asyncio tasks not yet done on the process's event loop."
)


def configure_tracing(service: str, otlp_endpoint: str = "") -> None:
    """Install an SDK tracer provider so that spans get real ids and W3C context flows
    across hops (the logs carry the trace id either way). Spans are recorded and sent to an
    OTLP collector only when an endpoint is configured; without one they are not recorded
    at all, which costs a fraction of recording them (no attributes, no processor)."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return  # several services in one process (tests) share the first provider
    # A caller's sampling decision (the traceparent flags) is followed either way.
    sampler = ParentBased(ALWAYS_ON if otlp_endpoint else ALWAYS_OFF)
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"kubernaut-{service}"}),
        sampler=sampler,
        shutdown_on_exit=False,  # our own, bounded flush below
    )
    if otlp_endpoint:
        # Spans leave from the batch processor's thread, never from a call's path; a
        # collector that is down or stalls costs dropped spans (the queue is bounded), and
        # each export gives up after EXPORT_TIMEOUT_SECONDS instead of the default 10 s.
        exporter = OTLPSpanExporter(endpoint=otlp_endpoint, timeout=EXPORT_TIMEOUT_SECONDS)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        atexit.register(_flush_briefly, provider, exporter)
    trace.set_tracer_provider(provider)


# How long one export to the collector may take, and the flush at exit at most.
EXPORT_TIMEOUT_SECONDS = 1.0


def _flush_briefly(provider: TracerProvider, exporter: OTLPSpanExporter) -> None:
    """Send what is queued at exit, for at most EXPORT_TIMEOUT_SECONDS: then the exporter
    is shut, so the batches left fail at once instead of each waiting on a collector that
    does not answer (that held a stopping service for 30 s)."""
    cutoff = threading.Timer(EXPORT_TIMEOUT_SECONDS, exporter.shutdown)
    cutoff.daemon = True
    cutoff.start()
    try:
        provider.shutdown()
    finally:
        cutoff.cancel()


def start_metrics_server(host: str, port: int) -> int:
    """Serve /metrics; returns the bound port (port 0 picks a free one). Called on the
    process's event loop, it also counts that loop's tasks."""
    with contextlib.suppress(RuntimeError):  # no running loop: no task count
        loop = asyncio.get_running_loop()
        # Read at scrape time, from the metrics thread: all_tasks(loop) copes with the
        # loop's task set changing meanwhile.
        ASYNCIO_TASKS.set_function(lambda: len(asyncio.all_tasks(loop)))
    server, _thread = start_http_server(port, addr=host)
    bound: int = server.server_address[1]
    return bound
