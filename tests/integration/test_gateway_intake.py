"""The gateway's intake against each of its backends, real PostgreSQL and real Redis: a
fingerprint's life, dedup across replicas (two connection pools racing on one state),
storms, the hold, freshness, and the queue the forwarder drains. Every test runs on both;
the Redis backend's own concerns (reaching it, durability) come last."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from operator import attrgetter
from random import Random
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.common.v1 import alert_pb2, remediation_pb2

from kubernaut.devstack.processes import free_port
from kubernaut.runtime.database import redact_dsn
from kubernaut.services.gateway import postgres_intake
from kubernaut.services.gateway.backend import IntakeSource, IntakeUnavailable, QueuedAlert
from kubernaut.services.gateway.decisions import FLAGS_ANNOTATION, Outcome, items_of
from kubernaut.services.gateway.forwarding import Forwarder
from kubernaut.services.gateway.postgres_intake import IntakeStore
from kubernaut.services.gateway.redis_intake import RedisIntake, RedisIntakeSource
from kubernaut.services.gateway.settings import FreshnessPolicy, GatewaySettings
from tests.fixtures.postgres import fresh_database
from tests.fixtures.redis import running_redis_server
from tests.fixtures.waiting import eventually

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
Store = IntakeStore | RedisIntake


@pytest.fixture(params=["postgresql", "redis"])
def backend_url(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend, URL): a fresh PostgreSQL database, or the session's Redis. Only the
    backend's own server is started."""
    backend: str = request.param
    fixture = "database_dsn" if backend == "postgresql" else "redis_url"
    return backend, request.getfixturevalue(fixture)


@pytest.fixture
async def intake(backend_url: tuple[str, str]) -> AsyncIterator[StoreFactory]:
    """Opens intakes (each with its own connections, as a replica has) on one fresh state: a
    fresh database, or a key prefix of its own in Redis."""
    backend, url = backend_url
    key_prefix = f"kubernaut-test:{uuid.uuid4().hex}:"
    opened: list[Store] = []

    async def open_store(**settings: Any) -> Store:
        store: Store
        if backend == "postgresql":
            gateway = GatewaySettings(database_url=url, **{"hold_seconds": 0, **settings})
            store = await IntakeStore.connect(url, settings=gateway)
            await store.migrate()
        else:
            gateway = GatewaySettings(**{"hold_seconds": 0, **settings})
            store = await RedisIntake.connect(url, gateway, key_prefix=key_prefix)
        opened.append(store)
        return store

    yield open_store
    if backend == "redis" and opened:
        await forget_keys(opened[0], key_prefix)
    for store in opened:
        await store.close()


async def forget_keys(store: Store, key_prefix: str) -> None:
    """Delete a Redis test's keys (the server lives for the session)."""
    assert isinstance(store, RedisIntake)
    keys = [key async for key in store.client.scan_iter(match=key_prefix + "*")]
    if keys:
        await store.client.delete(*keys)


# What the tests look at beyond the Intake methods, read from each backend's own state.


async def fetch(store: IntakeStore, query: str, *args: Any) -> list[Any]:
    async with store._connection() as conn:
        return list(await conn.fetch(query, *args))


async def redis_hashes(store: RedisIntake, kind: str) -> dict[str, dict[str, str]]:
    """The hashes `<prefix><kind>:<name>` by name."""
    prefix = store.key(f"{kind}:")
    # The client decodes replies (decode_responses), so keys and values are str.
    return {
        str(key).removeprefix(prefix): {str(k): str(v) for k, v in fields.items()}
        async for key in store.client.scan_iter(match=prefix + "*")
        for fields in [await store.client.hgetall(key)]
    }


async def fingerprint_rows(store: Store) -> list[dict[str, Any]]:
    """Every fingerprint's life: fingerprint, occurrences, uncounted."""
    if isinstance(store, IntakeStore):
        query = "SELECT fingerprint, occurrences, uncounted FROM gateway.fingerprints"
        return [dict(row) for row in await fetch(store, query)]
    return [
        {
            "fingerprint": fingerprint,
            "occurrences": int(life["occurrences"]),
            "uncounted": int(life["uncounted"]),
        }
        for fingerprint, life in (await redis_hashes(store, "fp")).items()
    ]


