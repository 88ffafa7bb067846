"""A soak: alerts at a steady rate through the whole of Kubernaut for a long while, watching
every process for growth.

    .venv/bin/python -m bench.soak --minutes 30 --rate 50

The mesh is bench.storm's (a one-node dev stack, the ten services and the edge, each its
own process, production settings). The load, AlertManager's shape (bodies of up to
--alerts-per-body alerts of one alert name and namespace):

- a working set of firing alerts on --workloads workloads, re-sent over and over (the
  gateway counts them on their incidents: storms, by the production threshold);
- churn: each second a few of them resolve (closing what they opened) and start again
  as new lives (new incidents or storm members);
- a trickle of new alerts on another cluster label, few enough per alert name never to
  make a storm: each is held, handed to alert_processor, looked up on the cluster by
  context_api (the objects do not exist there) and recorded as dropped.

Every --sample-seconds the RSS, open file descriptors (/proc/PID/fd) and asyncio tasks
(the `kubernaut_asyncio_tasks` gauge on each process's metrics port) of the ten services
and the edge are sampled. After --warmup-minutes, the goals: RSS grows under 10% per
service (the median of the last minute against the first minute after the warm-up); open
fds and tasks end no higher than after the warm-up (with a little slack for what is in
flight at a sample: a leak grows with the run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.edge_throughput import _rfc3339, webhook
from bench.figures import Figure
from bench.storm import KINDS, Mesh, Sample, Sampler, Workload, alert_of, running_mesh, workloads

RSS_GROWTH_GOAL: Final = 0.10
SOAK_CLUSTER: Final = "soak-cluster"
PROBE_CLUSTER: Final = "soak-probe"
# Slack above the warm level for what is in flight when a sample is taken.
FD_SLACK: Final = 8
TASK_SLACK: Final = 16


@dataclass
class Life:
    kind: tuple[str, str, str]
    workload: Workload
    started: dt.datetime

    def alert(self, status: str = "firing") -> dict[str, Any]:
        alert = alert_of(self.kind, self.workload, self.started, SOAK_CLUSTER)
        if status == "resolved":
            alert["status"] = "resolved"
            alert["endsAt"] = _rfc3339(dt.datetime.now(dt.UTC))
        return alert


class SoakLoad:
    """What to send each second."""

    def __init__(self, workload_count: int, rate: float, seed: int) -> None:
        self.random = random.Random(seed)
        self.rate = rate
        now = dt.datetime.now(dt.UTC)
        self.lives = [
            Life(kind, w, now - dt.timedelta(seconds=30))
            for w in workloads(workload_count, "soak")
            for kind in KINDS
        ]
        self.probes = 0

    def second(self) -> tuple[list[bytes], int]:
        """(bodies for the next second, the alerts in them: about `rate`)."""
        count = max(1, round(self.rate))
        now = dt.datetime.now(dt.UTC)
        alerts: list[tuple[tuple[str, str], dict[str, Any]]] = []
        # Churn: about 4% of the alerts resolve and fire again as a new life.
        for _ in range(max(1, count // 25)):
            life = self.random.choice(self.lives)
            alerts.append(((life.kind[0], life.workload.namespace), life.alert("resolved")))
            life.started = dt.datetime.now(dt.UTC)
            alerts.append(((life.kind[0], life.workload.namespace), life.alert()))
        # A probe every 10 s: 6 a minute, under the storm threshold of 10.
        self.probes += 1
        if self.probes % 10 == 0:
            n = self.probes // 10
            probe = alert_of(
                KINDS[0], Workload("soak-probe", f"gone-{n:06d}"), _now(), PROBE_CLUSTER
            )
            alerts.append((("probe", str(n)), probe))
        churned = {id(life) for life in self.lives if life.started > now}
        fresh = [life for life in self.lives if id(life) not in churned]
        for life in self.random.sample(fresh, min(len(fresh), max(0, count - len(alerts)))):
            alerts.append(((life.kind[0], life.workload.namespace), life.alert()))
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for key, alert in alerts:
            groups.setdefault(key, []).append(alert)
        bodies = []
        sent = 0
        for members in groups.values():
            # One body per group, at most 10 alerts (AlertManager's groups are larger).
            for i in range(0, len(members), 10):
                body = _distinct(members[i : i + 10])
                bodies.append(webhook(body))
                sent += len(body)
        return bodies, sent


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)


def _distinct(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One alert per labels and status in a body (AlertManager never repeats one)."""
    seen: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        seen[json.dumps([alert["labels"], alert["status"]], sort_keys=True)] = alert
    return list(seen.values())


