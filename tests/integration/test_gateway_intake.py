"""The gateway's intake against real PostgreSQL: a fingerprint's life, dedup across
replicas (two pools racing on one database), storms, the hold, freshness, and the queue
the forwarder drains."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2, remediation_pb2

from services.gateway.intake import (
    FLAGS_ANNOTATION,
    FreshnessPolicy,
    GatewaySettings,
    IntakeStore,
    Outcome,
)

pytestmark = pytest.mark.integration

ACCEPTED = remediation_pb2.ALERT_DISPOSITION_ACCEPTED
DUPLICATE = remediation_pb2.ALERT_DISPOSITION_DUPLICATE
STORM = remediation_pb2.ALERT_DISPOSITION_STORM
REFUSED = remediation_pb2.ALERT_DISPOSITION_REFUSED
IGNORED_RESOLVED = remediation_pb2.ALERT_DISPOSITION_IGNORED_RESOLVED


def alert(
    deployment: str,
    *,
    name: str = "KubeDeploymentRolloutStuck",
    resolved: bool = False,
    started: dt.datetime | None = None,
    **labels: str,
) -> alert_pb2.Alert:
    starts_at = Timestamp()
    starts_at.FromDatetime(started or dt.datetime.now(dt.UTC))
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_RESOLVED if resolved else alert_pb2.ALERT_STATUS_FIRING,
        labels={
            "alertname": name,
            "namespace": "shop",
            **({"deployment": deployment} if deployment else {}),
            **labels,
        },
        starts_at=starts_at,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


StoreFactory = Callable[..., Any]


@pytest.fixture
async def intake(database_dsn: str) -> AsyncIterator[StoreFactory]:
    """Opens IntakeStores (each its own pool, as a replica has) on one fresh database."""
    opened: list[IntakeStore] = []

    async def open_store(**settings: Any) -> IntakeStore:
        store = await IntakeStore.connect(
            database_dsn,
            settings=GatewaySettings(database_url=database_dsn, **{"hold_seconds": 0, **settings}),
        )
        await store.migrate()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


async def fetch(store: IntakeStore, query: str, *args: Any) -> list[Any]:
    async with store._connection() as conn:
        return list(await conn.fetch(query, *args))


async def test_the_first_alert_is_accepted_and_repeats_are_counted_not_queued(
    intake: StoreFactory,
) -> None:
    store = await intake()
    [first] = await store.take([alert("web")])
    assert first.disposition == ACCEPTED
    # The same problem, another label: a duplicate.
    repeats = await store.take([alert("web", instance="10.0.0.1:80"), alert("web")])
    assert [o.disposition for o in repeats] == [DUPLICATE, DUPLICATE]
    assert {o.fingerprint for o in repeats} == {first.fingerprint}
    assert "3 alerts so far" in repeats[1].reason
    [row] = await fetch(store, "SELECT occurrences, uncounted FROM gateway.fingerprints")
    assert (row["occurrences"], row["uncounted"]) == (3, 2)
    queued = await fetch(store, "SELECT kind FROM gateway.queue")
    assert [q["kind"] for q in queued] == ["firing"]


async def test_two_replicas_racing_on_identical_batches_accept_each_alert_once(
    intake: StoreFactory,
) -> None:
    # 20 resources at once would be a storm; here they are 20 separate problems.
    replicas = [await intake(storm_threshold=100), await intake(storm_threshold=100)]
    batch = [alert(f"app-{i}") for i in range(20)]

    async def post(call: int) -> list[Outcome]:
        # Every other call lists the alerts in reverse: rows must not deadlock.
        outcomes: list[Outcome] = await replicas[call % 2].take(batch[:: 1 if call % 2 else -1])
        return outcomes[:: 1 if call % 2 else -1]

    results = await asyncio.gather(*(post(call) for call in range(16)))
    outcomes = [o for result in results for o in result]
    accepted = [o.fingerprint for o in outcomes if o.disposition == ACCEPTED]
    assert sorted(accepted) == sorted({o.fingerprint for o in outcomes})
    assert len(accepted) == 20
    assert all(o.disposition in (ACCEPTED, DUPLICATE) for o in outcomes)
    queued = await fetch(replicas[0], "SELECT fingerprint FROM gateway.queue")
    assert sorted(q["fingerprint"] for q in queued) == sorted(accepted)
    rows = await fetch(replicas[1], "SELECT occurrences FROM gateway.fingerprints")
    assert [r["occurrences"] for r in rows] == [16] * 20


async def test_a_resolved_alert_drops_its_unforwarded_firing_one(intake: StoreFactory) -> None:
    store = await intake()
    [fired] = await store.take([alert("flap")])
    [resolved] = await store.take([alert("flap", resolved=True)])
    assert resolved.disposition == IGNORED_RESOLVED
    assert "never became work" in resolved.reason
    assert await fetch(store, "SELECT id FROM gateway.queue") == []
    # Firing again is a new life: accepted again.
    [again] = await store.take([alert("flap")])
    assert (again.disposition, again.fingerprint) == (ACCEPTED, fired.fingerprint)


async def test_a_resolved_alert_of_a_forwarded_one_queues_its_resolution(
    intake: StoreFactory,
) -> None:
    store = await intake()
    await store.take([alert("db")])
    [claimed] = await store.claim(10, 60)
    incident_id = str(uuid.uuid4())
    await store.forwarded(claimed, incident_id)
    [duplicate] = await store.take([alert("db")])
    assert duplicate.incident_id == incident_id
    [resolved] = await store.take([alert("db", resolved=True)])
    assert (resolved.disposition, resolved.incident_id) == (IGNORED_RESOLVED, incident_id)
    [resolution] = await store.claim(10, 60)
    assert resolution.kind == "resolved"
    assert await store.resolution_target(resolution) == (incident_id, 0)


async def test_a_resolution_waits_for_every_fingerprint_of_the_incident(
    intake: StoreFactory,
) -> None:
    store = await intake()
    # Two pods of one Deployment: two fingerprints, one incident (the alert processor
    # resolved both to the Deployment).
    await store.take([alert("", pod="x-1"), alert("", pod="x-2")])
    incident_id = str(uuid.uuid4())
    for claimed in await store.claim(10, 60):
        await store.forwarded(claimed, incident_id)
    await store.take([alert("", pod="x-1", resolved=True)])
    [first] = await store.claim(10, 60)
    assert await store.resolution_target(first) == (incident_id, 1)
    await store.forwarded(first, "")
    await store.take([alert("", pod="x-2", resolved=True)])
    [last] = await store.claim(10, 60)
    assert await store.resolution_target(last) == (incident_id, 0)


async def test_a_fingerprints_rows_are_claimed_in_order_one_at_a_time(
    intake: StoreFactory,
) -> None:
    store = await intake()
    await store.take([alert("ordered")])
    [firing] = await store.claim(10, 60)
    await store.take([alert("ordered", resolved=True)])
    # The resolution waits while its firing alert is being forwarded.
    assert await store.claim(10, 60) == []
    await store.forwarded(firing, str(uuid.uuid4()))
    [resolution] = await store.claim(10, 60)
    assert resolution.kind == "resolved"


async def test_a_failed_forward_is_retried_after_its_backoff_and_a_lease_expires(
    intake: StoreFactory,
) -> None:
    store = await intake()
    await store.take([alert("flaky")])
    [claimed] = await store.claim(10, 60)
    await store.retry_later(claimed, "UNAVAILABLE: down", 0.3)
    assert await store.claim(10, 60) == []
    await asyncio.sleep(0.4)
    [again] = await store.claim(10, 0.2)
    assert again.attempts == 2
    # Its forwarder died: after the lease, another takes it.
    await asyncio.sleep(0.3)
    [taken_over] = await store.claim(10, 60)
    assert taken_over.row_id == claimed.row_id and taken_over.attempts == 3


async def test_a_hold_delays_forwarding(intake: StoreFactory) -> None:
    store = await intake(hold_seconds=0.5)
    await store.take([alert("held")])
    assert await store.claim(10, 60) == []
    due = await store.next_due_in()
    assert due is not None and 0 < due <= 0.5
    await asyncio.sleep(0.6)
    assert len(await store.claim(10, 60)) == 1


async def test_a_storm_lists_its_resources_on_one_incident(intake: StoreFactory) -> None:
    store = await intake(storm_threshold=3, hold_seconds=30)
    name = "KubePodNotReady"
    first = await store.take([alert(f"svc-{i}", name=name) for i in range(2)])
    assert [o.disposition for o in first] == [ACCEPTED, ACCEPTED]
    # The third resource in the window starts the storm; the first two, still held,
    # join it instead of opening incidents of their own.
    later = await store.take([alert(f"svc-{i}", name=name) for i in range(2, 6)])
    assert [o.disposition for o in later] == [STORM] * 4
    assert "started on 6 resources" in later[-1].reason
    queued = await fetch(store, "SELECT storm_id, not_before <= now() AS due FROM gateway.queue")
    storm_ids = {q["storm_id"] for q in queued}
    assert len(queued) == 6 and len(storm_ids) == 1 and "" not in storm_ids
    # Listing them needs no hold.
    assert all(q["due"] for q in queued)
    # Another alert name is not part of it.
    [other] = await store.take([alert("svc-0", name="KubeJobFailed")])
    assert other.disposition == ACCEPTED
    # The storm ends when its last member resolves; the next start is counted afresh.
    await store.take([alert(f"svc-{i}", name=name, resolved=True) for i in range(6)])
    [storm] = await fetch(store, "SELECT ended_at FROM gateway.storms")
    assert storm["ended_at"] is not None
    [fresh] = await store.take([alert("svc-9", name=name)])
    assert fresh.disposition == ACCEPTED
    # Within one batch: those accepted before the storm started are told they joined it.
    batch = await store.take([alert(f"api-{i}", name="KubeHpaMaxedOut") for i in range(4)])
    assert [o.disposition for o in batch] == [STORM] * 4


async def test_stale_and_future_alerts_are_refused_or_flagged(intake: StoreFactory) -> None:
    now = dt.datetime.now(dt.UTC)
    refusing = await intake(max_age_seconds=3600, future_skew_seconds=60)
    stale, future, fresh = await refusing.take(
        [
            alert("old", started=now - dt.timedelta(hours=2)),
            alert("ahead", started=now + dt.timedelta(minutes=5)),
            alert("fresh", started=now - dt.timedelta(minutes=59)),
        ]
    )
    assert stale.disposition == REFUSED and stale.reason.startswith("stale: started 2.0h ago")
    assert future.disposition == REFUSED and future.reason.startswith("from the future")
    assert fresh.disposition == ACCEPTED
    # Refused alerts leave nothing behind.
    rows = await fetch(refusing, "SELECT fingerprint FROM gateway.fingerprints")
    assert [r["fingerprint"] for r in rows] == [fresh.fingerprint]

    flagging = await intake(max_age_seconds=3600, stale_policy=FreshnessPolicy.FLAG)
    [flagged] = await flagging.take([alert("old-but-firing", started=now - dt.timedelta(hours=3))])
    assert flagged.disposition == ACCEPTED
    assert flagged.flags and flagged.flags[0].startswith("stale")
    [queued] = [q for q in await flagging.claim(10, 60) if q.fingerprint == flagged.fingerprint]
    assert queued.alert.annotations[FLAGS_ANNOTATION].startswith("stale")


async def test_duplicates_are_counted_once_and_a_closed_incident_ends_the_life(
    intake: StoreFactory,
) -> None:
    store = await intake()
    await store.take([alert("counted")])
    [claimed] = await store.claim(10, 60)
    incident_id = str(uuid.uuid4())
    await store.forwarded(claimed, incident_id)
    await store.take([alert("counted"), alert("counted")])
    [(fingerprint, incident, count)] = await store.uncounted(10)
    assert (incident, count) == (incident_id, 2)
    # One more arrives while the count is on its way: it is kept for the next round.
    await store.take([alert("counted")])
    await store.counted(incident_id, [(fingerprint, count)], incident_closed=True)
    assert await store.uncounted(10) == [(fingerprint, incident_id, 1)]
    # The incident closed: the next alert is new work.
    [next_life] = await store.take([alert("counted")])
    assert next_life.disposition == ACCEPTED


async def test_a_refused_alert_is_set_aside_and_its_life_ends(intake: StoreFactory) -> None:
    store = await intake()
    await store.take([alert("poison")])
    [claimed] = await store.claim(10, 60)
    await store.give_up(claimed, "INVALID_ARGUMENT: no")
    assert await store.claim(10, 60) == []
    assert await store.queue_depth() == (0, 0.0)
    [retried] = await store.take([alert("poison")])
    assert retried.disposition == ACCEPTED
