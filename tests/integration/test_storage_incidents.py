"""Incidents, assessments and similar-incident search: the Store against a real PostgreSQL
with pgvector and the real embedding model, then the same over gRPC."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.names import ServiceName
from kubernaut.services.storage.embeddings import DEFAULT_EMBEDDING_MODEL, embedder_for
from kubernaut.services.storage.store import (
    IncidentClosed,
    InvalidPageToken,
    InvalidRecord,
    RecordConflict,
    Store,
    UnknownAction,
    UnknownIncident,
)
from tests.fixtures.grpc_errors import code_of, field_violations
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def make_alert(
    name: str = "KubePodCrashLooping",
    summary: str = "Pod shop/checkout is crash looping",
    description: str = "Container checkout restarted 5 times in 10 minutes (CrashLoopBackOff).",
    **labels: str,
) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": name, "severity": "warning", **labels},
        annotations={"summary": summary, "description": description},
        starts_at=ts(T0),
        generator_url="http://prometheus/graph?g0.expr=up",
        source_fingerprint="abc123",
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


def make_subject(
    namespace: str = "shop", name: str = "checkout", kind: str = "Deployment"
) -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(cluster="prod-eu", namespace=namespace, kind=kind, name=name)


def fingerprint() -> str:
    return f"fp-{uuid.uuid4().hex}"


CRASH = (make_alert(), make_subject())
CRASH_ELSEWHERE = (
    make_alert(
        summary="Pod payments/api keeps restarting",
        description="The api container exits with code 1 after start: CrashLoopBackOff.",
        container="api",
    ),
    make_subject("payments", "api"),
)
DISK_FULL = (
    make_alert(
        "NodeFilesystemAlmostOutOfSpace",
        "Filesystem on node worker-3 has only 3% space left",
        "The filesystem /var/lib/containerd on /dev/sda1 will be full within hours.",
        mountpoint="/var/lib/containerd",
    ),
    make_subject("", "worker-3", "Node"),
)


def make_action(
    incident_id: str, started_at: dt.datetime, action: str = "restart_pod"
) -> storage_pb2.ActionRecord:
    return storage_pb2.ActionRecord(
        action_id=str(uuid.uuid4()),
        incident_id=incident_id,
        alert_name="KubePodCrashLooping",
        action=action,
        target=make_subject(),
        outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED,
        started_at=ts(started_at),
        finished_at=ts(started_at + dt.timedelta(seconds=2)),
    )


def make_assessment(
    action_id: str,
    assessed_at: dt.datetime = T0,
    *,
    assessment_id: str | None = None,
    delay_seconds: int = 300,
    verdict: remediation_pb2.Verdict.ValueType = remediation_pb2.VERDICT_EFFECTIVE,
    evidence: Sequence[str] = ("restarts stopped", "ready replicas 3/3"),
) -> storage_pb2.Assessment:
    return storage_pb2.Assessment(
        assessment_id=assessment_id or str(uuid.uuid4()),
        action_id=action_id,
        delay=duration_pb2.Duration(seconds=delay_seconds, nanos=250_000_000),
        verdict=verdict,
        evidence=list(evidence),
        assessed_at=ts(assessed_at),
    )


# -- open_incident ----------------------------------------------------------------------------


async def test_concurrent_opens_of_one_fingerprint_open_one_incident(store: Store) -> None:
    fp = fingerprint()
    alert, subject = CRASH
    results = await asyncio.gather(
        *(store.open_incident(fp, alert, subject, f"trace-{i}") for i in range(20))
    )
    assert [created for _, created in results].count(True) == 1
    assert len({incident.incident_id for incident, _ in results}) == 1
    # Every call counted once: the counts they saw are 1..20, each exactly once.
    assert sorted(incident.occurrences for incident, _ in results) == list(range(1, 21))
    [opener] = [incident for incident, created in results if created]
    assert opener.occurrences == 1

    stored, *_ = await store.get_incident(opener.incident_id)
    assert stored.occurrences == 20
    assert stored.trace_id == opener.trace_id  # the opener's trace, never overwritten
    assert stored.updated_at.ToDatetime() > stored.opened_at.ToDatetime()
    incidents, _ = await store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 0, "")
    assert [i.incident_id for i in incidents] == [opener.incident_id]


class SlowEmbedder:
    """The default model, slowed down so that every concurrent opener misses the fast path
    and races to INSERT: only the database's ON CONFLICT can then keep one incident."""

    def __init__(self) -> None:
        self.inner = embedder_for()
        self.name = self.inner.name
        self.dimensions = self.inner.dimensions
        self.calls = 0
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            self.calls += 1
        time.sleep(0.2)  # in the worker thread, not on the event loop
        return self.inner.embed(texts)


async def test_racing_inserts_still_open_one_incident(database_dsn: str, store: Store) -> None:
    slow = SlowEmbedder()
    racing = await Store.connect(database_dsn, max_size=20, embedder=slow)
    try:
        fp = fingerprint()
        results = await asyncio.gather(*(racing.open_incident(fp, *CRASH) for _ in range(20)))
        assert slow.calls >= 10, "the openers did not race"
        assert [created for _, created in results].count(True) == 1
        assert sorted(incident.occurrences for incident, _ in results) == list(range(1, 21))
        [incident] = {incident.incident_id for incident, _ in results}
        assert (await store.get_incident(incident))[0].occurrences == 20
    finally:
        await racing.close()


