"""The real Weaviate server (built from its Go module) with the real v4 Python client: a
collection of self-provided vectors (HNSW, cosine), a nearest-vector search and a property
filter, over REST and gRPC as the client uses them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property, VectorDistances
from weaviate.classes.query import Filter, MetadataQuery

from kubernaut.devstack.processes import LOOPBACK
from kubernaut.devstack.weaviate import Weaviate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GO_MOD = Path(__file__).resolve().parents[2] / "tools" / "weaviate" / "go.mod"

# Three-dimensional vectors: each incident points along its own axis (nearly).
INCIDENTS = [
    ("pod OOMKilled in checkout", "memory", 3, [1.0, 0.05, 0.0]),
    ("node disk pressure on worker-2", "disk", 2, [0.0, 1.0, 0.05]),
    ("checkout latency above SLO", "latency", 4, [0.05, 0.0, 1.0]),
    ("payments pod OOMKilled again", "memory", 1, [0.9, 0.1, 0.1]),
]


@pytest.fixture
def client(weaviate_server: Weaviate) -> Iterator[weaviate.WeaviateClient]:
    with weaviate.connect_to_custom(
        http_host=LOOPBACK,
        http_port=weaviate_server.http_port,
        http_secure=False,
        grpc_host=LOOPBACK,
        grpc_port=weaviate_server.grpc_port,
        grpc_secure=False,
        skip_init_checks=False,
    ) as connected:
        yield connected


def test_near_vector_with_a_property_filter(client: weaviate.WeaviateClient) -> None:
    assert client.is_ready()
    # The server is the release tools/weaviate pins (it reads its version from its spec).
    pinned = re.search(r"github\.com/weaviate/weaviate v(\S+)", GO_MOD.read_text())
    assert pinned, f"{GO_MOD} lost its github.com/weaviate/weaviate requirement"
    assert client.get_meta()["version"] == pinned.group(1)

    name = f"Incident_{uuid.uuid4().hex[:12]}"
    incidents = client.collections.create(
        name,
        properties=[
            Property(name="title", data_type=DataType.TEXT),
            Property(name="kind", data_type=DataType.TEXT),
            Property(name="severity", data_type=DataType.INT),
        ],
        vector_config=Configure.Vectors.self_provided(
            vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE),
        ),
    )
    try:
        with incidents.batch.fixed_size(batch_size=len(INCIDENTS)) as batch:
            for title, kind, severity, vector in INCIDENTS:
                batch.add_object(
                    properties={"title": title, "kind": kind, "severity": severity},
                    vector=vector,
                )
        assert incidents.batch.failed_objects == []
        assert len(incidents) == len(INCIDENTS)

        # Nearest to the memory axis: the first OOM, then the second.
        found = incidents.query.near_vector(
            near_vector=[1.0, 0.0, 0.0], limit=2, return_metadata=MetadataQuery(distance=True)
        )
        titles = [obj.properties["title"] for obj in found.objects]
        assert titles == ["pod OOMKilled in checkout", "payments pod OOMKilled again"]
        distance = found.objects[0].metadata.distance
        assert distance is not None and distance < 0.01

        # The same search with a filter: only severities of 2 or more, kind not memory.
        filtered = incidents.query.near_vector(
            near_vector=[1.0, 0.0, 0.0],
            limit=2,
            filters=Filter.by_property("severity").greater_or_equal(2)
            & Filter.by_property("kind").not_equal("memory"),
        )
        assert [obj.properties["kind"] for obj in filtered.objects] == ["latency", "disk"]

        # A filter alone excludes the nearest object.
        severe = incidents.query.near_vector(
            near_vector=[1.0, 0.0, 0.0],
            limit=1,
            filters=Filter.by_property("severity").less_than(2),
        )
        assert [obj.properties["title"] for obj in severe.objects] == [
            "payments pod OOMKilled again"
        ]
    finally:
        client.collections.delete(name)
    assert not client.collections.exists(name)
