"""The Pinecone backend, through the pinecone SDK against one index's data-plane host.

A namespace per embedding model (vectors of different models are never compared), the
vector's id the incident's, the filter fields as metadata. The SDK is synchronous, so each
call runs in a worker thread, bounded by the settings' timeout. Pinecone's cosine score is
a similarity; the interface's distance is 1 - score.

Counting with filters: serverless indexes refuse a filter on describe_index_stats, so a
filtered count is a filtered query's match count (exact up to Pinecone's top_k ceiling,
10,000); an unfiltered one is the namespace's vector count.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from pinecone import Pinecone
from pinecone.errors.exceptions import (
    NotFoundError,
    PineconeConnectionError,
    PineconeError,
    PineconeTimeoutError,
    RateLimitError,
    ServiceError,
)

from kubernaut.services.storage.vectors import (
    IncidentVector,
    VectorFilter,
    VectorMatch,
    VectorStoreError,
    VectorStoreUnavailable,
    check_dimensions,
    check_limit,
    incident_uuid,
)
from kubernaut.services.storage.vectors.settings import VectorStoreSettings

# Pinecone answers at most this many matches per query.
MAX_TOP_K: Final = 10_000
# Vectors per upsert request (Pinecone caps a request at 1,000 vectors and 2 MB).
_UPSERT_BATCH: Final = 200
_UNREACHABLE: Final = (
    PineconeConnectionError,
    PineconeTimeoutError,
    ServiceError,
    RateLimitError,
    OSError,
    TimeoutError,
)
T = TypeVar("T")


class PineconeStore:
    """Vectors in a Pinecone index. Use `PineconeStore.connect()`."""

    backend: Final = "pinecone"

    def __init__(self, index: Any, settings: VectorStoreSettings) -> None:
        self._index = index
        self._settings = settings

    @classmethod
    async def connect(cls, settings: VectorStoreSettings) -> PineconeStore:
        """A handle on the index at KUBERNAUT_VECTOR_PINECONE_HOST, once it answered (its
        stats): an unreachable index or a wrong key shows here, not on first use."""
        key = settings.pinecone_api_key
        if key is None or not settings.pinecone_host:
            raise VectorStoreError("pinecone needs an index host and an API key")
        client = Pinecone(api_key=key.get_secret_value())
        store = cls(client.Index(host=settings.pinecone_host), settings)
        try:
            await store._stats()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await asyncio.to_thread(self._index.close)

    async def _call(self, call: Callable[[], T], *, bounded: bool = True) -> T:
        try:
            async with asyncio.timeout(self._settings.timeout_seconds if bounded else None):
                return await asyncio.to_thread(call)
        except _UNREACHABLE as exc:
            raise VectorStoreUnavailable(f"pinecone unavailable: {exc}") from exc
        except PineconeError as exc:
            raise VectorStoreError(f"pinecone refused the request: {exc}") from exc

    async def _stats(self) -> tuple[dict[str, int], int]:
        """The vector count of each namespace, and the index's dimension."""
        stats = await self._call(self._index.describe_index_stats)
        counts = {name: int(ns.vector_count) for name, ns in (stats.namespaces or {}).items()}
        return counts, int(stats.dimension or 0)

    async def upsert(self, vectors: Sequence[IncidentVector]) -> None:
        if not vectors:
            return
        check_dimensions(vectors)
        by_model: dict[str, list[dict[str, Any]]] = {}
        for item in vectors:
            by_model.setdefault(item.model, []).append(_record(item))
        for model, records in by_model.items():
            for start in range(0, len(records), _UPSERT_BATCH):
                batch = records[start : start + _UPSERT_BATCH]
                await self._call(
                    functools.partial(
                        self._index.upsert, vectors=batch, namespace=model, show_progress=False
                    ),
                    bounded=len(vectors) <= _UPSERT_BATCH,
                )

    async def delete(self, incident_ids: Sequence[str]) -> None:
        if not incident_ids:
            return
        ids = [str(incident_uuid(i)) for i in incident_ids]
        namespaces, _ = await self._stats()
        for namespace in namespaces:
            await self._ignore_missing(
                functools.partial(self._index.delete, ids=ids, namespace=namespace)
            )

    async def clear(self, model: str) -> None:
        await self._ignore_missing(
            functools.partial(self._index.delete, delete_all=True, namespace=model)
        )

    async def _ignore_missing(self, call: Callable[[], Any]) -> None:
        try:
            await self._call(call, bounded=False)
        except VectorStoreError as exc:
            # A namespace never written to (or emptied) answers 404: nothing to delete.
            if not isinstance(exc.__cause__, NotFoundError):
                raise

    async def search(
        self, vector: Sequence[float], where: VectorFilter, limit: int
    ) -> list[VectorMatch]:
        check_limit(limit)
        return await self._query(vector, where, limit + len(where.exclude_ids), limit)

    async def _query(
        self, vector: Sequence[float], where: VectorFilter, top_k: int, limit: int
    ) -> list[VectorMatch]:
        try:
            response = await self._call(
                functools.partial(
                    self._index.query,
                    vector=[float(x) for x in vector],
                    top_k=top_k,
                    namespace=where.model,
                    filter=_metadata_filter(where),
                    include_values=False,
                    include_metadata=False,
                )
            )
        except VectorStoreError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return []  # the model's namespace does not exist (yet)
            raise
        excluded = set(where.exclude_ids)
        matches = [
            VectorMatch(m.id, 1.0 - float(m.score))
            for m in response.matches
            if m.id not in excluded
        ]
        return matches[:limit]

    async def count(self, where: VectorFilter) -> int:
        namespaces, dimension = await self._stats()
        total = namespaces.get(where.model, 0)
        if not total or (_metadata_filter(where) is None and not where.exclude_ids):
            return total
        probe = [1.0] * dimension
        matches = await self._query(probe, where, min(total, MAX_TOP_K), MAX_TOP_K)
        return len(matches)


def _record(item: IncidentVector) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "cluster": item.cluster,
        "namespace": item.namespace,
        "subject_kind": item.subject_kind,
        "alert_name": item.alert_name,
    }
    if item.opened_at is not None:
        metadata["opened_at"] = item.opened_at.timestamp()
    return {"id": item.incident_id, "values": [float(x) for x in item.vector], "metadata": metadata}


def _metadata_filter(where: VectorFilter) -> dict[str, Any] | None:
    clauses: list[dict[str, Any]] = [
        {name: {"$eq": value}}
        for name, value in (
            ("cluster", where.cluster),
            ("namespace", where.namespace),
            ("subject_kind", where.subject_kind),
        )
        if value
    ]
    if where.alert_names:
        clauses.append({"alert_name": {"$in": list(where.alert_names)}})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
