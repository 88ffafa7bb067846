"""Alert to first change: from a webhook's arrival at the HTTP edge to the executor's first
write that changes the cluster, on the rule path, with a per-hop breakdown from the trace
spans in the dev stack's Jaeger.

    .venv/bin/python -m bench.alert_to_change [--samples N] [--quick]

What runs: a dev stack of its own in a temporary state directory (three KWOK nodes, Jaeger on,
the model off), the ten services and the edge as `kubernaut up` starts them, exporting
their spans to Jaeger, with the gateway's hold at 0 (KUBERNAUT_GATEWAY_HOLD_SECONDS=0) and
its storm threshold out of reach (every sample is the same alert on another workload; a
storm would rightly leave them all to people). Each sample is the demo's bad rollout
(kubernaut/devstack/scenario.py) in a namespace of its own, prepared beforehand until its
new pod crash-loops; then one KubePodCrashLooping webhook for that pod is posted to the
edge, with a W3C traceparent of our own, so the whole trace has a known id, and a watch on
the Deployment sees the rollback land.

  start  the edge's server span of the webhook (its arrival; Jaeger)
  end    the watch event of the first write to the Deployment after it that is not the
         controllers' (generation or annotations changed): the executor's change, seen a
         few ms late (the watch's delivery), so the figure errs high, never low

Samples go one at a time: the figure is the loop's latency, not its throughput. The hops
are the gaps between the spans' starts along the path (edge, gateway SubmitAlerts, the
forwarder, alert_processor ProcessAlert, ai_analysis AnalyzeIncident, workflow
CreateWorkflow, executor ExecuteAction, the change).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes_asyncio import client, watch

from bench.edge_throughput import webhook
from bench.figures import Figure
from kubernaut.devstack.jaeger import Span, default_jaeger_bin, fetch_trace
from kubernaut.devstack.kube import default_bin_dir
from kubernaut.devstack.model import LlamaBuild
from kubernaut.devstack.processes import free_port, free_port_base
from kubernaut.devstack.scenario import BAD_IMAGE, BadRollout
from kubernaut.devstack.stack import DevStack, StackInfo
from kubernaut.devstack.system import Tuning, running_system, webhook_token_file
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.settings import KubeSettings, RuntimeSettings

GOAL_P50_MS = 100.0
GOAL_P99_MS = 250.0
# Namespaces prepared at once (each mostly waits on controllers and KWOK).
PREPARE_CONCURRENCY = 8
# How long one sample may take to show its change before it counts as failed.
SAMPLE_TIMEOUT = 30.0
# How long a sample's rollback may take to be healthy before the next sample starts.
SETTLE_TIMEOUT = 20.0
# How long Jaeger may take to hold a sample's spans (the services batch every 5 s).
TRACE_TIMEOUT = 20.0

# The path, in order: (hop name, service, operation's suffix or prefix, span kind).
MILESTONES: tuple[tuple[str, str, str, str], ...] = (
    ("edge", "kubernaut-gateway-http", "/api/v1/alerts/alertmanager", "server"),
    ("gateway SubmitAlerts", "kubernaut-gateway", "/SubmitAlerts", "server"),
    ("gateway forwarder", "kubernaut-gateway", "forward ", "internal"),
    ("alert_processor ProcessAlert", "kubernaut-alert_processor", "/ProcessAlert", "server"),
    ("ai_analysis AnalyzeIncident", "kubernaut-ai_analysis", "/AnalyzeIncident", "server"),
    ("workflow CreateWorkflow", "kubernaut-workflow", "/CreateWorkflow", "server"),
    ("executor ExecuteAction", "kubernaut-executor", "/ExecuteAction", "server"),
)
CHANGE = "change on the cluster"


@dataclass
class Sample:
    namespace: str
    pod: str
    trace_id: str = ""
    change_us: int | None = None
    # Milestone name -> start (µs since the epoch), from the trace.
    starts: dict[str, int] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    error: str = ""

    @property
    def total_ms(self) -> float | None:
        edge = self.starts.get("edge")
        if edge is None or self.change_us is None:
            return None
        return (self.change_us - edge) / 1000

    def _points(self) -> list[tuple[str, int]]:
        points = [(name, self.starts[name]) for name, *_ in MILESTONES if name in self.starts]
        if self.change_us is not None:
            points.append((CHANGE, self.change_us))
        return points

    def hops_ms(self) -> dict[str, float]:
        """Each milestone's gap to the next one found (the last to the change)."""
        pairs = itertools.pairwise(self._points())
        return {f"{a} -> {b}": (tb - ta) / 1000 for (a, ta), (b, tb) in pairs}

    def inside_ms(self) -> dict[str, dict[str, float]]:
        """Per hop, what its service did in it: its own client calls and internal spans
        that started within the hop, by name, in ms (summed when repeated)."""
        services = {name: service for name, service, *_ in MILESTONES}
        points = self._points()
        inside: dict[str, dict[str, float]] = {}
        for (a, ta), (b, tb) in itertools.pairwise(points):
            parts = inside.setdefault(f"{a} -> {b}", {})
            for span in self.spans:
                kind = str(span.tags.get("span.kind", "internal"))
                if span.service != services[a] or kind not in ("client", "internal"):
                    continue
                if ta <= span.start_us < tb and (a, span.start_us) not in points:
                    name = f"{span.operation.rsplit('/', 1)[-1]} ({kind})"
                    parts[name] = parts.get(name, 0.0) + span.duration_us / 1000
        return inside