async def test_open_incident_stores_what_it_was_given(store: Store) -> None:
    fp = fingerprint()
    alert, subject = CRASH
    incident, created = await store.open_incident(fp, alert, subject, "4bf92f3577b34da6a3ce929d")
    assert created
    uuid.UUID(incident.incident_id)
    assert incident.fingerprint == fp
    assert incident.status == storage_pb2.INCIDENT_STATUS_OPEN
    assert incident.status_reason == "opened by alert KubePodCrashLooping"
    assert incident.alert_name == "KubePodCrashLooping"
    assert incident.subject == subject
    assert incident.alert == alert
    assert incident.occurrences == 1
    assert incident.trace_id == "4bf92f3577b34da6a3ce929d"
    assert incident.opened_at == incident.updated_at
    assert not incident.HasField("closed_at")
    assert (await store.get_incident(incident.incident_id))[0] == incident

    # The second alert is counted on it, whatever that alert says.
    other_alert = make_alert(summary="a different text")
    again, created_again = await store.open_incident(fp, other_alert, subject, "other-trace")
    assert not created_again
    assert again.incident_id == incident.incident_id
    assert again.occurrences == 2
    assert again.alert == alert and again.trace_id == incident.trace_id


async def test_a_closed_incident_lets_the_next_alert_open_a_new_one(store: Store) -> None:
    fp, other_fp = fingerprint(), fingerprint()
    alert, subject = CRASH
    first, _ = await store.open_incident(fp, alert, subject)
    other, _ = await store.open_incident(other_fp, alert, subject)
    await store.open_incident(fp, alert, subject)
    closed = await store.update_incident(
        first.incident_id, storage_pb2.INCIDENT_STATUS_RESOLVED, "alert resolved"
    )
    assert closed.HasField("closed_at")

    second, created = await store.open_incident(fp, alert, subject)
    assert created
    assert second.incident_id != first.incident_id
    assert second.occurrences == 1
    assert second.status == storage_pb2.INCIDENT_STATUS_OPEN
    # The closed one is untouched, and another fingerprint's incident is unaffected.
    assert (await store.get_incident(first.incident_id))[0] == closed
    assert (await store.get_incident(first.incident_id))[0].occurrences == 2
    still_other, created_other = await store.open_incident(other_fp, alert, subject)
    assert not created_other and still_other.incident_id == other.incident_id


async def test_open_incident_refuses_what_postgresql_cannot_store(store: Store) -> None:
    alert, subject = CRASH
    bad = make_alert(summary="nul \x00 byte")
    with pytest.raises(InvalidRecord) as caught:
        await store.open_incident(fingerprint(), bad, subject)
    assert caught.value.field == "alert"
    with pytest.raises(InvalidRecord):
        await store.open_incident("", alert, subject)
    assert await store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 0, "") == ([], "")


# -- update_incident --------------------------------------------------------------------------


async def test_status_transitions_and_closing(store: Store) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    remediating = await store.update_incident(
        incident.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATING, "workflow wf-1 started"
    )
    assert remediating.status == storage_pb2.INCIDENT_STATUS_REMEDIATING
    assert remediating.status_reason == "workflow wf-1 started"
    assert not remediating.HasField("closed_at")
    assert remediating.updated_at.ToDatetime() > incident.updated_at.ToDatetime()
    assert remediating.opened_at == incident.opened_at

    remediated = await store.update_incident(
        incident.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATED, "restart_pod succeeded"
    )
    assert remediated.status == storage_pb2.INCIDENT_STATUS_REMEDIATED
    assert remediated.closed_at == remediated.updated_at
    assert remediated.closed_at.ToDatetime() > remediating.updated_at.ToDatetime()

    # Retrying the update that closed it is a no-op; any other change is refused.
    retry = await store.update_incident(
        incident.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATED, "restart_pod succeeded"
    )
    assert retry == remediated
    for status, reason in [
        (storage_pb2.INCIDENT_STATUS_OPEN, "reopen"),
        (storage_pb2.INCIDENT_STATUS_FAILED, "restart_pod succeeded"),
        (storage_pb2.INCIDENT_STATUS_REMEDIATED, "another reason"),
    ]:
        with pytest.raises(IncidentClosed, match=incident.incident_id):
            await store.update_incident(incident.incident_id, status, reason)
    assert (await store.get_incident(incident.incident_id))[0] == remediated


@pytest.mark.parametrize(
    "final",
    [
        storage_pb2.INCIDENT_STATUS_NO_ACTION,
        storage_pb2.INCIDENT_STATUS_REMEDIATED,
        storage_pb2.INCIDENT_STATUS_FAILED,
        storage_pb2.INCIDENT_STATUS_RESOLVED,
    ],
)
async def test_every_final_status_closes(
    store: Store, final: storage_pb2.IncidentStatus.ValueType
) -> None:
    fp = fingerprint()
    incident, _ = await store.open_incident(fp, *CRASH)
    closed = await store.update_incident(incident.incident_id, final, "done")
    assert closed.HasField("closed_at")
    assert (await store.open_incident(fp, *CRASH))[1] is True


async def test_update_incident_errors(store: Store) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    with pytest.raises(UnknownIncident):
        await store.update_incident(str(uuid.uuid4()), storage_pb2.INCIDENT_STATUS_RESOLVED, "")
    with pytest.raises(InvalidRecord, match="not a UUID"):
        await store.update_incident("inc-1", storage_pb2.INCIDENT_STATUS_RESOLVED, "")
    with pytest.raises(InvalidRecord, match="specified"):
        await store.update_incident(
            incident.incident_id, storage_pb2.INCIDENT_STATUS_UNSPECIFIED, ""
        )
    with pytest.raises(InvalidRecord, match="unknown incident status"):
        await store.update_incident(
            incident.incident_id,
            99,  # type: ignore[arg-type]
            "",
        )
    assert (await store.get_incident(incident.incident_id))[0] == incident


