"""The pgvector backend: a table per dimension in storage's own PostgreSQL, HNSW over cosine.

Each dimension gets its own table, `incident_vectors_<dims>`, because an index needs one
dimension; the embedding model is a column every search filters on, so several models of
one dimension share a table and never mix. Vectors travel in pgvector's binary format (the
`pgvector` package's asyncpg codec), not as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from kubernaut.runtime.migrations import UNREACHABLE
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

# pgvector's HNSW indexes vectors of up to 2,000 dimensions.
MAX_DIMENSIONS: Final = 2000
# Upserts of more vectors than this go through COPY into a temporary table.
_COPY_THRESHOLD: Final = 200
_TABLE: Final = re.compile(r"^incident_vectors_(\d+)$")
# Serialises creating a table and its index across storage replicas.
_DDL_LOCK: Final = 0x6B75_6265_7665_6301


def table_name(dimensions: int) -> str:
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise VectorStoreError(
            f"pgvector indexes 1 to {MAX_DIMENSIONS} dimensions, not {dimensions}"
        )
    return f"incident_vectors_{dimensions:d}"


def index_name(dimensions: int) -> str:
    return f"{table_name(dimensions)}_hnsw"


class PgVectorStore:
    """Vectors in PostgreSQL with pgvector. Use `PgVectorStore.connect()`."""

    backend: Final = "pgvector"

    def __init__(self, pool: asyncpg.Pool, settings: VectorStoreSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._tables: set[int] = set()
        self._ddl = asyncio.Lock()

    @classmethod
    async def connect(
        cls, dsn: str, settings: VectorStoreSettings, *, max_size: int = 4
    ) -> PgVectorStore:
        """A pool of its own to `dsn`, every connection with the vector codec. Creates the
        vector extension when it is missing (storage's migrations do too)."""
        try:
            conn = await asyncpg.connect(dsn, timeout=settings.timeout_seconds)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            finally:
                await conn.close()
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                timeout=settings.timeout_seconds,
                init=register_vector,
            )
        except (*UNREACHABLE, asyncpg.PostgresError) as exc:
            raise VectorStoreUnavailable(f"pgvector: cannot connect: {exc}") from exc
        return cls(pool, settings)

    async def close(self) -> None:
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self, *, bounded: bool = True) -> AsyncIterator[Any]:
        """A pooled connection; unreachable or (when `bounded`) slower than the timeout
        raises VectorStoreUnavailable."""
        timeout = self._settings.timeout_seconds if bounded else None
        try:
            async with asyncio.timeout(timeout), self._pool.acquire() as conn:
                yield conn
        except (*UNREACHABLE, asyncpg.InterfaceError) as exc:
            raise VectorStoreUnavailable(
                f"pgvector unavailable: {exc or type(exc).__name__}"
            ) from exc

    # -- tables -----------------------------------------------------------------------------

    async def existing_dimensions(self) -> list[int]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = current_schema() AND tablename LIKE 'incident\\_vectors\\_%'"
            )
        found = (_TABLE.match(row["tablename"]) for row in rows)
        return sorted(int(m.group(1)) for m in found if m)

    async def ensure_table(self, dimensions: int) -> str:
        """The table for `dimensions`, created with its HNSW index when missing."""
        table = table_name(dimensions)
        if dimensions in self._tables:
            return table
        async with self._ddl:
            if dimensions not in self._tables:
                async with self._connection(bounded=False) as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
                    await conn.execute(_create_table(dimensions))
                    await conn.execute(self._create_index(dimensions, if_missing=True))
                self._tables.add(dimensions)
        return table

    def _create_index(self, dimensions: int, *, if_missing: bool) -> str:
        settings = self._settings
        return (
            f"CREATE INDEX {'IF NOT EXISTS ' if if_missing else ''}{index_name(dimensions)}"
            f" ON {table_name(dimensions)} USING hnsw (embedding vector_cosine_ops)"
            f" WITH (m = {settings.hnsw_m:d}, ef_construction = {settings.hnsw_ef_construction:d})"
        )

    async def index_options(self, dimensions: int) -> dict[str, int]:
        """The HNSW index's build options as they are ({} when there is no index)."""
        async with self._connection() as conn:
            options = await conn.fetchval(
                "SELECT reloptions FROM pg_class WHERE relname = $1", index_name(dimensions)
            )
        return {k: int(v) for k, v in (o.split("=", 1) for o in options or [])}

    async def rebuild_index(self, dimensions: int, *, maintenance_work_mem: str = "1GB") -> None:
        """Drop and build the HNSW index with the current settings' m and ef_construction
        (after a bulk load, or when they changed). Builds with parallel workers; searches
        of this dimension scan the table meanwhile."""
        await self.ensure_table(dimensions)
        async with self._connection(bounded=False) as conn:
            await conn.execute(f"SET maintenance_work_mem = '{_memory(maintenance_work_mem)}'")
            await conn.execute("SET max_parallel_maintenance_workers = 2")
            await conn.execute(f"DROP INDEX IF EXISTS {index_name(dimensions)}")
            await conn.execute(self._create_index(dimensions, if_missing=False))

    async def drop_index(self, dimensions: int) -> None:
        """Drop the HNSW index (before a bulk load; `rebuild_index` makes it again)."""
        await self.ensure_table(dimensions)
        async with self._connection(bounded=False) as conn:
            await conn.execute(f"DROP INDEX IF EXISTS {index_name(dimensions)}")

    # -- the interface ----------------------------------------------------------------------

    async def upsert(self, vectors: Sequence[IncidentVector]) -> None:
        if not vectors:
            return
        check_dimensions(vectors)
        table = await self.ensure_table(len(vectors[0].vector))
        rows = [_row(v) for v in vectors]
        bulk = len(rows) > _COPY_THRESHOLD
        async with self._connection(bounded=not bulk) as conn:
            try:
                if not bulk:
                    await conn.executemany(_upsert(table), rows)
                    return
                async with conn.transaction():
                    await conn.execute(
                        f"CREATE TEMPORARY TABLE incoming (LIKE {table}) ON COMMIT DROP"
                    )
                    await conn.copy_records_to_table(
                        "incoming", records=rows, columns=list(_COLUMNS)
                    )
                    await conn.execute(_upsert(table, source="incoming"))
            except asyncpg.DataError as exc:
                raise VectorStoreError(f"pgvector refused the vectors: {exc}") from exc

    async def delete(self, incident_ids: Sequence[str]) -> None:
        if not incident_ids:
            return
        ids = [incident_uuid(i) for i in incident_ids]
        for dimensions in await self.existing_dimensions():
            async with self._connection() as conn:
                await conn.execute(
                    f"DELETE FROM {table_name(dimensions)} WHERE incident_id = ANY($1::uuid[])",
                    ids,
                )

    async def clear(self, model: str) -> None:
        for dimensions in await self.existing_dimensions():
            async with self._connection(bounded=False) as conn:
                await conn.execute(f"DELETE FROM {table_name(dimensions)} WHERE model = $1", model)

    async def search(
        self, vector: Sequence[float], where: VectorFilter, limit: int
    ) -> list[VectorMatch]:
        check_limit(limit)
        dimensions = len(vector)
        if dimensions not in self._tables and dimensions not in await self.existing_dimensions():
            return []
        self._tables.add(dimensions)
        # HNSW yields at most ef_search rows before filters; the iterative scan (pgvector
        # 0.8) goes on until `limit` rows pass them, in exact distance order.
        ef_search = max(self._settings.hnsw_ef_search, limit + len(where.exclude_ids))
        async with self._connection() as conn, conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL hnsw.ef_search = {min(ef_search, 1000):d}")
            await conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            rows = await conn.fetch(
                _search(table_name(dimensions)),
                np.asarray(vector, dtype=np.float32),
                limit,
                *_filter_args(where),
            )
        return [VectorMatch(str(r["incident_id"]), float(r["distance"])) for r in rows]

    async def count(self, where: VectorFilter) -> int:
        total = 0
        for dimensions in await self.existing_dimensions():
            async with self._connection() as conn:
                total += int(
                    await conn.fetchval(
                        f"SELECT count(*) FROM {table_name(dimensions)} WHERE {_WHERE}",
                        *_filter_args(where),
                    )
                )
        return total


