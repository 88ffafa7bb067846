"""What the shared runtime costs per RPC: the executor's DescribeAction (a trivial RPC: one
catalogue entry of about 1 KiB, one validated string field in) served by
`kubernaut serve executor` (mTLS, OpenTelemetry, authorization, validation, metrics, JSON
logs) against the same servicer on a bare grpc.aio server with the same mTLS, in one run.

    .venv/bin/python -m bench.rpc_overhead [--calls 4000] [--concurrency 8] [--profile DIR]

(--list calls ListActions instead: the whole catalogue, 27 KiB, where the servicer's own
work and the serialization weigh more than the runtime.)

Each server runs in its own process, as in production (the full one logs its JSON lines to a
file, as it would to a pipe); the load comes from this process. The figure is the server
process's CPU (user+system) per call while the calls run: the goal is the runtime at most
1.5x the bare server's. Throughput and p50 ratios are printed too; they depend on the
client and the machine as much as on the server. Compare ratios, not absolute numbers: this
machine is shared and noisy. --profile DIR runs each server under cProfile (slower; the
CPU figures of that run are not comparable) and prints where the full server's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from kubernaut.executor.v1 import executor_pb2, executor_pb2_grpc

from bench.figures import Figure
from kubernaut.devstack.processes import free_port
from kubernaut.runtime.certs import init_dev_pki
from kubernaut.runtime.clients import Clients, channel_credentials
from kubernaut.runtime.names import OPERATOR_ACCOUNT, ServiceName, all_accounts
from kubernaut.runtime.settings import RuntimeSettings

CPU_RATIO_GOAL: Final = 1.5
REPO: Final = Path(__file__).resolve().parent.parent


# -- the servers (child processes) ------------------------------------------------------------


async def _serve_bare(certs: Path, port: int) -> None:
    from kubernaut.runtime.server import server_credentials
    from kubernaut.services.executor.server import ExecutorServicer

    settings = RuntimeSettings(certs_dir=certs, state_dir=certs)
    server = grpc.aio.server()
    executor_pb2_grpc.add_ExecutorServiceServicer_to_server(ExecutorServicer(), server)
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(settings, ServiceName.EXECUTOR))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


def _profiled(run: object, out: str | None) -> None:
    """Run `run()` (a callable), under cProfile when `out` names a file."""
    assert callable(run)
    if not out:
        run()
        return
    import cProfile

    # CPU of the main thread (the event loop), not wall time: waiting in epoll costs nothing.
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        run()
    finally:
        profile.disable()
        profile.dump_stats(out)


def serve_child(kind: str, certs: Path, port: int, profile: str | None) -> None:
    if kind == "bare":
        _profiled(lambda: asyncio.run(_serve_bare(certs, port)), profile)
        return
    # The full runtime exactly as `kubernaut serve executor` runs it.
    from kubernaut.runtime.server import serve

    settings = RuntimeSettings()
    _profiled(lambda: asyncio.run(serve(ServiceName.EXECUTOR, settings)), profile)


# -- the load (this process) ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    name: str
    rate: float  # calls/s
    latencies: list[float]  # seconds
    server_cpu: float  # seconds during the calls
    calls: int

    @property
    def cpu_us_per_call(self) -> float:
        return self.server_cpu / self.calls * 1e6

    def quantile_ms(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000


Call = Callable[[executor_pb2_grpc.ExecutorServiceStub], Awaitable[object]]


async def describe_action(stub: executor_pb2_grpc.ExecutorServiceStub) -> object:
    response: object = await stub.DescribeAction(
        executor_pb2.DescribeActionRequest(name="delete_pod")
    )
    return response


async def list_actions(stub: executor_pb2_grpc.ExecutorServiceStub) -> object:
    response: object = await stub.ListActions(executor_pb2.ListActionsRequest())
    return response


async def _wait_ready(
    stub: executor_pb2_grpc.ExecutorServiceStub, popen: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 60
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"the server exited with {popen.returncode}")
        try:
            await stub.DescribeAction(
                executor_pb2.DescribeActionRequest(name="delete_pod"), timeout=2
            )
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def load(
    name: str,
    stub: executor_pb2_grpc.ExecutorServiceStub,
    pid: int,
    popen: subprocess.Popen[bytes],
    calls: int,
    concurrency: int,
    call: Call,
) -> Measured:
    await _wait_ready(stub, popen)
    latencies: list[float] = []
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            await call(stub)
            latencies.append(time.perf_counter() - started)

    for _ in range(100):  # warm up connections and caches
        await call(stub)
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu_used = cpu_seconds(pid) - cpu_before
    return Measured(name, calls / elapsed, latencies, cpu_used, calls)


def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A server process, its JSON log lines (stderr) going to `log_path` as they would to a
    pipe; its own session, so that a Ctrl-C reaches only us and we stop it by pid."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


async def measure_one(
    kind: str,
    root: Path,
    calls: int,
    concurrency: int,
    call: Call,
    profile_dir: Path | None,
    extra_env: dict[str, str],
) -> Measured:
    certs = root / "certs"
    port = free_port()
    settings = RuntimeSettings(certs_dir=certs, state_dir=root / "state")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    env.update(
        KUBERNAUT_CERTS_DIR=str(certs),
        KUBERNAUT_STATE_DIR=str(root / "state"),
        KUBERNAUT_TRANSPORT="mtls",
        # The bench calls as the dev stack's shared operator.
        KUBERNAUT_ACCESS_SHARED_OPERATOR="true",
        KUBERNAUT_GRPC_HOST="127.0.0.1",
        KUBERNAUT_GRPC_PORT=str(port),
        KUBERNAUT_METRICS_PORT="0",
        KUBERNAUT_SHUTDOWN_DRAIN_SECONDS="0",
        KUBERNAUT_SHUTDOWN_GRACE_SECONDS="2",
    )
    env.pop("KUBECONFIG", None)  # the catalogue needs no cluster
    env.update(extra_env)
    argv = [sys.executable, "-m", "bench.rpc_overhead", "--serve", kind, "--certs", str(certs)]
    argv += ["--port", str(port)]
    if profile_dir is not None:
        argv += ["--profile-out", str(profile_dir / f"{kind}.pstats")]
    popen = _start(argv, env, root / f"{kind}.log")
    try:
        # An operator (grpcurl, the CLI) lists the catalogue; services describe one action.
        if kind == "full":
            clients = Clients(
                settings, OPERATOR_ACCOUNT, addresses={ServiceName.EXECUTOR: f"localhost:{port}"}
            )
            try:
                stub = clients.stub(executor_pb2_grpc.ExecutorServiceStub)
                return await load(kind, stub, popen.pid, popen, calls, concurrency, call)
            finally:
                await clients.close()
        channel = grpc.aio.secure_channel(
            f"localhost:{port}", channel_credentials(settings, OPERATOR_ACCOUNT)
        )
        try:
            stub = executor_pb2_grpc.ExecutorServiceStub(channel)
            return await load(kind, stub, popen.pid, popen, calls, concurrency, call)
        finally:
            await channel.close()
    finally:
        _stop(popen)


@dataclass
class Comparison:
    bare: Measured
    full: Measured

    @property
    def cpu_ratio(self) -> float:
        return self.full.cpu_us_per_call / self.bare.cpu_us_per_call

    @property
    def throughput_ratio(self) -> float:
        return self.full.rate / self.bare.rate

    @property
    def p50_ratio(self) -> float:
        return statistics.median(self.full.latencies) / statistics.median(self.bare.latencies)


async def compare(
    calls: int,
    concurrency: int,
    rounds: int,
    call: Call = describe_action,
    profile_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Comparison:
    """`rounds` alternating measurements of each; the median round of each counts (the
    machine is shared: one slow round should not decide the figure)."""
    with tempfile.TemporaryDirectory(prefix="kubernaut-bench-rpc-") as tmp:
        root = Path(tmp)
        init_dev_pki(
            root / "certs", all_accounts(), trust_domain="cluster.local", namespace="kubernaut"
        )
        runs: dict[str, list[Measured]] = {"bare": [], "full": []}
        for _ in range(rounds):
            for kind in ("bare", "full"):
                one = await measure_one(
                    kind, root, calls, concurrency, call, profile_dir, extra_env or {}
                )
                runs[kind].append(one)

    def median(measured: list[Measured]) -> Measured:
        return sorted(measured, key=lambda m: m.cpu_us_per_call)[len(measured) // 2]

    return Comparison(median(runs["bare"]), median(runs["full"]))


def describe(label: str, m: Measured) -> str:
    return (
        f"{label:<16} {m.rate:8.0f} calls/s   p50 {m.quantile_ms(50):6.2f} ms   "
        f"p99 {m.quantile_ms(99):6.2f} ms   server CPU {m.cpu_us_per_call:6.0f} us/call"
    )


def profile_lines(path: Path, top: int = 25) -> list[str]:
    """The full server's costliest functions by own time, from its cProfile stats."""
    if not path.exists():
        return [f"  (no profile: {path} is missing)"]
    import io

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return ["  " + line for line in out.getvalue().splitlines() if line.strip()]