async def test_concurrent_closes_let_exactly_one_win(store: Store) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    statuses = [storage_pb2.INCIDENT_STATUS_RESOLVED, storage_pb2.INCIDENT_STATUS_FAILED] * 5
    results = await asyncio.gather(
        *(
            store.update_incident(incident.incident_id, status, f"closer {i}")
            for i, status in enumerate(statuses)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, storage_pb2.Incident)]
    assert len(winners) == 1
    assert all(isinstance(r, IncidentClosed) for r in results if r is not winners[0])
    assert (await store.get_incident(incident.incident_id))[0] == winners[0]


# -- get_incident, assessments ----------------------------------------------------------------


async def test_get_incident_returns_its_actions_and_assessments_oldest_first(
    store: Store,
) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    other, _ = await store.open_incident(fingerprint(), *DISK_FULL)
    minutes = [3, 1, 2]
    actions = [make_action(incident.incident_id, T0 + dt.timedelta(minutes=m)) for m in minutes]
    for record in [*actions, make_action(other.incident_id, T0), make_action("", T0)]:
        assert await store.record_action(record)
    by_minute = dict(zip(minutes, actions, strict=True))
    assessments = [
        make_assessment(by_minute[1].action_id, T0 + dt.timedelta(minutes=30)),
        make_assessment(by_minute[3].action_id, T0 + dt.timedelta(minutes=10)),
        make_assessment(
            by_minute[1].action_id,
            T0 + dt.timedelta(minutes=20),
            verdict=remediation_pb2.VERDICT_UNKNOWN,
            evidence=[],
        ),
    ]
    for assessment in assessments:
        assert await store.record_assessment(assessment)
    other_action = make_action(other.incident_id, T0 + dt.timedelta(hours=1))
    await store.record_action(other_action)
    await store.record_assessment(make_assessment(other_action.action_id))

    got, got_actions, got_assessments, *_ = await store.get_incident(incident.incident_id.upper())
    assert got == incident
    assert [a.action_id for a in got_actions] == [by_minute[m].action_id for m in (1, 2, 3)]
    assert got_actions[0] == by_minute[1]
    assert [a.assessment_id for a in got_assessments] == [
        assessments[i].assessment_id for i in (1, 2, 0)
    ]
    assert got_assessments[1] == assessments[2]
    assert got_assessments[0].delay == duration_pb2.Duration(seconds=300, nanos=250_000_000)

    _, none, no_assessments, *_ = await store.get_incident(
        (await store.open_incident(fingerprint(), *CRASH))[0].incident_id
    )
    assert none == [] and no_assessments == []
    with pytest.raises(UnknownIncident):
        await store.get_incident(str(uuid.uuid4()))
    with pytest.raises(InvalidRecord):
        await store.get_incident("not-a-uuid")


async def test_record_assessment_is_idempotent(store: Store) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    action = make_action(incident.incident_id, T0)
    await store.record_action(action)
    assessment = make_assessment(action.action_id)
    assert await store.record_assessment(assessment) is True
    assert await store.record_assessment(assessment) is False
    rewritten = storage_pb2.Assessment()
    rewritten.CopyFrom(assessment)
    rewritten.assessment_id = assessment.assessment_id.upper()
    rewritten.action_id = assessment.action_id.upper()
    assert await store.record_assessment(rewritten) is False
    assert (await store.get_incident(incident.incident_id))[2] == [assessment]


@pytest.mark.parametrize(
    "change",
    [
        lambda a: setattr(a, "verdict", remediation_pb2.VERDICT_INEFFECTIVE),
        lambda a: a.evidence.append("one more fact"),
        lambda a: a.delay.CopyFrom(duration_pb2.Duration(seconds=600)),
        lambda a: a.assessed_at.CopyFrom(ts(T0 + dt.timedelta(microseconds=1))),
        lambda a: setattr(a, "action_id", "OTHER"),
    ],
    ids=["verdict", "evidence", "delay", "assessed_at", "action_id"],
)
async def test_record_assessment_with_different_content_conflicts(
    store: Store, change: Callable[[storage_pb2.Assessment], object]
) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    action, other_action = (make_action(incident.incident_id, T0) for _ in range(2))
    await store.record_action(action)
    await store.record_action(other_action)
    assessment = make_assessment(action.action_id)
    assert await store.record_assessment(assessment)
    other = storage_pb2.Assessment()
    other.CopyFrom(assessment)
    change(other)
    if other.action_id == "OTHER":
        other.action_id = other_action.action_id
    with pytest.raises(RecordConflict, match=assessment.assessment_id):
        await store.record_assessment(other)
    assert (await store.get_incident(incident.incident_id))[2] == [assessment]


async def test_record_assessment_needs_a_recorded_action(store: Store) -> None:
    with pytest.raises(UnknownAction):
        await store.record_assessment(make_assessment(str(uuid.uuid4())))
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    action = make_action(incident.incident_id, T0)
    await store.record_action(action)
    negative = make_assessment(action.action_id, delay_seconds=-5)
    with pytest.raises(InvalidRecord, match="negative") as caught:
        await store.record_assessment(negative)
    assert caught.value.field == "assessment.delay"
    with pytest.raises(InvalidRecord, match="not a UUID"):
        await store.record_assessment(make_assessment("nope"))
    no_time = make_assessment(action.action_id)
    no_time.ClearField("assessed_at")
    with pytest.raises(InvalidRecord, match="assessed_at"):
        await store.record_assessment(no_time)
    with pytest.raises(InvalidRecord):
        await store.record_assessment(make_assessment(action.action_id, evidence=["nul \x00 byte"]))
    assert (await store.get_incident(incident.incident_id))[2] == []


# -- list_incidents ---------------------------------------------------------------------------


