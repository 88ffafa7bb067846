"""The history intelligence reads from storage: incidents filtered by alert name, subject,
status and time, and the embeddings of incidents; the Store against a real PostgreSQL,
then the same over gRPC with the call table's rules."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import RunningService, start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.storage.embeddings import describe_incident
from kubernaut.services.storage.history_queries import EmbeddingQuery, IncidentQuery
from kubernaut.services.storage.store import InvalidPageToken, Store
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.intelligence_history import WordsEmbedder

pytestmark = pytest.mark.integration

REMEDIATED = storage_pb2.INCIDENT_STATUS_REMEDIATED


class FailingEmbedder:
    name = "failing"
    dimensions = 384

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise RuntimeError("the model is down")


def alert(name: str) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": name, "severity": "warning"},
        annotations={"summary": f"{name} fired"},
    )


def subject(name: str, namespace: str = "shop") -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name=name)


@pytest_asyncio.fixture
async def words_store(database_dsn: str) -> AsyncIterator[Store]:
    opened = await Store.connect(database_dsn, embedder=WordsEmbedder())
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.close()


async def open_incident(store: Store, alert_name: str, on: alert_pb2.ResourceRef) -> str:
    incident, created = await store.open_incident(f"fp-{uuid.uuid4().hex}", alert(alert_name), on)
    assert created
    return incident.incident_id


def ids(incidents: Sequence[storage_pb2.Incident | storage_pb2.IncidentEmbedding]) -> list[str]:
    return [i.incident_id for i in incidents]


async def seed(store: Store, dsn: str) -> dict[str, str]:
    """Five incidents, oldest first: a (A on web, remediated), b (A on api), c (B on web),
    d (A on web), and e (A on web) whose embedding failed."""
    made = {
        "a": await open_incident(store, "A", subject("web")),
        "b": await open_incident(store, "A", subject("api")),
        "c": await open_incident(store, "B", subject("web")),
        "d": await open_incident(store, "A", subject("web")),
    }
    await store.update_incident(made["a"], REMEDIATED, "fixed")
    failing = await Store.connect(dsn, embedder=FailingEmbedder())
    try:
        made["e"] = await open_incident(failing, "A", subject("web"))
    finally:
        await failing.close()
    return made


async def test_incidents_are_listed_by_alert_subject_status_and_time(
    words_store: Store, database_dsn: str
) -> None:
    made = await seed(words_store, database_dsn)
    a, b, c, d, e = (made[k] for k in "abcde")
    web = ("", "shop", "Deployment", "web")

    async def listed(query: IncidentQuery, page_size: int = 0) -> list[str]:
        incidents, token = await words_store.list_incidents_matching(query, page_size, "")
        assert token == ""
        return ids(incidents)

    assert await listed(IncidentQuery(alert_name="A")) == [e, d, b, a]
    assert await listed(IncidentQuery(subject=web)) == [e, d, c, a]
    assert await listed(IncidentQuery(alert_name="A", subject=web)) == [e, d, a]
    assert await listed(IncidentQuery(status="INCIDENT_STATUS_REMEDIATED", alert_name="A")) == [a]
    [incident_c] = (
        await words_store.list_incidents_matching(IncidentQuery(alert_name="B"), 0, "")
    )[0]
    after_c = IncidentQuery(opened_after=incident_c.opened_at.ToDatetime(tzinfo=dt.UTC))
    assert await listed(after_c) == [e, d]
    # An empty workload part is a name too: the default cluster, not any cluster.
    assert await listed(IncidentQuery(subject=("prod", *web[1:]))) == []

    # A page at a time; a token only for the filter it was issued for.
    query = IncidentQuery(alert_name="A")
    first, token = await words_store.list_incidents_matching(query, 3, "")
    assert ids(first) == [e, d, b] and token
    rest, last = await words_store.list_incidents_matching(query, 3, token)
    assert ids(rest) == [a] and last == ""
    with pytest.raises(InvalidPageToken, match="different filter"):
        await words_store.list_incidents_matching(IncidentQuery(alert_name="B"), 3, token)
    with pytest.raises(InvalidPageToken, match="malformed"):
        await words_store.list_incidents_matching(query, 3, "not-a-token")
    # The listing without the new filters keeps its own tokens.
    with pytest.raises(InvalidPageToken):
        await words_store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 3, token)


async def test_embeddings_are_listed_newest_first_without_the_unembedded(
    words_store: Store, database_dsn: str
) -> None:
    made = await seed(words_store, database_dsn)
    embeddings, token = await words_store.list_incident_embeddings(EmbeddingQuery(), 0, "")
    assert token == ""
    # e's embedding failed: it has none to list.
    assert ids(embeddings) == [made[k] for k in "dcba"]
    d = embeddings[0]
    assert d.embedding_model == "test-words-384"
    assert d.alert_name == "A" and d.subject == subject("web")
    assert d.status == storage_pb2.INCIDENT_STATUS_OPEN
    assert embeddings[-1].status == REMEDIATED
    [expected] = WordsEmbedder().embed([describe_incident(alert("A"), subject("web"))])
    assert list(d.vector) == pytest.approx(expected, abs=1e-6)
    assert embeddings[0].opened_at.ToNanoseconds() > embeddings[1].opened_at.ToNanoseconds()

    assert await words_store.list_incident_embeddings(EmbeddingQuery("other-model"), 0, "") == (
        [],
        "",
    )
    after = EmbeddingQuery(opened_after=embeddings[1].opened_at.ToDatetime(tzinfo=dt.UTC))
    assert ids((await words_store.list_incident_embeddings(after, 0, ""))[0]) == [made["d"]]
    page, token = await words_store.list_incident_embeddings(EmbeddingQuery(), 2, "")
    assert ids(page) == [made["d"], made["c"]] and token
    page, token = await words_store.list_incident_embeddings(EmbeddingQuery(), 2, token)
    assert ids(page) == [made["b"], made["a"]] and token == ""
    with pytest.raises(InvalidPageToken):
        await words_store.list_incident_embeddings(EmbeddingQuery("x"), 2, "AQ" * 20)


@pytest_asyncio.fixture
async def storage_service(
    database_dsn: str, runtime_settings: RuntimeSettings
) -> AsyncIterator[RunningService]:
    """storage alone, on its own database (a test's history, nobody else's)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBERNAUT_DATABASE_URL", database_dsn)
        running = await start_service(ServiceName.STORAGE, runtime_settings, serve_metrics=False)
    try:
        clients = Clients(runtime_settings, addresses={ServiceName.STORAGE: running.address})
        statuses = await wait_serving(clients, [ServiceName.STORAGE], timeout=30)
        await clients.close()
        assert statuses[ServiceName.STORAGE] == "SERVING", statuses
        yield running
    finally:
        await running.shutdown()


