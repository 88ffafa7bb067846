"""The executor's guards (kubernaut/services/executor/guards.py) against a real PostgreSQL: target
busy, cooldown and the per-cluster rate limit, across connections as replicas would use
them. Every time is passed as `now`, so nothing sleeps; every test works in clusters of
its own, so the tests share one migrated database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2

from kubernaut.services.executor.guards import GuardRefused, TargetKey, admit, mark_applied, release
from kubernaut.services.executor.store import ActionSession, ActionStore, ExecutorDatabase
from tests.fixtures.postgres import fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T0 = dt.datetime(2030, 1, 31, 12, 0, 0, tzinfo=dt.UTC)
RESTART = "restart_deployment"
ROLLBACK = "rollback_deployment"
SCALE = "scale_deployment"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture(scope="module")
async def store(postgres_dsn: str) -> AsyncIterator[ActionStore]:
    async with fresh_database(postgres_dsn) as dsn:
        database = ExecutorDatabase(dsn)
        try:
            yield await database.store()
        finally:
            await database.close()


def cluster() -> str:
    return f"c-{uuid.uuid4().hex[:8]}"


def deployment(cluster: str, name: str = "web", namespace: str = "shop") -> TargetKey:
    return TargetKey(cluster=cluster, kind="Deployment", namespace=namespace, name=name)


def request(
    action_id: str, action: str, target: TargetKey, incident_id: str = ""
) -> executor_pb2.ExecuteActionRequest:
    params = remediation_pb2.ActionParams()
    getattr(params, action).SetInParent()
    return executor_pb2.ExecuteActionRequest(
        action_id=action_id,
        # Each call its own incident unless told: one incident's runbook may repeat itself.
        incident_id=incident_id or f"inc-{uuid.uuid4().hex[:8]}",
        alert_name="KubePodCrashLooping",
        action=params,
        target=alert_pb2.ResourceRef(
            cluster=target.cluster,
            namespace=target.namespace,
            kind=target.kind,
            name=target.name,
        ),
    )


@dataclass
class Call:
    """One ExecuteAction call as the engine holds it: the claimed session and its row."""

    session: ActionSession
    action: str
    target: TargetKey

    @property
    def action_id(self) -> str:
        return self.session.action_id

    @property
    def conn(self) -> asyncpg.pool.PoolConnectionProxy:
        # The connection the call holds for its whole run (no public accessor yet).
        return self.session.connection

    async def admit(
        self, now: dt.datetime, *, cooldown_seconds: float = 0, max_per_minute: int = 0
    ) -> None:
        await admit(
            self.conn,
            action_id=self.action_id,
            action=self.action,
            target=self.target,
            cooldown_seconds=cooldown_seconds,
            max_per_minute=max_per_minute,
            now=now,
        )

    async def refused(
        self, now: dt.datetime, *, cooldown_seconds: float = 0, max_per_minute: int = 0
    ) -> GuardRefused:
        with pytest.raises(GuardRefused) as refused:
            await self.admit(now, cooldown_seconds=cooldown_seconds, max_per_minute=max_per_minute)
        assert str(refused.value) == refused.value.reason
        return refused.value


@asynccontextmanager
async def call(
    store: ActionStore,
    target: TargetKey,
    action: str = RESTART,
    *,
    started: dt.datetime = T0,
    action_id: str | None = None,
    incident_id: str = "",
) -> AsyncIterator[Call]:
    """A claimed call with its row created (or resumed, for an existing action_id); leaving
    the block returns the connection, which frees its locks, as a call's end or crash does."""
    action_id = action_id or str(uuid.uuid4())
    async with store.claim(action_id) as session:
        if await session.load() is None:
            await session.create(request(action_id, action, target, incident_id), started)
        yield Call(session, action, target)


async def columns(store: ActionStore, action_id: str) -> asyncpg.Record:
    async with store._acquire() as conn:
        row = await conn.fetchrow(
            "SELECT cluster, target_kind, target_namespace, target_name, admitted_at, applied_at"
            " FROM executor.actions WHERE action_id = $1",
            uuid.UUID(action_id),
        )
    assert row is not None
    return row


def test_target_key_reads_as_the_object() -> None:
    assert str(deployment("prod")) == "Deployment shop/web in cluster prod"
    assert str(TargetKey("prod", "Node", "", "n1")) == "Node n1 in cluster prod"


# -- one action at a time per target ----------------------------------------------------------


