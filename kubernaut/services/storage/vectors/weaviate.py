"""The Weaviate backend, through weaviate-client v4's async client.

One collection per embedding model (vectors of different models are never compared), the
object's UUID the incident's, self-provided vectors in an HNSW index over cosine distance
(maxConnections, efConstruction and ef from the settings), the filter fields as properties
with whole-value tokenization so that equality is exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import weaviate
import weaviate.classes as wvc
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.exceptions import (
    WeaviateBaseError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
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

COLLECTION_PREFIX: Final = "KubernautIncidents_"
_UNREACHABLE: Final = (
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
    WeaviateClosedClientError,
    OSError,
    TimeoutError,
)
_PROPERTIES: Final = ("cluster", "namespace", "subject_kind", "alert_name")
T = TypeVar("T")


def collection_name(model: str) -> str:
    """A valid collection name per model: readable, and a digest so that models differing
    only in punctuation do not share one."""
    slug = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", model) if part)
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"{COLLECTION_PREFIX}{slug[:60]}_{digest}"


class WeaviateStore:
    """Vectors in Weaviate. Use `WeaviateStore.connect()`."""

    backend: Final = "weaviate"

    def __init__(self, client: weaviate.WeaviateAsyncClient, settings: VectorStoreSettings) -> None:
        self._client = client
        self._settings = settings
        self._collections: set[str] = set()
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, settings: VectorStoreSettings) -> WeaviateStore:
        parts = urlsplit(settings.weaviate_url)
        secure = parts.scheme == "https"
        api_key = settings.weaviate_api_key
        client = weaviate.use_async_with_custom(
            http_host=parts.hostname or "127.0.0.1",
            http_port=parts.port or (443 if secure else 80),
            http_secure=secure,
            grpc_host=parts.hostname or "127.0.0.1",
            grpc_port=settings.weaviate_grpc_port,
            grpc_secure=secure,
            auth_credentials=(
                wvc.init.Auth.api_key(api_key.get_secret_value()) if api_key else None
            ),
            additional_config=wvc.init.AdditionalConfig(
                timeout=wvc.init.Timeout(
                    init=settings.timeout_seconds,
                    query=settings.timeout_seconds,
                    insert=max(settings.timeout_seconds, 30.0),
                )
            ),
        )
        store = cls(client, settings)
        try:
            await store._call(client.connect())
        except BaseException:
            await client.close()
            raise
        return store

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, call: Awaitable[T], *, bounded: bool = True) -> T:
        """The call's result; an unreachable or slow server raises VectorStoreUnavailable,
        a refusal VectorStoreError."""
        try:
            async with asyncio.timeout(self._settings.timeout_seconds if bounded else None):
                return await call
        except _UNREACHABLE as exc:
            raise VectorStoreUnavailable(f"weaviate unavailable: {exc}") from exc
        except WeaviateBaseError as exc:
            raise VectorStoreError(f"weaviate refused the request: {exc}") from exc

    async def _ours(self) -> list[str]:
        names = await self._call(self._client.collections.list_all(simple=True))
        return sorted(n for n in names if n.startswith(COLLECTION_PREFIX))

    async def _collection(self, model: str, *, create: bool) -> Any | None:
        name = collection_name(model)
        if name not in self._collections:
            async with self._lock:
                if name not in self._collections:
                    if not await self._call(self._client.collections.exists(name)):
                        if not create:
                            return None
                        await self._create(name, model)
                    self._collections.add(name)
        return self._client.collections.use(name)

    async def _create(self, name: str, model: str) -> None:
        settings = self._settings
        text = wvc.config.DataType.TEXT
        field = wvc.config.Tokenization.FIELD
        try:
            await self._call(
                self._client.collections.create(
                    name,
                    description=f"Kubernaut incident embeddings of {model}",
                    vector_config=wvc.config.Configure.Vectors.self_provided(
                        vector_index_config=wvc.config.Configure.VectorIndex.hnsw(
                            distance_metric=wvc.config.VectorDistances.COSINE,
                            max_connections=settings.hnsw_m,
                            ef_construction=settings.hnsw_ef_construction,
                            ef=settings.hnsw_ef_search,
                        )
                    ),
                    properties=[
                        *(
                            wvc.config.Property(name=p, data_type=text, tokenization=field)
                            for p in _PROPERTIES
                        ),
                        wvc.config.Property(name="opened_at", data_type=wvc.config.DataType.DATE),
                    ],
                )
            )
        except VectorStoreError:
            # Another replica created it first.
            if not await self._call(self._client.collections.exists(name)):
                raise

    async def upsert(self, vectors: Sequence[IncidentVector]) -> None:
        if not vectors:
            return
        check_dimensions(vectors)
        by_model: dict[str, list[IncidentVector]] = {}
        for item in vectors:
            by_model.setdefault(item.model, []).append(item)
        for model, items in by_model.items():
            collection = await self._collection(model, create=True)
            assert collection is not None
            objects = [
                wvc.data.DataObject(
                    uuid=item.incident_id,
                    vector=[float(x) for x in item.vector],
                    properties={
                        "cluster": item.cluster,
                        "namespace": item.namespace,
                        "subject_kind": item.subject_kind,
                        "alert_name": item.alert_name,
                        **({"opened_at": item.opened_at} if item.opened_at else {}),
                    },
                )
                for item in items
            ]
            # insert_many replaces objects whose UUID exists: an upsert.
            result = await self._call(
                collection.data.insert_many(objects), bounded=len(objects) <= 100
            )
            if result.errors:
                first = next(iter(result.errors.values()))
                raise VectorStoreError(
                    f"weaviate refused {len(result.errors)} of {len(objects)} vectors: "
                    f"{first.message}"
                )

    async def delete(self, incident_ids: Sequence[str]) -> None:
        if not incident_ids:
            return
        ids = [incident_uuid(i) for i in incident_ids]
        for name in await self._ours():
            collection = self._client.collections.use(name)
            await self._call(collection.data.delete_many(where=Filter.by_id().contains_any(ids)))

    async def clear(self, model: str) -> None:
        name = collection_name(model)
        await self._call(self._client.collections.delete(name))
        self._collections.discard(name)

    async def search(
        self, vector: Sequence[float], where: VectorFilter, limit: int
    ) -> list[VectorMatch]:
        check_limit(limit)
        collection = await self._collection(where.model, create=False)
        if collection is None:
            return []
        response = await self._call(
            collection.query.near_vector(
                near_vector=[float(x) for x in vector],
                limit=limit,
                filters=_filters(where),
                return_metadata=MetadataQuery(distance=True),
                return_properties=[],
            )
        )
        return [
            VectorMatch(str(o.uuid), float(o.metadata.distance or 0.0)) for o in response.objects
        ]

    async def count(self, where: VectorFilter) -> int:
        collection = await self._collection(where.model, create=False)
        if collection is None:
            return 0
        result = await self._call(
            collection.aggregate.over_all(total_count=True, filters=_filters(where))
        )
        return int(result.total_count or 0)


def _filters(where: VectorFilter) -> Any | None:
    parts: list[Any] = [
        Filter.by_property(name).equal(value)
        for name, value in (
            ("cluster", where.cluster),
            ("namespace", where.namespace),
            ("subject_kind", where.subject_kind),
        )
        if value
    ]
    if where.alert_names:
        parts.append(Filter.by_property("alert_name").contains_any(list(where.alert_names)))
    parts.extend(Filter.by_id().not_equal(i) for i in where.exclude_ids)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter.all_of(parts)