@dataclass
class Sent:
    alerts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    late_seconds: float = 0.0  # how far the sender fell behind its schedule, at most


async def send_for(mesh: Mesh, load: SoakLoad, seconds: float) -> Sent:
    sent = Sent()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {mesh.token}"}
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def post(session: aiohttp.ClientSession, body: bytes) -> None:
        for _ in range(10):
            try:
                async with session.post(mesh.webhook_url, data=body, headers=headers) as r:
                    await r.read()
                    sent.statuses[r.status] += 1
                    if r.status not in (429, 503):
                        return
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1") or 1))
            except (aiohttp.ClientError, TimeoutError) as error:
                sent.errors[type(error).__name__] += 1
                await asyncio.sleep(1)

    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        began = loop.time()
        tick = 0
        while loop.time() - began < seconds:
            bodies, alerts = load.second()
            sent.alerts += alerts
            for body in bodies:
                task = asyncio.create_task(post(session, body))
                pending.add(task)
                task.add_done_callback(pending.discard)
            tick += 1
            delay = began + tick - loop.time()
            sent.late_seconds = max(sent.late_seconds, -delay)
            if delay > 0:
                await asyncio.sleep(delay)
        if pending:
            await asyncio.wait(pending, timeout=30)
    return sent


@dataclass
class Growth:
    name: str
    rss_warm: float
    rss_end: float
    fds_warm: float
    fds_end: float
    tasks_warm: float | None
    tasks_end: float | None

    @property
    def rss_growth(self) -> float:
        return self.rss_end / self.rss_warm - 1 if self.rss_warm else 0.0

    def problems(self) -> list[str]:
        found = []
        if self.rss_growth >= RSS_GROWTH_GOAL:
            found.append(
                f"{self.name} RSS grew {self.rss_growth:.1%} "
                f"({self.rss_warm / 2**20:.0f} -> {self.rss_end / 2**20:.0f} MiB)"
            )
        if self.fds_end > self.fds_warm + FD_SLACK:
            found.append(f"{self.name} open fds {self.fds_warm:.0f} -> {self.fds_end:.0f}")
        if self.tasks_warm is None or self.tasks_end is None:
            found.append(f"{self.name}: no asyncio task count (kubernaut_asyncio_tasks)")
        elif self.tasks_end > self.tasks_warm + TASK_SLACK:
            found.append(f"{self.name} asyncio tasks {self.tasks_warm:.0f} -> {self.tasks_end:.0f}")
        return found


def growth_of(samples: Sequence[Sample], warmup: float, window: float) -> list[Growth]:
    """Per process: the median over the first `window` seconds after `warmup` against the
    median over the last `window` seconds."""
    end = samples[-1].at
    first = [s for s in samples if warmup <= s.at < warmup + window]
    last = [s for s in samples if s.at >= end - window]
    if not first or not last:
        raise ValueError("the soak is too short for its warm-up and windows")

    def median(chosen: Sequence[Sample], what: str, name: str) -> float | None:
        values = [getattr(s, what)[name] for s in chosen if name in getattr(s, what)]
        return statistics.median(values) if values else None

    rows = []
    for name in samples[0].rss:
        rows.append(
            Growth(
                name,
                median(first, "rss", name) or 0.0,
                median(last, "rss", name) or 0.0,
                median(first, "fds", name) or 0.0,
                median(last, "fds", name) or 0.0,
                median(first, "tasks", name),
                median(last, "tasks", name),
            )
        )
    return rows


@dataclass
class SoakResult:
    minutes: float
    rate: float
    sent: Sent
    growth: list[Growth]
    drained: bool

    def problems(self) -> list[str]:
        found = [p for g in self.growth for p in g.problems()]
        other = {s: n for s, n in self.sent.statuses.items() if s >= 500 and s != 503}
        if other:
            found.append(f"the edge answered {other}")
        if not self.drained:
            found.append("the gateway's queue did not drain after the soak")
        return found


