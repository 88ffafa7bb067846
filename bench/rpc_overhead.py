"""What the shared runtime costs per RPC: the executor's ListActions through the full
stack (mTLS, OpenTelemetry, authorization, validation, metrics, logs) against the same
servicer on a bare grpc.aio server with the same mTLS, in one run.

    .venv/bin/python bench/rpc_overhead.py [--calls 2000] [--concurrency 8]

Prints calls/s and latency percentiles of both and their ratio. Compare ratios, not
absolute numbers: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from kubernaut.executor.v1 import executor_pb2, executor_pb2_grpc

from kubernaut.runtime.certs import init_dev_pki
from kubernaut.runtime.clients import Clients, channel_credentials
from kubernaut.runtime.names import OPERATOR_ACCOUNT, ServiceName, all_accounts
from kubernaut.runtime.server import server_credentials, start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.executor.server import ExecutorServicer


async def measure(
    stub: executor_pb2_grpc.ExecutorServiceStub, calls: int, concurrency: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            await stub.ListActions(executor_pb2.ListActionsRequest())
            latencies.append(time.perf_counter() - started)

    for _ in range(50):  # warm up connections and caches
        await stub.ListActions(executor_pb2.ListActionsRequest())
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started), latencies


def describe(name: str, rate: float, latencies: list[float]) -> str:
    quantiles = statistics.quantiles(latencies, n=100)
    p50, p99 = quantiles[49] * 1000, quantiles[98] * 1000
    return f"{name:<14} {rate:9.0f} calls/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"


async def main(calls: int, concurrency: int) -> None:
    logging.disable(logging.INFO)  # the per-RPC log line goes to stderr; measure, not print
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        init_dev_pki(certs, all_accounts(), trust_domain="cluster.local", namespace="kubernaut")
        settings = RuntimeSettings(certs_dir=certs, state_dir=certs, grpc_port=0, metrics_port=0)

        full = await start_service(ServiceName.EXECUTOR, settings, serve_metrics=False)
        # An operator (grpcurl, the CLI) lists the catalogue; services describe one action.
        clients = Clients(
            settings, OPERATOR_ACCOUNT, addresses={ServiceName.EXECUTOR: full.address}
        )
        full_rate, full_latencies = await measure(
            clients.stub(executor_pb2_grpc.ExecutorServiceStub), calls, concurrency
        )
        await clients.close()
        await full.shutdown()

        bare = grpc.aio.server()
        executor_pb2_grpc.add_ExecutorServiceServicer_to_server(ExecutorServicer(), bare)
        port = bare.add_secure_port(
            "127.0.0.1:0", server_credentials(settings, ServiceName.EXECUTOR)
        )
        await bare.start()
        channel = grpc.aio.secure_channel(
            f"localhost:{port}", channel_credentials(settings, OPERATOR_ACCOUNT)
        )
        bare_rate, bare_latencies = await measure(
            executor_pb2_grpc.ExecutorServiceStub(channel), calls, concurrency
        )
        await channel.close()
        await bare.stop(0)

    print(f"ListActions, {calls} calls, {concurrency} concurrent, mTLS on both")
    print(describe("bare grpc.aio", bare_rate, bare_latencies))
    print(describe("kubernaut", full_rate, full_latencies))
    print(f"throughput ratio kubernaut/bare: {full_rate / bare_rate:.2f}")
    p50_ratio = statistics.median(full_latencies) / statistics.median(bare_latencies)
    print(f"p50 latency ratio kubernaut/bare: {p50_ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency))
