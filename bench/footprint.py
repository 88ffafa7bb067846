"""The memory of the whole mesh: the RSS of the ten services and the HTTP edge, each its own
process as `kubernaut up` starts them (kubernaut.devstack.system.running_system), idle after
a few dozen webhooks went through the real pipeline and one incident was fixed (a bad
rollout alerted and rolled back: storage embeds the incident, the executor acts).

    .venv/bin/python -m bench.footprint [--webhooks 40] [--settle-seconds 5]

The dev stack's code starts what the services need (PostgreSQL, the SMTP sink, a one-node
local Kubernetes control plane with KWOK, AlertManager and Prometheus; no model, no
Jaeger); those are not counted: the figure is Kubernaut's own processes. Goal: under 1 GiB
in total. RSS counts shared pages (the interpreter, shared libraries) once per process, as
`ps` and the kernel's OOM accounting see them; USS (the pages only that process holds) is
printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import httpx

from bench.edge_throughput import Bodies
from bench.figures import Figure
from bench.storm import Mesh, running_mesh
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.settings import KubeSettings

GOAL_BYTES: Final = 1 << 30
MIB: Final = 1 << 20


@dataclass(frozen=True)
class Footprint:
    rss: dict[str, int]  # bytes, per process name
    uss: dict[str, int]
    webhooks: int
    answered: dict[int, int]  # HTTP status: count

    @property
    def total_rss(self) -> int:
        return sum(self.rss.values())

    @property
    def total_uss(self) -> int:
        return sum(self.uss.values())


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, USS) of one process in bytes, from /proc/<pid>/smaps_rollup."""
    rss = uss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss = int(rest.split()[0]) * 1024
            elif key in ("Private_Clean", "Private_Dirty"):
                uss += int(rest.split()[0]) * 1024
    return rss, uss


async def post_webhooks(url: str, token: str, count: int) -> dict[int, int]:
    """`count` AlertManager webhooks of one alert each, half of them repeats."""
    bodies = Bodies("f", new_fraction=0.5, seed=11)
    answered: dict[int, int] = {}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for _ in range(count):
            body, _new = bodies.next(1)
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                answered[response.status] = answered.get(response.status, 0) + 1
    return answered


async def fix_one_incident(mesh: Mesh) -> None:
    """The demo's bad rollout, alerted to the edge and rolled back by the loop."""
    from bench.alert_to_change import prepare, run_sample

    kubeconfig = Path(mesh.dev.detail("kubernetes", "kubeconfig"))
    sample = await prepare(kubeconfig, "footprint")
    connection = KubeConnection(KubeSettings(kubeconfig=str(kubeconfig)))
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            await run_sample(sample, await connection.api(), http, mesh.webhook_url, mesh.token)
    finally:
        await connection.close()
    if sample.error:
        raise RuntimeError(f"the incident was not fixed: {sample.error}")


async def measure(webhooks: int, settle_seconds: float, keep: Path | None = None) -> Footprint:
    # The mesh of the storm bench: the same processes `kubernaut up` starts.
    with contextlib.ExitStack() as cleanup:
        root = keep or Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="kubernaut-bench-footprint-"))
        )
        async with running_mesh(root) as mesh:
            answered = await post_webhooks(mesh.webhook_url, mesh.token, webhooks)
            # And one incident taken through the whole loop (opened, embedded, analysed,
            # rolled back, verified): what a service loads only when it works counts too.
            await fix_one_incident(mesh)
            # Idle: what the webhooks started (holds, forwarding, analysis) settles.
            await asyncio.sleep(settle_seconds)
            rss: dict[str, int] = {}
            uss: dict[str, int] = {}
            for name, pid in mesh.pids().items():
                rss[name], uss[name] = memory_of(pid)
            exited = mesh.system.fleet.exited()
            if exited:
                raise RuntimeError(f"processes exited during the run: {exited}")
            return Footprint(rss, uss, webhooks, answered)


def report(footprint: Footprint) -> None:
    print(
        f"the ten services and the edge, idle after {footprint.webhooks} webhooks "
        f"(answered: {footprint.answered})"
    )
    print(f"  {'process':<18}{'RSS MiB':>9}{'USS MiB':>9}")
    for name, rss in sorted(footprint.rss.items(), key=lambda item: -item[1]):
        print(f"  {name:<18}{rss / MIB:>9.0f}{footprint.uss[name] / MIB:>9.0f}")
    total = footprint.total_rss
    met = total < GOAL_BYTES
    print(
        f"  {'total':<18}{total / MIB:>9.0f}{footprint.total_uss / MIB:>9.0f}   "
        f"(goal: RSS under 1024 MiB: {'MET' if met else 'NOT MET'})"
    )


def table_figures(quick: bool) -> list[Figure]:
    footprint = asyncio.run(measure(20 if quick else 40, 2.0 if quick else 5.0))
    report(footprint)  # to the log of `bench.all`
    total = footprint.total_rss
    biggest = sorted(footprint.rss.items(), key=lambda item: -item[1])[:3]
    named = ", ".join(f"{name} {rss / MIB:.0f}" for name, rss in biggest)
    return [
        Figure(
            "footprint: RSS of the ten services and the edge, idle",
            "< 1 GiB",
            f"{total / MIB:.0f} MiB ({named} MiB)",
            total < GOAL_BYTES,
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.footprint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--webhooks", type=int, default=40)
    parser.add_argument("--settle-seconds", type=float, default=5.0)
    parser.add_argument("--keep", metavar="DIR", default=None, help="keep logs (and data) in DIR")
    args = parser.parse_args(argv)
    started = time.monotonic()
    keep = Path(args.keep).resolve() if args.keep else None
    footprint = asyncio.run(measure(args.webhooks, args.settle_seconds, keep))
    report(footprint)
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
