"""Prometheus metrics and OpenTelemetry tracing, set up once per process."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from prometheus_client import Counter, Histogram, start_http_server

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
        resource=Resource.create({"service.name": f"kubernaut-{service}"}), sampler=sampler
    )
    if otlp_endpoint:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)


def start_metrics_server(host: str, port: int) -> int:
    """Serve /metrics; returns the bound port (port 0 picks a free one)."""
    server, _thread = start_http_server(port, addr=host)
    bound: int = server.server_address[1]
    return bound