async def test_list_incidents_filters_orders_and_paginates(store: Store) -> None:
    opened = [(await store.open_incident(fingerprint(), *CRASH))[0] for _ in range(7)]
    resolved = {opened[i].incident_id for i in (0, 3, 4, 6)}
    for incident_id in resolved:
        await store.update_incident(incident_id, storage_pb2.INCIDENT_STATUS_RESOLVED, "gone")
    newest_first = [i.incident_id for i in reversed(opened)]

    async def pages(status: storage_pb2.IncidentStatus.ValueType, size: int) -> list[list[str]]:
        found: list[list[str]] = []
        token = ""
        while True:
            incidents, token = await store.list_incidents(status, size, token)
            found.append([i.incident_id for i in incidents])
            if status:
                assert all(i.status == status for i in incidents)
            if not token:
                return found
            assert len(found) < 20, "pagination does not terminate"

    everything = await pages(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 3)
    assert [len(p) for p in everything] == [3, 3, 1]
    assert [i for page in everything for i in page] == newest_first
    done = await pages(storage_pb2.INCIDENT_STATUS_RESOLVED, 2)
    assert [len(p) for p in done] == [2, 2]
    assert [i for page in done for i in page] == [i for i in newest_first if i in resolved]
    still_open = await pages(storage_pb2.INCIDENT_STATUS_OPEN, 0)
    assert still_open == [[i for i in newest_first if i not in resolved]]
    assert await store.list_incidents(storage_pb2.INCIDENT_STATUS_FAILED, 0, "") == ([], "")
    whole, _ = await store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 5000, "")
    assert len(whole) == 7
    with pytest.raises(ValueError):
        await store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, -1, "")


async def test_list_incidents_rejects_tokens_of_other_listings(store: Store) -> None:
    for _ in range(3):
        await store.open_incident(fingerprint(), *CRASH)
        await store.record_action(make_action("", T0))
    _, token = await store.list_incidents(storage_pb2.INCIDENT_STATUS_OPEN, 1, "")
    assert token
    with pytest.raises(InvalidPageToken, match="different status"):
        await store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 1, token)
    with pytest.raises(InvalidPageToken, match="different alert_name"):
        await store.list_actions("", 1, token)
    _, action_token = await store.list_actions("", 1, "")
    with pytest.raises(InvalidPageToken, match="different status"):
        await store.list_incidents(storage_pb2.INCIDENT_STATUS_UNSPECIFIED, 1, action_token)
    for bad in ["garbage!", "AAAA", token[:-4], "é" * 8]:
        with pytest.raises(InvalidPageToken):
            await store.list_incidents(storage_pb2.INCIDENT_STATUS_OPEN, 1, bad)
    with pytest.raises(InvalidRecord, match="unknown incident status"):
        await store.list_incidents(42, 1, "")  # type: ignore[arg-type]


# -- search_similar ---------------------------------------------------------------------------


async def test_search_similar_ranks_a_similar_incident_first(store: Store) -> None:
    crash, _ = await store.open_incident(fingerprint(), *CRASH)
    disk, _ = await store.open_incident(fingerprint(), *DISK_FULL)
    elsewhere, _ = await store.open_incident(fingerprint(), *CRASH_ELSEWHERE)

    similar, model, backend, unavailable = await store.search_similar(crash.incident_id, 0)
    assert (backend, unavailable) == ("pgvector", "")
    assert model == DEFAULT_EMBEDDING_MODEL
    assert [i.incident_id for i, _ in similar] == [elsewhere.incident_id, disk.incident_id]
    (_, near), (_, far) = similar
    assert 0 < near < 0.5 < far < 1.5
    assert near + 0.2 < far

    [(nearest, distance)] = (await store.search_similar(disk.incident_id, 1))[0]
    assert nearest.incident_id in {crash.incident_id, elsewhere.incident_id}
    assert distance == pytest.approx(far, abs=0.2)
    # A closed incident is still a past incident to learn from.
    await store.update_incident(elsewhere.incident_id, storage_pb2.INCIDENT_STATUS_RESOLVED, "ok")
    again, *_ = await store.search_similar(crash.incident_id, 50)
    assert again[0][0].incident_id == elsewhere.incident_id
    assert again[0][0].status == storage_pb2.INCIDENT_STATUS_RESOLVED
    assert again[0][1] == pytest.approx(near, abs=1e-6)

    with pytest.raises(UnknownIncident):
        await store.search_similar(str(uuid.uuid4()), 5)
    with pytest.raises(ValueError):
        await store.search_similar(crash.incident_id, -1)


async def test_identical_descriptions_are_at_distance_zero(store: Store) -> None:
    first, _ = await store.open_incident(fingerprint(), *CRASH)
    twin, _ = await store.open_incident(fingerprint(), *CRASH)
    [(found, distance)] = (await store.search_similar(first.incident_id, 5))[0]
    assert found.incident_id == twin.incident_id
    assert distance == pytest.approx(0, abs=1e-5)


async def test_the_search_uses_the_hnsw_index(store: Store, database_dsn: str) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    await store.open_incident(fingerprint(), *DISK_FULL)
    from pgvector.asyncpg import register_vector

    from kubernaut.services.storage.vectors.pgvector import _search

    conn = await asyncpg.connect(database_dsn)
    try:
        await register_vector(conn)
        await conn.execute("SET enable_seqscan = off")
        vector = await conn.fetchval(
            "SELECT embedding FROM incident_vectors_384 WHERE incident_id = $1",
            uuid.UUID(incident.incident_id),
        )
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + _search("incident_vectors_384"),
                vector,
                5,
                DEFAULT_EMBEDDING_MODEL,
                "",
                "",
                "Deployment",
                ["KubePodCrashLooping"],
                [uuid.UUID(incident.incident_id)],
            )
        )
        # Filtered too (a kind, an alert family): the index still answers.
        assert "incident_vectors_384_hnsw" in plan, plan
    finally:
        await conn.close()