async def soak(
    mesh: Mesh,
    minutes: float,
    rate: float,
    warmup_minutes: float,
    sample_seconds: float,
    workload_count: int,
    seed: int = 7,
) -> SoakResult:
    from bench.storm import wait_drained

    sampler = Sampler(mesh, sample_seconds, deep=True)
    sampler.start()
    began = time.monotonic()
    try:
        sent = await send_for(mesh, SoakLoad(workload_count, rate, seed), minutes * 60)
    finally:
        await sampler.stop()
    elapsed = time.monotonic() - began
    window = min(60.0, max(sample_seconds * 3, (elapsed - warmup_minutes * 60) / 3))
    growth = growth_of(sampler.samples, warmup_minutes * 60, window)
    drained = await wait_drained(mesh.dsn, 120) is not None
    return SoakResult(minutes, rate, sent, growth, drained)


def report(result: SoakResult) -> list[str]:
    s = result.sent
    lines = [
        f"soak: {result.minutes:g} min at {result.rate:g} alerts/s: {s.alerts} alerts sent, "
        f"answers {dict(sorted(s.statuses.items()))}, errors {dict(s.errors)}, sender at most "
        f"{s.late_seconds:.1f} s behind",
        "  per process, after the warm-up -> the last minute (medians): RSS MiB, open fds, "
        "asyncio tasks",
    ]
    for g in result.growth:
        tasks = (
            f"{g.tasks_warm:.0f} -> {g.tasks_end:.0f}"
            if g.tasks_warm is not None and g.tasks_end is not None
            else "?"
        )
        lines.append(
            f"    {g.name:<16} {g.rss_warm / 2**20:6.0f} -> {g.rss_end / 2**20:4.0f} "
            f"({g.rss_growth:+.1%})   fds {g.fds_warm:.0f} -> {g.fds_end:.0f}   tasks {tasks}"
        )
    problems = result.problems()
    lines.append("  goals: " + ("all met" if not problems else "NOT MET: " + "; ".join(problems)))
    return lines


def figures_of(result: SoakResult) -> list[Figure]:
    worst = max(result.growth, key=lambda g: g.rss_growth)
    leaks = [p for g in result.growth for p in g.problems() if "RSS" not in p]
    return [
        Figure(
            f"soak: RSS growth per service ({result.minutes:g} min at {result.rate:g}/s)",
            f"< {RSS_GROWTH_GOAL:.0%}",
            f"worst {worst.name} {worst.rss_growth:+.1%}",
            worst.rss_growth < RSS_GROWTH_GOAL,
        ),
        Figure(
            "soak: fd and asyncio task leaks",
            "none",
            "none" if not leaks else "; ".join(leaks),
            not leaks,
        ),
    ]


async def run_soak(
    root: Path,
    minutes: float,
    rate: float,
    warmup_minutes: float,
    sample_seconds: float,
    workload_count: int,
) -> SoakResult:
    # The alerts' cluster labels name the dev cluster under other names: context_api
    # refuses a cluster it is not configured for, and the alerts are to be looked up.
    clusters: dict[str, dict[str, str]] = {"default": {}, SOAK_CLUSTER: {}, PROBE_CLUSTER: {}}
    async with running_mesh(
        root, extra_env={"KUBERNAUT_KUBE_CLUSTERS": json.dumps(clusters)}
    ) as mesh:
        print(f"mesh up (logs in {mesh.settings.state_dir / 'logs'}); soaking ...", flush=True)
        return await soak(mesh, minutes, rate, warmup_minutes, sample_seconds, workload_count)


def table_figures(quick: bool) -> list[Figure]:
    """The soak's rows for `python -m bench.all` (`quick`: 3 minutes, 1 of warm-up)."""
    minutes, warmup = (3.0, 1.0) if quick else (30.0, 5.0)
    root = Path(tempfile.mkdtemp(prefix="kubernaut-bench-soak-"))
    try:
        return figures_of(asyncio.run(run_soak(root, minutes, 50.0, warmup, 5.0, 200)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    top = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--minutes", type=float, default=30.0)
    top.add_argument("--rate", type=float, default=50.0, help="alerts per second")
    top.add_argument("--warmup-minutes", type=float, default=None, help="default: a sixth")
    top.add_argument("--sample-seconds", type=float, default=5.0)
    top.add_argument("--workloads", type=int, default=200)
    top.add_argument("--keep", metavar="DIR", default=None, help="keep logs and data in DIR")
    args = top.parse_args(argv)
    warmup = args.warmup_minutes if args.warmup_minutes is not None else args.minutes / 6
    root = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        result = asyncio.run(
            run_soak(root, args.minutes, args.rate, warmup, args.sample_seconds, args.workloads)
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for line in report(result):
        print(line)
    return 0 if not result.problems() else 1


if __name__ == "__main__":
    sys.exit(main())
