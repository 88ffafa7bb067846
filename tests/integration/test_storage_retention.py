"""Retention: incidents closed past KUBERNAUT_INCIDENT_RETENTION_DAYS move to the archive
tables; the live tables keep the recent past, and an archived incident is still found."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest
from kubernaut.common.v1 import remediation_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.services.storage.retention import Archiver
from kubernaut.services.storage.server import Database
from kubernaut.services.storage.store import Store, UnknownIncident
from tests.integration.test_storage_incidents import (
    CRASH,
    CRASH_ELSEWHERE,
    DISK_FULL,
    fingerprint,
    make_subject,
)

pytestmark = pytest.mark.integration

YEAR = dt.timedelta(days=365)


async def close_long_ago(dsn: str, incident_id: str, days: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE incidents SET closed_at = now() - make_interval(days => $2),"
            " opened_at = now() - make_interval(days => $2 + 1) WHERE incident_id = $1",
            uuid.UUID(incident_id),
            days,
        )
    finally:
        await conn.close()


async def test_old_closed_incidents_move_to_the_archive_and_are_still_found(
    store: Store, database_dsn: str
) -> None:
    old, _ = await store.open_incident(fingerprint(), *CRASH)
    twin, _ = await store.open_incident(fingerprint(), *CRASH_ELSEWHERE)
    recent, _ = await store.open_incident(fingerprint(), *DISK_FULL)
    still_open, _ = await store.open_incident(fingerprint(), *CRASH)
    await store.count_incident_alerts(old.incident_id, 1)
    analysis = remediation_pb2.Analysis(decision=remediation_pb2.DECISION_NO_ACTION)
    await store.record_analysis(str(uuid.uuid4()), old.incident_id, analysis)
    for incident in (old, twin, recent):
        await store.update_incident(
            incident.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATED, "fixed"
        )
    await close_long_ago(database_dsn, old.incident_id, 400)
    await close_long_ago(database_dsn, twin.incident_id, 500)
    await close_long_ago(database_dsn, recent.incident_id, 30)
    before = await store.get_incident(old.incident_id)

    # The oldest first, a batch at a time.
    assert await store.archive_closed(YEAR, 1) == [twin.incident_id]
    assert await store.archive_closed(YEAR, 5) == [old.incident_id]
    assert await store.archive_closed(YEAR, 5) == []

    live, _ = await store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 100, "")
    assert {i.incident_id for i in live} == {recent.incident_id, still_open.incident_id}
    archived = await store.get_incident(old.incident_id)
    assert archived == before
    assert archived.affected_resources == [make_subject()]
    assert len(archived.analyses) == 1
    # Out of the vector store too: the open crash has no similar incident left but itself.
    similar = await store.search_similar(still_open.incident_id, 10)
    assert [i.incident_id for i, _ in similar.incidents] == [recent.incident_id]
    with pytest.raises(UnknownIncident):
        await store.get_incident(str(uuid.uuid4()))


async def test_the_archiver_works_in_batches_until_none_is_left(
    database_dsn: str, store: Store
) -> None:
    ids = []
    for _ in range(3):
        incident, _ = await store.open_incident(fingerprint(), *CRASH)
        await store.update_incident(incident.incident_id, storage_pb2.INCIDENT_STATUS_FAILED, "x")
        await close_long_ago(database_dsn, incident.incident_id, 40)
        ids.append(incident.incident_id)
    database = Database(database_dsn)
    try:
        archiver = Archiver(database, retention_days=30, poll_seconds=3600, batch=2)
        assert await archiver.archive_once() is True
        assert await archiver.archive_once() is False
        live, _ = await store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 100, "")
        assert live == []
        assert not Archiver(database, retention_days=0, poll_seconds=1).enabled
    finally:
        await database.close()
