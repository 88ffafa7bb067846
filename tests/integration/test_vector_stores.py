"""One interface, three backends: the same tests for each VectorStore. pgvector runs on the
embedded PostgreSQL, Weaviate is the real server built from its Go module, Pinecone is
driven through its own SDK against a loopback server speaking its data-plane API (no
Pinecone server can run here)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from pydantic import SecretStr

from kubernaut.services.storage.vectors import (
    IncidentVector,
    VectorFilter,
    VectorStore,
    VectorStoreError,
    VectorStoreUnavailable,
)
from kubernaut.services.storage.vectors.index import VectorIndex, open_vector_store
from kubernaut.services.storage.vectors.settings import VectorBackend, VectorStoreSettings

BACKENDS = [b.value for b in VectorBackend]
DIMS = 16


def settings_for(
    backend: str, request: pytest.FixtureRequest, dims: int = DIMS
) -> tuple[VectorStoreSettings, str]:
    """Settings reaching a live server of `backend`, and the DSN (for pgvector). A Pinecone
    index has one dimension, `dims`; the others take any."""
    if backend == "pgvector":
        return VectorStoreSettings(store=VectorBackend.PGVECTOR), request.getfixturevalue(
            "database_dsn"
        )
    if backend == "weaviate":
        server = request.getfixturevalue("weaviate_server")
        return (
            VectorStoreSettings(
                store=VectorBackend.WEAVIATE,
                weaviate_url=server.url,
                weaviate_grpc_port=server.grpc_port,
                timeout_seconds=10,
            ),
            "",
        )
    loopback = request.getfixturevalue("pinecone_loopback")
    index = loopback.project.create_index(f"incidents-{dims}", dims)
    return (
        VectorStoreSettings(
            store=VectorBackend.PINECONE,
            pinecone_host=index.host,
            pinecone_api_key=SecretStr(loopback.api_key),
            timeout_seconds=10,
        ),
        "",
    )


@pytest.fixture(params=BACKENDS)
def backend_settings(request: pytest.FixtureRequest) -> tuple[VectorStoreSettings, str]:
    # A plain fixture: async ones (the database) cannot be asked for from an async fixture.
    return settings_for(request.param, request)


@pytest_asyncio.fixture
async def vectors(
    backend_settings: tuple[VectorStoreSettings, str],
) -> AsyncIterator[VectorStore]:
    settings, dsn = backend_settings
    store = await open_vector_store(settings, dsn)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def model() -> str:
    # The Weaviate server lives for the session: a model (collection) of its own per test.
    return f"test-model-{uuid.uuid4().hex[:8]}"


def unit(values: Any) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    return [float(x) for x in array / np.linalg.norm(array)]


def vector(model: str, values: Any, **metadata: Any) -> IncidentVector:
    return IncidentVector(
        incident_id=str(uuid.uuid4()), model=model, vector=unit(values), **metadata
    )


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_search_finds_the_nearest_first_with_cosine_distances(
    vectors: VectorStore, model: str
) -> None:
    rng = np.random.default_rng(7)
    items = [vector(model, rng.normal(size=DIMS)) for _ in range(30)]
    await vectors.upsert(items)
    query = unit(rng.normal(size=DIMS))
    expected = sorted(items, key=lambda i: cosine(query, i.vector))[:5]

    found = await vectors.search(query, VectorFilter(model=model), 5)

    assert [m.incident_id for m in found] == [i.incident_id for i in expected]
    for match, item in zip(found, expected, strict=True):
        assert match.distance == pytest.approx(cosine(query, item.vector), abs=1e-3)
    assert await vectors.count(VectorFilter(model=model)) == 30


async def test_metadata_filters_narrow_the_search(vectors: VectorStore, model: str) -> None:
    near = [1.0] + [0.0] * (DIMS - 1)
    a = vector(model, near, cluster="prod", namespace="shop", subject_kind="Deployment",
               alert_name="KubePodCrashLooping")  # fmt: skip
    b = vector(model, [1.0, 0.1] + [0.0] * (DIMS - 2), cluster="prod", namespace="pay",
               subject_kind="Deployment", alert_name="KubePodNotReady")  # fmt: skip
    c = vector(model, [1.0, 0.3] + [0.0] * (DIMS - 2), cluster="staging", namespace="shop",
               subject_kind="Node", alert_name="KubePodCrashLooping")  # fmt: skip
    other_model = vector(f"{model}-other", near, cluster="prod")
    await vectors.upsert([a, b, c])
    await vectors.upsert([other_model])

    async def ids(**where: Any) -> list[str]:
        found = await vectors.search(near, VectorFilter(model=model, **where), 10)
        return [m.incident_id for m in found]

    assert await ids() == [a.incident_id, b.incident_id, c.incident_id]
    assert await ids(cluster="prod") == [a.incident_id, b.incident_id]
    assert await ids(namespace="shop") == [a.incident_id, c.incident_id]
    assert await ids(subject_kind="Node") == [c.incident_id]
    assert await ids(alert_names=("KubePodNotReady", "KubePodCrashLooping")) == [
        a.incident_id,
        b.incident_id,
        c.incident_id,
    ]
    assert await ids(alert_names=("KubePodNotReady",)) == [b.incident_id]
    assert await ids(cluster="prod", exclude_ids=(a.incident_id,)) == [b.incident_id]
    assert await ids(cluster="nowhere") == []
    assert await vectors.count(VectorFilter(model=model, namespace="shop")) == 2
    assert await vectors.count(VectorFilter(model=f"{model}-other")) == 1


async def test_upsert_replaces_and_delete_forgets(vectors: VectorStore, model: str) -> None:
    first = vector(model, [1.0, 0.0] + [0.0] * (DIMS - 2), namespace="a")
    second = vector(model, [0.0, 1.0] + [0.0] * (DIMS - 2), namespace="a")
    await vectors.upsert([first, second])
    moved = IncidentVector(
        incident_id=first.incident_id, model=model, vector=second.vector, namespace="b"
    )
    await vectors.upsert([moved])

    assert await vectors.count(VectorFilter(model=model)) == 2
    assert await vectors.count(VectorFilter(model=model, namespace="b")) == 1
    [top, _] = await vectors.search(second.vector, VectorFilter(model=model), 2)
    assert top.distance == pytest.approx(0.0, abs=1e-3)

    await vectors.delete([first.incident_id, str(uuid.uuid4())])
    found = await vectors.search(second.vector, VectorFilter(model=model), 10)
    assert [m.incident_id for m in found] == [second.incident_id]
    assert await vectors.count(VectorFilter(model=model)) == 1


async def test_clear_forgets_one_model_only(vectors: VectorStore, model: str) -> None:
    await vectors.upsert([vector(model, np.ones(DIMS)) for _ in range(3)])
    await vectors.upsert([vector(f"{model}-kept", np.ones(DIMS))])

    await vectors.clear(model)

    assert await vectors.count(VectorFilter(model=model)) == 0
    assert await vectors.search(unit(np.ones(DIMS)), VectorFilter(model=model), 5) == []
    assert await vectors.count(VectorFilter(model=f"{model}-kept")) == 1


async def test_a_model_never_stored_has_no_neighbours(vectors: VectorStore, model: str) -> None:
    assert await vectors.search(unit(np.ones(DIMS)), VectorFilter(model=model), 5) == []
    assert await vectors.count(VectorFilter(model=model)) == 0


async def test_bad_requests_are_refused(vectors: VectorStore, model: str) -> None:
    with pytest.raises(VectorStoreError, match="limit"):
        await vectors.search(unit(np.ones(DIMS)), VectorFilter(model=model), 0)
    with pytest.raises(VectorStoreError, match="one dimension"):
        await vectors.upsert([vector(model, np.ones(DIMS)), vector(model, np.ones(DIMS + 1))])
    with pytest.raises(VectorStoreError, match="not a UUID"):
        await vectors.delete(["not-a-uuid"])
    with pytest.raises(VectorStoreError, match="not finite"):
        IncidentVector(incident_id=str(uuid.uuid4()), model=model, vector=[float("nan")] * 3)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_unreachable_backend_is_unavailable(backend: str) -> None:
    from kubernaut.devstack.processes import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    settings = {
        "pgvector": VectorStoreSettings(store=VectorBackend.PGVECTOR, timeout_seconds=1),
        "weaviate": VectorStoreSettings(
            store=VectorBackend.WEAVIATE, weaviate_url=dead, timeout_seconds=1
        ),
        "pinecone": VectorStoreSettings(
            store=VectorBackend.PINECONE,
            pinecone_host=dead,
            pinecone_api_key=SecretStr("k"),
            timeout_seconds=1,
        ),
    }[backend]
    index = VectorIndex(settings, f"postgresql://kubernaut@127.0.0.1:{free_port()}/none")
    with pytest.raises(VectorStoreUnavailable):
        await index.store()
    # Then fails fast until it is time to try again.
    with pytest.raises(VectorStoreUnavailable):
        await index.store()
    await index.close()


# -- storage over a vector store: outages degrade, reindex rebuilds -----------------------------


async def test_a_vector_store_outage_degrades_search_and_loses_nothing(
    database_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    from kubernaut.devstack.processes import free_port
    from kubernaut.services.storage.store import Store
    from tests.integration.test_storage_incidents import CRASH, CRASH_ELSEWHERE, fingerprint

    down = VectorStoreSettings(
        store=VectorBackend.WEAVIATE,
        weaviate_url=f"http://127.0.0.1:{free_port()}",
        timeout_seconds=1,
    )
    store = await Store.connect(database_dsn, vectors=VectorIndex(down, database_dsn))
    await store.migrate()
    try:
        crash, created = await store.open_incident(fingerprint(), *CRASH)
        twin, _ = await store.open_incident(fingerprint(), *CRASH_ELSEWHERE)
        assert created
        assert "not in the vector store (weaviate)" in caplog.text

        similar = await store.search_similar(crash.incident_id, 5)

        assert similar.incidents == []
        assert similar.vector_store == "weaviate"
        assert similar.model == "all-minilm-l6-v2-int8"
        assert "weaviate unavailable" in similar.unavailable_reason
        # PostgreSQL kept both, embeddings included: a reindex restores the search.
        assert (await store.get_incident(twin.incident_id)).incident == twin
    finally:
        await store.close()


@pytest.fixture(params=BACKENDS)
def backend_384(request: pytest.FixtureRequest) -> tuple[VectorStoreSettings, str]:
    """A live backend for the default model's 384 dimensions."""
    return settings_for(request.param, request, 384)


