"""The storage service's Store against a real PostgreSQL with pgvector."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from google.protobuf import timestamp_pb2
from kubernaut.common.v1 import alert_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.devstack.postgres import dsn_for_database
from kubernaut.devstack.processes import free_port
from kubernaut.services.storage.store import (
    InvalidPageToken,
    InvalidRecord,
    MigrationError,
    RecordConflict,
    Store,
    StoreUnavailable,
    load_migrations,
)

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def make_record(
    *,
    action_id: str | None = None,
    alert_name: str = "KubePodCrashLooping",
    started_at: dt.datetime = T0,
    finished: bool = True,
    message: str = "restarted",
    spec_before_json: str = '{"replicas": 1, "image": "app:1"}',
) -> storage_pb2.ActionRecord:
    record = storage_pb2.ActionRecord(
        action_id=action_id or str(uuid.uuid4()),
        incident_id="inc-42",
        alert_name=alert_name,
        action="restart_pod",
        target=alert_pb2.ResourceRef(
            cluster="prod-eu", namespace="shop", kind="Deployment", name="checkout"
        ),
        outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED,
        spec_before_json=spec_before_json,
        spec_after_json='{"replicas": 2, "image": "app:1"}',
        message=message,
        started_at=ts(started_at),
    )
    if finished:
        record.finished_at.CopyFrom(ts(started_at + dt.timedelta(seconds=3, microseconds=7)))
    return record


def normalized(record: storage_pb2.ActionRecord) -> storage_pb2.ActionRecord:
    """`record` with its specs re-serialised: specs are stored as jsonb, so they come back
    as the same JSON value, not the same text."""
    copy = storage_pb2.ActionRecord()
    copy.CopyFrom(record)
    for field in ("spec_before_json", "spec_after_json"):
        if text := getattr(copy, field):
            setattr(copy, field, json.dumps(json.loads(text), sort_keys=True))
    return copy


async def all_actions(store: Store, alert_name: str = "") -> list[storage_pb2.ActionRecord]:
    records, token = await store.list_actions(alert_name, 1000, "")
    assert token == ""
    return records


# -- migrations ---------------------------------------------------------------------------


async def test_migrations_are_applied_once_and_recorded(store: Store) -> None:
    first = await store.status()
    assert [(m.version, m.name) for m in first.migrations] == [
        (1, "init"),
        (2, "incidents"),
        (3, "incident_resources"),
        (4, "action_params"),
        (5, "dropped_alerts"),
        (6, "action_observed_after"),
        (7, "incident_after_close"),
        (8, "analyses"),
        (9, "audit"),
        (10, "vector_store"),
        (11, "incident_archive"),
    ]
    assert first.migrations[0].applied_at.tzinfo is not None

    assert await store.migrate() == []  # the fixture already migrated: a no-op now
    second = await store.status()
    assert second.migrations == first.migrations  # same applied_at: not re-applied


async def test_concurrent_migrate_applies_each_migration_once(database_dsn: str) -> None:
    stores = [await Store.connect(database_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
        assert sorted(results) == [[], [], [], list(range(1, 12))]
        conn = await asyncpg.connect(database_dsn)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == list(range(1, 12))
        finally:
            await conn.close()
    finally:
        for s in stores:
            await s.close()


async def test_failed_migration_is_rolled_back_and_not_recorded(
    database_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE second (id int); SELECT 1/0;")
    store = await Store.connect(database_dsn)
    try:
        with pytest.raises(MigrationError, match="0002_broken"):
            await store.migrate(tmp_path)
        status = await store.status()
        assert [m.version for m in status.migrations] == [1]
        conn = await asyncpg.connect(database_dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('first') IS NOT NULL")
            assert await conn.fetchval("SELECT to_regclass('second') IS NULL")
        finally:
            await conn.close()

        (tmp_path / "0002_broken.sql").write_text("CREATE TABLE second (id int);")
        assert await store.migrate(tmp_path) == [2]

        # A migration and its schema_migrations row commit together: here the row cannot be
        # inserted (the SQL took version 3 itself), so the migration's table must not stay.
        (tmp_path / "0003_sneaky.sql").write_text(
            "CREATE TABLE third (id int);"
            " INSERT INTO schema_migrations (version, name) VALUES (3, 'sneaky');"
        )
        with pytest.raises(MigrationError, match="0003_sneaky"):
            await store.migrate(tmp_path)
        conn = await asyncpg.connect(database_dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('third') IS NULL")
            assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 2
        finally:
            await conn.close()
    finally:
        await store.close()


def test_misnamed_or_duplicate_migration_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "1_short.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)
    (tmp_path / "1_short.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="used twice"):
        load_migrations(tmp_path)


async def test_status_reports_server_and_pgvector(store: Store) -> None:
    status = await store.status()
    assert status.server_version[0].isdigit()
    major, minor, *_ = status.pgvector_version.split(".")
    assert major.isdigit() and minor.isdigit()


async def test_pgvector_answers_nearest_neighbour(store: Store, database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("CREATE TABLE items (name text, embedding vector(3))")
        await conn.execute(
            "INSERT INTO items VALUES ('z', '[0, 0, 1]'), ('y', '[0, 1, 0]'), ('x', '[1, 0, 0]')"
        )
        nearest = "SELECT name FROM items ORDER BY embedding <-> $1::vector LIMIT 1"
        assert await conn.fetchval(nearest, "[0.1, 0.9, 0.2]") == "y"
        assert await conn.fetchval(nearest, "[0.8, 0.1, 0.3]") == "x"
        assert await conn.fetchval(nearest, "[0.2, 0.3, 0.7]") == "z"
    finally:
        await conn.close()


# -- record_action --------------------------------------------------------------------------


async def test_record_action_stores_and_retries_are_no_ops(store: Store) -> None:
    record = make_record()
    assert await store.record_action(record) is True
    assert await store.record_action(record) is False

    # The same content written differently: UUID case, JSON spacing and key order.
    rewritten = storage_pb2.ActionRecord()
    rewritten.CopyFrom(record)
    rewritten.action_id = record.action_id.upper()
    rewritten.spec_before_json = '{ "image":"app:1",\n "replicas":1 }'
    assert await store.record_action(rewritten) is False

    [stored] = await all_actions(store)
    assert normalized(stored) == normalized(record)


async def test_record_action_round_trips_optional_fields(store: Store) -> None:
    record = make_record(finished=False, spec_before_json="")
    record.spec_after_json = ""
    record.ClearField("target")
    record.target.kind = "Node"
    record.target.name = "node-1"
    record.incident_id = ""
    assert await store.record_action(record) is True
    [stored] = await all_actions(store)
    assert stored == record
    assert not stored.HasField("finished_at")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: setattr(r, "message", "something else"),
        lambda r: r.ClearField("finished_at"),
        lambda r: setattr(r, "spec_before_json", '{"replicas": 3, "image": "app:1"}'),
        lambda r: setattr(r, "outcome", storage_pb2.ACTION_OUTCOME_ROLLED_BACK),
        lambda r: setattr(r.target, "namespace", "other"),
        lambda r: r.started_at.CopyFrom(ts(T0 + dt.timedelta(microseconds=1))),
    ],
    ids=["message", "finished_at", "spec", "outcome", "target", "started_at"],
)
async def test_record_action_with_different_content_conflicts(
    store: Store, change: Callable[[storage_pb2.ActionRecord], object]
) -> None:
    record = make_record()
    assert await store.record_action(record)
    other = storage_pb2.ActionRecord()
    other.CopyFrom(record)
    change(other)
    with pytest.raises(RecordConflict, match=record.action_id):
        await store.record_action(other)
    assert [normalized(r) for r in await all_actions(store)] == [normalized(record)]


async def test_record_action_rejects_what_it_cannot_store(store: Store) -> None:
    with pytest.raises(InvalidRecord, match="not a UUID"):
        await store.record_action(make_record(action_id="not-a-uuid"))
    with pytest.raises(InvalidRecord):
        await store.record_action(make_record(spec_before_json="{not json"))
    no_start = make_record()
    no_start.ClearField("started_at")
    with pytest.raises(InvalidRecord, match="started_at"):
        await store.record_action(no_start)
    with pytest.raises(InvalidRecord):
        await store.record_action(make_record(message="nul \x00 byte"))
    assert await all_actions(store) == []


# -- list_actions ---------------------------------------------------------------------------


async def test_list_actions_filters_orders_and_paginates(store: Store) -> None:
    tie = T0 + dt.timedelta(minutes=4)
    wanted = [make_record(started_at=T0 + dt.timedelta(minutes=m)) for m in (2, 0, 3, 1)]
    # Two records with the same started_at: ordered by action_id, newest-first style.
    wanted += [make_record(started_at=tie), make_record(started_at=tie)]
    others = [
        make_record(alert_name="NodeNotReady", started_at=T0 + dt.timedelta(minutes=m))
        for m in (0, 2, 5)
    ]
    for record in [*wanted, *others]:
        assert await store.record_action(record)

    def newest_first(records: list[storage_pb2.ActionRecord]) -> list[str]:
        ordered = sorted(
            records,
            key=lambda r: (r.started_at.ToDatetime(), uuid.UUID(r.action_id)),
            reverse=True,
        )
        return [r.action_id for r in ordered]

    pages: list[list[str]] = []
    token = ""
    while True:
        records, token = await store.list_actions("KubePodCrashLooping", 2, token)
        pages.append([r.action_id for r in records])
        assert all(r.alert_name == "KubePodCrashLooping" for r in records)
        if not token:
            break
        assert len(pages) < 10, "pagination does not terminate"
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [i for page in pages for i in page] == newest_first(wanted)

    everything = await all_actions(store)
    assert [r.action_id for r in everything] == newest_first([*wanted, *others])
    assert [r.action_id for r in await all_actions(store, "NodeNotReady")] == newest_first(others)
    assert await store.list_actions("NoSuchAlert", 0, "") == ([], "")


async def test_list_actions_page_sizes(store: Store) -> None:
    for minute in range(105):
        await store.record_action(make_record(started_at=T0 + dt.timedelta(minutes=minute)))

    first, token = await store.list_actions("", 0, "")  # 0 means 100
    assert len(first) == 100 and token
    rest, last_token = await store.list_actions("", 0, token)
    assert len(rest) == 5 and last_token == ""
    assert first[0].started_at == ts(T0 + dt.timedelta(minutes=104))
    assert rest[-1].started_at == ts(T0)

    capped, capped_token = await store.list_actions("", 5000, "")
    assert len(capped) == 105 and capped_token == ""
    with pytest.raises(ValueError):
        await store.list_actions("", -1, "")


async def test_list_actions_rejects_bad_page_tokens(store: Store) -> None:
    for minute in range(3):
        await store.record_action(make_record(started_at=T0 + dt.timedelta(minutes=minute)))
    _, token = await store.list_actions("KubePodCrashLooping", 1, "")
    assert token

    bad_tokens = ["garbage!", "AAAA", token[:-4], token + "AAAA", "é" * 8]
    for bad in bad_tokens:
        with pytest.raises(InvalidPageToken):
            await store.list_actions("KubePodCrashLooping", 1, bad)
    with pytest.raises(InvalidPageToken, match="different alert_name"):
        await store.list_actions("NodeNotReady", 1, token)
    with pytest.raises(InvalidPageToken, match="different alert_name"):
        await store.list_actions("", 1, token)

    page, _ = await store.list_actions("KubePodCrashLooping", 1, token)
    assert page[0].started_at == ts(T0 + dt.timedelta(minutes=1))


# -- connection handling --------------------------------------------------------------------


async def test_connect_to_a_dead_server_raises_a_clear_error() -> None:
    port = free_port()
    dsn = f"postgresql://kubernaut:s3cret-pw@127.0.0.1:{port}/kubernaut"
    with pytest.raises(StoreUnavailable) as caught:
        await Store.connect(dsn, connect_timeout=5)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message


async def test_connect_to_a_missing_database_raises_a_clear_error(postgres_dsn: str) -> None:
    dsn = dsn_for_database(postgres_dsn, f"missing_{uuid.uuid4().hex}")
    with pytest.raises(StoreUnavailable, match="missing_"):
        await Store.connect(dsn)


async def test_ping_follows_the_database(
    store: Store, postgres_dsn: str, database_dsn: str
) -> None:
    assert await store.ping() is True
    conn = await asyncpg.connect(postgres_dsn)
    try:
        database = database_dsn.rsplit("/", 1)[1]
        await conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    finally:
        await conn.close()
    assert await store.ping() is False
    with pytest.raises(StoreUnavailable):
        await store.list_actions("", 0, "")


async def test_ping_is_false_once_closed(database_dsn: str) -> None:
    store = await Store.connect(database_dsn)
    assert await store.ping() is True
    await store.close()
    assert await store.ping() is False
