"""Jaeger v2 on loopback: the dev stack's trace backend.

The binary is Jaeger's own `cmd/jaeger`, built from its Go module by
scripts/build-jaeger.sh (`make setup`) and linked into `<state_dir>/bin/jaeger`. It runs
as an all-in-one with in-memory storage (spans are lost when it stops; the dev stack keeps
nothing worth keeping there): an OTLP/gRPC receiver the services export to, and the query
service (HTTP API and UI page, gRPC API) that `kubernaut incidents show` links to and the
latency bench reads. Every port is a free loopback port picked at start and recorded in
stack.json, like Prometheus' and AlertManager's.

The Go module carries no UI assets (upstream builds them with npm), so the page at
`/trace/<id>` is Jaeger's placeholder; the query API (`/api/traces/<id>`) is whole.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from kubernaut.devstack.daemon import Daemon
from kubernaut.devstack.kube import default_bin_dir
from kubernaut.devstack.processes import LOOPBACK, free_ports, port_open

__all__ = [
    "JAEGER_PROGRAM",
    "Jaeger",
    "JaegerError",
    "Span",
    "default_jaeger_bin",
    "fetch_trace",
    "trace_url",
]

# What stack.json records as the program (a pid is ours while its cmdline contains it).
JAEGER_PROGRAM = "jaeger"
# Traces kept in memory; the oldest go first. Enough for a long demo or a bench run.
MAX_TRACES = 20_000


class JaegerError(RuntimeError):
    """Jaeger is missing, exited or did not become ready; the message names its log."""


def default_jaeger_bin() -> Path:
    """`jaeger` in the dev stack's bin directory, where build-jaeger.sh links it beside the
    Kubernetes binaries: `$KUBERNAUT_K8S_BIN_DIR`, else `<state_dir>/bin` (read now: tests
    that point KUBERNAUT_STATE_DIR elsewhere later keep the real build)."""
    return default_bin_dir() / "jaeger"


def trace_url(ui_url: str, trace_id: str) -> str:
    """The Jaeger UI's page of one trace."""
    return f"{ui_url.rstrip('/')}/trace/{trace_id}"


