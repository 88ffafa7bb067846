"""What the HTTP edge's door costs: AlertManager webhooks through the real edge (bearer
token, pydantic then buf.validate validation, dedup in PostgreSQL) against two floors
under the same uvicorn settings, in one run:

- the durable floor: a bare FastAPI endpoint that parses the body and commits one INSERT
  per webhook to the same PostgreSQL (what any endpoint that keeps what it answers for must
  do at least, without batching);
- the parse-only floor: a bare FastAPI endpoint that only parses the body.

    .venv/bin/python -m bench.edge_throughput [--throughput-seconds 15] [--latency-seconds 20]

Everything runs as in production, each in its own process: PostgreSQL (the embedded server,
or --database-url), `kubernaut serve gateway` under mTLS, `kubernaut serve gateway-http`
(uvicorn), the two floors (uvicorn) and an aiohttp load generator with keep-alive
connections. Two measurements of each endpoint:

- throughput: a closed loop of --connections concurrent requests for --throughput-seconds;
- latency: an open loop offering --rate alerts/s (--alerts-per-request alerts per body) for
  --latency-seconds, timed from each request's scheduled send time (so a stall is not
  hidden by the sender waiting for it).

It measures the door, not the analysis behind it: the gateway holds new alerts for longer
than the run (KUBERNAUT_GATEWAY_HOLD_SECONDS) and its alert processor address has nothing
listening, so nothing is forwarded during the run; the output says so.

Goals (issue 19): the edge's throughput at least the durable floor's (1.0x: batching should
beat one commit per webhook), and the edge's p99 under 20 ms at 500 alerts/s; the ratio to
the parse-only floor is the second figure (an earlier goal: 0.5x). `table_figures` gives
these rows to `python -m bench.all`. Compare ratios within one run, not absolute numbers: this
machine is shared and noisy. --profile DIR samples the edge and the gateway with py-spy
during their measurements (which slows them a little) and prints where their time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import quote

import aiohttp
import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.figures import Figure
from kubernaut.devstack.postgres import EmbeddedPostgres, create_database, drop_database
from kubernaut.devstack.processes import free_port
from kubernaut.edge.app import ALERTMANAGER_PATH
from kubernaut.runtime.certs import init_dev_pki
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName, all_accounts
from kubernaut.runtime.settings import RuntimeSettings, Transport

TOKEN: Final = "bench-" + uuid.uuid4().hex
P99_TARGET_MS: Final = 20.0
# Edge throughput over the durable floor's, and (the earlier goal) over the parse-only one's.
DURABLE_RATIO_TARGET: Final = 1.0
RATIO_TARGET: Final = 0.5
# The durable floor's connection pool: the gateway's default size.
DURABLE_POOL_SIZE: Final = 10
# Longer than any run: the forwarder never finds a new alert due while we measure.
HOLD_SECONDS: Final = 24 * 3600.0
# The edge's per-sender rate limit stays on (its cost is part of the door), far above
# what one load generator sends.
EDGE_RATE_LIMIT: Final = 1_000_000
# The open loop waits this long after its last send for the answers still due.
DRAIN_SECONDS: Final = 5.0
# New alerts stay on the ordinary path: the bench's new pod alerts, of few alert names,
# are storms by the production threshold (10 a minute), whose members are forwarded at
# once and keep the forwarder busy failing (nothing listens).
STORM_THRESHOLD: Final = 1_000_000
UNANSWERED: Final = f"unanswered {DRAIN_SECONDS:g} s after the last send"
DISPOSITIONS: Final = ("ACCEPTED", "DUPLICATE", "STORM", "REFUSED", "IGNORED_RESOLVED")


# -- webhook bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertKind:
    """A kubernetes-mixin alert on a pod, as kube-state-metrics labels it."""

    name: str
    severity: str
    summary: str
    description: str
    runbook: str


KINDS: Final = (
    AlertKind(
        "KubePodCrashLooping",
        "warning",
        "Pod is crash looping.",
        'Pod {namespace}/{pod} ({container}) is in waiting state (reason: "CrashLoopBackOff").',
        "kubepodcrashlooping",
    ),
    AlertKind(
        "KubePodNotReady",
        "warning",
        "Pod has been in a non-ready state for more than 15 minutes.",
        "Pod {namespace}/{pod} has been in a non-ready state for longer than 15 minutes.",
        "kubepodnotready",
    ),
    AlertKind(
        "KubeContainerWaiting",
        "warning",
        "Pod container waiting longer than 1 hour",
        "pod/{pod} in namespace {namespace} on container {container} has been in waiting "
        "state for longer than 1 hour.",
        "kubecontainerwaiting",
    ),
    AlertKind(
        "CPUThrottlingHigh",
        "info",
        "Processes experience elevated CPU throttling.",
        "27.4% throttling of CPU in namespace {namespace} for container {container} in pod {pod}.",
        "cputhrottlinghigh",
    ),
    AlertKind(
        "KubeMemoryOvercommit",
        "warning",
        "Cluster has overcommitted memory resource requests.",
        "Cluster has overcommitted memory resource requests for Pods by 1.2 bytes and cannot "
        "tolerate node failure ({namespace}/{pod}).",
        "kubememoryovercommit",
    ),
    AlertKind(
        "KubePodOOMKilled",
        "critical",
        "Container was OOM killed.",
        "Container {container} in pod {namespace}/{pod} was OOMKilled and restarted.",
        "kubepodoomkilled",
    ),
)
NAMESPACES: Final = ("payments", "checkout", "catalog", "search", "identity", "orders", "ledger")
APPS: Final = ("api", "worker", "frontend", "consumer", "scheduler", "gateway")
CLUSTER: Final = "prod-eu-west-1"
RUNBOOKS: Final = "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/"
_BASE36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def _rfc3339(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _base36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits))


class Bodies:
    """AlertManager v4 webhook bodies: each alert is a new fingerprint with probability
    `new_fraction`, otherwise a repeat of one sent before by this generator (the same
    labels and startsAt, as AlertManager re-sends a firing alert). Pod names carry `tag`,
    so that two generators never share a fingerprint."""

    def __init__(self, tag: str, new_fraction: float, seed: int) -> None:
        self.tag = tag
        self.new_fraction = new_fraction
        self.random = random.Random(seed)
        self.known: list[dict[str, Any]] = []
        self._single: dict[int, bytes] = {}  # a repeat's one-alert body, made once
        self.created = 0

    def _new_alert(self) -> dict[str, Any]:
        rnd = self.random
        kind = rnd.choice(KINDS)
        namespace = rnd.choice(NAMESPACES)
        app = rnd.choice(APPS)
        replicaset = hashlib.sha256(f"{namespace}/{app}".encode()).hexdigest()[:10]
        pod = f"{app}-{replicaset}-{self.tag}{_base36(self.created, 5)}"
        self.created += 1
        labels = {
            "alertname": kind.name,
            "cluster": CLUSTER,
            "container": app,
            "endpoint": "http",
            "instance": f"10.42.{rnd.randrange(256)}.{rnd.randrange(1, 255)}:8080",
            "job": "kube-state-metrics",
            "namespace": namespace,
            "pod": pod,
            "prometheus": "monitoring/k8s",
            "service": "kube-state-metrics",
            "severity": kind.severity,
            "uid": str(uuid.UUID(int=rnd.getrandbits(128))),
        }
        fields = {"namespace": namespace, "pod": pod, "container": app}
        started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=rnd.uniform(30, 900))
        expr = quote(
            f'max_over_time(kube_pod_container_status_waiting{{job="{labels["job"]}"}}[5m])'
        )
        return {
            "status": "firing",
            "labels": labels,
            "annotations": {
                "description": kind.description.format(**fields),
                "runbook_url": RUNBOOKS + kind.runbook,
                "summary": kind.summary,
            },
            "startsAt": _rfc3339(started),
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": f"http://prometheus-k8s-0:9090/graph?g0.expr={expr}&g0.tab=1",
            "fingerprint": hashlib.sha256(pod.encode() + kind.name.encode()).hexdigest()[:16],
        }

    def _pick(self, count: int) -> tuple[list[int], int]:
        """Indexes into `known` of `count` distinct alerts, and how many are new."""
        picked: list[int] = []
        new = 0
        for _ in range(count):
            if not self.known or self.random.random() < self.new_fraction:
                self.known.append(self._new_alert())
                picked.append(len(self.known) - 1)
                new += 1
                continue
            for _ in range(8):  # distinct within one body
                index = self.random.randrange(len(self.known))
                if index not in picked:
                    break
            else:
                self.known.append(self._new_alert())
                index = len(self.known) - 1
                new += 1
            picked.append(index)
        return picked, new

    def next(self, count: int) -> tuple[bytes, int]:
        """(a body of `count` alerts, how many of them are new fingerprints)."""
        picked, new = self._pick(count)
        if count == 1 and picked[0] in self._single:
            return self._single[picked[0]], new
        body = webhook([self.known[i] for i in picked])
        if count == 1:
            self._single[picked[0]] = body
        return body, new


def webhook(alerts: Sequence[dict[str, Any]]) -> bytes:
    """AlertManager's webhook body (version 4) for one group of alerts."""
    common_labels = dict(alerts[0]["labels"])
    common_annotations = dict(alerts[0]["annotations"])
    for alert in alerts[1:]:
        common_labels = {k: v for k, v in common_labels.items() if alert["labels"].get(k) == v}
        common_annotations = {
            k: v for k, v in common_annotations.items() if alert["annotations"].get(k) == v
        }
    group = {k: common_labels[k] for k in ("alertname", "namespace") if k in common_labels}
    group_key = ", ".join(f'{k}="{v}"' for k, v in group.items())
    return json.dumps(
        {
            "receiver": "kubernaut",
            "status": "firing",
            "alerts": list(alerts),
            "groupLabels": group,
            "commonLabels": common_labels,
            "commonAnnotations": common_annotations,
            "externalURL": "http://alertmanager-main-0:9093",
            "version": "4",
            "groupKey": '{}/{severity=~"warning|critical|info"}:{' + group_key + "}",
            "truncatedAlerts": 0,
        },
        separators=(",", ":"),
    ).encode()