async def test_reindex_rebuilds_a_backend_from_postgresql(
    database_dsn: str, backend_384: tuple[VectorStoreSettings, str]
) -> None:
    import asyncpg

    from kubernaut.services.storage.store import Store
    from kubernaut.services.storage.vectors.reindex import reindex
    from tests.integration.test_storage_incidents import (
        CRASH,
        CRASH_ELSEWHERE,
        DISK_FULL,
        fingerprint,
    )

    # The incidents are recorded with the default backend (pgvector in this database).
    recorder = await Store.connect(database_dsn)
    await recorder.migrate()
    try:
        crash, _ = await recorder.open_incident(fingerprint(), *CRASH)
        twin, _ = await recorder.open_incident(fingerprint(), *CRASH_ELSEWHERE)
        await recorder.open_incident(fingerprint(), *DISK_FULL)
    finally:
        await recorder.close()
    settings, _ = backend_384
    target = await open_vector_store(settings, database_dsn)
    conn = await asyncpg.connect(database_dsn)
    seen: list[int] = []
    try:
        report = await reindex(conn, target, batch=2, progress=lambda p: seen.append(p.done))
    finally:
        await conn.close()
        await target.close()
    assert report.models == [("all-minilm-l6-v2-int8", 384, 3)]
    assert seen == [2, 3]

    store = await Store.connect(database_dsn, vectors=VectorIndex(settings, database_dsn))
    try:
        similar = await store.search_similar(crash.incident_id, 1)
    finally:
        await store.close()
    assert similar.unavailable_reason == ""
    assert similar.vector_store == settings.store.value
    assert [i.incident_id for i, _ in similar.incidents] == [twin.incident_id]


async def test_the_reindex_command_reports_what_it_wrote(database_dsn: str) -> None:
    import asyncio
    import os
    import sys

    from kubernaut.services.storage.store import Store
    from tests.integration.test_storage_incidents import CRASH, fingerprint

    store = await Store.connect(database_dsn)
    await store.migrate()
    try:
        await store.open_incident(fingerprint(), *CRASH)
    finally:
        await store.close()
    env = {
        **os.environ,
        "KUBERNAUT_DATABASE_URL": database_dsn,
        "KUBERNAUT_VECTOR_STORE": "pgvector",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubernaut.cli.main", "storage", "reindex",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert "pgvector: 1 vectors of all-minilm-l6-v2-int8 (384 dimensions)" in out.decode()
    assert "Reindexing pgvector from" in err.decode()
    assert "1/1 vectors" in err.decode()
