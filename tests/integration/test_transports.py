"""Transport modes: mTLS negotiates TLS 1.3; `mesh` trusts the sidecar's
x-forwarded-client-cert; `insecure` is explicit and warns."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.identity import XFCC_HEADER
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import RunningService, start_service
from kubernaut.runtime.settings import RuntimeSettings, Transport
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration


def _negotiated_version(port: int, certs: Path) -> str | None:
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(certs / "operator.crt", certs / "operator.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        return tls.version()


async def test_mtls_negotiates_tls_1_3(stack: InProcessStack, pki: Path) -> None:
    port = stack.services[ServiceName.EXECUTOR].port
    assert await asyncio.to_thread(_negotiated_version, port, pki) == "TLSv1.3"


@pytest.fixture
async def mesh_executor(runtime_settings: RuntimeSettings) -> AsyncIterator[RunningService]:
    settings = runtime_settings.model_copy(update={"transport": Transport.MESH})
    running = await start_service(ServiceName.EXECUTOR, settings, serve_metrics=False)
    yield running
    await running.shutdown()


def _xfcc(account: str, trust_domain: str = "cluster.local") -> str:
    return (
        f'By=spiffe://cluster.local/ns/kubernaut/sa/executor;Hash=abc;Subject="";'
        f"URI=spiffe://{trust_domain}/ns/kubernaut/sa/{account}"
    )


# A call the table grants the workflow (and nobody else but operators).
DESCRIBE = executor_pb2.DescribeActionRequest(name="restart_deployment")


async def _describe_action(address: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await ExecutorServiceStub(channel).DescribeAction(
                DESCRIBE, metadata=metadata, timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_mesh_mode_takes_the_caller_from_the_sidecar_header(
    mesh_executor: RunningService,
) -> None:
    address = mesh_executor.address
    assert await _describe_action(address, [(XFCC_HEADER, _xfcc("workflow"))]) is grpc.StatusCode.OK
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await _describe_action(address, [(XFCC_HEADER, _xfcc("gateway"))]) is denied
    assert await _describe_action(address, [(XFCC_HEADER, _xfcc("workflow", "evil.org"))]) is denied
    assert await _describe_action(address, []) is denied
    # Kubelet probes come without an identity and may still ask for health.
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )


async def test_insecure_mode_warns_and_still_applies_the_call_table(
    runtime_settings: RuntimeSettings,
) -> None:
    settings = runtime_settings.model_copy(update={"transport": Transport.INSECURE})
    with pytest.warns(UserWarning, match="insecure"):
        running = await start_service(ServiceName.EXECUTOR, settings, serve_metrics=False)
    try:
        addresses = {ServiceName.EXECUTOR: running.address}
        for account, expected in (
            ("workflow", grpc.StatusCode.OK),
            ("gateway", grpc.StatusCode.PERMISSION_DENIED),
        ):
            clients = Clients(settings, account, addresses=addresses)
            try:
                await clients.stub(ExecutorServiceStub).DescribeAction(DESCRIBE)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            finally:
                await clients.close()
            assert code is expected, account
    finally:
        await running.shutdown()
