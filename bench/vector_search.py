"""Similar-incident search at scale (issue 24): N incident embeddings of 384 dimensions in
each vector store that can run here, searched through the `VectorStore` interface as
storage searches them.

    .venv/bin/python -m bench.vector_search [--count 1000000] [--queries 1000]
        [--backends pgvector,weaviate] [--weaviate-count N] [--ef-search 16,32,...,200]
        [--builds 16:64,24:100] [--concurrency 1,8] [--shared-buffers 4GB]
        [--maintenance-work-mem 4GB]

The data: synthetic, reproducible (seeded numpy), clustered as similar incidents are: a few
thousand centres on the unit sphere, each point a centre plus noise, normalised. The noise
has a decaying spectrum (variance of coordinate i proportional to 1/(i+1), about 26
effective dimensions) as text embeddings do: uniform random vectors in 384 dimensions have
no neighbourhood structure and are unrealistically hard for any HNSW graph. Each point's
metadata is drawn too: its centre gives the alert and the kind of object (similar incidents
share their alert), the cluster and the namespace are drawn apart (namespaces skewed, 1.4%
to 28% of the rows). Two filtered searches: by the query's alert, as storage's similar
incidents search filters (correlated with similarity), and by a namespace (uncorrelated:
the hard case for a graph index, which must walk past nearer rows the filter drops). The
queries are held-out points of the same distribution (never inserted). Ground truth: the
exact top 10 by cosine, computed with numpy, and the exact top 10 among the rows passing
each filter; recall@10 = |approximate top 10 & exact top 10| / 10, averaged over the
queries.

Measured for each backend: the build (pgvector: COPY into the table with the HNSW index
dropped, then `rebuild_index`; Weaviate: its load, which indexes as it goes), the disk it
uses, its memory (pgvector: the index's size and shared_buffers; Weaviate: its RSS), and
search latency p50/p99 through `VectorStore.search(vector, VectorFilter(model=...), 10)`
at 1 and 8 concurrent callers (asyncio tasks in this process sharing the store's pool),
with recall@10. pgvector is swept over hnsw_ef_search (a settings object per value, as
storage reads it at each search) and built with each --builds m:ef_construction. The
PostgreSQL server is the dev stack's embedded one, restarted here with --shared-buffers;
the index and the table are prewarmed into shared_buffers (pg_prewarm), the steady state
of a search path in use. Pinecone is not measured: only a loopback stand-in of its API
runs here, not Pinecone's engine.

Goal (the issue): pgvector p99 under 10 ms at recall@10 >= 0.95 on this machine, with the
default settings. Progress goes to stderr; the figures to stdout. The load generator,
PostgreSQL and Weaviate share the machine's cores: latencies at 8 callers include the
Python client's own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import asyncpg
import numpy as np
import numpy.typing as npt

from bench.figures import Figure
from kubernaut.devstack.postgres import EmbeddedPostgres
from kubernaut.services.storage.vectors import (
    IncidentVector,
    VectorFilter,
    VectorMatch,
)
from kubernaut.services.storage.vectors.pgvector import (
    PgVectorStore,
    index_name,
    table_name,
)
from kubernaut.services.storage.vectors.settings import VectorBackend, VectorStoreSettings

MODEL: Final = "bench-synthetic-384"
LIMIT: Final = 10
P99_GOAL_MS: Final = 10.0
RECALL_GOAL: Final = 0.95
DEFAULT_EF_SEARCH: Final = VectorStoreSettings().hnsw_ef_search
DEFAULT_BUILD: Final = (VectorStoreSettings().hnsw_m, VectorStoreSettings().hnsw_ef_construction)
# Incident ids: this prefix, then the point's index in the data set (read back from a match).
_ID_PREFIX: Final = 0x6B75_6265_726E_6175 << 64
_INDEX_MASK: Final = (1 << 64) - 1
_CHUNK: Final = 50_000
GIB: Final = 1 << 30
MIB: Final = 1 << 20

CLUSTERS: Final = ("prod-eu-1", "prod-us-1", "staging")
CLUSTER_WEIGHTS: Final = (0.45, 0.45, 0.10)
NAMESPACES: Final = (
    "checkout", "payments", "search", "catalog", "cart", "orders", "shipping", "auth",
    "frontend", "recommendations", "inventory", "notifications", "billing", "reports",
    "media", "ads", "analytics", "ingest", "monitoring", "kube-system",
)  # fmt: skip
# (alert, kind of object): a centre's alert is ALERTS[centre % len(ALERTS)].
ALERTS: Final = (
    ("KubePodCrashLooping", "Pod"),
    ("KubePodNotReady", "Pod"),
    ("KubeContainerOOMKilled", "Pod"),
    ("KubeDeploymentReplicasMismatch", "Deployment"),
    ("KubeDeploymentRolloutStuck", "Deployment"),
    ("KubeStatefulSetReplicasMismatch", "StatefulSet"),
    ("KubeHpaMaxedOut", "HorizontalPodAutoscaler"),
    ("KubeJobFailed", "Job"),
    ("KubeNodeNotReady", "Node"),
    ("NodeFilesystemSpaceFillingUp", "Node"),
    ("KubePersistentVolumeFillingUp", "PersistentVolumeClaim"),
    ("TargetDown", "Service"),
)
_OPENED: Final = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

_STARTED = time.monotonic()


def say(message: str) -> None:
    """A progress line on stderr, with the time since the bench started."""
    print(f"[{time.monotonic() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


class Every:
    """True at most once per `seconds` (throttles progress lines)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


# -- the data -----------------------------------------------------------------------------------


Matrix = npt.NDArray[np.float32]
Indices = npt.NDArray[np.int64]


@dataclass
class Dataset:
    vectors: Matrix  # (count, dims), unit rows
    centre: npt.NDArray[np.int32]
    namespace: npt.NDArray[np.int8]
    cluster: npt.NDArray[np.int8]
    queries: Matrix  # (queries, dims), unit rows, held out
    query_namespace: npt.NDArray[np.int8]
    query_centre: npt.NDArray[np.int32]
    centres: int
    noise: float
    seed: int

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dims(self) -> int:
        return int(self.vectors.shape[1])


def namespace_weights() -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, len(NAMESPACES) + 1, dtype=np.float64)
    result: npt.NDArray[np.float64] = weights / weights.sum()
    return result


