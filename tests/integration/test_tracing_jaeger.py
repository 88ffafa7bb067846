"""The dev stack's trace backend: Jaeger (built by `make setup`) receives a service's spans
of an incident, `kubernaut incidents show` prints the link to its trace, and a trace
backend that is down or stalls never holds a service up.

Jaeger alone plus one service (storage, as `kubernaut serve`), not the whole dev stack:
the path between them is the same, and CI time is short."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from kubernaut.devstack.jaeger import Jaeger, default_jaeger_bin, fetch_trace, trace_url
from kubernaut.devstack.processes import free_port
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.kubernaut import subprocess_env
from tests.fixtures.waiting import eventually
from tests.integration.test_storage_analyses import SUBJECT, firing_alert

pytestmark = pytest.mark.integration


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[Jaeger]:
    binary = default_jaeger_bin()
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `make setup` (scripts/build-jaeger.sh)")
    daemon = Jaeger(tmp_path / "jaeger", binary)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
async def storage(
    jaeger: Jaeger, runtime_settings: RuntimeSettings, database_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, str], Clients]]:
    """Storage as its own process, exporting its spans to `jaeger`; the environment a CLI
    run needs to reach it, and operator clients."""
    port = free_port()
    assert runtime_settings.certs_dir is not None
    env = subprocess_env(
        tmp_path,
        runtime_settings.certs_dir,
        {ServiceName.STORAGE: port},
        KUBERNAUT_DATABASE_URL=database_dsn,
        KUBERNAUT_OTLP_ENDPOINT=jaeger.otlp_endpoint,
        KUBERNAUT_GRPC_PORT=str(port),
        KUBERNAUT_METRICS_PORT="0",
        # Nothing listens on ports 1..10: the other services are simply unreachable.
        KUBERNAUT_PORT_BASE="1",
    )
    with (tmp_path / "storage.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kubernaut.cli.main",
            "serve",
            "storage",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    clients = Clients(runtime_settings, addresses={ServiceName.STORAGE: f"localhost:{port}"})
    try:
        statuses = await wait_serving(clients, [ServiceName.STORAGE], 60)
        assert statuses[ServiceName.STORAGE] == "SERVING", (tmp_path / "storage.log").read_text()
        yield env, clients
    finally:
        await clients.close()
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def _cli(env: dict[str, str], *args: str) -> str:
    # Not subprocess.run: nothing here must block the event loop the clients use.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubernaut.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_jaeger_receives_an_incidents_spans_and_incidents_show_links_them(
    jaeger: Jaeger, storage: tuple[dict[str, str], Clients], tmp_path: Path
) -> None:
    env, clients = storage
    trace_id = secrets.token_hex(16)
    # The incident is opened within a sampled trace of a known id, as the alert_processor
    # opens one within the webhook's trace.
    parent = SpanContext(
        int(trace_id, 16),
        int(secrets.token_hex(8), 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    with trace.use_span(NonRecordingSpan(parent)):
        opened = await clients.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=f"fp-{uuid.uuid4().hex}",
                alert=firing_alert(),
                subject=SUBJECT,
                trace_id=trace_id,
            )
        )
    incident_id = opened.incident.incident_id

    async def storage_span() -> bool:
        spans = await fetch_trace(jaeger.url, trace_id)
        return any(
            s.service == "kubernaut-storage" and s.operation.endswith("/OpenIncident")
            for s in spans
        )

    # The service's batch exporter sends every 5 s.
    await eventually(storage_span, "storage's OpenIncident span in Jaeger", 30, interval=0.5)

    # No setting: the dev stack's Jaeger, as its stack.json records it while it runs.
    record = tmp_path / "devstack" / "stack.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(
        json.dumps(
            {
                "jaeger": {
                    "name": "jaeger",
                    "pid": jaeger.pid,
                    "program": "jaeger",
                    "url": jaeger.url,
                    "log": str(jaeger.log_file),
                    "details": {"ui_url": jaeger.url},
                }
            }
        )
    )
    shown = await _cli(env, "incidents", "show", incident_id)
    assert f"trace      {trace_id}\n" in shown
    assert f"trace link {jaeger.url}/trace/{trace_id}\n" in shown

    # The setting wins; with a Jaeger that no longer runs and no setting, no link.
    elsewhere = {**env, "KUBERNAUT_TRACE_UI_URL": "https://jaeger.example"}
    shown = await _cli(elsewhere, "incidents", "show", incident_id)
    assert f"trace link {trace_url('https://jaeger.example', trace_id)}\n" in shown
    record.write_text(record.read_text().replace('"program": "jaeger"', '"program": "gone"'))
    shown = await _cli(env, "incidents", "show", incident_id)
    assert "trace link" not in shown


@pytest.mark.parametrize("backend", ["refusing", "stalling"])
def test_a_trace_backend_that_is_down_or_stalls_never_holds_a_service_up(
    backend: str, tmp_path: Path
) -> None:
    """Spans made while the collector does not answer cost no call any time, and the
    process exits within a second or so instead of flushing for up to 30 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    if backend == "stalling":
        listener.listen(100)  # accepts (the kernel does), never answers
    port = listener.getsockname()[1]
    if backend == "refusing":
        listener.close()
    script = textwrap.dedent(
        f"""
        import sys, time
        from opentelemetry import trace
        from kubernaut.runtime.telemetry import configure_tracing
        configure_tracing("probe", "http://127.0.0.1:{port}")
        tracer = trace.get_tracer("probe")
        worst = 0.0
        for _ in range(3000):
            began = time.perf_counter()
            with tracer.start_as_current_span("call"):
                pass
            worst = max(worst, time.perf_counter() - began)
        time.sleep(1.5)  # the exporter is mid-export when the process ends
        print(worst, flush=True)
        print(time.time(), flush=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNAUT_", "OTEL_"))}
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        ended = time.time()
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    worst, finished = (float(line) for line in result.stdout.split())
    # No span waits on the collector (a blocked one would take its 1 s export time-out).
    assert worst < 0.5, worst
    # Interpreter shutdown, our one-second bounded flush included (30 s before).
    assert ended - finished < 4.0, ended - finished