_COLUMNS: Final = (
    "incident_id",
    "model",
    "cluster",
    "namespace",
    "subject_kind",
    "alert_name",
    "opened_at",
    "embedding",
)


def _create_table(dimensions: int) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {table_name(dimensions)} (
    incident_id  uuid PRIMARY KEY,
    model        text NOT NULL,
    cluster      text NOT NULL DEFAULT '',
    namespace    text NOT NULL DEFAULT '',
    subject_kind text NOT NULL DEFAULT '',
    alert_name   text NOT NULL DEFAULT '',
    opened_at    timestamptz,
    embedding    vector({dimensions:d}) NOT NULL
)"""


def _upsert(table: str, *, source: str = "") -> str:
    columns = ", ".join(_COLUMNS)
    values = (
        f"SELECT {columns} FROM {source}"
        if source
        else "VALUES (" + ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1)) + ")"
    )
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    return (
        f"INSERT INTO {table} ({columns}) {values}"
        f" ON CONFLICT (incident_id) DO UPDATE SET {updates}"
    )


# $1 the vector and $2 the limit in a search; the filter's arguments follow from $3.
_WHERE: Final = """model = $1
  AND ($2 = '' OR cluster = $2)
  AND ($3 = '' OR namespace = $3)
  AND ($4 = '' OR subject_kind = $4)
  AND (cardinality($5::text[]) = 0 OR alert_name = ANY($5::text[]))
  AND NOT (incident_id = ANY($6::uuid[]))"""


def _search(table: str) -> str:
    # The filter's placeholders shifted by two, for the vector and the limit first.
    where = re.sub(r"\$(\d)", lambda m: f"${int(m.group(1)) + 2}", _WHERE)
    return f"""
SELECT incident_id, embedding <=> $1 AS distance FROM {table}
WHERE {where}
ORDER BY embedding <=> $1
LIMIT $2"""


def _filter_args(where: VectorFilter) -> tuple[Any, ...]:
    return (
        where.model,
        where.cluster,
        where.namespace,
        where.subject_kind,
        list(where.alert_names),
        [incident_uuid(i) for i in where.exclude_ids],
    )


def _row(vector: IncidentVector) -> tuple[Any, ...]:
    return (
        incident_uuid(vector.incident_id),
        vector.model,
        vector.cluster,
        vector.namespace,
        vector.subject_kind,
        vector.alert_name,
        vector.opened_at,
        np.asarray(vector.vector, dtype=np.float32),
    )


def _memory(value: str) -> str:
    if not re.fullmatch(r"\d+\s*(kB|MB|GB)", value):
        raise VectorStoreError(f"{value!r} is not a PostgreSQL memory size like 512MB")
    return value