async def queue_rows(store: Store) -> list[dict[str, Any]]:
    """Every queued row, failed ones too: fingerprint, kind, storm_id, due (not held back)."""
    if isinstance(store, IntakeStore):
        query = "SELECT fingerprint, kind, storm_id, not_before <= now() AS due FROM gateway.queue"
        return [dict(row) for row in await fetch(store, query)]
    seconds, micros = await store.client.time()
    now = seconds * 1_000_000 + micros
    return [
        {
            "fingerprint": row["fingerprint"],
            "kind": row["kind"],
            "storm_id": row["storm_id"],
            "due": int(row["not_before"]) <= now,
        }
        for row in (await redis_hashes(store, "row")).values()
    ]


async def storm_rows(store: Store) -> list[dict[str, Any]]:
    """Every storm: storm_id, ended."""
    if isinstance(store, IntakeStore):
        query = "SELECT storm_id, ended_at IS NOT NULL AS ended FROM gateway.storms"
        return [dict(row) for row in await fetch(store, query)]
    return [
        {"storm_id": storm_id, "ended": storm["ended_at"] != ""}
        for storm_id, storm in (await redis_hashes(store, "storm")).items()
    ]


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
    [row] = await fingerprint_rows(store)
    assert (row["occurrences"], row["uncounted"]) == (3, 2)
    queued = await queue_rows(store)
    assert [q["kind"] for q in queued] == ["firing"]


async def test_one_batch_decides_each_fingerprints_alerts_in_the_order_they_came(
    intake: StoreFactory,
) -> None:
    store = await intake()
    [web] = await store.take([alert("web")])
    outcomes = await store.take(
        [
            alert("api"),
            alert("web"),
            alert("api"),
            alert("web"),
            alert("db"),
            alert("db", resolved=True),
            alert("cache", resolved=True),
            alert("cache"),
        ]
    )
    told = [(o.disposition, o.reason.split(" (")[-1].split(" alerts")[0]) for o in outcomes]
    assert [d for d, _ in told] == [
        ACCEPTED,
        DUPLICATE,
        DUPLICATE,
        DUPLICATE,
        ACCEPTED,
        IGNORED_RESOLVED,
        IGNORED_RESOLVED,
        ACCEPTED,
    ]
    # Repeats are counted one after the other: the occurrences so far, in order.
    assert [n for d, n in told if d == DUPLICATE] == ["2", "2", "3"]
    assert outcomes[1].fingerprint == web.fingerprint
    assert "never became work" in outcomes[5].reason
    assert "nothing of it fires" in outcomes[6].reason
    queued = await queue_rows(store)
    assert sorted(q["fingerprint"] for q in queued) == sorted(
        [web.fingerprint, outcomes[0].fingerprint, outcomes[7].fingerprint]
    )
    rows = {r["fingerprint"]: r["occurrences"] for r in await fingerprint_rows(store)}
    assert (rows[web.fingerprint], rows[outcomes[0].fingerprint]) == (3, 2)


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
    queued = await queue_rows(replicas[0])
    assert sorted(q["fingerprint"] for q in queued) == sorted(accepted)
    rows = await fingerprint_rows(replicas[1])
    assert [r["occurrences"] for r in rows] == [16] * 20