def _points(
    rng: np.random.Generator, centres: Matrix, spectrum: Matrix, noise: float, n: int
) -> tuple[Matrix, npt.NDArray[np.int32], npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """`n` points around random centres (unit rows) and their metadata draws."""
    centre = rng.integers(0, len(centres), size=n, dtype=np.int32)
    points = rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    points *= spectrum * np.float32(noise)
    points += centres[centre]
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    namespace = rng.choice(len(NAMESPACES), size=n, p=namespace_weights()).astype(np.int8)
    cluster = rng.choice(len(CLUSTERS), size=n, p=CLUSTER_WEIGHTS).astype(np.int8)
    return points, centre, namespace, cluster


def generate(count: int, queries: int, dims: int, centres: int, noise: float, seed: int) -> Dataset:
    """The data set, generated in chunks of _CHUNK rows into one array (no copies); each
    chunk its own seeded stream, so the data does not depend on the chunk size's history."""
    rng = np.random.default_rng([seed, 0])
    centre_vectors = rng.standard_normal((centres, dims), dtype=np.float32)
    centre_vectors /= np.linalg.norm(centre_vectors, axis=1, keepdims=True)
    # Coordinate i's noise variance is proportional to 1/(i+1); total noise norm ~ `noise`.
    variances = 1.0 / np.arange(1, dims + 1, dtype=np.float64)
    spectrum = np.sqrt(variances / variances.sum()).astype(np.float32)
    vectors = np.empty((count, dims), dtype=np.float32)
    centre = np.empty(count, dtype=np.int32)
    namespace = np.empty(count, dtype=np.int8)
    cluster = np.empty(count, dtype=np.int8)
    tick = Every(10)
    for chunk, start in enumerate(range(0, count, _CHUNK)):
        stop = min(start + _CHUNK, count)
        part = np.random.default_rng([seed, 1, chunk])
        points, c, ns, cl = _points(part, centre_vectors, spectrum, noise, stop - start)
        vectors[start:stop] = points
        centre[start:stop], namespace[start:stop], cluster[start:stop] = c, ns, cl
        if tick():
            say(f"generating: {stop:,}/{count:,} vectors")
    held_out = np.random.default_rng([seed, 2])
    q_vectors, q_centre, q_namespace, _ = _points(
        held_out, centre_vectors, spectrum, noise, queries
    )
    return Dataset(
        vectors, centre, namespace, cluster, q_vectors, q_namespace, q_centre, centres, noise, seed
    )


# The filtered searches: storage's own (the alert that opened the incident searched for,
# which similar incidents share: correlated with similarity) and a namespace's (drawn apart
# from the vector: uncorrelated, the hard case for a graph index).
FILTERS: Final = ("alert", "namespace")


def filter_keys(data: Dataset, name: str, start: int, stop: int) -> tuple[Any, Any]:
    """(the key of stored rows start..stop, the key of each query) of filter `name`."""
    if name == "alert":
        return data.centre[start:stop] % len(ALERTS), data.query_centre % len(ALERTS)
    return data.namespace[start:stop], data.query_namespace


def query_filters(data: Dataset, name: str) -> list[VectorFilter]:
    if name == "alert":
        return [
            VectorFilter(MODEL, alert_names=(ALERTS[c % len(ALERTS)][0],))
            for c in data.query_centre
        ]
    if name == "namespace":
        return [VectorFilter(MODEL, namespace=NAMESPACES[n]) for n in data.query_namespace]
    return [VectorFilter(MODEL)] * len(data.queries)


def incident_id(index: int) -> str:
    return str(uuid.UUID(int=_ID_PREFIX | index))


def index_of(incident: str) -> int:
    return uuid.UUID(incident).int & _INDEX_MASK


def incident_vectors(data: Dataset, start: int, stop: int) -> list[IncidentVector]:
    rows = data.vectors[start:stop].tolist()
    return [
        IncidentVector(
            incident_id=incident_id(i),
            model=MODEL,
            vector=rows[i - start],
            cluster=CLUSTERS[data.cluster[i]],
            namespace=NAMESPACES[data.namespace[i]],
            subject_kind=ALERTS[data.centre[i] % len(ALERTS)][1],
            alert_name=ALERTS[data.centre[i] % len(ALERTS)][0],
            opened_at=_OPENED + dt.timedelta(minutes=i),
        )
        for i in range(start, stop)
    ]


# -- ground truth -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    count: int  # over the first `count` vectors of the data set
    top: Indices  # (queries, LIMIT) exact nearest, nearest first
    top_filtered: dict[str, Indices]  # the same among the rows passing each of FILTERS
    nearest_similarity: float  # mean cosine of the exact nearest
    tenth_similarity: float  # mean cosine of the exact 10th nearest
    random_similarity: float  # mean cosine to a random stored vector
    seconds: float


def _merge(best: tuple[Matrix, Indices], scores: Matrix, offset: int) -> tuple[Matrix, Indices]:
    """The LIMIT highest of `best` and this chunk's `scores` per query row."""
    k = min(LIMIT, scores.shape[1])
    local = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = np.concatenate([best[0], np.take_along_axis(scores, local, axis=1)], axis=1)
    indices = np.concatenate([best[1], local + offset], axis=1)
    keep = np.argpartition(-values, LIMIT - 1, axis=1)[:, :LIMIT]
    return np.take_along_axis(values, keep, axis=1), np.take_along_axis(indices, keep, axis=1)


def exact_top(data: Dataset, count: int) -> Truth:
    """The exact top LIMIT by cosine (dot products of unit vectors) among the first `count`
    vectors for every query, unfiltered and with each of FILTERS; in chunks."""
    started = time.monotonic()
    q = data.queries
    empty = (
        np.full((len(q), LIMIT), -np.inf, dtype=np.float32),
        np.full((len(q), LIMIT), -1, dtype=np.int64),
    )
    best = empty
    best_filtered = {name: (empty[0].copy(), empty[1].copy()) for name in FILTERS}
    tick = Every(10)
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        scores = q @ data.vectors[start:stop].T
        best = _merge(best, scores, start)
        for name in FILTERS:
            stored, wanted = filter_keys(data, name, start, stop)
            passing = np.where(stored[None, :] == wanted[:, None], scores, -np.inf)
            best_filtered[name] = _merge(best_filtered[name], passing.astype(np.float32), start)
        if tick():
            say(f"exact top {LIMIT} of {len(q):,} queries: {stop:,}/{count:,} vectors")

    def ordered(found: tuple[Matrix, Indices]) -> tuple[Matrix, Indices]:
        order = np.argsort(-found[0], axis=1)
        return np.take_along_axis(found[0], order, axis=1), np.take_along_axis(
            found[1], order, axis=1
        )

    values, top = ordered(best)
    top_filtered = {name: ordered(found)[1] for name, found in best_filtered.items()}
    sample = np.random.default_rng([data.seed, 3]).integers(0, count, size=len(q))
    random_similarity = float(np.mean(np.sum(q * data.vectors[sample], axis=1)))
    return Truth(
        count,
        top,
        top_filtered,
        float(values[:, 0].mean()),
        float(values[:, LIMIT - 1].mean()),
        random_similarity,
        time.monotonic() - started,
    )


# -- searching through the interface ------------------------------------------------------------


@dataclass
class Searches:
    concurrency: int
    latencies: list[float]  # seconds, one per search
    found: list[list[int]]  # per query, the data set indices of its matches
    seconds: float

    def quantile_ms(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def recall(self, truth: Indices) -> float:
        hits = [
            len(set(found) & set(truth[i].tolist())) / LIMIT for i, found in enumerate(self.found)
        ]
        return float(np.mean(hits))


class Searcher(Protocol):
    """What a sweep calls: VectorStore.search (or the bare SQL below)."""

    async def search(
        self, vector: Sequence[float], where: VectorFilter, limit: int
    ) -> list[VectorMatch]: ...


async def run_searches(
    store: Searcher,
    vectors: Sequence[Sequence[float]],
    filters: Sequence[VectorFilter],
    concurrency: int,
) -> Searches:
    """Every query once, `concurrency` callers taking the next query as they finish."""
    found: list[list[int]] = [[] for _ in vectors]
    latencies: list[float] = []
    queue = iter(range(len(vectors)))

    async def caller() -> None:
        for i in queue:
            started = time.perf_counter()
            matches = await store.search(vectors[i], filters[i], LIMIT)
            latencies.append(time.perf_counter() - started)
            found[i] = [index_of(m.incident_id) for m in matches]

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Searches(concurrency, latencies, found, time.perf_counter() - started)


@dataclass
class SweepRow:
    label: str  # "ef_search 64", "alert filter, ef_search 64"
    ef_search: int
    recall: float
    runs: list[Searches]
    filtered: str = ""  # one of FILTERS, or none
    bare: bool = False  # not through the interface


@dataclass
class Setting:
    """One row of a sweep: what searches, and what to do before each of its turns (Weaviate
    sets its ef on the collection)."""

    label: str
    ef_search: int
    searcher: Searcher
    concurrencies: Sequence[int]
    filtered: str = ""
    bare: bool = False
    prepare: Callable[[], Awaitable[None]] | None = None


def label(ef_search: int, filtered: str = "", knob: str = "ef_search") -> str:
    text = f"{filtered + ' filter, ' if filtered else ''}{knob} {ef_search}"
    return text + (" (default)" if ef_search == DEFAULT_EF_SEARCH else "")


async def sweep(
    backend: str,
    settings: Sequence[Setting],
    data: Dataset,
    truth: Truth,
    rounds: int,
    warmup: int = 200,
) -> list[SweepRow]:
    """Every setting over every query at each of its concurrencies, interleaved: `rounds`
    turns, each over 1/rounds of the queries for every setting in turn, so that the
    machine's background load (shared, noisy) falls on all settings alike. Each setting is
    warmed up first at its highest concurrency (every pooled connection opened, its
    statements prepared and planned) with `warmup` searches that are not timed."""
    vectors = data.queries.tolist()
    filters = {name: query_filters(data, name) for name in ("", *FILTERS)}
    n = len(vectors)
    for setting in settings:
        if setting.prepare is not None:
            await setting.prepare()
        w = min(warmup, n)
        await run_searches(
            setting.searcher,
            vectors[:w],
            filters[setting.filtered][:w],
            max(setting.concurrencies),
        )
    totals = {
        (i, c): Searches(c, [], [[] for _ in range(n)], 0.0)
        for i, setting in enumerate(settings)
        for c in setting.concurrencies
    }
    for turn in range(rounds):
        share = list(range(turn, n, rounds))
        for i, setting in enumerate(settings):
            if setting.prepare is not None:
                await setting.prepare()
            for c in setting.concurrencies:
                part = await run_searches(
                    setting.searcher,
                    [vectors[j] for j in share],
                    [filters[setting.filtered][j] for j in share],
                    c,
                )
                total = totals[i, c]
                total.latencies += part.latencies
                total.seconds += part.seconds
                for k, j in enumerate(share):
                    total.found[j] = part.found[k]
        say(f"{backend} searches: round {turn + 1}/{rounds} of {len(settings)} settings done")
    rows = []
    for i, setting in enumerate(settings):
        runs = [totals[i, c] for c in setting.concurrencies]
        expected = truth.top_filtered[setting.filtered] if setting.filtered else truth.top
        recall = float(np.mean([r.recall(expected) for r in runs]))
        row = SweepRow(
            setting.label, setting.ef_search, recall, runs, setting.filtered, setting.bare
        )
        say(f"{backend} {row.label}: recall@10 {row.recall:.3f}, {_runs_text(row.runs)}")
        rows.append(row)
    return rows


def _runs_text(runs: Sequence[Searches]) -> str:
    return ", ".join(
        f"{r.concurrency} caller{'s' if r.concurrency > 1 else ''} p50 {r.quantile_ms(50):.2f}"
        f" p99 {r.quantile_ms(99):.2f} ms"
        for r in runs
    )


# -- pgvector -----------------------------------------------------------------------------------


@dataclass
class PgBuild:
    m: int
    ef_construction: int
    build_seconds: float
    table_bytes: int
    index_bytes: int
    primary_key_bytes: int
    rows: list[SweepRow] = field(default_factory=list)
    sweep_seconds: float = 0.0
    server_log: list[str] = field(default_factory=list)  # during the build


@dataclass
class PgResult:
    count: int
    table: str
    version: str
    settings: dict[str, str]
    load_seconds: float
    vacuum_seconds: float
    batch: int
    builds: list[PgBuild]
    prewarmed: bool


async def _show(conn: asyncpg.Connection, names: Sequence[str]) -> dict[str, str]:
    return {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}


@dataclass(frozen=True)
class PgServer:
    dsn: str
    log_file: Path


@contextlib.contextmanager
def embedded_postgres(root: Path, shared_buffers: str) -> Iterator[PgServer]:
    """An embedded PostgreSQL under `root`, restarted with `shared_buffers` (a server
    setting: ALTER SYSTEM, then a restart), a larger max_wal_size for the bulk load, and
    notices (pgvector's about the build's memory) and autovacuum runs in its log."""
    server = EmbeddedPostgres(root / "data", database="vectors")
    server.start()
    try:
        settings = {
            "shared_buffers": shared_buffers,
            "max_wal_size": "8GB",
            "log_min_messages": "notice",
            "log_autovacuum_min_duration": "0",
        }
        asyncio.run(_alter_system(server.dsn, settings))
        server.stop()
        dsn = server.start()
        yield PgServer(dsn, server.log_file)
    finally:
        server.stop()


_WORTH_NOTING: Final = ("hnsw", "incident_vectors", "maintenance_work_mem")


def log_lines_since(path: Path, offset: int) -> list[str]:
    """The server log's lines after byte `offset` that tell about a build: pgvector's
    notices (the graph outgrowing maintenance_work_mem), autovacuum runs on the table."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
    except OSError:
        return []
    return [
        line.strip()
        for line in text.splitlines()
        if any(word in line.lower() for word in _WORTH_NOTING) and ", skipping" not in line
    ]


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def _alter_system(dsn: str, settings: dict[str, str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name, value in settings.items():
            await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    finally:
        await conn.close()


async def _heartbeat(dsn: str, what: str, total: int, interval: float = 15.0) -> None:
    """Progress of a CREATE INDEX (pg_stat_progress_create_index: pgvector counts the tuples
    it has put in the graph) on stderr until cancelled."""
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    try:
        while True:
            await asyncio.sleep(interval)
            row = await conn.fetchrow(
                "SELECT phase, tuples_done FROM pg_stat_progress_create_index"
                " ORDER BY tuples_done DESC LIMIT 1"
            )
            elapsed = time.monotonic() - started
            detail = ""
            if row is not None:
                done = int(row["tuples_done"] or 0)
                detail = f" ({row['phase']}"
                if done:
                    detail += f": {done:,}/{total:,} vectors, {done / elapsed:,.0f}/s"
                detail += ")"
            say(f"{what}: {elapsed:.0f} s{detail}")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def heartbeat(dsn: str, what: str, total: int) -> AsyncIterator[None]:
    task = asyncio.create_task(_heartbeat(dsn, what, total))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def pg_settings(
    ef_search: int = DEFAULT_EF_SEARCH, m: int = 16, ef_construction: int = 64
) -> VectorStoreSettings:
    return VectorStoreSettings(
        store=VectorBackend.PGVECTOR,
        hnsw_m=m,
        hnsw_ef_construction=ef_construction,
        hnsw_ef_search=ef_search,
        timeout_seconds=30.0,
    )


async def pg_load(dsn: str, data: Dataset, batch: int, callers: int = 2) -> float:
    """COPY every vector in through `upsert` (batches over 200 go through COPY), the HNSW
    index dropped first; `callers` batches in flight so that this process's encoding and
    the server's inserting overlap."""
    store = await PgVectorStore.connect(dsn, pg_settings(), max_size=callers + 1)
    try:
        await store.drop_index(data.dims)
        started = time.monotonic()
        tick = Every(10)
        starts = iter(range(0, data.count, batch))
        done = 0

        async def loader() -> None:
            nonlocal done
            for start in starts:
                stop = min(start + batch, data.count)
                await store.upsert(incident_vectors(data, start, stop))
                done += stop - start
                if tick():
                    elapsed = time.monotonic() - started
                    say(
                        f"pgvector load: {done:,}/{data.count:,} vectors, {elapsed:.0f} s, "
                        f"{done / elapsed:,.0f}/s"
                    )

        await asyncio.gather(*(loader() for _ in range(callers)))
        return time.monotonic() - started
    finally:
        await store.close()


async def pg_sizes(conn: asyncpg.Connection, dims: int) -> tuple[int, int, int]:
    table, index = table_name(dims), index_name(dims)
    row = await conn.fetchrow(
        "SELECT pg_table_size($1::regclass) AS t, pg_relation_size($2::regclass) AS i,"
        " pg_indexes_size($1::regclass) - pg_relation_size($2::regclass) AS k",
        table,
        index,
    )
    assert row is not None
    return int(row["t"]), int(row["i"]), int(row["k"])


async def bench_pgvector(
    server: PgServer, data: Dataset, truth: Truth, args: argparse.Namespace
) -> PgResult:
    dims = data.dims
    dsn = server.dsn
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await admin.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        extension = await admin.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
        version = (
            f"pgvector {extension} on PostgreSQL {await admin.fetchval('SHOW server_version')}"
        )
        say(f"pgvector: loading {data.count:,} vectors in batches of {args.batch:,}")
        load_seconds = await pg_load(dsn, data, args.batch)
        say(f"pgvector: loaded in {load_seconds:.1f} s; VACUUM ANALYZE")
        started = time.monotonic()
        await admin.execute(f"VACUUM (ANALYZE) {table_name(dims)}")
        vacuum_seconds = time.monotonic() - started
        builds: list[PgBuild] = []
        for m, ef_construction in args.builds:
            builds.append(
                await pg_build_and_search(server, admin, data, truth, args, m, ef_construction)
            )
        settings = await _show(
            admin,
            (
                "shared_buffers",
                "effective_cache_size",
                "work_mem",
                "max_parallel_workers",
                "max_wal_size",
                "jit",
            ),
        )
        settings["maintenance_work_mem (index build)"] = args.maintenance_work_mem
        settings["max_parallel_maintenance_workers (index build)"] = "2"
        return PgResult(
            data.count,
            table_name(dims),
            version,
            settings,
            load_seconds,
            vacuum_seconds,
            args.batch,
            builds,
            not args.no_prewarm,
        )
    finally:
        await admin.close()


async def pg_build_and_search(
    server: PgServer,
    admin: asyncpg.Connection,
    data: Dataset,
    truth: Truth,
    args: argparse.Namespace,
    m: int,
    ef_construction: int,
) -> PgBuild:
    dims, dsn = data.dims, server.dsn
    what = f"pgvector index build (m={m}, ef_construction={ef_construction})"
    store = await PgVectorStore.connect(dsn, pg_settings(m=m, ef_construction=ef_construction))
    offset = log_size(server.log_file)
    try:
        # A store new to the table would CREATE INDEX IF NOT EXISTS in rebuild_index's
        # ensure_table before dropping and building it: with the index dropped for the bulk
        # load, that builds it a first time at the session's maintenance_work_mem (64MB:
        # on disk, slow) for nothing. `kubernaut storage reindex` drops, loads and rebuilds
        # with one store, which knows the table; a search teaches this one too (no index:
        # an exact scan, once).
        await store.search(data.queries[0].tolist(), VectorFilter(MODEL), 1)
        say(f"{what}: started (maintenance_work_mem {args.maintenance_work_mem})")
        started = time.monotonic()
        async with heartbeat(dsn, what, data.count):
            await store.rebuild_index(dims, maintenance_work_mem=args.maintenance_work_mem)
        build_seconds = time.monotonic() - started
        say(f"{what}: done in {build_seconds:.1f} s")
    finally:
        await store.close()
    notes = log_lines_since(server.log_file, offset)
    for line in notes:
        say(f"{what}: server log: {line}")
    table_bytes, index_bytes, key_bytes = await pg_sizes(admin, dims)
    build = PgBuild(
        m, ef_construction, build_seconds, table_bytes, index_bytes, key_bytes, server_log=notes
    )
    if not args.no_prewarm:
        started = time.monotonic()
        await admin.execute("SELECT pg_prewarm($1::regclass)", index_name(dims))
        await admin.execute("SELECT pg_prewarm($1::regclass)", table_name(dims))
        say(f"pgvector: index and table prewarmed in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    build.rows = await pg_sweep(dsn, data, truth, args)
    build.sweep_seconds = time.monotonic() - started
    return build


class BareSql:
    """The same nearest-neighbour query as one statement on a connection whose
    hnsw.ef_search is set once (no transaction, no SET LOCAL per search): what the HNSW
    scan itself costs, beside what PgVectorStore.search costs."""

    def __init__(self, conn: asyncpg.Connection, table: str) -> None:
        self._conn = conn
        self._sql = (
            f"SELECT incident_id, embedding <=> $1 AS distance FROM {table}"
            " WHERE model = $2 ORDER BY embedding <=> $1 LIMIT $3"
        )

    async def search(
        self, vector: Sequence[float], where: VectorFilter, limit: int
    ) -> list[VectorMatch]:
        rows = await self._conn.fetch(
            self._sql, np.asarray(vector, dtype=np.float32), where.model, limit
        )
        return [VectorMatch(str(r["incident_id"]), float(r["distance"])) for r in rows]


async def pg_sweep(
    dsn: str, data: Dataset, truth: Truth, args: argparse.Namespace
) -> list[SweepRow]:
    """Through PgVectorStore: each ef_search (a settings object, and a store, per value)
    unfiltered, then --filter-ef with each filter; and the bare SQL at the default."""
    from pgvector.asyncpg import register_vector

    async with contextlib.AsyncExitStack() as stack:
        stores: dict[int, PgVectorStore] = {}
        for ef_search in sorted({*args.ef_search, args.filter_ef}):
            store = await PgVectorStore.connect(
                dsn, pg_settings(ef_search=ef_search), max_size=max(args.concurrency) + 1
            )
            stack.push_async_callback(store.close)
            stores[ef_search] = store
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        await register_vector(conn)
        await conn.execute(f"SET hnsw.ef_search = {DEFAULT_EF_SEARCH:d}")
        settings = [Setting(label(ef), ef, stores[ef], args.concurrency) for ef in args.ef_search]
        settings += [
            Setting(label(args.filter_ef, name), args.filter_ef, stores[args.filter_ef],
                    args.concurrency, filtered=name)
            for name in FILTERS
        ]  # fmt: skip
        settings.append(
            Setting(
                f"ef_search {DEFAULT_EF_SEARCH}, bare SQL (no interface)",
                DEFAULT_EF_SEARCH,
                BareSql(conn, table_name(data.dims)),
                [1],
                bare=True,
            )
        )
        return await sweep("pgvector", settings, data, truth, args.rounds)


# -- Weaviate -----------------------------------------------------------------------------------


@dataclass
class WeaviateResult:
    count: int
    version: str
    load_seconds: float
    batch: int
    data_bytes: int
    rss_after_load: int
    rss_after_search: int
    rows: list[SweepRow]
    ef_swept: bool
    wanted: int  # the vectors it was to hold
    budget_minutes: float


def weaviate_binary() -> Path | None:
    from kubernaut.devstack.weaviate import default_weaviate_bin

    binary = default_weaviate_bin()
    return binary if binary.exists() else None


def rss_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def disk_bytes(path: Path) -> int:
    """Blocks allocated under `path` (as du counts them)."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


async def bench_weaviate(
    root: Path, data: Dataset, truth: Truth, args: argparse.Namespace
) -> WeaviateResult:
    """Load the first truth.count vectors (fewer when the load outlasts --weaviate-minutes:
    then the ground truth is computed again for what was loaded), then sweep ef."""
    import weaviate
    from weaviate.classes.config import Reconfigure

    from kubernaut.devstack.weaviate import Weaviate
    from kubernaut.services.storage.vectors.weaviate import WeaviateStore, collection_name

    count = truth.count
    server = Weaviate(root / "weaviate", max_procs=os.cpu_count() or 2)
    await asyncio.to_thread(server.start)
    try:
        settings = VectorStoreSettings(
            store=VectorBackend.WEAVIATE,
            weaviate_url=server.url,
            weaviate_grpc_port=server.grpc_port,
            timeout_seconds=30.0,
        )
        store = await WeaviateStore.connect(settings)
        admin = weaviate.use_async_with_custom(
            http_host=server.host,
            http_port=server.http_port,
            http_secure=False,
            grpc_host=server.host,
            grpc_port=server.grpc_port,
            grpc_secure=False,
        )
        await admin.connect()
        try:
            version = f"Weaviate {(await admin.get_meta()).get('version', '?')}"
            say(f"weaviate: loading {count:,} vectors in batches of {args.weaviate_batch:,}")
            started = time.monotonic()
            tick = Every(10)
            budget = args.weaviate_minutes * 60
            loaded = 0
            for start in range(0, count, args.weaviate_batch):
                if time.monotonic() - started > budget:
                    say(
                        f"weaviate: the load outlasted --weaviate-minutes {args.weaviate_minutes:g}"
                        f" at {loaded:,} of {count:,} vectors: benching those"
                    )
                    break
                stop = min(start + args.weaviate_batch, count)
                await store.upsert(incident_vectors(data, start, stop))
                loaded = stop
                if tick():
                    elapsed = time.monotonic() - started
                    say(
                        f"weaviate load: {stop:,}/{count:,} vectors, {elapsed:.0f} s, "
                        f"{stop / elapsed:,.0f}/s, RSS {rss_bytes(server.pid) / GIB:.2f} GiB"
                    )
            load_seconds = time.monotonic() - started
            say(f"weaviate: {loaded:,} vectors loaded and indexed in {load_seconds:.1f} s")
            rss_after_load = rss_bytes(server.pid)
            cut_short = loaded < count
            if cut_short:
                truth = await asyncio.to_thread(exact_top, data, loaded)
            collection = admin.collections.use(collection_name(MODEL))
            refused: list[str] = []

            def set_ef(ef: int) -> Callable[[], Awaitable[None]]:
                async def prepare() -> None:
                    try:
                        await collection.config.update(
                            vector_config=Reconfigure.Vectors.update(
                                name="default",
                                vector_index_config=Reconfigure.VectorIndex.hnsw(ef=ef),
                            )
                        )
                    except Exception as exc:  # the server's or the client's refusal, reported
                        refused.append(f"ef {ef}: {exc}")
                        say(f"weaviate: cannot set ef to {ef} ({exc})")
                    await asyncio.sleep(1.0)  # the schema change reaches the shard

                return prepare

            rows_of = [
                Setting(label(ef, knob="ef"), ef, store, args.concurrency, prepare=set_ef(ef))
                for ef in args.ef_search
            ]
            rows_of += [
                Setting(label(args.filter_ef, name, "ef"), args.filter_ef, store,
                        args.concurrency, filtered=name, prepare=set_ef(args.filter_ef))
                for name in FILTERS
            ]  # fmt: skip
            rows = await sweep("weaviate", rows_of, data, truth, args.rounds)
            ef_swept = not refused
            return WeaviateResult(
                loaded,
                version,
                load_seconds,
                args.weaviate_batch,
                disk_bytes(server.data_dir),
                rss_after_load,
                rss_bytes(server.pid),
                rows,
                ef_swept,
                count,
                args.weaviate_minutes,
            )
        finally:
            await admin.close()
            await store.close()
    finally:
        await asyncio.to_thread(server.stop)


# -- the report ---------------------------------------------------------------------------------


def load_text() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_lines(load_at_start: str) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), {memory / GIB:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}",
        f"load average (1, 5, 15 min) at the start {load_at_start}, at the end {load_text()}"
        " (a shared machine: other work runs too)",
    ]


def size_text(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def sweep_table(rows: Sequence[SweepRow], concurrencies: Sequence[int]) -> list[str]:
    header = ["search, top 10", "recall@10"]
    for c in concurrencies:
        header += [f"{c} caller{'s' if c > 1 else ''}: p50 / p99", "searches/s"]
    cells = [header]
    for row in rows:
        line = [row.label, f"{row.recall:.3f}"]
        runs = {run.concurrency: run for run in row.runs}
        for c in concurrencies:
            run = runs.get(c)
            line += (
                [f"{run.quantile_ms(50):.2f} / {run.quantile_ms(99):.2f} ms", f"{run.rate:,.0f}"]
                if run is not None
                else ["-", "-"]
            )
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for n, line in enumerate(cells):
        out.append(
            "    "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("    " + "  ".join("-" * w for w in widths))
    return out


def data_lines(data: Dataset, truth: Truth) -> list[str]:
    weights = namespace_weights()
    return [
        f"data: {data.count:,} incident embeddings x {data.dims} dimensions (float32, unit), "
        f"{len(data.queries):,} held-out queries, top {LIMIT}; seed {data.seed}",
        f"  {data.centres:,} cluster centres on the unit sphere, noise norm {data.noise:g} with"
        " a 1/(i+1) variance spectrum; metadata: "
        f"{len(CLUSTERS)} clusters, {len(NAMESPACES)} namespaces "
        f"({weights.min():.1%} to {weights.max():.1%} of rows), {len(ALERTS)} alerts (one per"
        " centre)",
        "  filters: alert = the query's (storage's filter; correlated with similarity), "
        "namespace = one drawn apart from the vector (uncorrelated: the hard case)",
        f"  exact cosine similarity to a query: nearest {truth.nearest_similarity:.3f}, "
        f"10th {truth.tenth_similarity:.3f}, a random stored vector "
        f"{truth.random_similarity:.3f} (mean over queries; numpy exact top {LIMIT} in "
        f"{truth.seconds:.1f} s)",
    ]


def best_row(rows: Sequence[SweepRow]) -> SweepRow | None:
    """The cheapest unfiltered setting meeting the recall goal (lowest ef_search)."""
    meeting = [r for r in rows if not r.filtered and not r.bare and r.recall >= RECALL_GOAL]
    return min(meeting, key=lambda r: r.ef_search) if meeting else None


def goal_met(row: SweepRow | None) -> bool:
    return (
        row is not None and row.recall >= RECALL_GOAL and row.runs[0].quantile_ms(99) < P99_GOAL_MS
    )


def pg_lines(result: PgResult, concurrencies: Sequence[int]) -> list[str]:
    out = [
        f"pgvector: {result.version}, {result.count:,} vectors in {result.table}, HNSW over"
        " cosine, searched through PgVectorStore",
        "  server settings: " + ", ".join(f"{k} {v}" for k, v in result.settings.items()),
        f"  load: {result.count:,} vectors through upsert (COPY, batches of "
        f"{result.batch:,}, 2 in flight, the HNSW index dropped) in "
        f"{result.load_seconds:.1f} s ({result.count / result.load_seconds:,.0f}/s); "
        f"VACUUM ANALYZE {result.vacuum_seconds:.1f} s",
    ]
    for build in result.builds:
        total = build.table_bytes + build.index_bytes + build.primary_key_bytes
        out += [
            "",
            f"  HNSW m={build.m}, ef_construction={build.ef_construction}"
            + (" (the defaults)" if (build.m, build.ef_construction) == DEFAULT_BUILD else ""),
            f"    index build (rebuild_index): {build.build_seconds:.1f} s; "
            f"load + build {result.load_seconds + build.build_seconds:.1f} s",
            f"    disk: table {size_text(build.table_bytes)}, HNSW index "
            f"{size_text(build.index_bytes)}, primary key {size_text(build.primary_key_bytes)}"
            f": {size_text(total)} in all (pg_total_relation_size)",
            f"    memory: the HNSW index is {size_text(build.index_bytes)} (what a search path "
            f"keeps hot), shared_buffers {result.settings['shared_buffers']}"
            + ("; index and table prewarmed" if result.prewarmed else "; not prewarmed"),
            *(f"    server log during the build: {line}" for line in build.server_log[:10]),
            f"    searches (every row below): {build.sweep_seconds:.0f} s",
            "",
            *sweep_table(build.rows, concurrencies),
        ]
    return out


def weaviate_lines(
    result: WeaviateResult, pg_count: int | None, concurrencies: Sequence[int]
) -> list[str]:
    rate = result.count / result.load_seconds
    out = [f"weaviate: {result.version}, {result.count:,} vectors, searched through WeaviateStore"]
    if result.count < result.wanted:
        whole = max(pg_count or 0, result.wanted)
        out.append(
            f"  NOTE: the load outlasted its budget (--weaviate-minutes "
            f"{result.budget_minutes:g}) and stopped at {result.count:,} of the "
            f"{result.wanted:,} vectors asked; at the {rate:,.0f}/s measured (it slows as the "
            f"graph grows), loading {whole:,} would take at least {whole / rate / 60:.0f} min."
        )
    if pg_count is not None and result.count < pg_count:
        out.append(
            f"  NOTE: Weaviate holds {result.count:,} vectors here, not the {pg_count:,} "
            "pgvector holds: its recall and latency are for the smaller set, not comparable "
            "one to one with pgvector's."
        )
    out += [
        f"  build: load through upsert (insert_many, batches of {result.batch:,}; Weaviate "
        f"indexes as it inserts) {result.load_seconds:.1f} s ({rate:,.0f}/s)",
        f"  disk: data directory {size_text(result.data_bytes)}",
        f"  memory: RSS {size_text(result.rss_after_load)} after the load, "
        f"{size_text(result.rss_after_search)} after the searches",
        f"  HNSW maxConnections {DEFAULT_BUILD[0]}, efConstruction {DEFAULT_BUILD[1]}, "
        + (
            "ef set per row (collection config update)"
            if result.ef_swept
            else "ef could not be changed: rows at the default only"
        ),
        "",
        *sweep_table(result.rows, concurrencies),
    ]
    return out


def default_row(rows: Sequence[SweepRow]) -> SweepRow | None:
    """The unfiltered row at the default ef_search, through the interface."""
    return next(
        (r for r in rows if r.ef_search == DEFAULT_EF_SEARCH and not r.filtered and not r.bare),
        None,
    )


def summary_lines(pg: PgResult | None) -> list[str]:
    if pg is None or not pg.builds:
        return []
    out = [
        f"goal: pgvector p99 < {P99_GOAL_MS:g} ms (1 caller) at recall@10 >= {RECALL_GOAL:g}, "
        f"{pg.count:,} vectors"
    ]
    for build in pg.builds:
        out.append(f"  HNSW m={build.m}, ef_construction={build.ef_construction}:")
        default = default_row(build.rows)
        if default is not None:
            out.append(
                f"    default ef_search {DEFAULT_EF_SEARCH}: recall@10 {default.recall:.3f}, p99 "
                f"{default.runs[0].quantile_ms(99):.2f} ms: "
                + ("MET" if goal_met(default) else "NOT MET")
            )
        cheapest = best_row(build.rows)
        if cheapest is None:
            out.append(f"    no ef_search swept reached recall@10 {RECALL_GOAL:g}")
        elif cheapest is not default:
            out.append(
                f"    lowest ef_search swept with recall@10 >= {RECALL_GOAL:g}: "
                f"{cheapest.ef_search} (recall@10 {cheapest.recall:.3f}, p99 "
                f"{cheapest.runs[0].quantile_ms(99):.2f} ms: "
                + ("MET" if goal_met(cheapest) else "NOT MET")
                + ")"
            )
    return out


def pinecone_line() -> str:
    return (
        "pinecone: not measured. Only a loopback stand-in of Pinecone's data-plane API runs "
        "here (the tests'), not Pinecone's engine: its latency and recall would be the "
        "stand-in's, not Pinecone's."
    )


# -- running ------------------------------------------------------------------------------------


@dataclass
class Report:
    data: Dataset
    truth: Truth
    pg: PgResult | None
    weaviate: WeaviateResult | None
    weaviate_note: str
    phases: dict[str, float]
    load_at_start: str
    rounds: int

    def lines(self, concurrencies: Sequence[int]) -> list[str]:
        out = [
            "vector search: similar incidents through the VectorStore interface",
            *machine_lines(self.load_at_start),
            *data_lines(self.data, self.truth),
            f"searches: each row runs the {len(self.data.queries):,} queries once per number of"
            f" callers, interleaved with the other rows in {self.rounds} rounds, after 200"
            " untimed warm-up searches; latency is search()'s as its caller sees it (pgvector:"
            " pool acquire, a read-only transaction, SET LOCAL hnsw.ef_search and"
            " iterative_scan, the query; the bare SQL row: the query alone)",
            "",
        ]
        if self.pg is not None:
            out += [*pg_lines(self.pg, concurrencies), ""]
        if self.weaviate is not None:
            out += [
                *weaviate_lines(self.weaviate, self.pg.count if self.pg else None, concurrencies),
                "",
            ]
        elif self.weaviate_note:
            out += [f"weaviate: {self.weaviate_note}", ""]
        out += [pinecone_line(), ""]
        out += summary_lines(self.pg)
        out += [
            "",
            "time per phase: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.phases.items()),
        ]
        return out


def run(args: argparse.Namespace) -> Report:
    phases: dict[str, float] = {}
    load_at_start = load_text()

    def timed(name: str, call: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = call()
        phases[name] = time.monotonic() - started
        return result

    say(f"generating {args.count:,} + {args.queries:,} vectors of {args.dims} dimensions")
    data: Dataset = timed(
        "generate",
        lambda: generate(args.count, args.queries, args.dims, args.centres, args.noise, args.seed),
    )
    say("exact top 10 of every query (numpy)")
    truth: Truth = timed("exact top 10", lambda: exact_top(data, data.count))
    root = Path(tempfile.mkdtemp(prefix="kubernaut-bench-vectors-", dir=args.work_dir))
    pg: PgResult | None = None
    weaviate_result: WeaviateResult | None = None
    weaviate_note = ""
    try:
        if "pgvector" in args.backends:
            started = time.monotonic()
            with embedded_postgres(root / "postgres", args.shared_buffers) as server:
                pg = asyncio.run(bench_pgvector(server, data, truth, args))
            phases["pgvector"] = time.monotonic() - started
            # On stderr too, at once: a later failure (or a kill) does not lose them.
            for line in pg_lines(pg, args.concurrency):
                print(line, file=sys.stderr, flush=True)
            shutil.rmtree(root / "postgres", ignore_errors=True)
        if "weaviate" in args.backends:
            if weaviate_binary() is None:
                weaviate_note = (
                    "not measured: its server binary (weaviate-server, built by "
                    "scripts/build-weaviate.sh) is not there"
                )
                say(f"weaviate {weaviate_note}")
            else:
                count = min(args.weaviate_count or data.count, data.count)
                subset = (
                    truth
                    if count == data.count
                    else timed("exact top 10 (weaviate's subset)", lambda: exact_top(data, count))
                )
                started = time.monotonic()
                try:
                    weaviate_result = asyncio.run(bench_weaviate(root, data, subset, args))
                except Exception as exc:  # reported; pgvector's figures still count
                    traceback.print_exc()
                    weaviate_note = f"FAILED: {type(exc).__name__}: {exc}"
                phases["weaviate"] = time.monotonic() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return Report(
        data, truth, pg, weaviate_result, weaviate_note, phases, load_at_start, args.rounds
    )


def table_figures(quick: bool) -> list[Figure]:
    args = parse_args(
        ["--count", "100000", "--queries", "300", "--builds", "16:64", "--backends", "pgvector"]
        if quick
        else ["--builds", "16:64", "--backends", "pgvector"]
    )
    report = run(args)
    for line in report.lines(args.concurrency):  # to the log of `bench.all`
        print(line)
    assert report.pg is not None
    build = report.pg.builds[0]
    default = default_row(build.rows)
    assert default is not None
    return [
        Figure(
            f"pgvector similar-incident search, {report.pg.count:,} x {args.dims} "
            f"(ef_search {DEFAULT_EF_SEARCH}, 1 caller)",
            f"p99 < {P99_GOAL_MS:g} ms at recall@10 >= {RECALL_GOAL:g}",
            f"p99 {default.runs[0].quantile_ms(99):.2f} ms, recall@10 {default.recall:.3f}",
            goal_met(default),
        )
    ]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _builds(text: str) -> list[tuple[int, int]]:
    builds = []
    for part in text.split(","):
        m, _, ef = part.partition(":")
        builds.append((int(m), int(ef)))
    return builds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.vector_search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="vectors stored")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--centres", type=int, default=2000, help="cluster centres")
    parser.add_argument(
        "--noise", type=float, default=0.75, help="norm of a point's noise around its centre"
    )
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument(
        "--backends", default="pgvector,weaviate", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--weaviate-count",
        type=int,
        default=0,
        help="vectors Weaviate holds (the first of the data set; 0: --count)",
    )
    parser.add_argument(
        "--weaviate-minutes",
        type=float,
        default=30.0,
        help="a budget for Weaviate's load: past it, Weaviate is benched with what it holds",
    )
    parser.add_argument(
        "--ef-search",
        type=_ints,
        default=[16, 32, 40, 64, 100, 150, 200],
        help="hnsw_ef_search values swept (default: 16,32,40,64,100,150,200)",
    )
    parser.add_argument(
        "--filter-ef", type=int, default=DEFAULT_EF_SEARCH, help="ef_search of the filtered rows"
    )
    parser.add_argument(
        "--builds",
        type=_builds,
        default=[DEFAULT_BUILD, (24, 100)],
        help="pgvector HNSW builds, m:ef_construction,... (default: 16:64,24:100)",
    )
    parser.add_argument("--concurrency", type=_ints, default=[1, 8], help="callers per run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns the queries are split in (interleaved)"
    )
    parser.add_argument("--batch", type=int, default=5000, help="vectors per pgvector upsert")
    parser.add_argument(
        "--weaviate-batch", type=int, default=2000, help="vectors per Weaviate upsert"
    )
    parser.add_argument("--shared-buffers", default="4GB")
    parser.add_argument("--maintenance-work-mem", default="4GB")
    parser.add_argument(
        "--no-prewarm", action="store_true", help="search a cold index (no pg_prewarm)"
    )
    parser.add_argument(
        "--work-dir", default=None, help="where the servers' data goes (default: the temp dir)"
    )
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"pgvector", "weaviate", "pinecone"}
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}")
    if "pinecone" in args.backends:
        parser.error(pinecone_line())
    if args.count < LIMIT or args.queries < 1 or min(args.concurrency) < 1:
        parser.error(f"--count >= {LIMIT}, --queries >= 1, every --concurrency >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except KeyboardInterrupt:
        say("interrupted (SIGINT); what was started is stopped and its data removed")
        return 130
    for line in report.lines(args.concurrency):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