def milestones(spans: Sequence[Span]) -> dict[str, int]:
    """The first span of each milestone in a trace (start in µs since the epoch)."""
    found: dict[str, int] = {}
    for name, service, suffix, kind in MILESTONES:
        for span in spans:
            span_kind = str(span.tags.get("span.kind", "internal"))
            named = span.operation.endswith(suffix) or span.operation.startswith(suffix)
            if span.service == service and named and span_kind == kind:
                found[name] = span.start_us
                break
    return found


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by the nearest rank (q=0.99 of 100 values is the 99th)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5 - 1e-9)))
    return ordered[rank - 1]


def crashloop_alert(namespace: str, pod: str) -> dict[str, Any]:
    """KubePodCrashLooping as the kubernetes-mixin raises it for `pod`, starting now."""
    now = time.time()
    starts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return {
        "status": "firing",
        "labels": {
            "alertname": "KubePodCrashLooping",
            "container": "app",
            "job": "kube-state-metrics",
            "namespace": namespace,
            "pod": pod,
            "reason": "CrashLoopBackOff",
            "severity": "warning",
            "uid": str(uuid.uuid4()),
        },
        "annotations": {
            "description": f"Pod {namespace}/{pod} (app) is in waiting state "
            "(reason: CrashLoopBackOff).",
            "summary": "Pod is crash looping.",
        },
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": secrets.token_hex(8),
    }


# -- preparing the workloads -----------------------------------------------------------------


async def _crashlooping_pod(api: client.ApiClient, namespace: str, timeout: float) -> str:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = await core.list_namespaced_pod(namespace, label_selector="app=checkout")
        for pod in pods.items:
            if pod.spec.containers[0].image != BAD_IMAGE:
                continue
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting if status.state else None
                if waiting is not None and waiting.reason == "CrashLoopBackOff":
                    return str(pod.metadata.name)
        await asyncio.sleep(0.5)
    raise TimeoutError(f"no crash-looping pod in {namespace} within {timeout:.0f}s")


async def prepare(kubeconfig: Path, namespace: str) -> Sample:
    """The bad rollout in `namespace`, until its new pod crash-loops."""
    scenario = BadRollout(kubeconfig, namespace, replicas=1)
    try:
        await scenario.deploy(timeout=120)
        await scenario.break_it()
        api = await scenario._client()
        pod = await _crashlooping_pod(api, namespace, 120)
    finally:
        await scenario.close()
    return Sample(namespace, pod)