class KeywordEmbedder:
    """A 3-dimensional embedder that records the threads it runs on."""

    name = "keywords-3"
    dimensions = 3

    def __init__(self) -> None:
        self.threads: list[int] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.threads.append(threading.get_ident())
        return [
            [float("Crash" in t), float("Filesystem" in t), 1.0 if "Node" in t else 0.1]
            for t in texts
        ]


class BrokenEmbedder:
    name = "broken"
    dimensions = 3

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[1.0, 2.0] for _ in texts]  # the wrong dimension


async def test_embedding_is_pluggable_and_runs_off_the_event_loop(
    store: Store, database_dsn: str
) -> None:
    embedder = KeywordEmbedder()
    other = await Store.connect(database_dsn, embedder=embedder)
    try:
        crash, _ = await other.open_incident(fingerprint(), *CRASH)
        disk, _ = await other.open_incident(fingerprint(), *DISK_FULL)
        crash_elsewhere, _ = await other.open_incident(fingerprint(), *CRASH_ELSEWHERE)
        default_model, _ = await store.open_incident(fingerprint(), *CRASH)
        assert len(embedder.threads) == 3
        assert threading.get_ident() not in embedder.threads

        similar, model, *_ = await other.search_similar(crash.incident_id, 10)
        assert model == "keywords-3"
        # Only incidents embedded by the same model are compared.
        assert [i.incident_id for i, _ in similar] == [
            crash_elsewhere.incident_id,
            disk.incident_id,
        ]
        assert similar[0][1] == pytest.approx(0, abs=1e-6)
        by_default, *_ = await store.search_similar(default_model.incident_id, 10)
        assert by_default == []
    finally:
        await other.close()


async def test_an_incident_that_cannot_be_embedded_is_still_opened(
    database_dsn: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    broken = await Store.connect(database_dsn, embedder=BrokenEmbedder())
    try:
        incident, created = await broken.open_incident(fingerprint(), *CRASH)
        assert created
        assert "cannot embed" in caplog.text
        assert await broken.search_similar(incident.incident_id, 5) == ([], "", "pgvector", "")
        assert (await store.get_incident(incident.incident_id))[0] == incident
    finally:
        await broken.close()


# -- over gRPC --------------------------------------------------------------------------------


async def test_incident_life_over_grpc(stack: InProcessStack) -> None:
    # The call table has no edges to these RPCs yet: the operator may call them all.
    operator = stack.clients()
    executor = stack.clients(ServiceName.EXECUTOR.account)
    storage = operator.stub(StorageServiceStub)
    try:
        fp = fingerprint()
        alert, subject = CRASH
        request = storage_pb2.OpenIncidentRequest(
            fingerprint=fp,
            alert=alert,
            subject=subject,
            trace_id="0af7651916cd43dd8448eb211c80319c",
        )
        opened = await storage.OpenIncident(request)
        assert opened.created
        assert opened.incident.status == storage_pb2.INCIDENT_STATUS_OPEN
        assert opened.incident.alert == alert
        counted = await storage.OpenIncident(request)
        assert not counted.created
        assert counted.incident.incident_id == opened.incident.incident_id
        assert counted.incident.occurrences == 2
        incident_id = opened.incident.incident_id

        remediating = await storage.UpdateIncident(
            storage_pb2.UpdateIncidentRequest(
                incident_id=incident_id,
                status=storage_pb2.INCIDENT_STATUS_REMEDIATING,
                status_reason="workflow started",
            )
        )
        assert remediating.incident.status == storage_pb2.INCIDENT_STATUS_REMEDIATING

        action = make_action(incident_id, T0)
        await executor.stub(StorageServiceStub).RecordAction(
            storage_pb2.RecordActionRequest(record=action)
        )
        assessment = make_assessment(action.action_id)
        recorded = await storage.RecordAssessment(
            storage_pb2.RecordAssessmentRequest(assessment=assessment)
        )
        assert recorded.created
        retried = await storage.RecordAssessment(
            storage_pb2.RecordAssessmentRequest(assessment=assessment)
        )
        assert not retried.created

        got = await storage.GetIncident(storage_pb2.GetIncidentRequest(incident_id=incident_id))
        assert got.incident.occurrences == 2
        assert list(got.actions) == [action]
        assert list(got.assessments) == [assessment]

        close = storage_pb2.UpdateIncidentRequest(
            incident_id=incident_id,
            status=storage_pb2.INCIDENT_STATUS_REMEDIATED,
            status_reason="restart worked",
        )
        closed = await storage.UpdateIncident(close)
        assert closed.incident.HasField("closed_at")
        assert (await storage.UpdateIncident(close)).incident == closed.incident  # a retry

        reopen = storage_pb2.UpdateIncidentRequest(
            incident_id=incident_id, status=storage_pb2.INCIDENT_STATUS_OPEN
        )
        assert await code_of(storage.UpdateIncident(reopen)) is grpc.StatusCode.FAILED_PRECONDITION
        unknown = str(uuid.uuid4())
        assert (
            await code_of(storage.GetIncident(storage_pb2.GetIncidentRequest(incident_id=unknown)))
            is grpc.StatusCode.NOT_FOUND
        )
        reopen.incident_id = unknown
        assert await code_of(storage.UpdateIncident(reopen)) is grpc.StatusCode.NOT_FOUND
        assert (
            await code_of(
                storage.SearchSimilarIncidents(
                    storage_pb2.SearchSimilarIncidentsRequest(incident_id=unknown)
                )
            )
            is grpc.StatusCode.NOT_FOUND
        )
        orphan = make_assessment(str(uuid.uuid4()))
        assert (
            await code_of(
                storage.RecordAssessment(storage_pb2.RecordAssessmentRequest(assessment=orphan))
            )
            is grpc.StatusCode.NOT_FOUND
        )
        clash = make_assessment(
            action.action_id,
            assessment_id=assessment.assessment_id,
            verdict=remediation_pb2.VERDICT_INEFFECTIVE,
        )
        assert (
            await code_of(
                storage.RecordAssessment(storage_pb2.RecordAssessmentRequest(assessment=clash))
            )
            is grpc.StatusCode.ALREADY_EXISTS
        )

        # Malformed requests: protovalidate in the interceptor, the page token in the store.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.GetIncident(storage_pb2.GetIncidentRequest(incident_id="inc-1"))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "incident_id" in field_violations(caught.value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.ListIncidents(storage_pb2.ListIncidentsRequest(page_token="garbage!"))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in field_violations(caught.value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.OpenIncident(storage_pb2.OpenIncidentRequest(fingerprint=fp))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert {"alert", "subject"} <= set(field_violations(caught.value))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.OpenIncident(
                storage_pb2.OpenIncidentRequest(
                    fingerprint=fingerprint(), alert=make_alert(summary="nul \x00"), subject=subject
                )
            )
        # Refused by the Alert's own rules, naming the field; the store's guard against what
        # PostgreSQL cannot keep stays behind it (test_open_incident_refuses_...).
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == {
            "alert.annotations['summary']": "contains substring `\x00`"
        }
    finally:
        await operator.close()
        await executor.close()


