"""Services as real `kubernaut serve` processes: graceful SIGTERM, one trace id across a
chain of three services in their logs, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.effectiveness.v1.effectiveness_pb2_grpc import EffectivenessServiceStub
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.notification.v1 import notification_pb2
from kubernaut.notification.v1.notification_pb2_grpc import NotificationServiceStub

from kubernaut.devstack.processes import free_port
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import Fleet, wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.kubernaut import subprocess_env

pytestmark = pytest.mark.integration


@dataclass
class Processes:
    fleet: Fleet
    clients: Clients
    ports: dict[ServiceName, int]
    metrics_ports: dict[ServiceName, int]

    def log_lines(self, service: ServiceName) -> list[dict[str, object]]:
        lines = (self.fleet.log_dir / f"{service.value}.log").read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
async def processes(
    request: pytest.FixtureRequest, pki: Path, tmp_path: Path, database_dsn: str
) -> AsyncIterator[Processes]:
    """Starts the services named by the test's `services` marker, each on free ports."""
    marker = request.node.get_closest_marker("services")
    names: list[ServiceName] = marker.args[0]
    extra_env: dict[str, str] = {
        "KUBERNAUT_DATABASE_URL": database_dsn,
        **marker.kwargs.get("env", {}),
    }
    ports = {name: free_port() for name in names}
    metrics_ports = {name: free_port() for name in names}
    fleet = Fleet(tmp_path / "logs", env=subprocess_env(tmp_path, pki, ports, **extra_env))
    for name in names:
        fleet.start_service(
            name,
            env={
                "KUBERNAUT_GRPC_PORT": str(ports[name]),
                "KUBERNAUT_METRICS_PORT": str(metrics_ports[name]),
            },
        )
    settings = RuntimeSettings(certs_dir=pki, state_dir=tmp_path)
    clients = Clients(settings, addresses={n: f"localhost:{p}" for n, p in ports.items()})
    try:
        statuses = await wait_serving(clients, names, timeout=60, fleet=fleet)
        assert all(s == "SERVING" for s in statuses.values()), (statuses, fleet.exited())
        yield Processes(fleet, clients, ports, metrics_ports)
    finally:
        await clients.close()
        fleet.stop()


class SlowMail:
    """An SMTP server that takes `delay` seconds to accept each message."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.receiving = threading.Event()
        self.received: list[bytes | str | None] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.receiving.set()
        await asyncio.sleep(self.delay)
        self.received.append(envelope.content)
        return "250 OK"


SLOW_MAIL_PORT = free_port()


@pytest.mark.services(
    [ServiceName.NOTIFICATION],
    env={
        "KUBERNAUT_NOTIFICATION_SMTP_HOST": "127.0.0.1",
        "KUBERNAUT_NOTIFICATION_SMTP_PORT": str(SLOW_MAIL_PORT),
        "KUBERNAUT_NOTIFICATION_EMAIL_TO": "sre@example.com",
    },
)
async def test_sigterm_lets_the_slow_call_finish_then_exits_zero(processes: Processes) -> None:
    handler = SlowMail(delay=3.0)
    controller = Controller(
        handler, hostname="127.0.0.1", port=SLOW_MAIL_PORT, server_hostname="sink"
    )
    controller.start()
    try:
        channel = processes.clients.channel(ServiceName.NOTIFICATION)
        call = asyncio.ensure_future(
            NotificationServiceStub(channel).SendNotification(
                notification_pb2.SendNotificationRequest(subject="slow", body="a slow server"),
                timeout=30,
            )
        )
        assert await asyncio.to_thread(handler.receiving.wait, 10), "the call never reached SMTP"
        process = processes.fleet.processes[ServiceName.NOTIFICATION.value].popen
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)

        # During the drain pause health says NOT_SERVING while the call is still running.
        seen = set()
        health = health_pb2_grpc.HealthStub(channel)
        while not call.done() and time.monotonic() - sent_at < 5:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                seen.add(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            except grpc.aio.AioRpcError:
                break  # the server stopped taking new calls: the drain is over
            await asyncio.sleep(0.05)
        assert "NOT_SERVING" in seen

        reply = await call
        assert [r.delivered for r in reply.results] == [True]
        assert len(handler.received) == 1

        code = await asyncio.to_thread(process.wait, 15)
        assert code == 0
        # 1 s drain + the rest of the 3 s call, well within the 10 s grace period.
        assert time.monotonic() - sent_at < 10
    finally:
        controller.stop()


@pytest.mark.services([ServiceName.EFFECTIVENESS, ServiceName.INTELLIGENCE, ServiceName.STORAGE])
async def test_one_trace_id_across_three_services_in_their_logs(processes: Processes) -> None:
    stub = processes.clients.stub(EffectivenessServiceStub)
    reply = await stub.GetActionEffectiveness(
        effectiveness_pb2.GetActionEffectivenessRequest(alert_name="KubePodCrashLooping"),
        metadata=[("x-request-id", "trace-test-1")],
    )
    assert reply.alert_name == "KubePodCrashLooping"
    processes.fleet.stop()  # flush and close the logs

    def rpc_line(service: ServiceName, method: str) -> dict[str, object]:
        lines = [
            line
            for line in processes.log_lines(service)
            if line.get("message") == "rpc" and str(line.get("rpc", "")).endswith(f"/{method}")
        ]
        assert len(lines) == 1, (service, lines)
        return lines[0]

    hops = [
        rpc_line(ServiceName.EFFECTIVENESS, "GetActionEffectiveness"),
        rpc_line(ServiceName.INTELLIGENCE, "GetActionStats"),
        rpc_line(ServiceName.STORAGE, "ListActionRecords"),
    ]
    trace_ids = {hop.get("trace_id") for hop in hops}
    assert len(trace_ids) == 1 and None not in trace_ids, hops
    # The request id travels too, so one grep finds the request in every log.
    assert {hop.get("request_id") for hop in hops} == {"trace-test-1"}
    # Each hop is its own span.
    assert len({hop.get("span_id") for hop in hops}) == 3


@pytest.mark.services([ServiceName.EXECUTOR])
async def test_rpcs_are_counted_on_the_metrics_port(processes: Processes) -> None:
    stub = processes.clients.stub(ExecutorServiceStub)
    await stub.ListActions(executor_pb2.ListActionsRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.DescribeAction(executor_pb2.DescribeActionRequest(name="no_such_action"))
    port = processes.metrics_ports[ServiceName.EXECUTOR]
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    service = 'grpc_service="kubernaut.executor.v1.ExecutorService"'
    expected = [
        f'grpc_server_handled_total{{grpc_code="OK",grpc_method="ListActions",{service}}} 1.0',
        f'grpc_server_handled_total{{grpc_code="NOT_FOUND",'
        f'grpc_method="DescribeAction",{service}}} 1.0',
        f'grpc_server_handling_seconds_count{{grpc_method="ListActions",{service}}} 1.0',
    ]
    for line in expected:
        assert line in text.splitlines(), line