async def test_a_resolved_alert_drops_its_unforwarded_firing_one(intake: StoreFactory) -> None:
    store = await intake()
    [fired] = await store.take([alert("flap")])
    [resolved] = await store.take([alert("flap", resolved=True)])
    assert resolved.disposition == IGNORED_RESOLVED
    assert "never became work" in resolved.reason
    assert await queue_rows(store) == []
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
    # The resolution waits while its firing alert is being forwarded: nothing is due
    # until that lease runs out (an idle forwarder must not spin on it).
    assert await store.claim(10, 60) == []
    due = await store.next_due_in()
    assert due is not None and 50 < due <= 60
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
    queued = await queue_rows(store)
    storm_ids = {q["storm_id"] for q in queued}
    assert len(queued) == 6 and len(storm_ids) == 1 and "" not in storm_ids
    # Listing them needs no hold.
    assert all(q["due"] for q in queued)
    # Another alert name is not part of it.
    [other] = await store.take([alert("svc-0", name="KubeJobFailed")])
    assert other.disposition == ACCEPTED
    # The storm ends when its last member resolves; the next start is counted afresh.
    await store.take([alert(f"svc-{i}", name=name, resolved=True) for i in range(6)])
    [storm] = await storm_rows(store)
    assert storm["ended"]
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
    rows = await fingerprint_rows(refusing)
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


async def test_a_duplicate_says_still_queued_only_while_its_first_alert_is(
    intake: StoreFactory,
) -> None:
    """Issue 15: a duplicate answered after its first alert was forwarded said "still
    queued". It says where its first alert is: queued, forwarded without an incident, or
    counted on an incident (its own, or a closed one the quiet period counted it on)."""
    store = await intake(hold_seconds=60)
    await store.take([alert("quiet")])
    [waiting] = await store.take([alert("quiet")])
    assert waiting.disposition == DUPLICATE
    assert (
        waiting.reason
        == "counted on its first alert, still queued (2 alerts so far); not forwarded"
    )

    # Forwarded, and the alert processor opened no incident for it (filtered, dropped).
    store = await intake()
    await store.take([alert("filtered"), alert("counted-on-closed")])
    claimed = {q.alert.labels["deployment"]: q for q in await store.claim(10, 60)}
    await store.forwarded(claimed["filtered"], "")
    closed_incident = str(uuid.uuid4())
    await store.forwarded(claimed["counted-on-closed"], closed_incident)
    filtered, counted = await store.take([alert("filtered"), alert("counted-on-closed")])
    for outcome in (filtered, counted):
        assert outcome.disposition == DUPLICATE
        assert "still queued" not in outcome.reason
    assert filtered.reason == (
        "counted on its first alert, which was forwarded and opened no incident (dropped, with"
        " why: kubernaut alerts list) (2 alerts so far); not forwarded"
    )
    assert (
        counted.reason == f"counted on incident {closed_incident} (2 alerts so far); not forwarded"
    )
    assert counted.incident_id == closed_incident
    # Once the count finds the incident closed the life ends: the next alert is decided
    # afresh (and storage's quiet period decides whether it is the old failure).
    [(fingerprint, _, uncounted)] = await store.uncounted(10)
    await store.counted(closed_incident, [(fingerprint, uncounted)], incident_closed=True)
    [fresh] = await store.take([alert("counted-on-closed")])
    assert fresh.disposition == ACCEPTED


async def test_one_replica_at_a_time_counts_duplicates(intake: StoreFactory) -> None:
    """Two replicas reading the same uncounted rows would both add them to the incident:
    the counting lease lets one count while the other skips its round."""
    first, second = await intake(), await intake()
    async with first.counting_lease() as held:
        assert held
        async with second.counting_lease() as also:
            assert not also
        async with first.counting_lease() as again:  # not even the holder twice
            assert not again
    async with second.counting_lease() as held:
        assert held


async def test_a_refused_alert_is_set_aside_and_its_life_ends(intake: StoreFactory) -> None:
    store = await intake()
    await store.take([alert("poison")])
    [claimed] = await store.claim(10, 60)
    await store.give_up(claimed, "INVALID_ARGUMENT: no")
    assert await store.claim(10, 60) == []
    assert await store.queue_depth() == (0, 0.0)
    [retried] = await store.take([alert("poison")])
    assert retried.disposition == ACCEPTED


# -- the Redis backend's own concerns ---------------------------------------------------------


