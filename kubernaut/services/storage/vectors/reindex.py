"""Rebuild a vector store from PostgreSQL, the record: `kubernaut storage reindex`.

For each embedding model the incidents hold, forget the store's vectors of that model and
put every embedded incident back, in batches, in incident_id order. With pgvector the HNSW
index is dropped first and built once at the end (faster than growing it row by row, and
it takes the current m and ef_construction settings).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import asyncpg

from kubernaut.services.storage.vectors import IncidentVector, VectorStore
from kubernaut.services.storage.vectors.pgvector import PgVectorStore

DEFAULT_BATCH: Final = 1000

_MODELS: Final = """
SELECT embedding_model AS model, vector_dims(embedding) AS dims, count(*) AS incidents
FROM incidents WHERE embedding IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2
"""

_BATCH: Final = """
SELECT incident_id, embedding_model, subject_cluster, subject_namespace, subject_kind,
       alert_name, opened_at, embedding::real[] AS vector
FROM incidents
WHERE embedding_model = $1 AND vector_dims(embedding) = $2 AND incident_id > $3
ORDER BY incident_id
LIMIT $4
"""


@dataclass(frozen=True)
class Progress:
    model: str
    done: int
    total: int
    elapsed_seconds: float


@dataclass(frozen=True)
class ReindexReport:
    backend: str
    # (model, dimensions, vectors written)
    models: list[tuple[str, int, int]]
    elapsed_seconds: float


async def reindex(
    conn: asyncpg.Connection,
    store: VectorStore,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[Progress], None] = lambda _: None,
) -> ReindexReport:
    """Rebuild `store` from the incidents `conn` reads. Safe to run again after a failure
    (every write is an upsert); searches meanwhile see a partial store."""
    started = time.monotonic()
    written: list[tuple[str, int, int]] = []
    for row in await conn.fetch(_MODELS):
        model, dims, total = str(row["model"]), int(row["dims"]), int(row["incidents"])
        await store.clear(model)
        if isinstance(store, PgVectorStore):
            await store.drop_index(dims)
        done, last = 0, uuid.UUID(int=0)
        while True:
            rows = await conn.fetch(_BATCH, model, dims, last, batch)
            if not rows:
                break
            await store.upsert([IncidentVector.of_incident(r, model, r["vector"]) for r in rows])
            done += len(rows)
            last = rows[-1]["incident_id"]
            progress(Progress(model, done, total, time.monotonic() - started))
        if isinstance(store, PgVectorStore):
            await store.rebuild_index(dims)
        written.append((model, dims, done))
    return ReindexReport(store.backend, written, time.monotonic() - started)
