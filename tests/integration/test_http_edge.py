"""The HTTP edge in front of the real gateway (and everything behind it)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub

from gateway_http.app import ALERTMANAGER_PATH, create_app
from gateway_http.security import Authenticator
from services.runtime.clients import Clients
from services.runtime.names import EDGE_ACCOUNT, ServiceName
from tests.fixtures.kubernaut import InProcessStack, free_port

pytestmark = pytest.mark.integration

TOKEN = "edge-test-token"
AUTHENTICATOR = Authenticator.of([TOKEN])
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def webhook(status: str = "firing", **label_overrides: str) -> dict[str, Any]:
    labels = {
        "alertname": "KubeDeploymentRolloutStuck",
        "namespace": "shop",
        "deployment": "checkout",
        "severity": "warning",
        **label_overrides,
    }
    now = datetime.datetime.now(datetime.UTC).isoformat()
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "status": status,
        "receiver": "kubernaut",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "rollout stuck"},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "abc123",
            }
        ],
    }


@pytest.fixture
async def edge(stack: InProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    clients = stack.clients(EDGE_ACCOUNT)
    app = create_app(clients.stub(GatewayServiceStub).SubmitAlerts, AUTHENTICATOR)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://edge", headers=AUTH
    ) as client:
        yield client
    await clients.close()


async def test_a_firing_alert_is_analysed(edge: httpx.AsyncClient) -> None:
    # A deployment no other test alerts on: its first alert opens the incident.
    response = await edge.post(ALERTMANAGER_PATH, json=webhook(deployment="payments"))
    assert response.status_code == 200, response.text
    (outcome,) = response.json()["outcomes"]
    assert outcome["disposition"] == "ALERT_DISPOSITION_ANALYZED"
    assert outcome["analysis"]["decision"] == "DECISION_REMEDIATE"
    assert "rollback_deployment" in outcome["analysis"]["recommendation"]["action"]
    assert len(outcome["fingerprint"]) == 32


async def test_a_resolved_alert_is_never_work(edge: httpx.AsyncClient) -> None:
    response = await edge.post(ALERTMANAGER_PATH, json=webhook("resolved"))
    assert response.status_code == 200
    (outcome,) = response.json()["outcomes"]
    assert outcome["disposition"] == "ALERT_DISPOSITION_IGNORED_RESOLVED"
    assert "analysis" not in outcome


async def test_the_same_problem_gets_the_same_fingerprint(edge: httpx.AsyncClient) -> None:
    first = (await edge.post(ALERTMANAGER_PATH, json=webhook())).json()["outcomes"][0]
    # A different pod label on the same deployment is the same problem.
    second = (await edge.post(ALERTMANAGER_PATH, json=webhook(instance="10.0.0.9:8080"))).json()
    assert second["outcomes"][0]["fingerprint"] == first["fingerprint"]
    other = (await edge.post(ALERTMANAGER_PATH, json=webhook(deployment="cart"))).json()
    assert other["outcomes"][0]["fingerprint"] != first["fingerprint"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": "3", "status": "firing", "alerts": []}, "version"),
        ({"version": "4", "status": "firing", "alerts": []}, "alerts"),
        (
            {**webhook(), "alerts": [{**webhook()["alerts"][0], "startsAt": "yesterday"}]},
            "alerts.0.startsAt",
        ),
    ],
)
async def test_a_malformed_webhook_is_a_400_naming_the_problem(
    edge: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await edge.post(ALERTMANAGER_PATH, json=body)
    assert response.status_code == 400
    assert field in {v["field"] for v in response.json()["violations"]}


async def test_an_alert_without_alertname_is_a_400(edge: httpx.AsyncClient) -> None:
    body = webhook()
    del body["alerts"][0]["labels"]["alertname"]
    response = await edge.post(ALERTMANAGER_PATH, json=body)
    assert response.status_code == 400
    assert response.json()["violations"][0]["field"] == "alerts[0].labels.alertname"


async def test_gateway_validation_comes_back_as_a_400_with_its_fields(
    edge: httpx.AsyncClient,
) -> None:
    response = await edge.post(ALERTMANAGER_PATH, json=webhook(**{"": "empty label name"}))
    assert response.status_code == 400
    fields = {v["field"] for v in response.json()["violations"]}
    assert any(f.startswith("alerts[0].labels") for f in fields), fields


async def test_an_unreachable_gateway_is_a_503_so_alertmanager_retries(
    stack: InProcessStack,
) -> None:
    clients = Clients(
        stack.settings, EDGE_ACCOUNT, addresses={ServiceName.GATEWAY: f"localhost:{free_port()}"}
    )
    app = create_app(clients.stub(GatewayServiceStub).SubmitAlerts, AUTHENTICATOR)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge", headers=AUTH
    ) as client:
        response = await client.post(ALERTMANAGER_PATH, json=webhook())
    assert response.status_code == 503
    assert "UNAVAILABLE" in response.json()["error"]
    await clients.close()