def test_redis_urls_are_redacted_like_database_urls() -> None:
    assert redact_dsn("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_dsn("rediss://gw:s3cret@cache/1") == "rediss://gw:***@cache/1"
    assert (
        redact_dsn("redis://cache?db=2&password=s3cret&ssl_cert_reqs=none")
        == "redis://cache?db=2&password=***&ssl_cert_reqs=none"
    )
    assert redact_dsn("unix:///run/redis.sock?password=s3cret") == (
        "unix:///run/redis.sock?password=***"
    )


async def test_a_redis_source_is_unready_while_redis_is_down_and_ready_once_it_answers() -> None:
    port = free_port()
    password = f"pw-{uuid.uuid4().hex}"
    source = RedisIntakeSource(
        f"redis://:{password}@127.0.0.1:{port}/0",
        GatewaySettings(hold_seconds=0),
        key_prefix=f"kubernaut-test:{uuid.uuid4().hex}:",
        timeout=2.0,
    )
    # What the gateway holds: any backend's source.
    held: IntakeSource = source
    try:
        assert not await held.ready()
        with pytest.raises(IntakeUnavailable) as down:
            await held.store()
        assert f"127.0.0.1:{port}" in str(down.value)
        assert password not in str(down.value)
        async with running_redis_server(port=port, password=password):
            assert await held.ready()
            [outcome] = await (await held.store()).take([alert("comes-up")])
            assert outcome.disposition == ACCEPTED
        # Down again: not ready, and nothing is taken.
        assert not await held.ready()
        with pytest.raises(IntakeUnavailable):
            await (await held.store()).take([alert("comes-up")])
    finally:
        await held.close()


async def test_an_accepted_alert_outlives_a_redis_crash() -> None:
    async with running_redis_server() as server:
        store = await RedisIntake.connect(server.url, GatewaySettings(hold_seconds=0))
        try:
            [accepted] = await store.take([alert("kept")])
            assert accepted.disposition == ACCEPTED
            # Killed right after answering: appendfsync always had written it already.
            await asyncio.to_thread(server.kill)
            await asyncio.to_thread(server.start)
            [queued] = await store.claim(10, 60)
            assert queued.fingerprint == accepted.fingerprint
            [duplicate] = await store.take([alert("kept")])
            assert duplicate.disposition == DUPLICATE
        finally:
            await store.close()


async def test_redis_without_fsync_on_every_write_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = "kubernaut.services.gateway.redis_intake"
    caplog.set_level(logging.INFO, logger=logger)
    async with running_redis_server(config=["appendfsync everysec"]) as server:
        store = await RedisIntake.connect(server.url, GatewaySettings())
        await store.close()
    [warning] = [r for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]
    assert "appendfsync always" in warning.getMessage()
    assert (warning.__dict__["appendonly"], warning.__dict__["appendfsync"]) == ("yes", "everysec")
    caplog.clear()
    # Managed Redis often disables CONFIG: the intake cannot check, says so, and works.
    async with running_redis_server(
        config=["user default on nopass ~* &* +@all -config"]
    ) as server:
        store = await RedisIntake.connect(server.url, GatewaySettings(hold_seconds=0))
        try:
            [outcome] = await store.take([alert("managed")])
            assert outcome.disposition == ACCEPTED
        finally:
            await store.close()
    [told] = [r for r in caplog.records if r.name == logger]
    assert told.levelno == logging.INFO
    assert "cannot read Redis's persistence settings" in told.getMessage()


async def test_redis_answers_as_postgresql_on_a_random_workload(
    database_dsn: str, redis_url: str
) -> None:
    """The same random alerts and forwarder steps on both backends, one step at a time:
    every answer, and what each keeps, is the same. Row and storm ids differ; storms are
    compared by their order of appearance, claimed rows by fingerprint."""
    settings: dict[str, Any] = {"hold_seconds": 0, "storm_threshold": 3, "retention_seconds": 1e-6}
    postgres = await IntakeStore.connect(
        database_dsn, settings=GatewaySettings(database_url=database_dsn, **settings)
    )
    await postgres.migrate()
    key_prefix = f"kubernaut-test:{uuid.uuid4().hex}:"
    redis = await RedisIntake.connect(redis_url, GatewaySettings(**settings), key_prefix=key_prefix)
    stores: tuple[Store, Store] = (postgres, redis)
    storm_names: tuple[dict[str, str], dict[str, str]] = ({}, {})

    def canonical(side: int, text: str) -> str:
        """`text` with each storm id replaced by its order of appearance on that side."""
        names = storm_names[side]
        for storm_id in re.findall(r"storm-[0-9a-f]{26}", text):
            text = text.replace(storm_id, names.setdefault(storm_id, f"storm#{len(names)}"))
        return text

    async def both(method: str, *args: Any) -> tuple[Any, Any]:
        return (await getattr(postgres, method)(*args), await getattr(redis, method)(*args))

    async def kept(side: int, store: Store) -> dict[str, list[Any]]:
        """What a backend keeps, comparable across backends."""
        lives = sorted(sorted(life.items()) for life in await fingerprint_rows(store))
        queue = sorted(
            (q["fingerprint"], q["kind"], canonical(side, q["storm_id"]), q["due"])
            for q in await queue_rows(store)
        )
        storms = sorted(
            (canonical(side, s["storm_id"]), s["ended"]) for s in await storm_rows(store)
        )
        depth, _ = await store.queue_depth()
        due = await store.next_due_in()
        return {
            "lives": lives,
            "queue": queue,
            "storms": storms,
            "depth": [depth],
            "due": [due if due is None else due < 60],
        }

    random = Random(20240611)
    in_flight: list[tuple[QueuedAlert, QueuedAlert]] = []
    try:
        for step in range(120):
            action = random.choice(["take"] * 4 + ["claim", "settle", "count", "forget"])
            if action == "take":
                batch = [
                    alert(
                        f"d{random.randrange(6)}",
                        name=random.choice(["KubePodNotReady", "KubeJobFailed"]),
                        resolved=random.random() < 0.3,
                    )
                    for _ in range(random.randint(1, 5))
                ]
                told = [
                    [
                        (o.fingerprint, o.disposition, canonical(side, o.reason), o.incident_id)
                        for o in outcomes
                    ]
                    for side, outcomes in enumerate(await both("take", batch))
                ]
                assert told[0] == told[1], f"step {step}: take"
            elif action == "claim":
                claimed = await both("claim", 100, 3600)
                assert len(claimed[0]) == len(claimed[1]), f"step {step}: claim"
                # One row per fingerprint at most; the order of one batch's rows is the
                # backend's own (PostgreSQL queues the alerts it starts together first).
                by_fingerprint = [sorted(rows, key=attrgetter("fingerprint")) for rows in claimed]
                for pair in zip(*by_fingerprint, strict=True):
                    seen = [
                        (
                            q.fingerprint,
                            q.kind,
                            canonical(side, q.storm_id),
                            q.incident_id,
                            q.attempts,
                            q.alert.SerializeToString(deterministic=True),
                        )
                        for side, q in enumerate(pair)
                    ]
                    assert seen[0] == seen[1], f"step {step}: claim"
                    in_flight.append((pair[0], pair[1]))
            elif action == "settle" and in_flight:
                pair = in_flight.pop(random.randrange(len(in_flight)))
                how = random.choice(["forwarded", "retry now", "retry later", "give up"])
                incident_id = f"incident-{random.randrange(3)}"
                if how == "forwarded" and pair[0].kind == "resolved":
                    targets = [
                        await s.resolution_target(q) for s, q in zip(stores, pair, strict=True)
                    ]
                    assert targets[0] == targets[1], f"step {step}: resolution_target"
                for store, queued in zip(stores, pair, strict=True):
                    if how == "forwarded":
                        await store.forwarded(queued, incident_id)
                    elif how == "give up":
                        await store.give_up(queued, "INVALID_ARGUMENT: no")
                    else:
                        delay = 0 if how == "retry now" else 3600
                        await store.retry_later(queued, "UNAVAILABLE: down", delay)
            elif action == "count":
                uncounted = await both("uncounted", 100)
                assert sorted(uncounted[0]) == sorted(uncounted[1]), f"step {step}: uncounted"
                by_incident: dict[str, list[tuple[str, int]]] = {}
                for fingerprint, incident_id, count in uncounted[0]:
                    by_incident.setdefault(incident_id, []).append((fingerprint, count))
                for incident_id, counts in by_incident.items():
                    await both("counted", incident_id, counts, random.random() < 0.3)
            elif action == "forget":
                forgotten = await both("forget_finished")
                assert forgotten[0] == forgotten[1], f"step {step}: forget_finished"
            assert await kept(0, postgres) == await kept(1, redis), f"step {step}: {action}"
    finally:
        await forget_keys(redis, key_prefix)
        await redis.close()
        await postgres.close()


async def test_a_resolved_alert_whose_firing_one_is_in_flight_still_resolves_its_incident(
    intake: StoreFactory,
) -> None:
    store = await intake(storm_threshold=3)
    name = "KubePodNotReady"
    await store.take([alert("a", name=name)])
    [in_flight] = await store.claim(10, 60)
    # A storm starts while "a" is being forwarded: "a" gets a second (listing) row.
    await store.take([alert("b", name=name), alert("c", name=name)])
    [resolved] = await store.take([alert("a", name=name, resolved=True)])
    assert "never became work" not in resolved.reason
    await store.forwarded(in_flight, incident_id := str(uuid.uuid4()))
    # Its resolution was queued, and resolves the incident the in-flight alert opened.
    rows = await store.claim(10, 60)
    [resolution] = [row for row in rows if row.kind == "resolved"]
    assert await store.resolution_target(resolution) == (incident_id, 0)


async def test_a_queued_alert_keeps_the_trace_of_the_request_that_brought_it(
    intake: StoreFactory,
) -> None:
    store = await intake()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await store.take([alert("traced")], traceparent)
    [queued] = await store.claim(10, 60)
    assert queued.trace_context == traceparent
    await store.forwarded(queued, str(uuid.uuid4()))
    await store.take([alert("traced", resolved=True)], traceparent)
    [resolution] = await store.claim(10, 60)
    assert resolution.trace_context == traceparent


async def test_replicas_racing_into_one_storm_never_fail(intake: StoreFactory) -> None:
    replicas = [await intake(storm_threshold=3), await intake(storm_threshold=3)]
    name = "KubeContainerWaiting"
    for round_ in range(10):
        seed = [alert(f"r{round_}-seed-{i}", name=f"{name}{round_}") for i in range(2)]
        await replicas[0].take(seed)
        batches = [
            seed + [alert(f"r{round_}-{side}-{i}", name=f"{name}{round_}") for i in range(4)]
            for side in ("left", "right")
        ]
        # PostgreSQL may break a deadlock between the two; the intake takes the batch again.
        left, right = await asyncio.gather(
            replicas[0].take(batches[0]), replicas[1].take(batches[1])
        )
        news = [o for o in left[2:] + right[2:]]
        assert all(o.disposition == STORM for o in news), [(o.disposition, o.reason) for o in news]


async def test_a_replica_that_starts_a_life_another_just_started_counts_its_alert(
    database_dsn: str,
) -> None:
    """PostgreSQL decides a batch's firing alerts in one statement; when another replica
    inserts one of its new fingerprints between that statement's look and its own insert,
    the statement changes nothing and the batch is taken again one alert at a time."""
    settings = GatewaySettings(database_url=database_dsn, hold_seconds=0)
    first = await IntakeStore.connect(database_dsn, settings=settings)
    second = await IntakeStore.connect(database_dsn, settings=settings)
    await first.migrate()
    try:
        racing = alert("raced")
        [item] = items_of([racing], dt.datetime.now(dt.UTC), settings)
        async with first._connection() as conn, conn.transaction():
            outcomes: dict[int, Outcome] = {}
            assert await first._take_firing(conn, [item], outcomes, "", partial=True)
            assert outcomes[0].disposition == ACCEPTED
            # The other replica looks now (nothing committed yet) and waits on the row.
            taking = asyncio.create_task(second.take([racing, alert("alone")]))
            await asyncio.sleep(0.5)
            assert not taking.done()
        counted, alone = await taking
        assert (counted.disposition, alone.disposition) == (DUPLICATE, ACCEPTED)
        assert "2 alerts so far" in counted.reason
        queued = await queue_rows(first)
        assert sorted(q["fingerprint"] for q in queued) == sorted(
            [item.fingerprint, alone.fingerprint]
        )
    finally:
        await first.close()
        await second.close()


async def test_counting_duplicates_reads_by_key_though_planned_on_an_empty_table(
    database_dsn: str,
) -> None:
    """A connection keeps the plans it made for take_firing's statements; a gateway's first
    call makes them on an empty table. Counting duplicates must still read the rows by key
    once the table has grown: no sequential scan, and not the storm index (whose scan grows
    with every firing fingerprint of the alert name)."""
    settings = GatewaySettings(database_url=database_dsn, hold_seconds=0)
    store = await IntakeStore.connect(database_dsn, settings=settings)
    await store.migrate()
    await store.close()
    conn = await asyncpg.connect(database_dsn)
    # Counters read as they are now, not as the transaction first saw them.
    await conn.execute("SET stats_fetch_consistency = none")

    async def take(fingerprints: list[str]) -> list[asyncpg.Record]:
        count = len(fingerprints)
        return await conn.fetch(
            "SELECT * FROM gateway.take_firing($1, $2, $3, $4, $5, 0, '', 60, 1000000, false)",
            fingerprints,
            [1] * count,
            ["KubePodCrashLooping"] * count,
            [""] * count,
            ['{"name": "KubePodCrashLooping"}'] * count,
        )

    async def reads() -> tuple[int, int]:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        row = await conn.fetchrow(
            """
            SELECT t.seq_scan, i.idx_scan AS by_name
            FROM pg_stat_user_tables t, pg_stat_user_indexes i
            WHERE t.relid = 'gateway.fingerprints'::regclass
              AND i.indexrelid = 'gateway.fingerprints_by_name'::regclass
            """
        )
        assert row is not None
        return row["seq_scan"], row["by_name"]

    try:
        assert [r["started"] for r in await take(["first"])] == [True]  # plans made here
        for start in range(0, 2000, 500):
            await take([f"fp-{n:05d}" for n in range(start, start + 500)])
        before = await reads()
        counted = await take([f"fp-{n:05d}" for n in range(0, 2000, 100)])
        assert [(r["started"], r["occurrences"]) for r in counted] == [(False, 2)] * 20
        assert await reads() == before
    finally:
        await conn.close()


@pytest.mark.parametrize("query", ["_STORM_SIZE", "_END_STORM_IF_QUIET"])
async def test_a_storms_members_are_found_through_their_index(
    database_dsn: str, query: str
) -> None:
    """Storm sizes are counted per member alert: through the partial index on storm_id,
    also in a plan made for any storm (a prepared statement's generic plan)."""
    settings = GatewaySettings(database_url=database_dsn, hold_seconds=0)
    store = await IntakeStore.connect(database_dsn, settings=settings)
    await store.migrate()
    await store.close()
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
        await conn.execute(f"PREPARE storm_query(text) AS {getattr(postgres_intake, query)}")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE storm_query('s-1')"))
        assert "fingerprints_by_storm" in plan, plan
    finally:
        await conn.close()


class _DownOnce:
    """The real store, whose database is down for the first call of `method`."""

    def __init__(self, store: Any, method: str) -> None:
        self.store = store
        self.down = {method}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if name not in self.down:
            return method

        async def failing(*args: Any) -> Any:
            self.down.discard(name)
            raise IntakeUnavailable("the database system is shutting down")

        return failing


async def test_a_retry_the_database_could_not_record_is_recorded_once_it_answers(
    intake: StoreFactory,
) -> None:
    """The database goes down just as a failed forward's retry is recorded: once it answers
    again the retry is recorded, and the alert is due after its backoff, not after the
    lease the forwarder still holds on it (a chaos run's postgres restart)."""
    store = await intake()
    await store.take([alert("outage")])
    flaky = _DownOnce(store, "retry_later")

    class Source:
        async def store(self) -> Any:
            return flaky

    async def process_alert(request: Any, timeout: float) -> Any:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
        )

    settings = GatewaySettings(forward_lease_seconds=600, forward_max_backoff_seconds=0.2)
    forwarder = Forwarder(Source(), process_alert, process_alert, settings)  # type: ignore[arg-type]
    with pytest.raises(IntakeUnavailable):
        await forwarder.run_once()
    # Still leased for 600 s, so nothing is due; the next round records the retry first.
    assert await store.claim(10, 60) == []
    with contextlib.suppress(IntakeUnavailable):
        await forwarder.run_once()
    await asyncio.sleep(0.5)
    [again] = await store.claim(10, 60)
    assert again.attempts >= 2