class Jaeger(Daemon):
    """`jaeger --config <state_dir>/jaeger.yml` on 127.0.0.1.

    `port` is the query service's HTTP port (UI and API); the OTLP/gRPC receiver and the
    query gRPC API get their own free ports at each launch."""

    name = "jaeger"
    error = JaegerError
    # The collector's "listen tcp 127.0.0.1:N: bind: address already in use".
    port_taken = "address already in use"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        binary: Path | None = None,
        *,
        port: int = 0,
        start_timeout: float = 30.0,
        max_traces: int = MAX_TRACES,
    ) -> None:
        state = Path(state_dir).expanduser().resolve()
        super().__init__(state / "jaeger.log", port, start_timeout, cwd=state)
        self.state_dir = state
        self.config_file = state / "jaeger.yml"
        self.binary = binary or default_jaeger_bin()
        self.max_traces = max_traces
        self._otlp_port: int | None = None
        self._query_grpc_port: int | None = None

    @property
    def url(self) -> str:
        """The query service: UI at /, API at /api/...; only after `start()`."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def otlp_endpoint(self) -> str:
        """Where services send spans (KUBERNAUT_OTLP_ENDPOINT): OTLP over plaintext gRPC,
        which the `http://` scheme tells the exporter."""
        if self._otlp_port is None:
            raise RuntimeError("jaeger is not started")
        return f"http://{LOOPBACK}:{self._otlp_port}"

    @property
    def query_grpc_address(self) -> str:
        if self._query_grpc_port is None:
            raise RuntimeError("jaeger is not started")
        return f"{LOOPBACK}:{self._query_grpc_port}"

    def config(self, query_port: int, otlp_port: int, query_grpc_port: int) -> dict[str, Any]:
        """The jaeger.yml of one launch: only what the dev stack uses (no other receivers,
        no sampling or health extensions, no self-metrics), so only three ports open."""
        store = "memstore"
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {
                    "resource": {"service.name": "jaeger"},
                    # "none": no self-metrics server on :8888, which another Jaeger or
                    # collector on the machine may hold.
                    "metrics": {"level": "none"},
                    "logs": {"level": "info"},
                },
            },
            "extensions": {
                "jaeger_storage": {
                    "backends": {store: {"memory": {"max_traces": self.max_traces}}}
                },
                "jaeger_query": {
                    "storage": {"traces": store},
                    "http": {"endpoint": f"{LOOPBACK}:{query_port}"},
                    "grpc": {"endpoint": f"{LOOPBACK}:{query_grpc_port}"},
                },
            },
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"{LOOPBACK}:{otlp_port}"}}}},
            # A short batch timeout: a trace is queryable within a fraction of a second
            # (the bench and the tests read spans right after the incident).
            "processors": {"batch": {"timeout": "100ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": store}},
        }

    def _prepare(self) -> None:
        if not self.binary.exists():
            raise JaegerError(
                f"{self.binary} is missing: run `make setup` (scripts/build-jaeger.sh builds "
                "Jaeger from its Go module)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def _command(self, port: int) -> list[str]:
        # Picked per launch, so that a retry after "address already in use" moves them too.
        while True:
            otlp_port, query_grpc_port = free_ports(2)
            if port not in (otlp_port, query_grpc_port):
                break
        self._otlp_port, self._query_grpc_port = otlp_port, query_grpc_port
        self.config_file.write_text(
            yaml.safe_dump(self.config(port, otlp_port, query_grpc_port), sort_keys=False)
        )
        return [str(self.binary), "--config", str(self.config_file)]

    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        # The query API answers once storage is up; the receiver listens by then too.
        return (
            self._otlp_port is not None
            and _http_ok(port, "/api/services")
            and port_open(self._otlp_port)
        )


def _http_ok(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@dataclass(frozen=True)
class Span:
    """One span of a trace as Jaeger's query API returns it (times in microseconds since
    the epoch, as Jaeger keeps them)."""

    span_id: str
    parent_id: str
    service: str
    operation: str
    start_us: int
    duration_us: int
    tags: dict[str, Any]

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us


def parse_trace(body: Any) -> list[Span]:
    """The spans of `/api/traces/<id>`'s answer (empty when it holds no trace)."""
    spans: list[Span] = []
    for trace in body.get("data") or []:
        processes = {
            key: str(process.get("serviceName", ""))
            for key, process in (trace.get("processes") or {}).items()
        }
        for raw in trace.get("spans") or []:
            parent = next(
                (
                    str(ref["spanID"])
                    for ref in raw.get("references") or []
                    if ref.get("refType") == "CHILD_OF"
                ),
                "",
            )
            spans.append(
                Span(
                    span_id=str(raw["spanID"]),
                    parent_id=parent,
                    service=processes.get(str(raw.get("processID", "")), ""),
                    operation=str(raw.get("operationName", "")),
                    start_us=int(raw["startTime"]),
                    duration_us=int(raw["duration"]),
                    tags={str(t["key"]): t.get("value") for t in raw.get("tags") or []},
                )
            )
    spans.sort(key=lambda span: span.start_us)
    return spans


async def fetch_trace(
    ui_url: str, trace_id: str, *, client: httpx.AsyncClient | None = None, timeout: float = 5.0
) -> list[Span]:
    """The spans Jaeger holds for `trace_id` (empty while it has none: 404)."""
    url = f"{ui_url.rstrip('/')}/api/traces/{trace_id}"
    if client is None:
        async with httpx.AsyncClient(timeout=timeout) as own:
            response = await own.get(url)
    else:
        response = await client.get(url, timeout=timeout)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return parse_trace(json.loads(response.content))