# -- one sample ------------------------------------------------------------------------------


class _Borrowed:
    """The bench's API client lent to a BadRollout (it reads through `api()`)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    async def api(self) -> client.ApiClient:
        return self._api

    async def close(self) -> None:
        pass


def _marks(obj: Any) -> tuple[int, dict[str, str]]:
    """What a write to the Deployment (not its status) changes: generation, annotations
    (the controller's revision annotation left out: it follows a template change)."""
    annotations = dict(obj.metadata.annotations or {})
    annotations.pop("deployment.kubernetes.io/revision", None)
    return int(obj.metadata.generation or 0), annotations


async def _first_change(api: client.ApiClient, namespace: str, armed: asyncio.Event) -> int:
    """The time (µs since the epoch) the first write to the Deployment after `armed` is seen."""
    apps = client.AppsV1Api(api)
    current = await apps.read_namespaced_deployment("checkout", namespace)
    before = _marks(current)
    async with watch.Watch() as stream:
        events = stream.stream(
            apps.list_namespaced_deployment,
            namespace,
            field_selector="metadata.name=checkout",
            # From the version read: a write before the watch is up is still seen.
            resource_version=current.metadata.resource_version,
            timeout_seconds=int(SAMPLE_TIMEOUT),
        )
        armed.set()
        async for event in events:
            seen = time.time_ns() // 1000
            if event["type"] == "MODIFIED" and _marks(event["object"]) != before:
                return seen
    raise TimeoutError(f"no change to {namespace}/checkout within {SAMPLE_TIMEOUT:.0f}s")


async def run_sample(
    sample: Sample, api: client.ApiClient, http: httpx.AsyncClient, url: str, token: str
) -> None:
    trace_id = secrets.token_hex(16)
    armed = asyncio.Event()
    watcher = asyncio.create_task(_first_change(api, sample.namespace, armed))
    await armed.wait()
    # The watch is registered once its first request is out; give it a moment.
    await asyncio.sleep(0.2)
    body = webhook([crashloop_alert(sample.namespace, sample.pod)])
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
    }
    response = await http.post(url, content=body, headers=headers)
    if response.status_code >= 300:
        watcher.cancel()
        sample.error = f"edge answered {response.status_code}: {response.text[:200]}"
        return
    sample.trace_id = trace_id
    try:
        sample.change_us = await watcher
    except TimeoutError as error:
        sample.error = str(error)
        return
    # The next sample starts once this one's rollback is done (its pods Ready), so that
    # each alert meets a loop that is not still busy verifying the one before.
    scenario = BadRollout(Path(), sample.namespace, replicas=1)
    scenario._connection = _Borrowed(api)  # type: ignore[assignment]
    with contextlib.suppress(TimeoutError):
        await scenario.wait(lambda state: state.healed, SETTLE_TIMEOUT)


async def read_spans(sample: Sample, ui_url: str, http: httpx.AsyncClient) -> None:
    """Wait until Jaeger holds the sample's path as far as it went, then keep its starts."""
    deadline = time.monotonic() + TRACE_TIMEOUT
    while True:
        spans = await fetch_trace(ui_url, sample.trace_id, client=http)
        sample.starts = milestones(spans)
        sample.spans = spans
        if len(sample.starts) == len(MILESTONES) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.5)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Result:
    samples: list[Sample]
    # The 1-minute load average before and after the samples: the figures are only as
    # good as the machine was quiet.
    load: tuple[float, float] = (0.0, 0.0)

    @property
    def totals(self) -> list[float]:
        return [t for s in self.samples if (t := s.total_ms) is not None]

    def hop_table(self) -> list[tuple[str, float, float]]:
        """(hop, p50 ms, p99 ms) in path order."""
        by_hop: dict[str, list[float]] = {}
        for sample in self.samples:
            if sample.total_ms is None:
                continue
            for hop, ms in sample.hops_ms().items():
                by_hop.setdefault(hop, []).append(ms)
        return [(hop, quantile(v, 0.5), quantile(v, 0.99)) for hop, v in by_hop.items()]

    def inside_table(self, top: int = 5) -> dict[str, list[tuple[str, float]]]:
        """Per hop, its `top` parts by p50 (a part missing in a sample counts 0 there)."""
        measured = [s for s in self.samples if s.total_ms is not None]
        by_hop: dict[str, dict[str, list[float]]] = {}
        for sample in measured:
            for hop, parts in sample.inside_ms().items():
                for part, ms in parts.items():
                    by_hop.setdefault(hop, {}).setdefault(part, []).append(ms)
        table: dict[str, list[tuple[str, float]]] = {}
        for hop, seen in by_hop.items():
            rows = [
                (part, quantile(v + [0.0] * (len(measured) - len(v)), 0.5))
                for part, v in seen.items()
            ]
            table[hop] = sorted(rows, key=lambda row: -row[1])[:top]
        return table


