"""An alert storm through the whole of Kubernaut: by default 10,000 alerts in a minute across
1,000 workloads, posted to the HTTP edge as AlertManager would.

    .venv/bin/python -m bench.storm [--alerts 10000] [--workloads 1000] [--seconds 60]

What runs: the dev stack's code starts PostgreSQL, the SMTP sink, a one-node local
Kubernetes control plane (KWOK), AlertManager and Prometheus (AlertManager delivers
nowhere: only this bench posts to the edge); `running_system` starts the ten services and
the edge, each its own process, with production settings (hold 2 s, storm threshold 10
resources a minute). The load is AlertManager's shape: bodies of one alert name in one
namespace (`--alerts-per-body`), every workload's alerts first sent once, then re-sent,
spread evenly over `--seconds`. A 429 or 503 is retried after its Retry-After, as
AlertManager retries.

Checked, and printed: the edge answered every request 2xx, 429 or 503, never another 5xx;
the gateway's queue drained (every accepted alert handed to alert_processor); the RSS of
the edge and the gateway stayed bounded (sampled every second); the storm grouped as
designed (one incident per alert name, listing the workloads, and no incident per
workload). The workloads are named by the alerts' labels and are not created on the
cluster: storm members are never looked up there (a storm is left to people), and an alert
that escaped the storm would be recorded as dropped (its object does not exist), which the
bench reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg

from bench.edge_throughput import _rfc3339, webhook
from bench.figures import Figure
from kubernaut.devstack.kube import default_bin_dir
from kubernaut.devstack.processes import HTTP_PORT_OFFSET, free_port_base
from kubernaut.devstack.stack import DevStack, StackInfo
from kubernaut.devstack.system import System, Tuning, running_system, webhook_token_file
from kubernaut.edge.app import ALERTMANAGER_PATH
from kubernaut.edge.settings import EdgeSettings
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings

CLUSTER: Final = "storm-cluster"
NAMESPACES: Final = 20
# (alert name, severity, the label naming its object): one storm each.
KINDS: Final = (
    ("KubePodCrashLooping", "warning", "pod"),
    ("KubePodNotReady", "warning", "pod"),
    ("KubeDeploymentReplicasMismatch", "warning", "deployment"),
)
# RSS may grow this much over its level after the warm-up and still count as bounded.
RSS_BOUND: Final = 1.5
DRAIN_TIMEOUT: Final = 300.0
MAX_RETRIES: Final = 20
EDGE: Final = "gateway-http"


# -- the mesh: dev stack, ten services and the edge, each process sampled ------------------


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """os.environ with `values` set (None: unset; the fleet's children inherit it),
    restored after."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@dataclass
class Mesh:
    system: System
    dev: StackInfo
    settings: RuntimeSettings
    token: str
    webhook_url: str
    dsn: str

    def pids(self) -> dict[str, int]:
        return {name: p.popen.pid for name, p in self.system.fleet.processes.items()}

    def metrics_urls(self) -> dict[str, str]:
        urls = {
            s.value: f"http://127.0.0.1:{self.settings.metrics_port_of(s)}/metrics"
            for s in ServiceName
        }
        edge_port = EdgeSettings().metrics_port_for(self.settings)
        urls[EDGE] = f"http://127.0.0.1:{edge_port}/metrics"
        return urls


@contextlib.asynccontextmanager
async def running_mesh(
    root: Path, dev: StackInfo | None = None, extra_env: Mapping[str, str] | None = None
) -> AsyncIterator[Mesh]:
    """The ten services and the edge as processes on `dev` (or on a one-node dev stack
    started here under `root`, and stopped after)."""
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    stack: DevStack | None = None
    if dev is None:
        # AlertManager delivers nowhere: the dev cluster's own alerts stay out of the run.
        stack = DevStack(
            root / "devstack-state",
            nodes=1,
            webhook_url="http://127.0.0.1:9/nowhere",
            k8s_bin_dir=default_bin_dir(),
        )
    try:
        if stack is not None:
            # In the try: a component that fails to start leaves those before it running.
            dev = await asyncio.to_thread(stack.up, lambda line: None)
        assert dev is not None
        token_text = await asyncio.to_thread(Path(webhook_token_file(dev)).read_text)
        async with _services(root, dev, extra_env or {}) as (settings, system):
            yield Mesh(
                system,
                dev,
                settings,
                token_text.split()[0],
                system.edge_url + ALERTMANAGER_PATH,
                dev.detail("postgres", "dsn"),
            )
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.down, lambda line: None)