async def test_a_forward_the_database_could_not_record_is_recorded_not_repeated(
    intake: StoreFactory,
) -> None:
    """The alert processor took the alert, and the database went down as the forward was
    recorded (a chaos run's postgres restart): the next round records it, and the alert is
    neither left queued under this replica's lease nor forwarded again."""
    store = await intake()
    await store.take([alert("taken")])
    flaky = _DownOnce(store, "forwarded")
    incident_id = str(uuid.uuid4())
    forwarded: list[str] = []

    class Source:
        async def store(self) -> Any:
            return flaky

    async def process_alert(request: Any, timeout: float) -> Any:
        forwarded.append(request.dedup_key)
        return alert_processor_pb2.ProcessAlertResponse(incident_id=incident_id)

    settings = GatewaySettings(forward_lease_seconds=600)
    forwarder = Forwarder(Source(), process_alert, process_alert, settings)  # type: ignore[arg-type]
    with pytest.raises(IntakeUnavailable):
        await forwarder.run_once()
    assert await store.queue_depth() != (0, 0.0)
    await forwarder.run_once()
    assert await store.queue_depth() == (0, 0.0)
    assert len(forwarded) == 1, forwarded
    # Its repeats are counted on the incident it was forwarded to.
    [duplicate] = await store.take([alert("taken")])
    assert duplicate.incident_id == incident_id, duplicate


async def test_a_connection_whose_protocol_state_is_lost_counts_as_unreachable(
    postgres_dsn: str,
) -> None:
    """asyncpg loses track of a connection when PostgreSQL dies mid-statement ("cannot
    switch to state 15; another operation (2) is in progress"): that is the database being
    unreachable, not a bug of the caller, and the broken connection is never used again."""
    async with fresh_database(postgres_dsn) as dsn:
        store = await IntakeStore.connect(dsn, settings=GatewaySettings(database_url=dsn))
        try:
            await store.migrate()
            with pytest.raises(IntakeUnavailable, match="cannot switch to state"):
                async with store._connection() as conn:
                    broken = conn.get_server_pid()
                    raise asyncpg.InternalClientError("cannot switch to state 15")
            # The pool answers with a new connection; the broken one's server is gone.
            assert await store.queue_depth() == (0, 0.0)
            async with store._connection() as conn:
                assert conn.get_server_pid() != broken

                async def gone() -> bool:
                    still = await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", broken
                    )
                    return bool(still == 0)

                await eventually(gone, "the broken connection's backend to end", 10)
        finally:
            await store.close()