async def test_list_and_search_incidents_over_grpc(stack: InProcessStack) -> None:
    operator = stack.clients()
    storage = operator.stub(StorageServiceStub)
    try:
        opened: list[storage_pb2.Incident] = []
        for alert, subject in (CRASH, DISK_FULL, CRASH_ELSEWHERE):
            reply = await storage.OpenIncident(
                storage_pb2.OpenIncidentRequest(
                    fingerprint=fingerprint(), alert=alert, subject=subject
                )
            )
            opened.append(reply.incident)
        crash, disk, elsewhere = opened
        for incident in (crash, elsewhere):
            await storage.UpdateIncident(
                storage_pb2.UpdateIncidentRequest(
                    incident_id=incident.incident_id,
                    status=storage_pb2.INCIDENT_STATUS_NO_ACTION,
                    status_reason="not allowed to act",
                )
            )

        # The stack's database is shared with other tests: page through all of it.
        listed: list[storage_pb2.Incident] = []
        token = ""
        for _ in range(1000):
            page = await storage.ListIncidents(
                storage_pb2.ListIncidentsRequest(
                    status=storage_pb2.INCIDENT_STATUS_NO_ACTION, page_size=1, page_token=token
                )
            )
            assert len(page.incidents) <= 1
            listed.extend(page.incidents)
            token = page.next_page_token
            if not token:
                break
        assert token == "", "pagination does not terminate"
        assert all(i.status == storage_pb2.INCIDENT_STATUS_NO_ACTION for i in listed)
        ids = [i.incident_id for i in listed]
        assert disk.incident_id not in ids
        assert ids.index(elsewhere.incident_id) < ids.index(crash.incident_id)  # newest first
        assert len(ids) == len(set(ids))

        similar = await storage.SearchSimilarIncidents(
            storage_pb2.SearchSimilarIncidentsRequest(incident_id=crash.incident_id, limit=50)
        )
        assert similar.embedding_model == DEFAULT_EMBEDDING_MODEL
        found = [s.incident.incident_id for s in similar.incidents]
        assert crash.incident_id not in found
        distances = [s.distance for s in similar.incidents]
        assert distances == sorted(distances)
        assert elsewhere.incident_id in found
        if disk.incident_id in found:
            assert found.index(elsewhere.incident_id) < found.index(disk.incident_id)
        default_limit = await storage.SearchSimilarIncidents(
            storage_pb2.SearchSimilarIncidentsRequest(incident_id=crash.incident_id)
        )
        assert len(default_limit.incidents) == min(5, len(found))
    finally:
        await operator.close()


async def test_an_alert_soon_after_its_incident_was_fixed_is_counted_not_reopened(
    database_dsn: str,
) -> None:
    from kubernaut.services.storage.store import Store

    store = await Store.connect(database_dsn, quiet_seconds=600)
    try:
        await store.migrate()
        alert = alert_pb2.Alert(name="KubePodCrashLooping", status=alert_pb2.ALERT_STATUS_FIRING)
        alert.starts_at.GetCurrentTime()
        subject = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout")
        first, created = await store.open_incident("fp-quiet", alert, subject)
        assert created
        await store.update_incident(
            first.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATED, "rolled back"
        )
        again, created = await store.open_incident("fp-quiet", alert, subject)
        assert not created and again.incident_id == first.incident_id
        assert again.occurrences == 2
    finally:
        await store.close()


def verified_state(
    digest: str = "a" * 64, image: str = "shop/checkout:v2", restarts: int = 0
) -> remediation_pb2.WorkloadState:
    state = remediation_pb2.WorkloadState(
        generation=3, template_digest=digest, images=[image], restarts=restarts
    )
    state.observed_at.GetCurrentTime()
    return state