@contextlib.asynccontextmanager
async def _services(
    root: Path, dev: StackInfo, extra_env: Mapping[str, str]
) -> AsyncIterator[tuple[RuntimeSettings, System]]:
    """`running_system` on ports free when picked. On this shared machine another process
    may take one before its service binds it: then the whole set starts again on others."""
    for attempt in range(3):
        base = free_port_base()
        env = {
            "KUBERNAUT_STATE_DIR": str(root / "state"),
            "KUBERNAUT_PORT_BASE": str(base),
            "KUBERNAUT_HTTP_PORT": str(base + HTTP_PORT_OFFSET),
            "KUBERNAUT_HTTP_HOST": "127.0.0.1",
        }
        with environment(env):
            settings = RuntimeSettings()
            tuning = Tuning(extra_env=dict(extra_env))
            async with running_system(settings, dev, tuning, timeout=180) as system:
                if system.ready:
                    yield settings, system
                    return
                problem = (
                    f"the services did not all start: {system.statuses}, exited "
                    f"{system.fleet.exited()}; logs in {settings.state_dir / 'logs'}"
                )
                if attempt == 2 or not system.fleet.exited():
                    raise RuntimeError(problem)
                print(f"{problem}; starting them again on other ports", flush=True)
    raise AssertionError("unreachable")


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def asyncio_tasks(metrics_url: str) -> int | None:
    """The process's `kubernaut_asyncio_tasks` gauge, None when it cannot be read."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("kubernaut_asyncio_tasks "):
            return int(float(line.split()[1]))
    return None


@dataclass
class Sample:
    at: float  # seconds since sampling started
    rss: dict[str, int]
    fds: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)


class Sampler:
    """Samples each process's RSS (and, with `deep`, open fds and asyncio tasks) every
    `interval` seconds in the background."""

    def __init__(
        self, mesh: Mesh, interval: float, names: Sequence[str] | None = None, deep: bool = False
    ) -> None:
        pids = mesh.pids()
        self.pids = {n: pids[n] for n in (names or list(pids))}
        self.urls = mesh.metrics_urls()
        self.interval = interval
        self.deep = deep
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    def sample_now(self) -> Sample:
        sample = Sample(
            time.monotonic() - self._started,
            {name: rss_bytes(pid) for name, pid in self.pids.items()},
        )
        if self.deep:
            sample.fds = {name: open_fds(pid) for name, pid in self.pids.items()}
            for name in self.pids:
                count = asyncio_tasks(self.urls[name])
                if count is not None:
                    sample.tasks[name] = count
        return sample

    async def _run(self) -> None:
        while True:
            self.samples.append(await asyncio.to_thread(self.sample_now))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the storm's alerts ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str

    @property
    def pod(self) -> str:
        replicaset = hashlib.sha256(f"{self.namespace}/{self.name}".encode()).hexdigest()[:10]
        return f"{self.name}-{replicaset}-x7k2p"


def workloads(count: int, tag: str) -> list[Workload]:
    return [Workload(f"storm-{tag}-{i % NAMESPACES:02d}", f"svc-{i:04d}") for i in range(count)]


def alert_of(
    kind: tuple[str, str, str], workload: Workload, started: dt.datetime, cluster: str
) -> dict[str, Any]:
    name, severity, label = kind
    labels = {
        "alertname": name,
        "cluster": cluster,
        "namespace": workload.namespace,
        "severity": severity,
        "job": "kube-state-metrics",
        "prometheus": "monitoring/k8s",
    }
    if label == "pod":
        labels |= {"pod": workload.pod, "container": workload.name}
    else:
        labels["deployment"] = workload.name
    return {
        "status": "firing",
        "labels": labels,
        "annotations": {
            "summary": f"{name} on {workload.namespace}/{workload.name}",
            "description": f"{name} fires for {label} {labels.get(label)} in {workload.namespace}.",
            "runbook_url": "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/"
            + name.lower(),
        },
        "startsAt": _rfc3339(started),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus-k8s-0:9090/graph",
    }


def storm_bodies(
    alerts: int, workload_count: int, per_body: int, tag: str
) -> tuple[list[bytes], int, int]:
    """(AlertManager bodies in sending order, alerts in them, distinct alerts): every
    workload's alerts of each kind, grouped by alert name and namespace, sent once and then
    re-sent in the same order (AlertManager's repeat) until `alerts` are sent."""
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    loads = workloads(workload_count, tag)
    groups: list[list[dict[str, Any]]] = []
    for kind in KINDS:
        by_namespace: dict[str, list[Workload]] = {}
        for workload in loads:
            by_namespace.setdefault(workload.namespace, []).append(workload)
        for members in by_namespace.values():
            for i in range(0, len(members), per_body):
                groups.append(
                    [alert_of(kind, w, started, cluster_of(tag)) for w in members[i : i + per_body]]
                )
    distinct = sum(len(g) for g in groups)
    bodies: list[bytes] = []
    sent = 0
    while sent < alerts:
        for group in groups:
            if sent >= alerts:
                break
            take = group[: alerts - sent]
            bodies.append(webhook(take))
            sent += len(take)
    return bodies, sent, min(distinct, sent)


@dataclass
class Posted:
    statuses: Counter[int] = field(default_factory=Counter)  # every answer, retries included
    dispositions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    given_up: int = 0  # bodies still refused after MAX_RETRIES
    latencies: list[float] = field(default_factory=list)  # first answer of each body, s
    seconds: float = 0.0

    @property
    def five_hundreds(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500 and s != 503)


async def post_all(
    url: str, token: str, bodies: Sequence[bytes], seconds: float, connections: int = 64
) -> Posted:
    """Send `bodies` evenly over `seconds` (an open loop); a 429 or 503 is sent again after
    its Retry-After, up to MAX_RETRIES times."""
    posted = Posted()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    loop = asyncio.get_running_loop()

    async def send(session: aiohttp.ClientSession, body: bytes) -> None:
        first = loop.time()
        for attempt in range(MAX_RETRIES + 1):
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    status = response.status
                    answer = await response.read()
                    retry_after = float(response.headers.get("Retry-After", "1") or 1)
            except (aiohttp.ClientError, TimeoutError) as error:
                posted.errors[type(error).__name__] += 1
                await asyncio.sleep(1)
                continue
            posted.statuses[status] += 1
            if attempt == 0:
                posted.latencies.append(loop.time() - first)
            if status == 200:
                for outcome in json.loads(answer).get("outcomes", []):
                    posted.dispositions[str(outcome.get("disposition", "?"))] += 1
                return
            if status not in (429, 503):
                return  # a 4xx is a bug of this bench, another 5xx the edge's: counted
            await asyncio.sleep(min(retry_after, 5.0))
        posted.given_up += 1

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        interval = seconds / max(1, len(bodies))
        began = loop.time()
        tasks = []
        for i, body in enumerate(bodies):
            delay = began + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, body)))
        await asyncio.gather(*tasks)
        posted.seconds = loop.time() - began
    return posted


