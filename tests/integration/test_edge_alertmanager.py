"""The real AlertManager, re-sending every few seconds, delivering to the edge (a real
uvicorn server) in front of the real gateway: one incident per fingerprint, every repeat
counted on it, none forwarded again."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from prometheus_client import REGISTRY

from kubernaut.devstack.monitoring import Alertmanager
from kubernaut.edge.app import ALERTMANAGER_PATH
from tests.fixtures.edge import served_edge
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKEN = "alertmanager-edge-token"


@pytest.fixture
async def edge_url(stack: InProcessStack) -> AsyncIterator[str]:
    """The edge served by uvicorn on loopback, as in production."""
    async with served_edge(stack, TOKEN) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def alertmanager(edge_url: str, tmp_path: Path) -> AsyncIterator[Alertmanager]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    server = Alertmanager(
        tmp_path / "alertmanager",
        edge_url + ALERTMANAGER_PATH,
        group_wait="1s",
        group_interval="1s",
        repeat_interval="2s",
        # One notification per alert: each delivery is one alert.
        group_by=("...",),
        bearer_token_file=token_file,
    )
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def delivered() -> float:
    return (
        REGISTRY.get_sample_value(
            "kubernaut_edge_requests_total", {"route": ALERTMANAGER_PATH, "result": "ok"}
        )
        or 0.0
    )


async def test_repeated_deliveries_make_one_incident_per_fingerprint_counting_repeats(
    stack: InProcessStack, alertmanager: Alertmanager
) -> None:
    namespace = f"am-{uuid.uuid4().hex[:6]}"
    before = delivered()
    started = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    alerts = [
        {
            "labels": {
                "alertname": "KubeDeploymentRolloutStuck",
                "namespace": namespace,
                "deployment": name,
                "severity": "warning",
            },
            "annotations": {"summary": f"{name} is stuck"},
            "startsAt": started,
        }
        for name in ("web", "api", "worker")
    ]
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.post(f"{alertmanager.url}/api/v2/alerts", json=alerts)
        response.raise_for_status()

    operator = stack.clients()
    try:

        async def incidents() -> list[storage_pb2.Incident]:
            listed = await operator.stub(StorageServiceStub).ListIncidents(
                storage_pb2.ListIncidentsRequest(page_size=1000)
            )
            return [i for i in listed.incidents if i.subject.namespace == namespace]

        async def counted() -> list[storage_pb2.Incident] | None:
            found = await incidents()
            return found if len(found) == 3 and all(i.occurrences >= 3 for i in found) else None

        # AlertManager re-sends each alert every couple of seconds.
        found = await eventually(counted, "three incidents, each counted 3 times", 60)
        assert sorted(i.subject.name for i in found) == ["api", "web", "worker"]
        assert delivered() - before >= 9
        counts = {i.incident_id: i.occurrences for i in found}

        async def counted_again() -> list[storage_pb2.Incident] | None:
            found = await incidents()
            now = {i.incident_id: i.occurrences for i in found}
            return found if all(now.get(key, 0) > n for key, n in counts.items()) else None

        # Still three once every alert was re-sent again and counted on its incident (no
        # pause that may or may not see a repeat): no repeat opened a second incident.
        again = await eventually(counted_again, "each incident counted once more", 60)
        assert {i.incident_id for i in again} == set(counts)
    finally:
        await operator.close()