async def fixed_incident(
    store: Store, fp: str, baseline: remediation_pb2.WorkloadState | None
) -> storage_pb2.Incident:
    """An incident of `fp` remediated by a verified change whose state was `baseline`, and a
    later read-only action (which has no state and must not hide it)."""
    incident, created = await store.open_incident(fp, *CRASH)
    assert created
    now = dt.datetime.now(dt.UTC)
    fix = make_action(incident.incident_id, now - dt.timedelta(seconds=30), "rollback_deployment")
    if baseline is not None:
        fix.observed_after.CopyFrom(baseline)
    await store.record_action(fix)
    await store.record_action(
        make_action(incident.incident_id, now - dt.timedelta(seconds=10), "collect_diagnostics")
    )
    return await store.update_incident(
        incident.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATED, "rolled back"
    )


async def test_an_action_record_keeps_the_state_it_verified(store: Store) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    record = make_action(incident.incident_id, T0, "rollback_deployment")
    record.observed_after.CopyFrom(verified_state(restarts=4))
    assert await store.record_action(record)
    assert not await store.record_action(record)  # a retry with the same content
    changed = storage_pb2.ActionRecord()
    changed.CopyFrom(record)
    changed.observed_after.restarts = 5
    with pytest.raises(RecordConflict):
        await store.record_action(changed)
    [stored] = (await store.get_incident(incident.incident_id)).actions
    assert stored.observed_after == record.observed_after


async def test_in_the_quiet_period_an_unchanged_workload_is_counted_on_the_fixed_incident(
    database_dsn: str,
) -> None:
    store = await Store.connect(database_dsn, quiet_seconds=600)
    try:
        await store.migrate()
        fp = fingerprint()
        fixed = await fixed_incident(store, fp, verified_state(restarts=2))
        # The alert's lookback window still sees the old crashes; the pods were replaced
        # (fewer restarts), the template is the one verified.
        opened = await store.open_or_count(fp, *CRASH, workload_state=verified_state(restarts=0))
        assert not opened.created
        assert opened.incident.incident_id == fixed.incident_id
        assert opened.incident.occurrences == 2
        assert opened.quiet_period.startswith(f"counted on incident {fixed.incident_id}, closed ")
        assert opened.quiet_period.endswith("; the workload has not changed since its fix")
        # The incident says so too, though its status cannot change any more.
        assert opened.incident.after_close == opened.quiet_period
        detail = await store.get_incident(fixed.incident_id)
        assert detail.incident.after_close == opened.quiet_period
        assert detail.incident.status_reason == fixed.status_reason
        # No state now, or an incident whose fix recorded none: counted, as before.
        again = await store.open_or_count(fp, *CRASH)
        assert not again.created and "current state is unknown" in again.quiet_period
        other_fp = fingerprint()
        unverified = await fixed_incident(store, other_fp, None)
        counted = await store.open_or_count(
            other_fp, *CRASH, workload_state=verified_state(digest="b" * 64)
        )
        assert not counted.created and counted.incident.incident_id == unverified.incident_id
        assert "no workload state was verified after its fix" in counted.quiet_period
    finally:
        await store.close()


async def test_in_the_quiet_period_a_changed_workload_opens_a_new_incident(
    database_dsn: str,
) -> None:
    """The repro of issue 15: after a fix, a new rollout (v3) crash-loops and fires the
    same alert. It is a new failure, not the tail of the old one."""
    store = await Store.connect(database_dsn, quiet_seconds=600)
    try:
        await store.migrate()
        fp = fingerprint()
        fixed = await fixed_incident(store, fp, verified_state())
        new_rollout = verified_state(digest="c" * 64, image="shop/checkout:v3", restarts=7)
        opened = await store.open_or_count(fp, *CRASH, workload_state=new_rollout)
        assert opened.created
        assert opened.incident.incident_id != fixed.incident_id
        assert opened.incident.status == storage_pb2.INCIDENT_STATUS_OPEN
        why = (
            "template aaaaaaaaaaaa→cccccccccccc, images shop/checkout:v2→shop/checkout:v3,"
            " restarts 0→7"
        )
        assert opened.incident.status_reason.startswith(
            f"opened by alert KubePodCrashLooping: incident {fixed.incident_id} was fixed "
        )
        assert opened.incident.status_reason.endswith(
            f"ago, but the workload changed since ({why})"
        )
        assert opened.quiet_period.startswith(f"incident {fixed.incident_id} closed ")
        assert opened.quiet_period.endswith(
            f"ago but the workload changed since its fix ({why}): opened a new incident"
        )
        # The closed incident is untouched; the next alert counts on the new, open one.
        assert (await store.get_incident(fixed.incident_id))[0].occurrences == 1
        counted = await store.open_or_count(fp, *CRASH, workload_state=new_rollout)
        assert not counted.created and counted.quiet_period == ""
        assert counted.incident.incident_id == opened.incident.incident_id
        # Restarts alone rising since verification is a new failure too.
        restarted_fp = fingerprint()
        await fixed_incident(store, restarted_fp, verified_state(restarts=1))
        crashing = await store.open_or_count(
            restarted_fp, *CRASH, workload_state=verified_state(restarts=6)
        )
        assert crashing.created and "(restarts 1→6)" in crashing.incident.status_reason
    finally:
        await store.close()