# -- the record ------------------------------------------------------------------------------


@dataclass
class Record:
    fingerprints: int
    alerts: int  # occurrences counted by the gateway
    in_storms: int
    queued: int
    set_aside: int
    storms: int
    incidents: dict[str, int]  # alert name -> incidents of the storm's cluster
    storm_incidents: int
    resources_listed: int  # on the storm incidents
    dropped: int
    notifications: int


# Waiting to be forwarded (what the alert processor refused for good is kept, set aside).
_QUEUED: Final = "SELECT count(*) FROM gateway.queue WHERE failed_at IS NULL"


def cluster_of(tag: str) -> str:
    """The storm's cluster label: one run's record apart from another's in one database."""
    return f"{CLUSTER}-{tag}"


async def read_record(dsn: str, cluster: str) -> Record:
    conn = await asyncpg.connect(dsn)
    try:
        gateway = await conn.fetchrow(
            """SELECT count(*) AS fingerprints, coalesce(sum(occurrences), 0) AS alerts,
                      count(*) FILTER (WHERE storm_id <> '') AS in_storms
               FROM gateway.fingerprints WHERE cluster = $1""",
            cluster,
        )
        assert gateway is not None
        queued = await conn.fetchval(_QUEUED)
        set_aside = await conn.fetchval(
            "SELECT count(*) FROM gateway.queue WHERE failed_at IS NOT NULL"
        )
        storms = await conn.fetchval(
            "SELECT count(*) FROM gateway.storms WHERE cluster = $1", cluster
        )
        rows = await conn.fetch(
            """SELECT alert_name, count(*) AS n FROM incidents
               WHERE subject_cluster = $1 GROUP BY alert_name""",
            cluster,
        )
        storm_incidents = await conn.fetchval(
            """SELECT count(*) FROM incidents
               WHERE subject_cluster = $1 AND fingerprint LIKE 'storm-%'""",
            cluster,
        )
        listed = await conn.fetchval(
            """SELECT count(*) FROM incident_resources r JOIN incidents i USING (incident_id)
               WHERE i.subject_cluster = $1 AND i.fingerprint LIKE 'storm-%'""",
            cluster,
        )
        dropped = await conn.fetchval(
            "SELECT count(*) FROM dropped_alerts WHERE subject_cluster = $1", cluster
        )
        notifications = 0
        with contextlib.suppress(asyncpg.PostgresError):
            notifications = await conn.fetchval("SELECT count(*) FROM notification.outbox")
        return Record(
            int(gateway["fingerprints"]),
            int(gateway["alerts"]),
            int(gateway["in_storms"]),
            int(queued),
            int(set_aside or 0),
            int(storms or 0),
            {str(r["alert_name"]): int(r["n"]) for r in rows},
            int(storm_incidents or 0),
            int(listed or 0),
            int(dropped or 0),
            int(notifications or 0),
        )
    finally:
        await conn.close()