# -- the bare endpoint ------------------------------------------------------------------------


def bare_app() -> FastAPI:
    """One POST route of the same framework: reads the JSON body, answers a small JSON 200.
    No authentication, no validation, no database."""
    app = FastAPI(title="bare endpoint")

    @app.post(ALERTMANAGER_PATH)
    async def webhook_route(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"accepted": len(body.get("alerts", ()))})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


DURABLE_TABLE: Final = "bench_floor.webhooks"


def durable_app(dsn: str) -> FastAPI:
    """One POST route that parses the JSON body and commits one INSERT of it per webhook
    (autocommit: one transaction, one WAL flush each, PostgreSQL's default
    synchronous_commit as the gateway has it), then answers a small JSON 200. No
    authentication, no validation, no dedup, no batching."""
    pool: asyncpg.Pool | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        nonlocal pool
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=DURABLE_POOL_SIZE)
        await pool.execute(
            "CREATE SCHEMA IF NOT EXISTS bench_floor; "
            f"CREATE TABLE IF NOT EXISTS {DURABLE_TABLE} "
            "(id bigserial PRIMARY KEY, received timestamptz NOT NULL DEFAULT now(), "
            "alerts integer NOT NULL, body jsonb NOT NULL)"
        )
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="durable floor", lifespan=lifespan)

    @app.post(ALERTMANAGER_PATH)
    async def webhook_route(request: Request) -> JSONResponse:
        raw = await request.body()
        body = json.loads(raw)
        alerts = len(body.get("alerts", ()))
        assert pool is not None
        await pool.execute(
            f"INSERT INTO {DURABLE_TABLE} (alerts, body) VALUES ($1, $2::jsonb)",
            alerts,
            raw.decode(),
        )
        return JSONResponse({"accepted": alerts})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_bare(host: str, port: int, dsn: str | None = None) -> None:
    """The parse-only floor, or with `dsn` the durable one."""
    # The edge's uvicorn settings (kubernaut.edge.main.serve_edge): one process, default loop
    # and HTTP implementation, no access log.
    app = bare_app() if dsn is None else durable_app(dsn)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    )
    server.run()