@contextlib.asynccontextmanager
async def local_system(state_dir: Path) -> AsyncIterator[tuple[StackInfo, RuntimeSettings]]:
    """A dev stack with Jaeger, and the services with the bench's tuning, in `state_dir`."""
    edge_port = free_port()
    k8s_bin = default_bin_dir()  # before KUBERNAUT_STATE_DIR points elsewhere
    jaeger_bin = default_jaeger_bin()
    saved = dict(os.environ)
    os.environ.update(
        {
            "KUBERNAUT_STATE_DIR": str(state_dir),
            "KUBERNAUT_PORT_BASE": str(free_port_base()),
            "KUBERNAUT_HTTP_PORT": str(edge_port),
        }
    )
    try:
        settings = RuntimeSettings()
        stack = DevStack(
            state_dir,
            # KWOK nodes hold 110 pods each; a sample has two (the old and the new one).
            nodes=3,
            webhook_url=f"http://127.0.0.1:{edge_port}/api/v1/alerts/alertmanager",
            k8s_bin_dir=k8s_bin,
            tracing=True,
            jaeger_bin=jaeger_bin,
            llama_build=LlamaBuild.default(),
        )
        dev = await asyncio.to_thread(stack.up, lambda line: print(line, file=sys.stderr))
        tuning = Tuning(
            verify_timeout_seconds=30,
            extra_env={
                "KUBERNAUT_GATEWAY_HOLD_SECONDS": "0",
                "KUBERNAUT_GATEWAY_STORM_THRESHOLD": "100000",
                "KUBERNAUT_EXECUTOR_MAX_ACTIONS_PER_CLUSTER_PER_MINUTE": "0",
                "KUBERNAUT_LOG_LEVEL": "WARNING",
            },
        )
        try:
            async with running_system(settings, dev, tuning) as system:
                if not system.ready:
                    raise RuntimeError(f"the services are not all SERVING: {system.statuses}")
                yield dev, settings
        finally:
            await asyncio.to_thread(stack.down, lambda line: None)
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def measure(samples: int, state_dir: Path) -> Result:
    async with local_system(state_dir) as (dev, _settings):
        kubeconfig = Path(dev.detail("kubernetes", "kubeconfig"))
        ui_url = dev.detail("jaeger", "ui_url")
        url = dev.components["alertmanager"].details["webhook_url"]
        token = (await asyncio.to_thread(Path(webhook_token_file(dev)).read_text)).strip()
        prefix = f"bench-{secrets.token_hex(2)}"
        gate = asyncio.Semaphore(PREPARE_CONCURRENCY)

        async def one(index: int) -> Sample:
            namespace = f"{prefix}-{index}"
            async with gate:
                try:
                    return await prepare(kubeconfig, namespace)
                except Exception as error:  # counted as a failed sample, not the run's end
                    return Sample(namespace, "", error=f"not prepared: {error!r}"[:300])

        print(f"preparing {samples} bad rollouts ...", file=sys.stderr, flush=True)
        prepared = await asyncio.gather(*(one(i) for i in range(samples)))
        connection = KubeConnection(KubeSettings(kubeconfig=str(kubeconfig)))
        api = await connection.api()
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                # One sample first, not counted: the first call on each connection pays
                # for the TLS handshakes and the services' cold paths.
                warm, *measured = prepared
                load_before = os.getloadavg()[0]
                if not warm.error:
                    await run_sample(warm, api, http, url, token)
                for index, sample in enumerate(measured, 1):
                    if not sample.error:
                        await run_sample(sample, api, http, url, token)
                    state = sample.error or "ok"
                    print(f"  sample {index}/{len(measured)}: {state}", file=sys.stderr)
                for sample in measured:
                    if sample.trace_id:
                        await read_spans(sample, ui_url, http)
                load_after = os.getloadavg()[0]
        finally:
            await connection.close()
        return Result(measured, (load_before, load_after))