async def wait_drained(dsn: str, timeout: float) -> float | None:
    """Seconds until the gateway's queue is empty (None: not within `timeout`)."""
    conn = await asyncpg.connect(dsn)
    began = time.monotonic()
    try:
        while time.monotonic() - began < timeout:
            if not await conn.fetchval(_QUEUED):
                return time.monotonic() - began
            await asyncio.sleep(0.5)
        return None
    finally:
        await conn.close()


# -- one storm -------------------------------------------------------------------------------


@dataclass
class StormResult:
    alerts: int
    distinct: int
    workloads: int
    bodies: int
    posted: Posted
    drained_after: float | None  # seconds after the last send
    record: Record
    rss_start: dict[str, int]
    rss_peak: dict[str, int]
    rss_end: dict[str, int]

    def problems(self) -> list[str]:
        """What the storm's goals say went wrong (empty: every goal met)."""
        found = []
        p = self.posted
        if p.five_hundreds:
            found.append(f"the edge answered a 5xx other than 503 {p.five_hundreds} times")
        bad = {s: n for s, n in p.statuses.items() if s not in (200, 429, 503) and s < 500}
        if bad:
            found.append(f"the edge answered {bad}")
        if p.errors or p.given_up:
            found.append(f"transport errors {dict(p.errors)}, bodies given up {p.given_up}")
        accepted = sum(p.dispositions.values())
        if accepted != self.alerts:
            found.append(f"{accepted} of {self.alerts} alerts got an outcome")
        if self.drained_after is None:
            found.append(f"the gateway's queue did not drain ({self.record.queued} left)")
        if self.record.fingerprints != self.distinct:
            found.append(
                f"the gateway recorded {self.record.fingerprints} fingerprints, "
                f"{self.distinct} were sent"
            )
        # One storm incident per alert name; nothing opened per workload.
        per_name = self.record.incidents
        if sorted(per_name) != sorted(k[0] for k in KINDS) or any(
            n != 1 for n in per_name.values()
        ):
            found.append(f"incidents per alert name {per_name}, expected 1 each")
        if self.record.storm_incidents != len(KINDS):
            found.append(f"{self.record.storm_incidents} storm incidents, expected {len(KINDS)}")
        if self.record.resources_listed != self.distinct:
            found.append(
                f"{self.record.resources_listed} resources listed on the storm incidents, "
                f"{self.distinct} alerted"
            )
        for name in ("gateway", EDGE):
            start, peak = self.rss_start.get(name, 0), self.rss_peak.get(name, 0)
            if start and peak > RSS_BOUND * start:
                found.append(f"{name} RSS grew from {_mib(start)} to {_mib(peak)}")
        return found


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


