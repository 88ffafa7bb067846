"""The HTTP edge in front of the real gateway (and everything behind it)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.devstack.processes import free_port
from kubernaut.edge.app import ALERTMANAGER_PATH, GRAFANA_PATH, create_app
from kubernaut.edge.security import Authenticator
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import EDGE_ACCOUNT, ServiceName
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually

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


async def _incident_of(stack: InProcessStack, deployment: str) -> storage_pb2.Incident | None:
    clients = stack.clients()
    try:
        listed = await clients.stub(StorageServiceStub).ListIncidents(
            storage_pb2.ListIncidentsRequest(page_size=1000)
        )
    finally:
        await clients.close()
    found = [i for i in listed.incidents if i.subject.name == deployment]
    return found[0] if found else None


async def test_a_firing_alert_is_accepted_then_analysed(
    edge: httpx.AsyncClient, stack: InProcessStack
) -> None:
    # A deployment no other test alerts on: its first alert opens the incident.
    response = await edge.post(ALERTMANAGER_PATH, json=webhook(deployment="payments"))
    assert response.status_code == 200, response.text
    (outcome,) = response.json()["outcomes"]
    # The answer comes once the alert is durably accepted, before the analysis.
    assert outcome["disposition"] == "ALERT_DISPOSITION_ACCEPTED"
    assert len(outcome["fingerprint"]) == 32
    assert "analysis" not in outcome

    async def workflow() -> workflow_pb2.Workflow | None:
        incident = await _incident_of(stack, "payments")
        if incident is None:
            return None
        clients = stack.clients()
        try:
            found = await clients.stub(WorkflowServiceStub).GetWorkflow(
                workflow_pb2.GetWorkflowRequest(incident_id=incident.incident_id)
            )
        except grpc.aio.AioRpcError:
            return None
        finally:
            await clients.close()
        workflow: workflow_pb2.Workflow = found.workflow
        return workflow

    found = await eventually(workflow, "the incident's workflow", 30)
    assert found.plan.action == "rollback_deployment"


async def test_a_resolved_alert_of_nothing_firing_is_never_work(edge: httpx.AsyncClient) -> None:
    response = await edge.post(ALERTMANAGER_PATH, json=webhook("resolved", deployment="gone"))
    assert response.status_code == 200
    (outcome,) = response.json()["outcomes"]
    assert outcome["disposition"] == "ALERT_DISPOSITION_IGNORED_RESOLVED"
    assert "nothing of it fires" in outcome["reason"]


async def test_the_same_problem_is_a_duplicate_counted_on_its_incident(
    edge: httpx.AsyncClient, stack: InProcessStack
) -> None:
    first = (await edge.post(ALERTMANAGER_PATH, json=webhook(deployment="basket"))).json()
    assert first["outcomes"][0]["disposition"] == "ALERT_DISPOSITION_ACCEPTED"
    # A different instance label on the same deployment is the same problem.
    second = (
        await edge.post(
            ALERTMANAGER_PATH, json=webhook(deployment="basket", instance="10.0.0.9:8080")
        )
    ).json()["outcomes"][0]
    assert second["fingerprint"] == first["outcomes"][0]["fingerprint"]
    assert second["disposition"] == "ALERT_DISPOSITION_DUPLICATE"
    other = (await edge.post(ALERTMANAGER_PATH, json=webhook(deployment="cart"))).json()
    assert other["outcomes"][0]["fingerprint"] != first["outcomes"][0]["fingerprint"]

    # The duplicate is counted on the incident the first one opened.
    async def counted() -> storage_pb2.Incident | None:
        incident = await _incident_of(stack, "basket")
        return incident if incident is not None and incident.occurrences == 2 else None

    await eventually(counted, "the duplicate counted on the incident", 30)


async def test_a_grafana_webhook_is_accepted(edge: httpx.AsyncClient) -> None:
    body = webhook(deployment="grafana-fed")
    body["version"] = "1"
    body["alerts"][0]["dashboardURL"] = "https://grafana.example/d/abc"
    response = await edge.post(GRAFANA_PATH, json=body)
    assert response.status_code == 200, response.text
    (outcome,) = response.json()["outcomes"]
    assert outcome["disposition"] == "ALERT_DISPOSITION_ACCEPTED"
    # A Grafana body is not an AlertManager one.
    refused = await edge.post(ALERTMANAGER_PATH, json=body)
    assert refused.status_code == 400


async def test_a_stale_alert_is_refused_saying_why(edge: httpx.AsyncClient) -> None:
    body = webhook(deployment="ancient")
    body["alerts"][0]["startsAt"] = "2020-01-01T00:00:00Z"
    (outcome,) = (await edge.post(ALERTMANAGER_PATH, json=body)).json()["outcomes"]
    assert outcome["disposition"] == "ALERT_DISPOSITION_REFUSED"
    assert outcome["reason"].startswith("stale: started")
    future = webhook(deployment="tomorrow")
    future["alerts"][0]["startsAt"] = (
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2)
    ).isoformat()
    (outcome,) = (await edge.post(ALERTMANAGER_PATH, json=future)).json()["outcomes"]
    assert outcome["disposition"] == "ALERT_DISPOSITION_REFUSED"
    assert outcome["reason"].startswith("from the future")


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
    assert response.headers["Retry-After"] == "1"
    assert "UNAVAILABLE" in response.json()["error"]
    await clients.close()
