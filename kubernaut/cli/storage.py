"""`kubernaut storage reindex`: rebuild the vector store storage searches similar incidents
in (KUBERNAUT_VECTOR_STORE) from PostgreSQL, the record. Run where storage runs, with its
settings (its database URL and KUBERNAUT_VECTOR_*): e.g. `kubectl exec deploy/storage --
kubernaut storage reindex`. Needed after switching backends, after changing the HNSW
tuning, or when a backend lost vectors during an outage."""

from __future__ import annotations

import sys
import time

import asyncpg

from kubernaut.runtime.database import redact_dsn
from kubernaut.services.storage.settings import StorageSettings
from kubernaut.services.storage.vectors import VectorStoreError
from kubernaut.services.storage.vectors.index import open_vector_store
from kubernaut.services.storage.vectors.reindex import Progress, reindex
from kubernaut.services.storage.vectors.settings import VectorStoreSettings

# Progress lines at most this often.
_PROGRESS_SECONDS = 2.0


async def reindex_vectors(batch: int) -> int:
    storage = StorageSettings()
    settings = VectorStoreSettings()
    where = redact_dsn(storage.database_url)
    try:
        conn = await asyncpg.connect(storage.database_url, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        print(f"kubernaut storage reindex: cannot read {where}: {error}", file=sys.stderr)
        return 1
    last = 0.0

    def show(progress: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= _PROGRESS_SECONDS or progress.done == progress.total:
            last = now
            rate = progress.done / max(progress.elapsed_seconds, 1e-9)
            print(
                f"  {progress.model}: {progress.done}/{progress.total} vectors ({rate:.0f}/s)",
                file=sys.stderr,
                flush=True,
            )

    try:
        print(f"Reindexing {settings.store.value} from {where}", file=sys.stderr)
        store = await open_vector_store(settings, storage.database_url)
        try:
            report = await reindex(conn, store, batch=batch, progress=show)
        finally:
            await store.close()
    except VectorStoreError as error:
        print(f"kubernaut storage reindex: {error}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    if not report.models:
        print(f"{report.backend}: no embedded incidents in {where}; nothing to index.")
        return 0
    for model, dims, written in report.models:
        print(f"{report.backend}: {written} vectors of {model} ({dims} dimensions)")
    print(f"Done in {report.elapsed_seconds:.1f} s.")
    return 0