async def test_the_quiet_period_is_said_over_grpc(stack: InProcessStack) -> None:
    storage = stack.clients().stub(StorageServiceStub)
    executor = stack.clients(ServiceName.EXECUTOR.account).stub(StorageServiceStub)
    fp = fingerprint()
    alert, subject = CRASH
    opened = await storage.OpenIncident(
        storage_pb2.OpenIncidentRequest(fingerprint=fp, alert=alert, subject=subject)
    )
    fix = make_action(opened.incident.incident_id, dt.datetime.now(dt.UTC), "restart_deployment")
    fix.observed_after.CopyFrom(verified_state())
    await executor.RecordAction(storage_pb2.RecordActionRequest(record=fix))
    await storage.UpdateIncident(
        storage_pb2.UpdateIncidentRequest(
            incident_id=opened.incident.incident_id,
            status=storage_pb2.INCIDENT_STATUS_REMEDIATED,
            status_reason="restarted",
        )
    )
    request = storage_pb2.OpenIncidentRequest(
        fingerprint=fp, alert=alert, subject=subject, workload_state=verified_state()
    )
    counted = await storage.OpenIncident(request)
    assert not counted.created
    assert counted.quiet_period.endswith("the workload has not changed since its fix")
    request.workload_state.images[:] = ["shop/checkout:v3"]
    new = await storage.OpenIncident(request)
    assert new.created and new.quiet_period.endswith("opened a new incident")
    # A malformed state is refused, naming the field.
    request.workload_state.template_digest = "not-a-digest"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await storage.OpenIncident(request)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "workload_state.template_digest" in field_violations(refused.value)


async def test_an_incident_lists_every_resource_its_alerts_named(store: Store) -> None:
    fp = fingerprint()
    alert, subject = CRASH
    incident, _ = await store.open_incident(fp, alert, subject)
    for name in ("b", "a", "b"):
        await store.open_incident(fp, alert, make_subject(name=name, kind="Pod"))
    detail = await store.get_incident(incident.incident_id)
    assert [(r.kind, r.name) for r in detail.affected_resources] == [
        ("Deployment", "checkout"),
        ("Pod", "b"),
        ("Pod", "a"),
    ]
    assert detail.incident.occurrences == 4


async def test_count_incident_alerts_adds_to_any_incident(store: Store) -> None:
    incident, _ = await store.open_incident(fingerprint(), *CRASH)
    counted = await store.count_incident_alerts(incident.incident_id, 5)
    assert counted.occurrences == 6
    await store.update_incident(
        incident.incident_id, storage_pb2.INCIDENT_STATUS_NO_ACTION, "not opted in"
    )
    # Alerts about a closed incident are still about it.
    closed = await store.count_incident_alerts(incident.incident_id, 1)
    assert closed.occurrences == 7 and closed.HasField("closed_at")
    with pytest.raises(UnknownIncident):
        await store.count_incident_alerts(str(uuid.uuid4()), 1)
    with pytest.raises(InvalidRecord):
        await store.count_incident_alerts(incident.incident_id, 0)


async def test_resolve_incident_closes_only_what_nothing_acted_on(store: Store) -> None:
    waiting, _ = await store.open_incident(fingerprint(), *CRASH)
    resolved_at = T0 + dt.timedelta(minutes=3)
    closed, did_close = await store.resolve_incident(waiting.incident_id, resolved_at)
    assert did_close
    assert closed.status == storage_pb2.INCIDENT_STATUS_RESOLVED
    assert closed.HasField("closed_at")
    assert closed.alert_resolved_at.ToDatetime(dt.UTC) == resolved_at
    # A retry changes nothing and does not claim to have closed it.
    again, did_close = await store.resolve_incident(waiting.incident_id)
    assert not did_close and again.status == storage_pb2.INCIDENT_STATUS_RESOLVED
    # A workflow that wants to act now finds it closed.
    with pytest.raises(IncidentClosed):
        await store.update_incident(
            waiting.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATING, "acting"
        )

    acting, _ = await store.open_incident(fingerprint(), *CRASH_ELSEWHERE)
    await store.update_incident(acting.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATING, "go")
    marked, did_close = await store.resolve_incident(acting.incident_id)
    assert not did_close
    assert marked.status == storage_pb2.INCIDENT_STATUS_REMEDIATING
    assert marked.HasField("alert_resolved_at") and not marked.HasField("closed_at")
    with pytest.raises(UnknownIncident):
        await store.resolve_incident(str(uuid.uuid4()))


async def test_resolving_and_counting_over_grpc(stack: InProcessStack) -> None:
    operator = stack.clients()
    gateway = stack.clients(ServiceName.GATEWAY.account)
    processor = stack.clients(ServiceName.ALERT_PROCESSOR.account)
    try:
        opened = await processor.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=fingerprint(), alert=CRASH[0], subject=CRASH[1]
            )
        )
        incident_id = opened.incident.incident_id
        counted = await gateway.stub(StorageServiceStub).CountIncidentAlerts(
            storage_pb2.CountIncidentAlertsRequest(incident_id=incident_id, count=3)
        )
        assert counted.incident.occurrences == 4
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.stub(StorageServiceStub).CountIncidentAlerts(
                storage_pb2.CountIncidentAlertsRequest(incident_id=incident_id, count=0)
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "count" in field_violations(refused.value)
        # Only the alert processor resolves incidents; the gateway only counts.
        denied = gateway.stub(StorageServiceStub).ResolveIncident(
            storage_pb2.ResolveIncidentRequest(incident_id=incident_id)
        )
        assert await code_of(denied) is grpc.StatusCode.PERMISSION_DENIED
        resolved = await processor.stub(StorageServiceStub).ResolveIncident(
            storage_pb2.ResolveIncidentRequest(incident_id=incident_id)
        )
        assert resolved.closed
        got = await operator.stub(StorageServiceStub).GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=incident_id)
        )
        assert got.incident.status == storage_pb2.INCIDENT_STATUS_RESOLVED
        assert list(got.affected_resources) == [CRASH[1]]
        unknown = processor.stub(StorageServiceStub).ResolveIncident(
            storage_pb2.ResolveIncidentRequest(incident_id=str(uuid.uuid4()))
        )
        assert await code_of(unknown) is grpc.StatusCode.NOT_FOUND
    finally:
        for clients in (operator, gateway, processor):
            await clients.close()