def report(result: Result) -> str:
    totals = result.totals
    failed = [s for s in result.samples if s.total_ms is None]
    lines = [
        f"alert to first change: {len(totals)} samples, {len(failed)} failed "
        f"(load average {result.load[0]:.1f} at the start, {result.load[1]:.1f} at the end, "
        f"on {os.cpu_count()} CPUs)"
    ]
    if totals:
        lines.append(
            f"  total  p50 {quantile(totals, 0.5):.1f} ms (goal < {GOAL_P50_MS:.0f})  "
            f"p99 {quantile(totals, 0.99):.1f} ms (goal < {GOAL_P99_MS:.0f})  "
            f"max {max(totals):.1f} ms  mean {statistics.fmean(totals):.1f} ms"
        )
        lines.append("  per hop (start to start, from the spans), and what the hop's service")
        lines.append("  did in it (its calls and internal spans, p50):")
        inside = result.inside_table()
        for hop, p50, p99 in result.hop_table():
            lines.append(f"    {hop:<62} p50 {p50:8.1f} ms   p99 {p99:8.1f} ms")
            for part, ms in inside.get(hop, []):
                lines.append(f"        {part:<58} {ms:8.1f} ms")
    for sample in failed[:5]:
        lines.append(f"  failed {sample.namespace}: {sample.error or 'no edge span'}")
    return "\n".join(lines)


def figures_of(result: Result) -> list[Figure]:
    totals = result.totals
    if not totals:
        return [Figure("alert to first change", "p50 < 100 ms, p99 < 250 ms", "no sample", False)]
    p50, p99 = quantile(totals, 0.5), quantile(totals, 0.99)
    slowest = max(result.hop_table(), key=lambda row: row[1])
    return [
        Figure(
            "alert to first change p50",
            f"< {GOAL_P50_MS:.0f} ms",
            f"{p50:.0f} ms ({len(totals)} samples; slowest hop {slowest[0]}: {slowest[1]:.0f} ms)",
            p50 < GOAL_P50_MS,
        ),
        Figure(
            "alert to first change p99",
            f"< {GOAL_P99_MS:.0f} ms",
            f"{p99:.0f} ms",
            p99 < GOAL_P99_MS,
        ),
    ]


def run(samples: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="kubernaut-bench-a2c-") as state_dir:
        return asyncio.run(measure(samples, Path(state_dir)))


def table_figures(quick: bool) -> list[Figure]:
    """Rows of `python -m bench.all`: p50 and p99 (quick: 20 samples, else 100)."""
    return figures_of(run(21 if quick else 101))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100, help="measured samples (100)")
    parser.add_argument("--quick", action="store_true", help="20 samples")
    args = parser.parse_args(argv)
    samples = 20 if args.quick else args.samples
    result = run(samples + 1)  # the first one warms up, not counted
    print(report(result))
    for figure in figures_of(result):
        state = "met" if figure.met else "NOT met"
        print(f"{figure.name}: goal {figure.goal}, measured {figure.measured}: {state}")
    return 0 if result.totals else 1


if __name__ == "__main__":
    sys.exit(main())