def report(comparison: Comparison, rpc: str, calls: int, concurrency: int) -> None:
    print(f"{rpc}, {calls} calls, {concurrency} concurrent, mTLS on both")
    print(describe("bare grpc.aio", comparison.bare))
    print(describe("kubernaut", comparison.full))
    met = comparison.cpu_ratio <= CPU_RATIO_GOAL
    print(
        f"server CPU per call kubernaut/bare: {comparison.cpu_ratio:.2f} "
        f"(goal <= {CPU_RATIO_GOAL:g}: {'MET' if met else 'NOT MET'})"
    )
    print(f"throughput ratio kubernaut/bare: {comparison.throughput_ratio:.2f}")
    print(f"p50 latency ratio kubernaut/bare: {comparison.p50_ratio:.2f}")


def table_figures(quick: bool) -> list[Figure]:
    calls, rounds = (1500, 1) if quick else (4000, 3)
    comparison = asyncio.run(compare(calls, 8, rounds))
    report(comparison, "DescribeAction", calls, 8)  # to the log of `bench.all`
    bare, full = comparison.bare, comparison.full
    return [
        Figure(
            "shared runtime CPU per call vs bare grpc.aio (DescribeAction, mTLS)",
            f"<= {CPU_RATIO_GOAL:g}x",
            f"{comparison.cpu_ratio:.2f}x ({full.cpu_us_per_call:.0f} vs "
            f"{bare.cpu_us_per_call:.0f} us/call)",
            comparison.cpu_ratio <= CPU_RATIO_GOAL,
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rpc_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each server")
    parser.add_argument("--list", action="store_true", help="call ListActions instead")
    parser.add_argument(
        "--set",
        metavar="KUBERNAUT_X=VALUE",
        action="append",
        default=[],
        help="a setting for the servers, to compare (e.g. KUBERNAUT_LOG_LEVEL=WARNING)",
    )
    parser.add_argument("--profile", metavar="DIR", default=None)
    # The server processes of a run.
    parser.add_argument("--serve", choices=("bare", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_child(args.serve, Path(args.certs), args.port, args.profile_out)
        return 0
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    call, rpc = (list_actions, "ListActions") if args.list else (describe_action, "DescribeAction")
    comparison = asyncio.run(compare(args.calls, args.concurrency, args.rounds, call, profile_dir))
    report(comparison, rpc, args.calls, args.concurrency)
    if profile_dir is not None:
        print()
        print("where the full server's time goes (cProfile, own time; the profiler slows it):")
        for line in profile_lines(profile_dir / "full.pstats"):
            print(line)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
