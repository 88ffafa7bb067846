"""The Pinecone loopback (tests/fixtures/pinecone_loopback.py) driven only through the real
`pinecone` SDK: what a VectorStore backend on Pinecone will rely on (upsert with metadata,
filtered nearest-neighbour queries, fetch, deletes, stats) and how Pinecone's refusals
reach the caller as the SDK's exceptions."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pinecone import (
    AsyncPinecone,
    Index,
    NotFoundException,
    Pinecone,
    PineconeApiException,
    RateLimitException,
    ServerlessSpec,
    UnauthorizedException,
)

from tests.fixtures.pinecone_loopback import API_KEY, IndexLoopback, rate_limited

pytestmark = pytest.mark.integration

# Incidents as a backend would store them: four dimensions, and the metadata it filters on.
INCIDENTS: list[tuple[str, list[float], dict[str, Any]]] = [
    (
        "oom-1",
        [1.0, 0.0, 0.0, 0.0],
        {"kind": "Pod", "cluster": "prod", "severity": 3, "alerts": ["OOMKilled", "Restart"]},
    ),
    (
        "oom-2",
        [0.9, 0.1, 0.0, 0.0],
        {"kind": "Pod", "cluster": "prod", "severity": 2, "alerts": ["OOMKilled"]},
    ),
    ("disk-1", [0.0, 1.0, 0.0, 0.0], {"kind": "Node", "cluster": "prod", "severity": 5}),
    (
        "net-1",
        [0.7, 0.7, 0.0, 0.0],
        {"kind": "Pod", "cluster": "staging", "severity": 1, "muted": True},
    ),
    ("cpu-1", [0.95, 0.0, 0.05, 0.0], {"kind": "Deployment", "cluster": "prod", "severity": 4}),
]
VECTORS = {vector_id: values for vector_id, values, _ in INCIDENTS}


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture
def index(pinecone_loopback: IndexLoopback) -> Iterator[Index]:
    """The SDK's data-plane client for the loopback's index, addressed by its host (no
    control-plane call)."""
    pc = Pinecone(api_key=pinecone_loopback.api_key)
    with pc.Index(host=pinecone_loopback.host) as client:
        assert isinstance(client, Index)
        yield client
    pc.close()


def test_upsert_then_filtered_query_ranks_matches_by_cosine(
    index: Index, pinecone_loopback: IndexLoopback
) -> None:
    upserted = index.upsert(vectors=INCIDENTS, namespace="incidents")
    assert upserted.upserted_count == len(INCIDENTS)

    query = [1.0, 0.2, 0.0, 0.0]
    result = index.query(
        vector=query,
        top_k=3,
        namespace="incidents",
        filter={"kind": "Pod", "cluster": {"$eq": "prod"}},
        include_metadata=True,
    )

    # cpu-1 (Deployment) and net-1 (staging) are near too, but the filter keeps them out.
    assert [m.id for m in result.matches] == ["oom-2", "oom-1"]
    for match in result.matches:
        assert match.score == pytest.approx(cosine(query, VECTORS[match.id]), rel=1e-6)
        assert match.metadata is not None and match.metadata["kind"] == "Pod"
        assert match.values == []  # not asked for
    assert result.namespace == "incidents"

    unfiltered = index.query(vector=query, top_k=10, namespace="incidents")
    expected = sorted(VECTORS, key=lambda i: -cosine(query, VECTORS[i]))
    assert [m.id for m in unfiltered.matches] == expected

    # The SDK spoke the data plane's wire format to the loopback.
    queries = [r for r in pinecone_loopback.requests if r.path == "/query"]
    assert len(queries) == 2
    assert queries[0].method == "POST"
    assert queries[0].headers["api-key"] == API_KEY
    assert queries[0].headers["x-pinecone-api-version"] == "2026-07"
    assert queries[0].json["topK"] == 3
    assert queries[0].json["includeMetadata"] is True
    upserts = [r for r in pinecone_loopback.requests if r.path == "/vectors/upsert"]
    assert upserts[0].json["vectors"][0] == {
        "id": "oom-1",
        "values": VECTORS["oom-1"],
        "metadata": INCIDENTS[0][2],
    }


# Filters in Pinecone's language and the incidents each admits.
FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"kind": "Pod"}, {"oom-1", "oom-2", "net-1"}),
    ({"kind": {"$ne": "Pod"}}, {"disk-1", "cpu-1"}),
    ({"severity": {"$gt": 2, "$lte": 4}}, {"oom-1", "cpu-1"}),
    ({"severity": {"$lt": 2}}, {"net-1"}),
    ({"severity": {"$gte": 5}}, {"disk-1"}),
    ({"kind": {"$in": ["Node", "Deployment"]}}, {"disk-1", "cpu-1"}),
    ({"cluster": {"$nin": ["prod"]}}, {"net-1"}),
    ({"alerts": "OOMKilled"}, {"oom-1", "oom-2"}),
    ({"alerts": {"$in": ["Restart"]}}, {"oom-1"}),
    ({"muted": {"$exists": True}}, {"net-1"}),
    ({"muted": {"$exists": False}}, {"oom-1", "oom-2", "disk-1", "cpu-1"}),
    ({"$or": [{"kind": "Node"}, {"severity": {"$gte": 4}}]}, {"disk-1", "cpu-1"}),
    ({"$and": [{"cluster": "prod"}, {"kind": {"$ne": "Node"}}]}, {"oom-1", "oom-2", "cpu-1"}),
]


def test_filter_language(index: Index) -> None:
    index.upsert(vectors=INCIDENTS)
    admitted = {
        str(where): {m.id for m in index.query(vector=[0.5] * 4, top_k=10, filter=where).matches}
        for where, _ in FILTERS
    }
    assert admitted == {str(where): expected for where, expected in FILTERS}


def test_fetch_returns_what_was_stored_and_leaves_out_unknown_ids(index: Index) -> None:
    index.upsert(vectors=INCIDENTS, namespace="incidents")

    fetched = index.fetch(ids=["oom-2", "nope"], namespace="incidents")

    assert set(fetched.vectors) == {"oom-2"}
    assert fetched.vectors["oom-2"].values == VECTORS["oom-2"]
    assert fetched.vectors["oom-2"].metadata == INCIDENTS[1][2]
    assert fetched.namespace == "incidents"
    # Another namespace holds none of them.
    assert index.fetch(ids=["oom-2"], namespace="other").vectors == {}


def test_deletes_by_ids_by_filter_and_all_show_in_the_stats(index: Index) -> None:
    index.upsert(vectors=INCIDENTS, namespace="a")
    index.upsert(vectors=INCIDENTS[:2], namespace="b")

    stats = index.describe_index_stats()
    assert {n: s.vector_count for n, s in stats.namespaces.items()} == {"a": 5, "b": 2}
    assert stats.total_vector_count == 7
    assert stats.dimension == 4
    assert stats.metric == "cosine"

    index.delete(ids=["oom-1", "never-stored"], namespace="a")
    assert set(index.fetch(ids=list(VECTORS), namespace="a").vectors) == {
        "oom-2",
        "disk-1",
        "net-1",
        "cpu-1",
    }

    index.delete(filter={"cluster": {"$eq": "prod"}}, namespace="a")
    assert set(index.fetch(ids=list(VECTORS), namespace="a").vectors) == {"net-1"}

    index.delete(delete_all=True, namespace="b")
    stats = index.describe_index_stats()
    assert {n: s.vector_count for n, s in stats.namespaces.items()} == {"a": 1, "b": 0}
    assert stats.total_vector_count == 1


def test_batched_upserts_in_parallel_all_land(
    index: Index, pinecone_loopback: IndexLoopback
) -> None:
    many = [(f"v-{n:03}", [1.0, n / 10, (n % 7) / 7, 0.5]) for n in range(200)]
    result = index.upsert(vectors=many, batch_size=20, max_concurrency=8, show_progress=False)

    assert result.upserted_count == 200 and not result.has_errors
    assert index.describe_index_stats().total_vector_count == 200
    assert sum(r.path == "/vectors/upsert" for r in pinecone_loopback.requests) == 10


def test_update_by_id_and_list_ids(index: Index) -> None:
    index.upsert(vectors=INCIDENTS)
    index.update(id="oom-1", set_metadata={"severity": 1, "resolved": True})

    metadata = index.fetch(ids=["oom-1"]).vectors["oom-1"].metadata
    assert metadata is not None
    assert metadata["severity"] == 1 and metadata["resolved"] is True
    assert metadata["kind"] == "Pod"  # setMetadata merges

    pages = list(index.list(prefix="oom-"))
    assert [item.id for page in pages for item in page.vectors] == ["oom-1", "oom-2"]


def test_wrong_api_key_is_unauthorized(pinecone_loopback: IndexLoopback) -> None:
    stranger = Pinecone(api_key="pcsk_not_this_project")
    with (
        stranger.Index(host=pinecone_loopback.host) as client,
        pytest.raises(UnauthorizedException) as raised,
    ):
        client.upsert(vectors=INCIDENTS[:1])
    assert raised.value.status_code == 401
    assert pinecone_loopback.requests[-1].headers["api-key"] == "pcsk_not_this_project"
    assert pinecone_loopback.stored() == {}


def test_wrong_dimension_is_refused_with_pinecones_message(
    index: Index, pinecone_loopback: IndexLoopback
) -> None:
    with pytest.raises(PineconeApiException) as raised:
        index.upsert(vectors=[("too-wide", [0.1, 0.2, 0.3, 0.4, 0.5])])
    assert raised.value.status_code == 400
    assert "Vector dimension 5 does not match the dimension of the index 4" in str(raised.value)
    assert raised.value.body == {
        "code": 3,
        "message": "Vector dimension 5 does not match the dimension of the index 4",
        "details": [],
    }
    assert pinecone_loopback.stored() == {}

    with pytest.raises(PineconeApiException, match="Query vector dimension 3 does not match"):
        index.query(vector=[1.0, 0.0, 0.0], top_k=1)


def test_malformed_filters_and_serverless_refusals(index: Index) -> None:
    index.upsert(vectors=INCIDENTS)
    with pytest.raises(PineconeApiException, match=r"unknown operator '\$regex'") as raised:
        index.query(vector=VECTORS["oom-1"], top_k=1, filter={"kind": {"$regex": "Po.*"}})
    assert raised.value.status_code == 400
    with pytest.raises(PineconeApiException, match=r"\$gt on field 'kind' takes a number"):
        index.query(vector=VECTORS["oom-1"], top_k=1, filter={"kind": {"$gt": "Pod"}})
    # Serverless indexes count per namespace only.
    with pytest.raises(PineconeApiException, match="do not support describing index stats"):
        index.describe_index_stats(filter={"kind": "Pod"})
    # A delete where nothing was ever upserted: serverless answers 404.
    with pytest.raises(NotFoundException, match="Namespace not found"):
        index.delete(ids=["oom-1"], namespace="never-written")


def test_rate_limits_are_retried_by_the_sdk_then_raised(
    index: Index, pinecone_loopback: IndexLoopback
) -> None:
    pinecone_loopback.script(rate_limited(retry_after=0))
    assert index.describe_index_stats().total_vector_count == 0
    assert [r.path for r in pinecone_loopback.requests] == ["/describe_index_stats"] * 2

    # Four 429s: the first answer and the SDK's three retries.
    pinecone_loopback.script(*[rate_limited(retry_after=0)] * 4)
    with pytest.raises(RateLimitException):
        index.describe_index_stats()
    assert len(pinecone_loopback.requests) == 6


def test_create_and_describe_an_index_through_the_control_plane(
    pinecone_loopback: IndexLoopback,
) -> None:
    project = pinecone_loopback.project
    assert project is not None
    with Pinecone(api_key=API_KEY, host=project.url) as pc:
        described = pc.describe_index(pinecone_loopback.index_name)
        assert described.host == pinecone_loopback.host
        assert described.status.ready

        created = pc.create_index(
            name="by-distance",
            dimension=2,
            metric="euclidean",
            spec=ServerlessSpec(cloud="aws", region="us-east-1"),
        )
        assert created.name == "by-distance"
        assert pc.has_index("by-distance")
        with pc.Index(name="by-distance") as client:
            client.upsert(vectors=[("far", [3.0, 4.0]), ("near", [1.0, 1.0])])
            result = client.query(vector=[0.0, 0.0], top_k=2)
        with pytest.raises(NotFoundException):
            pc.describe_index("no-such-index")

    # Euclidean: the squared distance, nearest (lowest) first.
    assert [(m.id, m.score) for m in result.matches] == [("near", 2.0), ("far", 25.0)]
    posted = [r for r in project.requests if (r.method, r.path) == ("POST", "/indexes")]
    assert posted[0].json["schema"] == {
        "fields": {"_values": {"type": "dense_vector", "dimension": 2, "metric": "euclidean"}}
    }


async def test_the_async_client_speaks_to_it_too(pinecone_loopback: IndexLoopback) -> None:
    async with AsyncPinecone(api_key=API_KEY) as pc:
        client = await pc.index(host=pinecone_loopback.host)
        async with client:
            await client.upsert(vectors=INCIDENTS, namespace="incidents")
            result = await client.query(
                vector=VECTORS["disk-1"], top_k=1, namespace="incidents", filter={"kind": "Node"}
            )
    assert [(m.id, m.score) for m in result.matches] == [("disk-1", 1.0)]