async def test_busy_target_refuses_naming_the_action_in_progress(store: ActionStore) -> None:
    target = deployment(cluster())
    async with (
        call(store, target, RESTART, started=at(-2)) as first,
        call(store, target, ROLLBACK) as second,
    ):
        await first.admit(at(0))
        assert dict(await columns(store, first.action_id)) == {
            "cluster": target.cluster,
            "target_kind": "Deployment",
            "target_namespace": "shop",
            "target_name": "web",
            "admitted_at": at(0),
            "applied_at": None,
        }

        refused = await second.refused(at(1))
        assert refused.guard == "target-busy"
        assert refused.reason == (
            f"Deployment shop/web in cluster {target.cluster} is busy: restart_deployment"
            f" (action {first.action_id}) is in progress on it since 2030-01-31T11:59:58Z;"
            " one action at a time"
        )
        assert (await columns(store, second.action_id))["admitted_at"] is None

        await release(first.conn, target)
        await release(first.conn, target)  # not held any more: no error
        await second.admit(at(2))
        # And now the second one holds the target.
        async with call(store, target, RESTART) as third:
            assert (await third.refused(at(3))).guard == "target-busy"


async def test_target_is_free_again_when_the_call_ends(store: ActionStore) -> None:
    """The lock is the session's: returning (or losing) the connection frees it, so a
    crashed replica never leaves a target locked."""
    target = deployment(cluster())
    async with call(store, target) as first:
        await first.admit(at(0))
    async with call(store, target) as second:
        await second.admit(at(1))


async def test_other_targets_are_not_busy(store: ActionStore) -> None:
    name = cluster()
    target = deployment(name)
    others = [
        deployment(name, name="api"),
        deployment(name, namespace="other"),
        TargetKey(name, "StatefulSet", "shop", "web"),
        deployment(cluster()),
    ]
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(call(store, target))
        await first.admit(at(0))
        for other in others:
            await (await stack.enter_async_context(call(store, other))).admit(at(1))


# -- cooldown per (target, action) ------------------------------------------------------------


async def test_cooldown_refuses_the_same_action_on_the_same_target(store: ActionStore) -> None:
    target = deployment(cluster())
    async with call(store, target, RESTART) as applied:
        await applied.admit(at(0), cooldown_seconds=300)
        await mark_applied(applied.conn, applied.action_id, at(5))
    assert (await columns(store, applied.action_id))["applied_at"] == at(5)

    async with call(store, target, RESTART) as again:
        refused = await again.refused(at(100), cooldown_seconds=300)
        assert refused.guard == "cooldown"
        assert refused.reason == (
            f"restart_deployment on Deployment shop/web in cluster {target.cluster} is"
            f" cooling down: it was applied at 2030-01-31T12:00:05Z (action"
            f" {applied.action_id}); it may run there again from 2030-01-31T12:05:05Z"
            " (KUBERNAUT_EXECUTOR_COOLDOWN_SECONDS=300)"
        )
        # Refusing released the target lock: another action can take it at once.
        async with call(store, target, ROLLBACK) as other_action:
            await other_action.admit(at(100), cooldown_seconds=300)

    # The same action on another target is not cooling down.
    async with call(store, deployment(target.cluster, name="api"), RESTART) as elsewhere:
        await elsewhere.admit(at(100), cooldown_seconds=300)
    # Cooldown off.
    async with call(store, target, RESTART) as no_cooldown:
        await no_cooldown.admit(at(100), cooldown_seconds=0)


async def test_one_incidents_runbook_may_repeat_an_action_within_the_cooldown(
    store: ActionStore,
) -> None:
    target = deployment(cluster())
    async with call(store, target, SCALE, incident_id="inc-runbook") as scale_up:
        await scale_up.admit(at(0), cooldown_seconds=300)
        await mark_applied(scale_up.conn, scale_up.action_id, at(5))
    # Scale back down, a step of the same incident's plan: not cooling down.
    async with call(store, target, SCALE, incident_id="inc-runbook") as scale_down:
        await scale_down.admit(at(60), cooldown_seconds=300)
    # Another incident's scale is.
    async with call(store, target, SCALE, incident_id="inc-other") as other:
        assert (await other.refused(at(60), cooldown_seconds=300)).guard == "cooldown"


async def test_cooldown_ends_when_it_said(store: ActionStore) -> None:
    target = deployment(cluster())
    async with call(store, target, RESTART) as applied:
        await applied.admit(at(0), cooldown_seconds=60)
        await mark_applied(applied.conn, applied.action_id, at(0))
    async with call(store, target, RESTART) as early:
        assert (await early.refused(at(59.5), cooldown_seconds=60)).guard == "cooldown"
    async with call(store, target, RESTART) as later:
        await later.admit(at(60), cooldown_seconds=60)


