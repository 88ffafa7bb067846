"""Start Kubernaut's processes (`kubernaut up`, the demo, tests) and wait for health."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Fleet:
    """Child processes started by us, stopped by pid (never by name)."""

    log_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def start(
        self, name: str, *cli_args: str, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "kubernaut.cli.main", *cli_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env, **(env or {})},
            )
        process = ManagedProcess(name, popen, log_path)
        self.processes[name] = process
        return process

    def start_service(
        self, service: ServiceName, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        return self.start(service.value, "serve", service.value, env=env)

    def exited(self) -> dict[str, int]:
        return {
            name: code for name, p in self.processes.items() if (code := p.popen.poll()) is not None
        }

    def stop(self, timeout: float = 20.0) -> dict[str, int]:
        """SIGTERM everything, wait, SIGKILL what is left; returns exit codes."""
        for process in self.processes.values():
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                codes[name] = process.popen.wait()
        self.processes.clear()
        return codes


async def health_of(clients: Clients, service: ServiceName, timeout: float = 2.0) -> str:
    """The service's overall health status name, or the error that stopped us asking."""
    stub = health_pb2_grpc.HealthStub(clients.channel(service))
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def wait_serving(
    clients: Clients,
    services: Iterable[ServiceName],
    timeout: float,
    fleet: Fleet | None = None,
) -> dict[ServiceName, str]:
    """Poll until every service says SERVING or the timeout passes; returns the last
    status of each. Stops early when a process of the fleet has exited."""
    pending = list(services)
    statuses: dict[ServiceName, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        results = await asyncio.gather(*(health_of(clients, s) for s in pending))
        statuses.update(zip(pending, results, strict=True))
        pending = [s for s in pending if statuses[s] != "SERVING"]
        if not pending or time.monotonic() > deadline or (fleet and fleet.exited()):
            return statuses
        await asyncio.sleep(0.25)