# -- the load generator (its own process) -----------------------------------------------------


@dataclass
class LoadSpec:
    url: str
    mode: str  # "closed" or "open"
    seconds: float
    warmup_seconds: float
    connections: int
    rate: float  # requests/s, open loop only
    alerts_per_request: int
    new_fraction: float
    tag: str
    seed: int
    token: str | None


@dataclass
class LoadResult:
    requests: int = 0  # answered, whatever the status
    ok: int = 0  # answered 200
    alerts: int = 0  # in requests answered 200
    new_alerts: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    dispositions: dict[str, int] = field(default_factory=dict)
    body_bytes: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    # Open loop: how late the generator sent (its own lag, included in the latencies).
    send_lag_p99_ms: float = 0.0
    offered: int = 0


def _quantiles(values_ms: list[float]) -> tuple[float, float, float, float]:
    if len(values_ms) < 2:
        only = values_ms[0] if values_ms else 0.0
        return only, only, only, only
    cuts = statistics.quantiles(values_ms, n=100, method="inclusive")
    return cuts[49], cuts[89], cuts[98], max(values_ms)


class Load:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.bodies = Bodies(spec.tag, spec.new_fraction, spec.seed)
        self.headers = {"Content-Type": "application/json"}
        if spec.token:
            self.headers["Authorization"] = f"Bearer {spec.token}"
        self.recording = False
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.result = LoadResult()
        self.body_sizes = 0

    async def post(self, session: aiohttp.ClientSession, scheduled: float | None) -> None:
        loop = asyncio.get_running_loop()
        body, new = self.bodies.next(self.spec.alerts_per_request)
        started = loop.time()
        recording = self.recording
        try:
            async with session.post(self.spec.url, data=body, headers=self.headers) as response:
                text = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            if recording:
                name = type(error).__name__
                self.result.errors[name] = self.result.errors.get(name, 0) + 1
            return
        done = loop.time()
        if not recording:
            return
        result = self.result
        result.requests += 1
        self.body_sizes += len(body)
        self.latencies.append((done - scheduled) if scheduled is not None else done - started)
        if scheduled is not None:
            self.lags.append(started - scheduled)
        if status != 200:
            result.errors[f"HTTP {status}"] = result.errors.get(f"HTTP {status}", 0) + 1
            return
        result.ok += 1
        result.alerts += self.spec.alerts_per_request
        result.new_alerts += new
        if b"ALERT_DISPOSITION_" in text:
            for name in DISPOSITIONS:
                if found := text.count(b'"ALERT_DISPOSITION_' + name.encode() + b'"'):
                    result.dispositions[name] = result.dispositions.get(name, 0) + found

    async def closed(self, session: aiohttp.ClientSession, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def worker() -> None:
            while loop.time() < deadline:
                await self.post(session, None)

        await asyncio.gather(*(worker() for _ in range(self.spec.connections)))

    async def open(self, session: aiohttp.ClientSession, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.spec.rate
        count = max(1, round(self.spec.rate * seconds))
        recording = self.recording
        if recording:
            self.result.offered = count
        first = loop.time() + 0.01
        in_flight: dict[asyncio.Task[None], float] = {}
        for i in range(count):
            scheduled = first + i * interval
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.post(session, scheduled))
            in_flight[task] = scheduled
            task.add_done_callback(lambda done: in_flight.pop(done, None))
        if not in_flight:
            return
        # An overloaded server would otherwise keep the run going for as long as its
        # queue takes: what is unanswered DRAIN_SECONDS after the last send counts as an
        # error, with the time it waited so far as its latency (a lower bound).
        await asyncio.wait(set(in_flight), timeout=DRAIN_SECONDS)
        now = loop.time()
        left = dict(in_flight)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if recording and left:
            self.result.errors[UNANSWERED] = len(left)
            self.latencies += [now - scheduled for scheduled in left.values()]

    async def run(self) -> LoadResult:
        spec = self.spec
        limit = spec.connections
        connector = aiohttp.TCPConnector(limit=limit, force_close=False)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            run = self.closed if spec.mode == "closed" else self.open
            await run(session, spec.warmup_seconds)
            _emit({"event": "measuring"})
            self.recording = True
            started = time.perf_counter()
            await run(session, spec.seconds)
            self.result.seconds = time.perf_counter() - started
            self.recording = False
            _emit({"event": "measured"})
        result = self.result
        to_ms = [latency * 1000 for latency in self.latencies]
        result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms = _quantiles(to_ms)
        if self.lags:
            result.send_lag_p99_ms = _quantiles([lag * 1000 for lag in self.lags])[2]
        result.body_bytes = self.body_sizes / result.requests if result.requests else 0.0
        return result


def _emit(event: Mapping[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def run_load(spec_json: str) -> None:
    spec = LoadSpec(**json.loads(spec_json))
    result = asyncio.run(Load(spec).run())
    _emit({"event": "result", **asdict(result)})


# -- the processes ----------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None


class Children:
    """The processes this run started, stopped by pid in reverse order (never by name)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, pipe: bool = False
    ) -> Child:
        log_path = None if pipe else self.log_dir / f"{name}.log"
        stdout: int | IO[bytes] = subprocess.PIPE
        if log_path is not None:
            stdout = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                [sys.executable, *argv],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT if log_path else None,
                env=dict(env),
                # Its own session: a Ctrl-C reaches only us, and we stop each in order.
                start_new_session=True,
            )
        finally:
            if not isinstance(stdout, int):
                stdout.close()
        child = Child(name, popen, log_path)
        self.started.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.started:
            code = child.popen.poll()
            if code is not None and child.log_path is not None:
                raise RuntimeError(f"{child.name} exited with {code}; see {child.log_path}")

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        if child.popen.poll() is None:
            child.popen.send_signal(signal.SIGTERM)
            try:
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait()
        if child.popen.stdout is not None:
            child.popen.stdout.close()
        with contextlib.suppress(ValueError):
            self.started.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.started)):
            self.stop(child)


def _ticks(pid: int) -> tuple[int, int] | None:
    """(ppid, user+system clock ticks of the process and of its reaped children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(fields[i]) for i in (11, 12, 13, 14))


def cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each root process and its descendants (PostgreSQL's
    backends are children of the postmaster)."""
    ticks: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (info := _ticks(int(entry.name))) is not None:
            ticks[int(entry.name)] = info
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in ticks.items():
        children.setdefault(ppid, []).append(pid)
    hertz = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for name, root in roots.items():
        total, pending = 0, [root]
        while pending:
            pid = pending.pop()
            if pid in ticks:
                total += ticks[pid][1]
                pending += children.get(pid, [])
        used[name] = total / hertz
    return used


def machine_busy() -> tuple[float, float]:
    """(CPU seconds the whole machine spent busy so far, over all CPUs; a monotonic time):
    what others on this shared machine used is the machine's minus ours."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    busy = sum(fields[:8]) - idle  # up to steal; guest time is already in user
    return busy / os.sysconf("SC_CLK_TCK"), time.monotonic()


def base_env() -> dict[str, str]:
    """This environment without KUBERNAUT_* settings, so that nothing of the caller's
    configuration leaks into the run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}


@dataclass
class Stack:
    children: Children
    edge_url: str
    bare_url: str
    durable_url: str
    dsn: str
    roots: dict[str, int]
    gateway: Child
    edge: Child
    forward_to: str


async def _wait_gateway(settings: RuntimeSettings, address: str, children: Children) -> None:
    clients = Clients(settings, addresses={ServiceName.GATEWAY: address})
    try:
        deadline = time.monotonic() + 90
        while True:
            children.check_alive()
            status = (await wait_serving(clients, [ServiceName.GATEWAY], timeout=0))[
                ServiceName.GATEWAY
            ]
            if status == "SERVING":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway is not SERVING after 90 s: {status}")
            await asyncio.sleep(0.2)
    finally:
        await clients.close()


def _wait_http(url: str, children: Children, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        children.check_alive()
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/healthz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} does not answer /healthz after {timeout:.0f} s")
        time.sleep(0.1)


@dataclass
class Gateway:
    """`kubernaut serve gateway` as the bench runs it, and how to reach it."""

    child: Child
    address: str
    settings: RuntimeSettings  # the run's certificates, for clients
    common_env: dict[str, str]  # what the edge shares with it
    forward_to: str  # where its forwarder sends: nothing listens there


def start_gateway(root: Path, dsn: str, children: Children, args: argparse.Namespace) -> Gateway:
    """The gateway under mTLS on a fresh PKI, SERVING on `dsn`, holding new alerts for
    longer than any run (nothing is forwarded), with `args.storm_threshold` and the
    `args.set` settings."""
    certs = root / "certs"
    init_dev_pki(certs, all_accounts(), trust_domain="cluster.local", namespace="kubernaut")
    gateway_port = free_port()
    # Nothing listens there: the forwarder (held anyway) and duplicate counting go nowhere.
    nowhere = f"localhost:{free_port()}"
    common = {
        **base_env(),
        "KUBERNAUT_STATE_DIR": str(root / "state"),
        "KUBERNAUT_CERTS_DIR": str(certs),
        "KUBERNAUT_TRANSPORT": "mtls",
        # The bench calls as the dev stack's shared operator.
        "KUBERNAUT_ACCESS_SHARED_OPERATOR": "true",
        "KUBERNAUT_GATEWAY_ADDRESS": f"localhost:{gateway_port}",
        "KUBERNAUT_ALERT_PROCESSOR_ADDRESS": nowhere,
        "KUBERNAUT_STORAGE_ADDRESS": nowhere,
        "KUBERNAUT_SHUTDOWN_DRAIN_SECONDS": "0.2",
        "KUBERNAUT_SHUTDOWN_GRACE_SECONDS": "5",
    }
    gateway_env = {
        **common,
        "KUBERNAUT_GRPC_PORT": str(gateway_port),
        "KUBERNAUT_METRICS_PORT": "0",
        "KUBERNAUT_GATEWAY_DATABASE_URL": dsn,
        "KUBERNAUT_GATEWAY_HOLD_SECONDS": f"{HOLD_SECONDS:g}",
    }
    if args.storm_threshold is not None:
        gateway_env["KUBERNAUT_GATEWAY_STORM_THRESHOLD"] = str(args.storm_threshold)
    # Settings to try, e.g. --set KUBERNAUT_HTTP_MAX_GATEWAY_CALLS=1 (the edge gets them too).
    gateway_env.update(setting.split("=", 1) for setting in args.set)
    child = children.start("gateway", ["-m", "kubernaut.cli.main", "serve", "gateway"], gateway_env)
    settings = RuntimeSettings(state_dir=root / "state", certs_dir=certs, transport=Transport.MTLS)
    address = f"localhost:{gateway_port}"
    asyncio.run(_wait_gateway(settings, address, children))
    return Gateway(child, address, settings, common, nowhere)


def start_stack(
    root: Path, dsn: str, postgres_pid: int | None, children: Children, args: argparse.Namespace
) -> Stack:
    edge_port, bare_port, durable_port = free_port(), free_port(), free_port()
    bare = children.start(
        "bare",
        ["-m", "bench.edge_throughput", "--serve-bare", str(bare_port)],
        base_env(),
    )
    durable = children.start(
        "durable",
        ["-m", "bench.edge_throughput", "--serve-bare", str(durable_port), "--floor-dsn", dsn],
        base_env(),
    )
    gateway = start_gateway(root, dsn, children, args)
    edge_env = {
        **gateway.common_env,
        "KUBERNAUT_METRICS_PORT": "0",
        "KUBERNAUT_HTTP_HOST": "127.0.0.1",
        "KUBERNAUT_HTTP_PORT": str(edge_port),
        "KUBERNAUT_HTTP_METRICS_PORT": "0",
        "KUBERNAUT_HTTP_TOKENS": TOKEN,
        "KUBERNAUT_HTTP_RATE_PER_SECOND": str(EDGE_RATE_LIMIT),
        "KUBERNAUT_HTTP_RATE_BURST": str(EDGE_RATE_LIMIT),
        **dict(setting.split("=", 1) for setting in args.set),
    }
    edge = children.start("edge", ["-m", "kubernaut.cli.main", "serve", "gateway-http"], edge_env)
    edge_url = f"http://127.0.0.1:{edge_port}"
    bare_url = f"http://127.0.0.1:{bare_port}"
    durable_url = f"http://127.0.0.1:{durable_port}"
    for url in (edge_url, bare_url, durable_url):
        _wait_http(url, children)
    roots = {
        "edge": edge.popen.pid,
        "gateway": gateway.child.popen.pid,
        "bare": bare.popen.pid,
        "durable": durable.popen.pid,
    }
    if postgres_pid is not None:
        roots["postgres"] = postgres_pid
    return Stack(
        children,
        edge_url,
        bare_url,
        durable_url,
        dsn,
        roots,
        gateway.child,
        edge,
        gateway.forward_to,
    )


@contextlib.contextmanager
def database(root: Path, url: str | None) -> Iterator[tuple[str, int | None]]:
    """(DSN of an empty database, the postmaster's pid when we run it)."""
    if url is None:
        server = EmbeddedPostgres(root / "pgdata", log_file=root / "logs" / "postgres.log")
        dsn = server.start()
        try:
            yield dsn, server.running_pid()
        finally:
            server.stop()
        return
    dsn = asyncio.run(create_database(url, "kubernaut_bench"))
    try:
        yield dsn, None
    finally:
        asyncio.run(drop_database(url, dsn))


async def _intake_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT count(*) AS fingerprints, coalesce(sum(occurrences), 0) AS alerts,
                      count(*) FILTER (WHERE storm_id <> '') AS in_storms,
                      (SELECT count(*) FROM gateway.queue) AS queued,
                      (SELECT count(*) FROM gateway.queue WHERE attempts > 0) AS tried
               FROM gateway.fingerprints"""
        )
        assert row is not None
        return {key: int(value) for key, value in row.items()}
    finally:
        await conn.close()


# -- one measurement --------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    target: str  # "edge", "durable" or "bare"
    result: LoadResult
    cpu: dict[str, float]
    # The whole machine during the measurement: busy CPU seconds, wall seconds.
    machine: tuple[float, float] = (0.0, 0.0)
    profile: dict[str, Path] = field(default_factory=dict)


def measure(
    stack: Stack,
    target: str,
    mode: str,
    args: argparse.Namespace,
    tag: str,
    profile_dir: Path | None,
) -> Phase:
    base = {"edge": stack.edge_url, "bare": stack.bare_url, "durable": stack.durable_url}[target]
    url = base + ALERTMANAGER_PATH
    closed = mode == "closed"
    per_request = 1 if closed else args.alerts_per_request
    spec = LoadSpec(
        url=url,
        mode=mode,
        seconds=args.throughput_seconds if closed else args.latency_seconds,
        warmup_seconds=args.warmup_seconds,
        connections=args.connections if closed else args.open_connections,
        rate=args.rate / per_request,
        alerts_per_request=per_request,
        new_fraction=args.new_fraction,
        tag=tag,
        seed=args.seed,
        token=TOKEN if target == "edge" else None,
    )
    load = stack.children.start(
        f"load-{tag}",
        ["-m", "bench.edge_throughput", "--load", json.dumps(asdict(spec))],
        base_env(),
        pipe=True,
    )
    roots = {**stack.roots, "load generator": load.popen.pid}
    assert load.popen.stdout is not None
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    machine_before = machine_after = (0.0, 0.0)
    result: dict[str, Any] | None = None
    spies: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    try:
        for line in load.popen.stdout:
            event = json.loads(line)
            if event["event"] == "measuring":
                before = cpu_seconds(roots)
                machine_before = machine_busy()
                if profile_dir is not None and target == "edge":
                    spies = start_spies(stack, profile_dir, f"{target}-{mode}", spec.seconds)
            elif event["event"] == "measured":
                after = cpu_seconds(roots)
                machine_after = machine_busy()
            elif event["event"] == "result":
                result = event
        if load.popen.wait(30) != 0 or result is None:
            raise RuntimeError(f"the load generator failed (exit {load.popen.returncode})")
    finally:
        stack.children.stop(load)
        for _, _, spy in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
            if spy.poll() is None:
                spy.kill()
                spy.wait()
    stack.children.check_alive()
    assert result is not None
    del result["event"]
    used = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in before}
    machine = (machine_after[0] - machine_before[0], machine_after[1] - machine_before[1])
    phase = Phase(f"{target}-{mode}", target, LoadResult(**result), used, machine)
    phase.profile = {name: path for name, path, _ in spies}
    return phase


def start_spies(
    stack: Stack, profile_dir: Path, label: str, seconds: float
) -> list[tuple[str, Path, subprocess.Popen[bytes]]]:
    spy = shutil.which("py-spy")
    assert spy is not None  # checked before the run
    spies = []
    for name, child in (("edge", stack.edge), ("gateway", stack.gateway)):
        out = profile_dir / f"{label}-{name}.txt"
        popen = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(child.popen.pid),
                "--duration",
                str(max(1, int(seconds) - 1)),
                "--rate",
                "250",
                "--format",
                "raw",
                # Samples of threads holding the GIL: Python at work, not waiting.
                "--gil",
                "--nonblocking",
                "--full-filenames",
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        spies.append((name, out, popen))
    return spies


# -- the report -------------------------------------------------------------------------------


REPO: Final = Path(__file__).resolve().parent.parent


def _where(location: str) -> tuple[str, str]:
    """(a short file name, the package it belongs to) of a py-spy frame's file."""
    if "/site-packages/" in location:
        short = location.split("/site-packages/", 1)[1]
        return short, short.split("/", 1)[0].removesuffix(".py")
    if location.startswith(str(REPO) + "/"):
        short = location.removeprefix(str(REPO) + "/")
        parts = short.split("/")
        return short, "/".join(parts[:3]) if parts[0] == "kubernaut" else parts[0]
    if location.startswith("<frozen"):
        return location, "stdlib"
    marker = f"/python{sys.version_info.major}.{sys.version_info.minor}/"
    if marker in location:
        short = location.split(marker, 1)[1]
        return short, "stdlib " + short.split("/", 1)[0].removesuffix(".py")
    return location, location


def _frame(frame: str) -> tuple[str, str]:
    """py-spy's `function (/path/file.py:123)` -> (`function (short/file.py)`, package)."""
    name, _, location = frame.partition(" (")
    short, package = _where(location.rsplit(":", 1)[0])
    return f"{name} ({short})", package


def profile_summary(path: Path, top: int) -> list[str]:
    """Own time by package and by function, and the total time of Kubernaut's own
    functions, from py-spy's raw (collapsed) stacks."""
    if not path.exists():
        return [f"    (no samples: {path} is missing)"]
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        samples += count
        name, package = frames[-1]
        own[name] += count
        by_package[package] += count
        for frame in {f for f, p in frames if p.startswith("kubernaut/")}:
            if "(kubernaut/cli/main.py)" not in frame and "(kubernaut/edge/main.py)" not in frame:
                ours[frame] += count
    if not samples:
        return ["    (no samples)"]

    def rows(counter: Counter[str]) -> list[str]:
        return [f"      {100 * n / samples:5.1f}%  {k}" for k, n in counter.most_common(top)]

    return [
        f"    {samples} samples. Own time by package (asyncio's Handle._run includes the "
        "native code it calls: grpc's cygrpc, asyncpg's protocol):",
        *rows(by_package),
        "    own time by function:",
        *rows(own),
        "    total time of Kubernaut's own functions (with what they call):",
        *rows(ours),
    ]


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def machine_facts() -> list[str]:
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    http = "httptools" if _importable("httptools") else "h11"
    loop = "uvloop" if _importable("uvloop") else "asyncio"
    return [
        f"machine: {os.cpu_count()} CPUs ({affinity} usable), {platform.machine()}, "
        f"Linux {platform.release()}, load average {load} at start",
        f"python {platform.python_version()}, uvicorn {uvicorn.__version__} (loop {loop}, "
        f"http {http}), aiohttp {aiohttp.__version__} for the load",
    ]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _per_second(count: int, result: LoadResult) -> float:
    return count / result.seconds if result.seconds else 0.0


DURABLE_FIGURE: Final = "edge throughput vs durable floor (1 INSERT per webhook)"
PARSE_ONLY_FIGURE: Final = "edge throughput vs parse-only floor"
P99_FIGURE: Final = "edge p99 latency"


def _ratio(phase: Phase, floor: Phase) -> float:
    rate = _per_second(floor.result.ok, floor.result)
    return _per_second(phase.result.ok, phase.result) / rate if rate else 0.0


def figures_of(phases: Mapping[str, Phase], args: argparse.Namespace) -> list[Figure]:
    """The rows of `python -m bench.all`'s table: the durable ratio, the parse-only ratio,
    the edge's p99."""
    edge_t, durable_t, bare_t = (phases[f"{t}-closed"] for t in ("edge", "durable", "bare"))
    edge_l = phases["edge-open"].result

    def rate(phase: Phase) -> str:
        return f"{_per_second(phase.result.ok, phase.result):,.0f}/s"

    durable = _ratio(edge_t, durable_t)
    parse_only = _ratio(edge_t, bare_t)
    complete = edge_l.ok == edge_l.offered and not edge_l.errors
    unanswered = "" if complete else f", {edge_l.offered - edge_l.ok} not answered 200"
    return [
        Figure(
            DURABLE_FIGURE,
            f">= {DURABLE_RATIO_TARGET:.1f}x",
            f"{durable:.2f}x (edge {rate(edge_t)}, floor {rate(durable_t)})",
            durable >= DURABLE_RATIO_TARGET,
        ),
        Figure(
            PARSE_ONLY_FIGURE,
            f">= {RATIO_TARGET:.1f}x (earlier goal)",
            f"{parse_only:.2f}x (edge {rate(edge_t)}, floor {rate(bare_t)})",
            parse_only >= RATIO_TARGET,
        ),
        Figure(
            f"{P99_FIGURE} at {args.rate:g} alerts/s",
            f"< {P99_TARGET_MS:g} ms",
            f"{edge_l.p99_ms:.1f} ms{unanswered}",
            edge_l.p99_ms < P99_TARGET_MS and complete,
        ),
    ]


def report(phases: dict[str, Phase], args: argparse.Namespace, counts: dict[str, int]) -> None:
    """Throughput and latency counted on requests answered 200 (an error is no work done)."""
    bare_t, durable_t, edge_t = (phases[f"{t}-closed"] for t in ("bare", "durable", "edge"))
    bare_l, durable_l, edge_l = (phases[f"{t}-open"] for t in ("bare", "durable", "edge"))
    per_request = args.alerts_per_request
    durable, parse_only, p99 = figures_of(phases, args)
    print()
    print("== results ==")
    print(
        f"throughput: closed loop, {args.connections} keep-alive connections, "
        f"{args.throughput_seconds:g} s each, 1 alert per request "
        f"({edge_t.result.body_bytes / 1024:.1f} KiB bodies on average)"
    )
    print(f"  {'':<16}{'requests/s':>11}{'alerts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    labels = {"bare": "parse-only floor", "durable": "durable floor", "edge": "kubernaut edge"}
    for phase in (bare_t, durable_t, edge_t):
        r = phase.result
        print(
            f"  {labels[phase.target]:<18}{_per_second(r.ok, r):>11.0f}"
            f"{_per_second(r.alerts, r):>10.0f}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{sum(r.errors.values()):>8}"
        )
    print(
        f"  throughput ratio edge/durable floor: {_ratio(edge_t, durable_t):.3f}   "
        f"(goal >= {DURABLE_RATIO_TARGET:.1f}: {_verdict(durable.met)})"
    )
    print(
        f"  throughput ratio edge/bare (parse-only floor): {_ratio(edge_t, bare_t):.3f}   "
        f"(earlier goal >= {RATIO_TARGET:.2f}: {_verdict(parse_only.met)})"
    )
    print()
    print(
        f"latency: open loop offering {args.rate:g} alerts/s as {args.rate / per_request:g} "
        f"requests/s of {per_request} alert{'s' if per_request > 1 else ''}, "
        f"{args.latency_seconds:g} s each, up to {args.open_connections} connections; "
        "timed from each request's scheduled send"
    )
    print(
        f"  {'':<18}{'alerts/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'errors':>8}"
    )
    for phase in (bare_l, durable_l, edge_l):
        r = phase.result
        print(
            f"  {labels[phase.target]:<18}{_per_second(r.alerts, r):>9.0f}"
            f"{r.p50_ms:>9.2f}{r.p90_ms:>9.2f}"
            f"{r.p99_ms:>9.2f}{r.max_ms:>9.1f}{sum(r.errors.values()):>8}"
        )
    edge_p99 = edge_l.result.p99_ms
    print(
        f"  edge p99 at {args.rate:g} alerts/s: {edge_p99:.2f} ms   "
        f"(goal < {P99_TARGET_MS:g} ms with every request answered 200: "
        f"{_verdict(p99.met)})"
    )
    print(
        "  the load generator's own send lag, p99 (included above): "
        + ", ".join(
            f"{labels[p.target]} {p.result.send_lag_p99_ms:.2f} ms"
            for p in (bare_l, durable_l, edge_l)
        )
    )
    for phase in phases.values():
        r = phase.result
        if r.errors:
            print(f"  errors of {phase.name}: {r.errors}")
        if r.offered and r.ok < r.offered:
            print(f"  {phase.name}: {r.ok} of {r.offered} offered requests answered 200")

    print()
    print("what the edge decided (its 200 answers in both edge measurements):")
    dispositions: Counter[str] = Counter()
    sent_new = sent = 0
    for phase in (edge_t, edge_l):
        dispositions.update(phase.result.dispositions)
        sent_new += phase.result.new_alerts
        sent += phase.result.alerts
    decided = ", ".join(f"{k.lower()} {v}" for k, v in dispositions.most_common()) or "nothing"
    print(f"  {sent} alerts, {sent_new} of them new fingerprints: {decided}")
    print(
        f"  gateway schema after the run (warm-ups and failed requests included): "
        f"{counts['fingerprints']} fingerprints, {counts['alerts']} alerts recorded, "
        f"{counts['in_storms']} in storms, {counts['queued']} queued for the alert processor, "
        f"{counts['tried']} of them tried"
    )

    print()
    print(
        "CPU ms per request answered 200 (user+system during the measurement; "
        "2 cores give 2000 ms/s):"
    )
    names = ["edge", "gateway", "postgres", "bare", "durable", "load generator"]
    names = [n for n in names if any(n in p.cpu for p in phases.values())]
    print("  " + f"{'':<14}" + "".join(f"{n:>15}" for n in names) + f"{'total':>10}")
    for phase in phases.values():
        answered = phase.result.ok or 1
        cells = [phase.cpu.get(n, 0.0) * 1000 / answered for n in names]
        print(
            f"  {phase.name:<14}" + "".join(f"{c:>15.3f}" for c in cells) + f"{sum(cells):>10.3f}"
        )
    print("machine busy during each measurement, in cores (this run's processes; others):")
    for phase in phases.values():
        busy, wall = phase.machine
        if wall <= 0:
            continue
        ours = sum(phase.cpu.values()) / wall
        print(
            f"  {phase.name:<14}{busy / wall:>6.2f} of {os.cpu_count()}   "
            f"(ours {ours:.2f}, others {max(0.0, busy / wall - ours):.2f})"
        )

    # What the throughput ratio could be if CPU were all that bound it: each closed loop
    # keeping every core busy at the CPU it spent per request (load generator included).
    cores = os.cpu_count() or 1
    ceilings = {
        name: cores * phases[name].result.ok / spent
        for name in ("bare-closed", "durable-closed", "edge-closed")
        if (spent := sum(phases[name].cpu.values())) > 0
    }
    if len(ceilings) == 3:
        edge_ceiling = ceilings["edge-closed"]
        print(
            f"at that CPU per request, {cores} busy cores serve at most "
            f"{ceilings['bare-closed']:.0f} requests/s parse-only, "
            f"{ceilings['durable-closed']:.0f} durable and {edge_ceiling:.0f} through the "
            f"edge: ratios of {edge_ceiling / ceilings['durable-closed']:.2f} (durable) and "
            f"{edge_ceiling / ceilings['bare-closed']:.2f} (parse-only) at best"
        )

    if any(phase.profile for phase in phases.values()):
        print()
        print(
            "where the time goes (py-spy samples holding the GIL, Python frames only; "
            "--profile slowed the edge measurements a little):"
        )
        for phase in phases.values():
            for name, path in phase.profile.items():
                print(f"  {name} during {phase.name} ({path}):")
                for line in profile_summary(path, args.profile_top):
                    print(line)


# -- the run ----------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.profile is not None and shutil.which("py-spy") is None:
        print("--profile needs py-spy on PATH (pip install py-spy)", file=sys.stderr)
        return 2
    profile_dir: Path | None = None
    if args.profile is not None:
        profile_dir = Path(args.profile).resolve()
        profile_dir.mkdir(parents=True, exist_ok=True)
    print("Kubernaut HTTP edge against a durable and a parse-only FastAPI floor, one run")
    for line in machine_facts():
        print(line)
    storms = (
        f"storm threshold {args.storm_threshold} new fingerprints of one alert name"
        if args.storm_threshold is not None
        else "production storm threshold"
    )
    print(
        "edge: bearer token, body limit, rate limit (on, at "
        f"{EDGE_RATE_LIMIT:g}/s so it never refuses), pydantic models, then over mTLS the "
        "gateway: call-table authorization, buf.validate rules, dedup in PostgreSQL (one "
        f"transaction per request); {storms}"
    )
    print(
        "durable floor: one FastAPI POST route that parses the JSON body and commits one "
        f"INSERT of it (jsonb) per webhook to the same PostgreSQL (a pool of "
        f"{DURABLE_POOL_SIZE}, autocommit); no auth, validation, dedup or batching"
    )
    print(
        "parse-only floor (bare): one FastAPI POST route that reads the JSON body and returns "
        "a small JSON 200; no auth, validation or database. Both floors: the edge's uvicorn "
        "settings (1 process, access log off)"
    )
    print(
        f"bodies: AlertManager v4 webhooks of kube-state-metrics pod alerts; "
        f"{args.new_fraction:.0%} new fingerprints, {1 - args.new_fraction:.0%} repeats of "
        "alerts sent before (dedup does the work); startsAt within the last 15 minutes"
    )
    keep = Path(args.keep).resolve() if args.keep else None
    root = keep or Path(tempfile.mkdtemp(prefix="kubernaut-bench-edge-"))
    (root / "logs").mkdir(parents=True, exist_ok=True)
    children = Children(root / "logs")
    # SIGTERM like Ctrl-C (and Ctrl-C even where it was ignored, as in a background job):
    # the finally blocks stop every process we started.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        phases, counts = measure_all(args, root, children, profile_dir)
        report(phases, args, counts)
    except KeyboardInterrupt:
        print("interrupted; stopping what was started", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


# (endpoint, loop, the load generator's tag: no two measurements share a fingerprint)
PLAN: Final = (
    ("bare", "closed", "a"),
    ("durable", "closed", "b"),
    ("edge", "closed", "c"),
    ("bare", "open", "d"),
    ("durable", "open", "e"),
    ("edge", "open", "f"),
)


def measure_all(
    args: argparse.Namespace, root: Path, children: Children, profile_dir: Path | None
) -> tuple[dict[str, Phase], dict[str, int]]:
    """Every measurement of PLAN, and the gateway's counts after them."""
    phases: dict[str, Phase] = {}
    with database(root, args.database_url) as (dsn, postgres_pid):
        stack = start_stack(root, dsn, postgres_pid, children, args)
        print(
            f"forwarding held: KUBERNAUT_GATEWAY_HOLD_SECONDS={HOLD_SECONDS:g} (longer "
            f"than the run), alert processor at {stack.forward_to} where nothing listens: "
            "nothing is forwarded, the run measures the door"
        )
        if args.set:
            print(f"settings tried: {' '.join(args.set)}")
        print(f"logs: {root / 'logs'}", flush=True)
        for target, mode, tag in PLAN:
            print(f"measuring {target} ({mode} loop) ...", flush=True)
            phase = measure(stack, target, mode, args, tag, profile_dir)
            phases[phase.name] = phase
        counts = asyncio.run(_intake_counts(dsn))
        children.stop_all()
    return phases, counts


def table_figures(quick: bool) -> list[Figure]:
    """This bench's rows of `python -m bench.all`, from one run (shorter when `quick`)."""
    argv = (
        ["--throughput-seconds", "4", "--latency-seconds", "5", "--warmup-seconds", "1"]
        if quick
        else []
    )
    args = parser().parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kubernaut-bench-edge-"))
    (root / "logs").mkdir(parents=True, exist_ok=True)
    children = Children(root / "logs")
    try:
        phases, counts = measure_all(args, root, children, None)
        report(phases, args, counts)  # to the log of `bench.all`
    finally:
        children.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return figures_of(phases, args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m bench.edge_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--throughput-seconds", type=float, default=15.0)
    top.add_argument("--latency-seconds", type=float, default=20.0)
    top.add_argument("--warmup-seconds", type=float, default=3.0, help="before each measurement")
    top.add_argument("--connections", type=int, default=32, help="closed loop (throughput)")
    top.add_argument(
        "--rate", type=float, default=500.0, help="alerts/s offered in the latency measurement"
    )
    top.add_argument(
        "--alerts-per-request",
        type=int,
        default=1,
        help="alerts per webhook in the latency measurement (e.g. 10: 50 requests/s)",
    )
    top.add_argument(
        "--open-connections",
        type=int,
        default=64,
        help="connections the open loop may use at most",
    )
    top.add_argument("--new-fraction", type=float, default=0.2, help="new fingerprints")
    top.add_argument(
        "--storm-threshold",
        type=int,
        default=STORM_THRESHOLD,
        help="the gateway's storm threshold (KUBERNAUT_GATEWAY_STORM_THRESHOLD); the default "
        "keeps new alerts on the ordinary path (100 new pod alerts/s of six alert names is "
        "a storm by the production threshold of 10 a minute); 0 keeps the production value, and "
        "then storm members, which are never held, keep the forwarder busy failing",
    )
    top.add_argument("--seed", type=int, default=7)
    top.add_argument(
        "--set",
        metavar="KUBERNAUT_X=VALUE",
        action="append",
        default=[],
        help="a setting for the edge and the gateway, to compare (e.g. "
        "KUBERNAUT_HTTP_MAX_GATEWAY_CALLS=1); repeatable",
    )
    top.add_argument(
        "--database-url",
        default=None,
        help="an existing PostgreSQL (a role with CREATEDB); a fresh database is made and "
        "dropped. Default: an embedded PostgreSQL in a temporary directory",
    )
    top.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="sample the edge and the gateway with py-spy during the edge measurements",
    )
    top.add_argument("--profile-top", type=int, default=15)
    top.add_argument("--keep", metavar="DIR", default=None, help="keep logs (and data) in DIR")
    # The child processes of a run.
    top.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    top.add_argument("--floor-dsn", default=None, help=argparse.SUPPRESS)
    top.add_argument("--load", default=None, help=argparse.SUPPRESS)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.serve_bare is not None:
        serve_bare("127.0.0.1", args.serve_bare, args.floor_dsn)
        return 0
    if args.load is not None:
        run_load(args.load)
        return 0
    if args.storm_threshold == 0:
        args.storm_threshold = None
    if any(not s.startswith("KUBERNAUT_") or "=" not in s for s in args.set):
        print("--set takes KUBERNAUT_NAME=VALUE", file=sys.stderr)
        return 2
    if not 0 <= args.new_fraction <= 1 or args.alerts_per_request < 1 or args.rate <= 0:
        print("--new-fraction in [0, 1], --alerts-per-request >= 1, --rate > 0", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