async def storm(
    mesh: Mesh,
    alerts: int,
    workload_count: int,
    seconds: float,
    per_body: int = 10,
    tag: str = "a",
    drain_timeout: float = DRAIN_TIMEOUT,
) -> StormResult:
    bodies, sent, distinct = storm_bodies(alerts, workload_count, per_body, tag)
    sampler = Sampler(mesh, 1.0, ["gateway", EDGE, "alert_processor", "storage"])
    sampler.start()
    await asyncio.sleep(1.5)  # a first sample before the storm
    try:
        posted = await post_all(mesh.webhook_url, mesh.token, bodies, seconds)
        drained = await wait_drained(mesh.dsn, drain_timeout)
        # The last listing may still be on its way to storage as the row goes.
        await asyncio.sleep(1.0)
    finally:
        await sampler.stop()
    record = await read_record(mesh.dsn, cluster_of(tag))
    samples = sampler.samples
    names = list(sampler.pids)
    return StormResult(
        sent,
        distinct,
        workload_count,
        len(bodies),
        posted,
        drained,
        record,
        samples[0].rss,
        {n: max(s.rss.get(n, 0) for s in samples) for n in names},
        samples[-1].rss,
    )


def report(result: StormResult) -> list[str]:
    p = result.posted
    r = result.record
    lat = sorted(p.latencies)

    def q(x: float) -> float:
        return lat[min(len(lat) - 1, int(x * len(lat)))] * 1000 if lat else 0.0

    lines = [
        f"storm: {result.alerts} alerts ({result.distinct} distinct) across "
        f"{result.workloads} workloads, {result.bodies} bodies in {p.seconds:.1f} s",
        f"  edge answers: {dict(sorted(p.statuses.items()))}; 5xx other than 503: "
        f"{p.five_hundreds}; transport errors {dict(p.errors)}; given up {p.given_up}",
        f"  first-answer latency: p50 {q(0.5):.0f} ms, p99 {q(0.99):.0f} ms, max {q(1.0):.0f} ms",
        f"  outcomes: {dict(p.dispositions.most_common())}",
        "  gateway queue drained "
        + (
            f"{result.drained_after:.1f} s after the last send"
            if result.drained_after is not None
            else f"NOT within the timeout: {r.queued} left"
        ),
        f"  gateway: {r.fingerprints} fingerprints, {r.alerts} alerts counted, {r.in_storms} "
        f"in storms ({r.storms} storms); set aside {r.set_aside}",
        f"  incidents per alert name {r.incidents}; storm incidents {r.storm_incidents} "
        f"listing {r.resources_listed} resources; dropped alerts {r.dropped}",
        "  RSS start / peak / end: "
        + "; ".join(
            f"{n} {_mib(result.rss_start[n])} / {_mib(result.rss_peak[n])} / "
            f"{_mib(result.rss_end[n])}"
            for n in result.rss_start
        ),
    ]
    problems = result.problems()
    lines.append("  goals: " + ("all met" if not problems else "NOT MET: " + "; ".join(problems)))
    return lines


