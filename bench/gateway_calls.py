"""What one SubmitAlerts call costs the gateway and PostgreSQL, by batch size: the part of
a call that does not depend on how many alerts it carries (the gRPC call under mTLS,
OpenTelemetry, authorization, the log line, a pooled connection and a round trip) and the
part that does (validation, fingerprints, the alert's JSON, dedup in one statement).

    .venv/bin/python -m bench.gateway_calls [--calls 1500] [--sizes 1,4,16,64]

The edge coalesces webhooks into such calls, so these two figures bound what the edge
path can cost per webhook (bench/edge_throughput.py measures that path whole). Each batch
size gets --calls sequential calls as the edge (its identity, over mTLS) of repeats of
--fingerprints alerts already firing: dedup, the common case. CPU is read from /proc for
the gateway process and PostgreSQL's backends; a least-squares line over the sizes gives
the fixed and per-alert costs. Compare within one run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubernaut.common.v1 import alert_pb2
from kubernaut.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from bench.edge_throughput import (
    STORM_THRESHOLD,
    Children,
    _interrupt,
    cpu_seconds,
    database,
    start_gateway,
)
from bench.validation import kube_state_metrics_alert
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import EDGE_ACCOUNT, ServiceName


def firing_alert(index: int, started: dt.datetime) -> alert_pb2.Alert:
    """bench.validation's kube-state-metrics pod alert, started at `started` (fresh: the
    gateway refuses alerts older than a day)."""
    alert = kube_state_metrics_alert(index)
    alert.starts_at.FromDatetime(started)
    return alert


@dataclass(frozen=True)
class Cost:
    size: int
    wall_ms: float  # per call, one at a time
    gateway_ms: float  # CPU per call
    postgres_ms: float  # CPU per call


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through `points`."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


async def measure(
    gateway_clients: Clients, roots: dict[str, int], args: argparse.Namespace
) -> list[Cost]:
    stub = gateway_clients.stub(gateway_pb2_grpc.GatewayServiceStub)
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    for first in range(0, args.fingerprints, 500):
        alerts = [
            firing_alert(index, started)
            for index in range(first, min(first + 500, args.fingerprints))
        ]
        await stub.SubmitAlerts(gateway_pb2.SubmitAlertsRequest(alerts=alerts))
    pick = random.Random(args.seed)
    costs = []
    for size in args.sizes:
        requests = [
            gateway_pb2.SubmitAlertsRequest(
                alerts=[
                    firing_alert(pick.randrange(args.fingerprints), started) for _ in range(size)
                ]
            )
            for _ in range(args.calls)
        ]
        for request in requests[:20]:  # warm: plans, caches
            await stub.SubmitAlerts(request)
        before, clock = cpu_seconds(roots), time.perf_counter()
        for request in requests:
            response = await stub.SubmitAlerts(request)
            assert len(response.outcomes) == size
        wall = time.perf_counter() - clock
        after = cpu_seconds(roots)
        per_call = {name: (after[name] - before[name]) * 1000 / args.calls for name in roots}
        costs.append(
            Cost(size, wall * 1000 / args.calls, per_call["gateway"], per_call["postgres"])
        )
        print(f"  measured batches of {size}", flush=True)
    return costs


def report(costs: list[Cost], args: argparse.Namespace) -> None:
    print()
    print(f"SubmitAlerts of repeats, {args.calls} calls per batch size, one at a time:")
    print("  alerts/call   wall ms/call   gateway CPU ms/call   postgres CPU ms/call   per alert")
    for cost in costs:
        per_alert = (cost.gateway_ms + cost.postgres_ms) / cost.size
        print(
            f"  {cost.size:11d}   {cost.wall_ms:12.3f}   {cost.gateway_ms:19.3f}   "
            f"{cost.postgres_ms:20.3f}   {per_alert:9.3f}"
        )
    gateway = fit([(c.size, c.gateway_ms) for c in costs])
    postgres = fit([(c.size, c.postgres_ms) for c in costs])
    print("fitted: CPU ms = fixed per call + per alert x alerts")
    print(f"  gateway     {gateway[0]:6.3f} + {gateway[1]:6.4f} x alerts")
    print(f"  postgres    {postgres[0]:6.3f} + {postgres[1]:6.4f} x alerts")
    for batch in (1, 16, 64):
        total = gateway[0] + postgres[0] + (gateway[1] + postgres[1]) * batch
        print(f"  a webhook of one alert in a call of {batch:2d}: {total / batch:.3f} CPU ms")


def run(args: argparse.Namespace) -> int:
    print("Kubernaut gateway: CPU per SubmitAlerts call by batch size, one run")
    root = Path(tempfile.mkdtemp(prefix="kubernaut-bench-calls-"))
    (root / "logs").mkdir()
    children = Children(root / "logs")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        with database(root, args.database_url) as (dsn, postgres_pid):
            if postgres_pid is None:
                print("--database-url: PostgreSQL's CPU is not measured", file=sys.stderr)
                return 2
            gateway = start_gateway(root, dsn, children, args)
            roots = {"gateway": gateway.child.popen.pid, "postgres": postgres_pid}

            async def calls() -> list[Cost]:
                clients = Clients(
                    gateway.settings,
                    EDGE_ACCOUNT,
                    addresses={ServiceName.GATEWAY: gateway.address},
                )
                try:
                    return await measure(clients, roots, args)
                finally:
                    await clients.close()

            costs = asyncio.run(calls())
            children.stop_all()
            report(costs, args)
    except KeyboardInterrupt:
        print("interrupted; stopping what was started", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m bench.gateway_calls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--calls", type=int, default=1500, help="per batch size")
    top.add_argument(
        "--sizes",
        type=lambda text: [int(size) for size in text.split(",")],
        default=[1, 4, 16, 64],
        help="alerts per call, comma-separated",
    )
    top.add_argument("--fingerprints", type=int, default=3000, help="firing alerts repeated")
    top.add_argument("--seed", type=int, default=7)
    top.add_argument("--database-url", default=None, help=argparse.SUPPRESS)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.calls < 1 or args.fingerprints < 1 or not args.sizes or min(args.sizes) < 1:
        print("--calls, --fingerprints and every size must be >= 1", file=sys.stderr)
        return 2
    if max(args.sizes) > 1000:
        print("a call carries at most 1000 alerts", file=sys.stderr)
        return 2
    # start_gateway's knobs. The seeded alerts share one alert name: by the production
    # threshold they would be a storm, whose members are forwarded at once (and fail, as
    # nothing listens), keeping the gateway busy while we measure.
    args.storm_threshold, args.set = STORM_THRESHOLD, []
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