async def test_an_action_never_applied_leaves_no_cooldown(store: ActionStore) -> None:
    target = deployment(cluster())
    async with call(store, target, RESTART) as admitted_only:
        await admitted_only.admit(at(0), cooldown_seconds=300)
    async with call(store, target, RESTART) as again:
        await again.admit(at(1), cooldown_seconds=300)


# -- actions per cluster per minute -----------------------------------------------------------


async def test_rate_limit_per_cluster(store: ActionStore) -> None:
    busy, quiet = cluster(), cluster()
    for i in range(3):
        async with call(store, deployment(busy, name=f"app-{i}")) as admitted:
            await admitted.admit(at(10 * i), max_per_minute=3)

    async with call(store, deployment(busy, name="app-3")) as fourth:
        refused = await fourth.refused(at(30), max_per_minute=3)
        assert refused.guard == "rate"
        assert refused.reason == (
            f"cluster {busy} has started 3 actions in the last 60 s, the limit"
            " (KUBERNAUT_EXECUTOR_MAX_ACTIONS_PER_CLUSTER_PER_MINUTE=3); a slot frees at"
            " 2030-01-31T12:01:00Z"
        )
        # The refused action took no slot and no lock: it is still 3.
        assert (await fourth.refused(at(59.9), max_per_minute=3)).guard == "rate"
        async with call(store, deployment(busy, name="app-3"), ROLLBACK) as same_target:
            assert (await same_target.refused(at(31), max_per_minute=3)).guard == "rate"

        # Another cluster has its own minute.
        async with call(store, deployment(quiet, name="app-3")) as elsewhere:
            await elsewhere.admit(at(30), max_per_minute=3)

        # The first one leaves the window when the refusal said; the fourth fits then.
        await fourth.admit(at(60), max_per_minute=3)
    # No limit admits anyway, and the action still counts for those with one.
    async with call(store, deployment(busy, name="app-4")) as unlimited:
        await unlimited.admit(at(60), max_per_minute=0)
    async with call(store, deployment(busy, name="app-5")) as fifth:
        # app-1 (10 s), app-2 (20 s), app-3 and app-4 (60 s): two must leave for a slot.
        refused = await fifth.refused(at(60), max_per_minute=3)
        assert "started 4 actions" in refused.reason
        assert refused.reason.endswith("a slot frees at 2030-01-31T12:01:20Z")


async def test_two_replicas_racing_for_the_last_slot_admit_exactly_one(
    store: ActionStore,
) -> None:
    """Each round, two connections admit at once into a cluster with one slot left."""
    for _ in range(10):
        name = cluster()
        async with call(store, deployment(name, name="first")) as first:
            await first.admit(at(0), max_per_minute=2)
        async with AsyncExitStack() as stack:
            racers = [
                await stack.enter_async_context(call(store, deployment(name, name=f"racer-{i}")))
                for i in range(2)
            ]
            results = await asyncio.gather(
                *(racer.admit(at(1), max_per_minute=2) for racer in racers),
                return_exceptions=True,
            )
        refusals = [r for r in results if isinstance(r, GuardRefused)]
        assert results.count(None) == 1, results
        assert [r.guard for r in refusals] == ["rate"]
        async with store._acquire() as conn:
            admitted = await conn.fetchval(
                "SELECT count(*) FROM executor.actions"
                " WHERE cluster = $1 AND admitted_at IS NOT NULL",
                name,
            )
        assert admitted == 2


# -- a resumed action -------------------------------------------------------------------------


async def test_resumed_action_is_not_refused_by_its_own_row(store: ActionStore) -> None:
    target = deployment(cluster())
    action_id = str(uuid.uuid4())
    limits = {"cooldown_seconds": 300, "max_per_minute": 1}
    async with call(store, target, action_id=action_id) as before_crash:
        await before_crash.admit(at(0), **limits)
        await mark_applied(before_crash.conn, action_id, at(1))

    # The retry after the crash: its own row is admitted, applied and fills the minute.
    async with call(store, target, action_id=action_id) as resumed:
        await resumed.admit(at(5), **limits)
        assert (await columns(store, action_id))["admitted_at"] == at(0)  # counted once
        # It holds the target again, and its row still counts against everyone else.
        async with call(store, target, ROLLBACK) as other:
            assert (await other.refused(at(6), **limits)).guard == "target-busy"
        async with call(store, deployment(target.cluster, name="api")) as other:
            assert (await other.refused(at(6), **limits)).guard == "rate"
