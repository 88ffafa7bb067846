"""The edge speaks TLS by itself when given a certificate and key (installs with neither a
mesh nor an ingress): senders that trust the CA deliver webhooks over https; plain http,
and clients that do not trust the CA, get nowhere; a certificate without its key is refused
at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pydantic
import pytest
import uvicorn
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from pydantic import SecretStr

from kubernaut.devstack.processes import free_port
from kubernaut.edge.app import ALERTMANAGER_PATH, create_app
from kubernaut.edge.main import server_config
from kubernaut.edge.security import Authenticator
from kubernaut.edge.settings import EdgeSettings
from kubernaut.runtime.certs import CertPaths
from kubernaut.runtime.names import EDGE_ACCOUNT
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually
from tests.integration.test_http_edge import AUTH, TOKEN, webhook

pytestmark = pytest.mark.integration


@pytest.fixture
async def tls_edge(stack: InProcessStack) -> AsyncIterator[tuple[int, CertPaths]]:
    certs = CertPaths(stack.settings.resolved_certs_dir, EDGE_ACCOUNT)
    edge = EdgeSettings(
        port=free_port(),
        tls_cert_file=certs.cert,
        tls_key_file=certs.key,
        tokens=(SecretStr(TOKEN),),
    )
    clients = stack.clients(EDGE_ACCOUNT)
    app = create_app(clients.stub(GatewayServiceStub).SubmitAlerts, Authenticator.of([TOKEN]))
    server = uvicorn.Server(server_config(app, edge))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: asyncio.sleep(0, server.started), "the edge to listen", 10)
        yield edge.port, certs
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        await clients.close()


async def test_webhooks_arrive_over_tls_and_nothing_arrives_in_the_clear(
    tls_edge: tuple[int, CertPaths],
) -> None:
    port, certs = tls_edge
    trusting = ssl.create_default_context(cafile=str(certs.ca))
    async with httpx.AsyncClient(verify=trusting) as client:
        reply = await client.post(
            f"https://127.0.0.1:{port}{ALERTMANAGER_PATH}",
            json=webhook(namespace="tls-edge"),
            headers=AUTH,
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["outcomes"][0]["disposition"] == "ALERT_DISPOSITION_ACCEPTED"
    # Plain http to the TLS port is not a webhook.
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.HTTPError):
            await client.post(f"http://127.0.0.1:{port}{ALERTMANAGER_PATH}", json=webhook())
    # A sender that does not trust Kubernaut's CA does not talk to it.
    async with httpx.AsyncClient(verify=ssl.create_default_context()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"https://127.0.0.1:{port}{ALERTMANAGER_PATH}", json=webhook())


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="go together"):
        EdgeSettings(tls_cert_file=Path("/etc/edge/tls.crt"), tokens=(SecretStr(TOKEN),))
