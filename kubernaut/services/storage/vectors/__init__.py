"""Where incident embeddings are searched: one interface, three backends.

PostgreSQL stays the system of record: every incident's embedding is in its `incidents`
row. A `VectorStore` holds a copy for fast nearest-neighbour search, filtered by metadata
(the embedding model, cluster, namespace, kind of object, alert), and can always be rebuilt
from PostgreSQL (`kubernaut storage reindex`). The backend is chosen by
KUBERNAUT_VECTOR_STORE:

- `pgvector` (default): a table per dimension in the same database, HNSW over cosine
  distance, tuned by KUBERNAUT_VECTOR_HNSW_M / _EF_CONSTRUCTION / _EF_SEARCH;
- `weaviate`: a Weaviate server through weaviate-client v4 (a collection per model);
- `pinecone`: a Pinecone index through the pinecone SDK (a namespace per model).

A backend that cannot be reached raises `VectorStoreUnavailable`; storage then answers a
search with no similar incidents and the reason, never with an error.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, Self, runtime_checkable

# Search answers at most this many matches, whatever the caller asks.
MAX_SEARCH_LIMIT: Final = 100


class VectorStoreError(Exception):
    """A vector store refused a request (bad input, a dimension it does not hold)."""


class VectorStoreUnavailable(VectorStoreError):
    """The vector store cannot be reached or did not answer in time; safe to retry."""


@dataclass(frozen=True)
class IncidentVector:
    """One incident's embedding and the metadata searches filter on."""

    incident_id: str
    model: str
    vector: Sequence[float]
    cluster: str = ""
    namespace: str = ""
    subject_kind: str = ""
    alert_name: str = ""
    opened_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        incident_uuid(self.incident_id)
        if not self.model:
            raise VectorStoreError(f"incident {self.incident_id}: the embedding model is required")
        if not self.vector:
            raise VectorStoreError(f"incident {self.incident_id}: the vector is empty")
        if not all(math.isfinite(x) for x in self.vector):
            raise VectorStoreError(f"incident {self.incident_id}: the vector is not finite")

    @classmethod
    def of_incident(cls, row: Any, model: str, vector: Sequence[float]) -> Self:
        """From a row of storage's `incidents` table (its subject_* and alert columns)."""
        return cls(
            incident_id=str(row["incident_id"]),
            model=model,
            vector=vector,
            cluster=row["subject_cluster"],
            namespace=row["subject_namespace"],
            subject_kind=row["subject_kind"],
            alert_name=row["alert_name"],
            opened_at=row["opened_at"],
        )


@dataclass(frozen=True)
class VectorFilter:
    """Which stored vectors a search or count considers: always one model's (vectors of
    different models are not comparable); the other fields narrow it where set."""

    model: str
    cluster: str = ""
    namespace: str = ""
    subject_kind: str = ""
    # Any of these alerts; empty means every alert.
    alert_names: tuple[str, ...] = ()
    # Never these incidents (the one searched for, typically).
    exclude_ids: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.model:
            raise VectorStoreError("a vector filter needs the embedding model")
        for incident_id in self.exclude_ids:
            incident_uuid(incident_id)


@dataclass(frozen=True)
class VectorMatch:
    incident_id: str
    # Cosine distance: 0 the same direction, 1 unrelated, 2 opposite.
    distance: float


@runtime_checkable
class VectorStore(Protocol):
    """Nearest-neighbour search over incident embeddings. Every method may raise
    VectorStoreUnavailable (the backend cannot be reached) or VectorStoreError (it refused
    the request); upsert and delete are idempotent."""

    @property
    def backend(self) -> str:
        """`pgvector`, `weaviate` or `pinecone`."""
        ...

    async def upsert(self, vectors: Sequence[IncidentVector]) -> None:
        """Store these vectors, replacing any stored before for the same incidents."""
        ...

    async def delete(self, incident_ids: Sequence[str]) -> None:
        """Forget these incidents' vectors (unknown ids are ignored)."""
        ...

    async def search(
        self, vector: Sequence[float], where: VectorFilter, limit: int
    ) -> list[VectorMatch]:
        """At most `limit` (1..MAX_SEARCH_LIMIT) stored vectors passing `where`, nearest to
        `vector` first. Approximate where the backend's index is."""
        ...

    async def count(self, where: VectorFilter) -> int:
        """How many stored vectors pass `where` (model, cluster, namespace, kind, alerts)."""
        ...

    async def clear(self, model: str) -> None:
        """Forget every vector of `model` (before a reindex)."""
        ...

    async def close(self) -> None: ...


def incident_uuid(value: str) -> uuid.UUID:
    """Incidents are named by UUIDs (storage makes them); anything else is refused."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError) as exc:
        raise VectorStoreError(f"incident id {value!r} is not a UUID") from exc


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise VectorStoreError(f"limit must be between 1 and {MAX_SEARCH_LIMIT}, got {limit}")
    return limit


def check_dimensions(vectors: Sequence[IncidentVector]) -> None:
    """One upsert holds one model's vectors of one dimension."""
    if not vectors:
        return
    first = vectors[0]
    for item in vectors:
        if len(item.vector) != len(first.vector):
            raise VectorStoreError(
                f"incident {item.incident_id} has {len(item.vector)} dimensions, "
                f"incident {first.incident_id} {len(first.vector)}: one upsert, one dimension"
            )