def stamp(incident: storage_pb2.Incident) -> Timestamp:
    return incident.opened_at


async def test_the_history_over_grpc_for_intelligence_and_nobody_else(
    words_store: Store,
    database_dsn: str,
    storage_service: RunningService,
    runtime_settings: RuntimeSettings,
) -> None:
    made = await seed(words_store, database_dsn)
    addresses = {ServiceName.STORAGE: storage_service.address}
    intelligence = Clients(runtime_settings, ServiceName.INTELLIGENCE.account, addresses=addresses)
    gateway = Clients(runtime_settings, ServiceName.GATEWAY.account, addresses=addresses)
    try:
        storage = intelligence.stub(StorageServiceStub)
        reply = await storage.ListIncidents(
            storage_pb2.ListIncidentsRequest(alert_name="A", subject=subject("web"), page_size=2)
        )
        assert ids(reply.incidents) == [made["e"], made["d"]] and reply.next_page_token
        rest = await storage.ListIncidents(
            storage_pb2.ListIncidentsRequest(
                alert_name="A", subject=subject("web"), page_token=reply.next_page_token
            )
        )
        assert ids(rest.incidents) == [made["a"]]
        after_b = await storage.ListIncidents(storage_pb2.ListIncidentsRequest(page_size=1000))
        by_id = {i.incident_id: i for i in after_b.incidents}
        newer = await storage.ListIncidents(
            storage_pb2.ListIncidentsRequest(opened_after=stamp(by_id[made["b"]]))
        )
        assert ids(newer.incidents) == [made[k] for k in "edc"]
        remediated = await storage.ListIncidents(
            storage_pb2.ListIncidentsRequest(status=REMEDIATED, alert_name="A")
        )
        assert ids(remediated.incidents) == [made["a"]]

        embeddings = await storage.ListIncidentEmbeddings(
            storage_pb2.ListIncidentEmbeddingsRequest(opened_after=stamp(by_id[made["b"]]))
        )
        assert ids(embeddings.embeddings) == [made["d"], made["c"]]
        assert all(len(e.vector) == 384 for e in embeddings.embeddings)

        # A page token of another filter, a time protobuf cannot hold, a page too large.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.ListIncidents(
                storage_pb2.ListIncidentsRequest(alert_name="B", page_token=reply.next_page_token)
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in field_violations(caught.value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.ListIncidentEmbeddings(
                storage_pb2.ListIncidentEmbeddingsRequest(opened_after=Timestamp(seconds=10**13))
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "opened_after" in field_violations(caught.value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.ListIncidentEmbeddings(
                storage_pb2.ListIncidentEmbeddingsRequest(page_size=1001)
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        # The call table: intelligence reads the history; the gateway does not.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub(StorageServiceStub).ListIncidentEmbeddings(
                storage_pb2.ListIncidentEmbeddingsRequest()
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        await intelligence.close()
        await gateway.close()
