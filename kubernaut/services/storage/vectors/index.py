"""The vector store storage uses, opened on first use and again after an outage."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from kubernaut.services.storage.vectors import VectorStore, VectorStoreUnavailable
from kubernaut.services.storage.vectors.settings import VectorBackend, VectorStoreSettings

_log = logging.getLogger(__name__)

# After a failed connect, calls fail fast for this long instead of each waiting out a
# connect timeout (searches answer "no similar incidents" meanwhile).
RECONNECT_AFTER_SECONDS: Final = 5.0


async def open_vector_store(settings: VectorStoreSettings, dsn: str) -> VectorStore:
    """Connect to the configured backend; `dsn` is storage's database (for pgvector).
    VectorStoreUnavailable when it cannot be reached."""
    if settings.store is VectorBackend.WEAVIATE:
        from kubernaut.services.storage.vectors.weaviate import WeaviateStore

        return await WeaviateStore.connect(settings)
    if settings.store is VectorBackend.PINECONE:
        from kubernaut.services.storage.vectors.pinecone import PineconeStore

        return await PineconeStore.connect(settings)
    from kubernaut.services.storage.vectors.pgvector import PgVectorStore

    return await PgVectorStore.connect(dsn, settings)


class VectorIndex:
    """Holds storage's vector store: connects on first use; while the backend cannot be
    reached, `store()` raises VectorStoreUnavailable (fast, for RECONNECT_AFTER_SECONDS
    after a failed attempt) and the next call after that tries again."""

    def __init__(self, settings: VectorStoreSettings, dsn: str) -> None:
        self.settings = settings
        self._dsn = dsn
        self._store: VectorStore | None = None
        self._failed: tuple[float, str] | None = None
        self._lock = asyncio.Lock()

    @property
    def backend(self) -> str:
        return self.settings.store.value

    async def store(self) -> VectorStore:
        async with self._lock:
            if self._store is not None:
                return self._store
            if self._failed and time.monotonic() - self._failed[0] < RECONNECT_AFTER_SECONDS:
                raise VectorStoreUnavailable(self._failed[1])
            try:
                self._store = await open_vector_store(self.settings, self._dsn)
            except VectorStoreUnavailable as exc:
                self._failed = (time.monotonic(), str(exc))
                _log.warning("vector store %s unavailable: %s", self.backend, exc)
                raise
            self._failed = None
            _log.info("vector store %s connected", self.backend)
            return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