def figures_of(result: StormResult) -> list[Figure]:
    p, r = result.posted, result.record
    growth = max(
        (
            result.rss_peak[n] / result.rss_start[n]
            for n in ("gateway", EDGE)
            if result.rss_start[n]
        ),
        default=0.0,
    )
    grouped = (
        r.storm_incidents == len(KINDS)
        and all(n == 1 for n in r.incidents.values())
        and r.resources_listed == result.distinct
    )
    return [
        Figure(
            f"storm: edge answers ({result.alerts} alerts/{p.seconds:.0f} s, "
            f"{result.workloads} workloads)",
            "2xx/429/503 only",
            f"{dict(sorted(p.statuses.items()))}, other 5xx {p.five_hundreds}",
            p.five_hundreds == 0 and not p.errors and not p.given_up,
        ),
        Figure(
            "storm: gateway queue drains",
            "empty",
            f"{result.drained_after:.1f} s after the last send"
            if result.drained_after is not None
            else f"{r.queued} left",
            result.drained_after is not None,
        ),
        Figure(
            "storm: RSS of edge and gateway bounded",
            f"peak <= {RSS_BOUND:g}x start",
            f"{growth:.2f}x ("
            + ", ".join(f"{n} {_mib(result.rss_peak[n])}" for n in ("gateway", EDGE))
            + ")",
            0 < growth <= RSS_BOUND,
        ),
        Figure(
            "storm: grouped as designed",
            f"{len(KINDS)} storm incidents listing all",
            f"{r.storm_incidents} incidents, {r.resources_listed}/{result.distinct} listed",
            grouped,
        ),
    ]


async def run_storm(
    root: Path, alerts: int, workload_count: int, seconds: float, per_body: int
) -> StormResult:
    async with running_mesh(root) as mesh:
        print(f"mesh up (logs in {mesh.settings.state_dir / 'logs'}); storming ...", flush=True)
        return await storm(mesh, alerts, workload_count, seconds, per_body)


def table_figures(quick: bool) -> list[Figure]:
    """The storm's rows for `python -m bench.all` (`quick`: 2,000 alerts in 20 s across
    200 workloads)."""
    alerts, workload_count, seconds = (2000, 200, 20.0) if quick else (10_000, 1000, 60.0)
    root = Path(tempfile.mkdtemp(prefix="kubernaut-bench-storm-"))
    try:
        return figures_of(asyncio.run(run_storm(root, alerts, workload_count, seconds, 10)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    top = argparse.ArgumentParser(
        prog="python -m bench.storm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--alerts", type=int, default=10_000)
    top.add_argument("--workloads", type=int, default=1000)
    top.add_argument("--seconds", type=float, default=60.0)
    top.add_argument("--alerts-per-body", type=int, default=10)
    top.add_argument("--keep", metavar="DIR", default=None, help="keep logs and data in DIR")
    args = top.parse_args(argv)
    root = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="storm-"))
    try:
        result = asyncio.run(
            run_storm(root, args.alerts, args.workloads, args.seconds, args.alerts_per_body)
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for line in report(result):
        print(line)
    return 0 if not result.problems() else 1


if __name__ == "__main__":
    sys.exit(main())
