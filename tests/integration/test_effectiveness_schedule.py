"""ScheduleAssessment and the assessment scheduler against real parts: PostgreSQL (the
schedule in schema `effectiveness`), a real AlertManager (Debian's, alerts posted to its API
v2), the real storage and context_api of the in-process stack, and, for pod evidence, a real
control plane with KWOK nodes read by a context_api server of the test's own.

Each test starts an effectiveness server of its own (seconds-long delays, its own database,
the stack's storage), so the stack's effectiveness (30 s, 2 min, 30 min) never interferes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.effectiveness.v1.effectiveness_pb2_grpc import EffectivenessServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.monitoring import Alertmanager, fetch_alertmanager_alerts
from kubernaut.devstack.processes import free_port
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import RunningService, ServiceContext, ServiceSpec, start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.effectiveness.assessment import Baseline, assessment_id
from kubernaut.services.effectiveness.scheduler import Assessor, EvidenceSources, assessment_of
from kubernaut.services.effectiveness.server import build_with
from kubernaut.services.effectiveness.settings import AssessmentSettings, VerdictSettings
from kubernaut.services.effectiveness.store import (
    Checkpoint,
    Result,
    ScheduleDatabase,
    ScheduleStore,
    Status,
)
from tests.fixtures.cluster import create_deployment, eventually, kube_api
from tests.fixtures.kubernaut import InProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EFFECTIVE = remediation_pb2.VERDICT_EFFECTIVE
INEFFECTIVE = remediation_pb2.VERDICT_INEFFECTIVE
UNKNOWN = remediation_pb2.VERDICT_UNKNOWN
ALERT_NAME = "KubePodCrashLooping"
DELAYS = (0.5, 1.5)
T = TypeVar("T")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp(at: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def seconds(durations: Sequence[duration_pb2.Duration]) -> list[float]:
    return [d.ToTimedelta().total_seconds() for d in durations]


# -- an effectiveness server of the test's own --------------------------------------------------


@dataclass
class Effectiveness:
    running: RunningService
    settings: AssessmentSettings
    workflow: Clients

    @property
    def stub(self) -> Any:
        return self.workflow.stub(EffectivenessServiceStub)


@contextlib.asynccontextmanager
async def effectiveness(
    stack: InProcessStack,
    database_url: str,
    *,
    context_api: str | None = None,
    storage: str | None = None,
    **settings: Any,
) -> AsyncIterator[Effectiveness]:
    """Effectiveness on port 0 with `settings`, calling the stack's services (or the given
    context_api and storage addresses), its schedule in `database_url`."""
    assessment = AssessmentSettings(
        database_url=database_url,
        **{"delays": DELAYS, "poll_interval_seconds": 0.1, **settings},
    )
    addresses = {f"{name.value}_address": address for name, address in stack.addresses.items()}
    if context_api:
        addresses["context_api_address"] = context_api
    if storage:
        addresses["storage_address"] = storage
    runtime = stack.settings.model_copy(update={**addresses, "grpc_port": 0})

    async def builder(ctx: ServiceContext) -> ServiceSpec:
        return await build_with(ctx, assessment, VerdictSettings())

    running = await start_service(
        ServiceName.EFFECTIVENESS, runtime, builder=builder, serve_metrics=False
    )
    workflow = Clients(
        stack.settings, "workflow", addresses={ServiceName.EFFECTIVENESS: running.address}
    )
    try:
        yield Effectiveness(running, assessment, workflow)
    finally:
        await workflow.close()
        await running.shutdown()


@pytest.fixture
async def schedule_store(database_dsn: str) -> AsyncIterator[ScheduleStore]:
    store = await ScheduleStore.connect(database_dsn)
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


# -- AlertManager ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Alertmanager]:
    """A real AlertManager; its notifications go nowhere (nothing listens on port 9)."""
    server = Alertmanager(tmp_path_factory.mktemp("alertmanager"), "http://127.0.0.1:9/hook")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def post_alert(
    alertmanager: Alertmanager,
    labels: dict[str, str],
    *,
    resolved: bool = False,
    started: dt.datetime | None = None,
) -> None:
    """POST /api/v2/alerts, as Prometheus does: firing (no end) or resolved (ended now);
    started five minutes ago unless `started` says when."""
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": "test"},
        "startsAt": (started or now() - dt.timedelta(minutes=5)).isoformat(),
    }
    if resolved:
        alert["endsAt"] = (now() - dt.timedelta(seconds=1)).isoformat()
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(f"{alertmanager.url}/api/v2/alerts", json=[alert])
        response.raise_for_status()


# -- the shared record: an incident and its action, as storage has them -------------------------


@dataclass
class Action:
    action_id: str
    incident_id: str
    alert: alert_pb2.Alert
    target: alert_pb2.ResourceRef


async def recorded_action(
    stack: InProcessStack, target: alert_pb2.ResourceRef, **labels: str
) -> Action:
    """An incident (opened by the operator) and its action (recorded as the executor)."""
    alert = alert_pb2.Alert(
        name=ALERT_NAME,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": ALERT_NAME, "namespace": target.namespace, **labels},
        starts_at=timestamp(now() - dt.timedelta(minutes=5)),
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    operator = stack.clients()
    executor = stack.clients("executor")
    try:
        opened = await operator.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=uuid.uuid4().hex, alert=alert, subject=target
            )
        )
        action_id = str(uuid.uuid4())
        record = storage_pb2.ActionRecord(
            action_id=action_id,
            incident_id=opened.incident.incident_id,
            alert_name=ALERT_NAME,
            action="restart_deployment",
            target=target,
            outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED,
            started_at=timestamp(now()),
            finished_at=timestamp(now()),
        )
        await executor.stub(StorageServiceStub).RecordAction(
            storage_pb2.RecordActionRequest(record=record)
        )
    finally:
        await operator.close()
        await executor.close()
    return Action(action_id, opened.incident.incident_id, alert, target)


def schedule_request(
    action: Action, acted_at: dt.datetime | None = None
) -> effectiveness_pb2.ScheduleAssessmentRequest:
    return effectiveness_pb2.ScheduleAssessmentRequest(
        action_id=action.action_id,
        incident_id=action.incident_id,
        alert=action.alert,
        target=action.target,
        acted_at=timestamp(acted_at or now()),
    )


async def recorded_assessments(
    stack: InProcessStack, action: Action, count: int, timeout: float = 30
) -> list[storage_pb2.Assessment]:
    """The action's assessments as storage.GetIncident returns them, once there are `count`;
    by delay."""
    operator = stack.clients()
    try:

        async def check() -> list[storage_pb2.Assessment] | None:
            response = await operator.stub(StorageServiceStub).GetIncident(
                storage_pb2.GetIncidentRequest(incident_id=action.incident_id)
            )
            assert [a.action_id for a in response.actions] == [action.action_id]
            found = [a for a in response.assessments if a.action_id == action.action_id]
            return found if len(found) >= count else None

        found = await eventually(check, f"{count} assessment(s) of {action.action_id}", timeout)
    finally:
        await operator.close()
    return sorted(found, key=lambda a: a.delay.ToTimedelta())


def unique_namespace() -> str:
    return f"eff-{uuid.uuid4().hex[:10]}"


def deployment_ref(namespace: str, name: str = "checkout") -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name=name)


# -- ScheduleAssessment -----------------------------------------------------------------------


async def test_schedule_is_idempotent_durable_and_returns_the_delays(
    stack: InProcessStack, database_dsn: str, schedule_store: ScheduleStore
) -> None:
    target = deployment_ref(unique_namespace())
    action = await recorded_action(stack, target, deployment="checkout")
    async with effectiveness(stack, database_dsn, delays=(60.0, 5.0, 600.0)) as service:
        first = await service.stub.ScheduleAssessment(schedule_request(action))
        assert first.created
        assert seconds(first.delays) == [5.0, 60.0, 600.0]
        again = await service.stub.ScheduleAssessment(schedule_request(action))
        assert not again.created
        assert seconds(again.delays) == [5.0, 60.0, 600.0]

        # Ten concurrent calls for a new action create it once.
        other = await recorded_action(stack, target, deployment="checkout")
        answers = await asyncio.gather(
            *(service.stub.ScheduleAssessment(schedule_request(other)) for _ in range(10))
        )
        assert sum(a.created for a in answers) == 1
        assert {tuple(seconds(a.delays)) for a in answers} == {(5.0, 60.0, 600.0)}

    # Durable: the schedule is in the service's own schema, one row per (action, delay).
    rows = await schedule_store.checkpoints(action.action_id)
    assert [c.delay.total_seconds() for c in rows] == [5.0, 60.0, 600.0]
    assert [c.final for c in rows] == [False, False, True]
    assert all(c.status is Status.PENDING and c.result is None for c in rows)
    assert [c.assessment_id for c in rows] == [
        assessment_id(action.action_id, c.delay) for c in rows
    ]
    assert rows[0].alert == action.alert and rows[0].target == target
    assert rows[0].incident_id == action.incident_id
    # The stack's context_api has no cluster: no baseline, and the reason is kept.
    assert rows[0].baseline.restarts is None
    assert "no baseline was taken at schedule time" in rows[0].baseline.note
    assert "FAILED_PRECONDITION" not in rows[0].baseline.note
    assert "cannot look at the cluster" in rows[0].baseline.note

    # A restarted service (another server on the same database) keeps the schedule.
    async with effectiveness(stack, database_dsn, delays=(1.0,)) as restarted:
        repeat = await restarted.stub.ScheduleAssessment(schedule_request(action))
        assert not repeat.created
        assert seconds(repeat.delays) == [5.0, 60.0, 600.0]


async def test_schedule_refusals(stack: InProcessStack, database_dsn: str) -> None:
    target = deployment_ref(unique_namespace())
    action = await recorded_action(stack, target)
    async with effectiveness(stack, database_dsn) as service:
        bad_id = schedule_request(action)
        bad_id.action_id = "not-a-uuid"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.ScheduleAssessment(bad_id)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "action_id" in (refused.value.details() or "")

        no_target = schedule_request(action)
        no_target.ClearField("target")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.ScheduleAssessment(no_target)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        future = schedule_request(action, now() + dt.timedelta(hours=1))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.ScheduleAssessment(future)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "acted_at" in (refused.value.details() or "")

        # Only the workflow schedules assessments.
        context_api = Clients(
            stack.settings,
            ServiceName.CONTEXT_API.account,
            addresses={ServiceName.EFFECTIVENESS: service.running.address},
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await context_api.stub(EffectivenessServiceStub).ScheduleAssessment(
                    schedule_request(action)
                )
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        finally:
            await context_api.close()


async def test_an_unreachable_database_is_unavailable(stack: InProcessStack) -> None:
    dead = f"postgresql://kubernaut@127.0.0.1:{free_port()}/nothing"
    target = deployment_ref(unique_namespace())
    action = Action(
        str(uuid.uuid4()),
        "",
        alert_pb2.Alert(
            name=ALERT_NAME, status=alert_pb2.ALERT_STATUS_FIRING, starts_at=timestamp(now())
        ),
        target,
    )
    async with effectiveness(stack, dead) as service:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.ScheduleAssessment(schedule_request(action))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "cannot connect to PostgreSQL" in (refused.value.details() or "")


async def test_the_stacks_effectiveness_schedules_at_the_default_delays(
    stack: InProcessStack,
) -> None:
    action = await recorded_action(stack, deployment_ref(unique_namespace()), deployment="x")
    workflow = stack.clients("workflow")
    try:
        stub = workflow.stub(EffectivenessServiceStub)
        first = await stub.ScheduleAssessment(schedule_request(action))
        assert first.created
        assert seconds(first.delays) == [30.0, 120.0, 1800.0]
        assert not (await stub.ScheduleAssessment(schedule_request(action))).created
    finally:
        await workflow.close()


# -- verdicts without a cluster (the stack's context_api answers FAILED_PRECONDITION) ------------


async def test_without_pod_evidence_the_recorded_verdicts_are_unknown(
    stack: InProcessStack,
    database_dsn: str,
    alertmanager: Alertmanager,
    schedule_store: ScheduleStore,
) -> None:
    namespace = unique_namespace()
    target = deployment_ref(namespace)
    action = await recorded_action(stack, target, pod="checkout-1")
    # The alert fired and resolved: AlertManager no longer holds it as active.
    await post_alert(alertmanager, dict(action.alert.labels), resolved=True)
    async with effectiveness(stack, database_dsn, alertmanager_url=alertmanager.url) as service:
        await service.stub.ScheduleAssessment(schedule_request(action))
        assessments = await recorded_assessments(stack, action, 2)

    assert [a.delay.ToTimedelta().total_seconds() for a in assessments] == list(DELAYS)
    for assessment in assessments:
        assert assessment.verdict == UNKNOWN
        assert assessment.assessment_id == assessment_id(
            action.action_id, assessment.delay.ToTimedelta()
        )
        evidence = list(assessment.evidence)
        assert evidence[0] == "the alert is not active, but there is no pod evidence"
        assert any(
            line.startswith("pods: no evidence: context_api cannot look at the cluster")
            and "no Kubernetes cluster configured" in line
            for line in evidence
        ), evidence
        assert (
            f"alert: AlertManager at {alertmanager.url} has no active {ALERT_NAME} alert"
            f" for Deployment {namespace}/checkout" in evidence
        )
    assert "final checkpoint 1.5s after the action" in assessments[1].evidence[1]
    assert assessments[0].evidence[1].startswith("checkpoint 0.5s after the action, looked")

    rows = await schedule_store.checkpoints(action.action_id)
    assert [c.status for c in rows] == [Status.DONE, Status.DONE]
    assert all(c.recorded_at is not None and c.lease_owner is None for c in rows)


async def test_an_alert_still_active_at_the_final_checkpoint_is_ineffective(
    stack: InProcessStack, database_dsn: str, alertmanager: Alertmanager
) -> None:
    target = deployment_ref(unique_namespace())
    action = await recorded_action(stack, target, pod="checkout-1")
    # Another workload's pod in the same namespace: not this alert.
    await post_alert(alertmanager, {**action.alert.labels, "pod": "other-1"})
    await post_alert(alertmanager, dict(action.alert.labels))
    held = await fetch_alertmanager_alerts(alertmanager.url)
    assert any(a.labels == dict(action.alert.labels) and a.state == "active" for a in held)
    async with effectiveness(stack, database_dsn, alertmanager_url=alertmanager.url) as service:
        await service.stub.ScheduleAssessment(schedule_request(action))
        early, final = await recorded_assessments(stack, action, 2)

    assert early.verdict == UNKNOWN
    assert early.evidence[0] == "the alert has not resolved yet, and there is no pod evidence"
    assert final.verdict == INEFFECTIVE
    assert final.evidence[0] == "the alert is still active at the final checkpoint"
    active = [line for line in final.evidence if "still has" in line]
    assert len(active) == 1 and "pod=checkout-1" in active[0], final.evidence


async def test_alertmanager_missing_or_unreachable_is_said_and_never_assumed_resolved(
    stack: InProcessStack, database_dsn: str
) -> None:
    target = deployment_ref(unique_namespace())
    unconfigured = await recorded_action(stack, target, pod="checkout-1")
    async with effectiveness(stack, database_dsn, delays=(0.3,)) as service:
        await service.stub.ScheduleAssessment(schedule_request(unconfigured))
        (assessment,) = await recorded_assessments(stack, unconfigured, 1)
    assert assessment.verdict == UNKNOWN
    assert assessment.evidence[0] == "no evidence: neither pods nor the alert could be checked"
    assert (
        "alert: no evidence: AlertManager is not configured"
        " (KUBERNAUT_EFFECTIVENESS_ALERTMANAGER_URL)" in assessment.evidence
    )

    unreachable = await recorded_action(stack, target, pod="checkout-1")
    dead = f"http://127.0.0.1:{free_port()}"
    async with effectiveness(
        stack, database_dsn, delays=(0.3,), alertmanager_url=dead, alertmanager_timeout_seconds=2
    ) as service:
        await service.stub.ScheduleAssessment(schedule_request(unreachable))
        (assessment,) = await recorded_assessments(stack, unreachable, 1)
    assert assessment.verdict == UNKNOWN
    assert any(
        line.startswith(f"alert: no evidence: AlertManager at {dead} could not be read")
        and line.endswith("not assumed resolved")
        for line in assessment.evidence
    ), assessment.evidence


# -- crashes, replicas, storage outages -------------------------------------------------------


async def scheduled(
    store: ScheduleStore, action: Action, delays: Sequence[float], acted_at: dt.datetime
) -> None:
    _, created = await store.schedule(
        action.action_id,
        action.incident_id,
        action.alert,
        action.target,
        acted_at,
        Baseline(None, "not taken in this test"),
        [dt.timedelta(seconds=s) for s in delays],
    )
    assert created


async def test_a_crash_between_assessing_and_marking_done_records_the_same_assessment(
    stack: InProcessStack, database_dsn: str, schedule_store: ScheduleStore
) -> None:
    target = deployment_ref(unique_namespace())
    recorded_then_crashed = await recorded_action(stack, target)
    assessed_then_crashed = await recorded_action(stack, target)
    for action in (recorded_then_crashed, assessed_then_crashed):
        await scheduled(schedule_store, action, [0.1], now() - dt.timedelta(seconds=1))

    # A replica claims both with a short lease, assesses, records one, and dies.
    claimed = await schedule_store.claim("crashed-replica", 1.0, 10)
    assert {c.action_id for c in claimed} == {
        recorded_then_crashed.action_id,
        assessed_then_crashed.action_id,
    }
    by_action: dict[str, Checkpoint] = {c.action_id: c for c in claimed}
    stored: dict[str, Result] = {}
    for action_id, checkpoint in by_action.items():
        result = Result(UNKNOWN, (f"assessed by the replica that crashed: {action_id}",), now())
        stored[action_id] = await schedule_store.save_result(checkpoint, "crashed-replica", result)
        # A second save (the same replica retrying) keeps the first verdict.
        other = Result(EFFECTIVE, ("a different look",), now())
        again = await schedule_store.save_result(checkpoint, "crashed-replica", other)
        assert again == stored[action_id]
    effectiveness_identity = stack.clients("effectiveness")
    try:
        checkpoint = by_action[recorded_then_crashed.action_id]
        response = await effectiveness_identity.stub(StorageServiceStub).RecordAssessment(
            storage_pb2.RecordAssessmentRequest(
                assessment=assessment_of(checkpoint, stored[checkpoint.action_id])
            )
        )
        assert response.created
    finally:
        await effectiveness_identity.close()

    # A live replica takes both over once the lease ran out and records the stored verdicts.
    async with effectiveness(stack, database_dsn):

        async def all_done() -> bool:
            rows = [
                row
                for action in (recorded_then_crashed, assessed_then_crashed)
                for row in await schedule_store.checkpoints(action.action_id)
            ]
            return all(row.status is Status.DONE for row in rows)

        await eventually(all_done, "the taken-over checkpoints to be done")

    for action in (recorded_then_crashed, assessed_then_crashed):
        (assessment,) = await recorded_assessments(stack, action, 1)
        assert assessment.verdict == UNKNOWN
        assert list(assessment.evidence) == [
            f"assessed by the replica that crashed: {action.action_id}"
        ]
        (row,) = await schedule_store.checkpoints(action.action_id)
        assert row.attempts == 2  # the crashed claim and the takeover


async def test_concurrent_replicas_never_claim_the_same_checkpoint(
    stack: InProcessStack, schedule_store: ScheduleStore
) -> None:
    target = deployment_ref(unique_namespace())
    actions = [
        Action(str(uuid.uuid4()), "", alert_pb2.Alert(name=ALERT_NAME), target) for _ in range(20)
    ]
    for action in actions:
        await scheduled(schedule_store, action, [0.1, 0.2, 0.3], now() - dt.timedelta(seconds=1))
    claims = await asyncio.gather(*(schedule_store.claim(f"replica-{i}", 60, 7) for i in range(12)))
    keys = [(c.action_id, c.delay) for claim in claims for c in claim]
    assert len(keys) == len(set(keys)) == 60  # each of the 60 claimed exactly once
    assert await schedule_store.claim("late-replica", 60, 100) == []
    # A released lease can be claimed again at once.
    assert await schedule_store.release_all("replica-0") == len(claims[0])
    assert len(await schedule_store.claim("late-replica", 60, 100)) == len(claims[0])


async def test_storage_unreachable_is_retried_until_recorded(
    stack: InProcessStack,
    database_dsn: str,
    runtime_settings: RuntimeSettings,
    schedule_store: ScheduleStore,
) -> None:
    action = await recorded_action(stack, deployment_ref(unique_namespace()))
    await scheduled(schedule_store, action, [0.1], now() - dt.timedelta(seconds=1))
    settings = AssessmentSettings(
        database_url=database_dsn,
        # Long enough that the second run_once below surely comes before the retry.
        retry_initial_seconds=3,
        call_timeout_seconds=3,
        baseline_timeout_seconds=3,
    )
    database = ScheduleDatabase(database_dsn)
    dead_storage = Clients(
        runtime_settings,
        ServiceName.EFFECTIVENESS.account,
        addresses={
            **stack.addresses,
            ServiceName.STORAGE: f"localhost:{free_port()}",
        },
    )
    sources = EvidenceSources(dead_storage.stub(ContextAPIServiceStub), None, settings)
    try:
        offline = Assessor(
            database, sources, dead_storage.stub(StorageServiceStub), settings, owner="offline"
        )
        assert await offline.run_once() == 1
        (row,) = await schedule_store.checkpoints(action.action_id)
        assert row.status is Status.PENDING and row.lease_owner is None
        assert row.last_error.startswith("RecordAssessment: UNAVAILABLE")
        assert row.result is not None and row.result.verdict == UNKNOWN
        assert row.attempts == 1
        # Not before the backoff.
        assert await offline.run_once() == 0
    finally:
        await dead_storage.close()

    # With storage back, the next attempt records the verdict assessed the first time.
    async with effectiveness(stack, database_dsn):
        (assessment,) = await recorded_assessments(stack, action, 1)
    assert tuple(assessment.evidence) == row.result.evidence
    (row,) = await schedule_store.checkpoints(action.action_id)
    assert row.status is Status.DONE and row.attempts == 2
    await database.close()


# -- pod evidence from a real control plane -----------------------------------------------------


async def ready_deployment(
    cluster: LocalCluster, namespace: str, *, replicas: int = 2, schedulable: bool = True
) -> list[str]:
    """Create namespace and Deployment `checkout`; wait until its pods are Ready (or, not
    schedulable, exist); return the pod names."""
    unplaceable = {"nodeSelector": {"kubernaut.dev/no-such-node": "true"}}
    await create_deployment(
        cluster,
        namespace,
        "checkout",
        replicas=replicas,
        pod_spec=None if schedulable else unplaceable,
    )

    async def pods() -> list[str] | None:
        listed = await kube_api(cluster, "GET", f"/api/v1/namespaces/{namespace}/pods")
        items = listed["items"]
        if len(items) < replicas:
            return None
        deployment = await kube_api(
            cluster, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/checkout"
        )
        if schedulable and deployment["status"].get("availableReplicas", 0) < replicas:
            return None
        return sorted(item["metadata"]["name"] for item in items)

    return await eventually(pods, f"the pods of {namespace}/checkout", timeout=60)


async def test_healthy_pods_and_no_active_alert_are_effective(
    stack: InProcessStack,
    database_dsn: str,
    alertmanager: Alertmanager,
    kube: LocalCluster,
    cluster_context_api: str,
    schedule_store: ScheduleStore,
) -> None:
    namespace = unique_namespace()
    pods = await ready_deployment(kube, namespace)
    action = await recorded_action(stack, deployment_ref(namespace), pod=pods[0])
    async with effectiveness(
        stack, database_dsn, context_api=cluster_context_api, alertmanager_url=alertmanager.url
    ) as service:
        await service.stub.ScheduleAssessment(schedule_request(action))
        (row, _) = await schedule_store.checkpoints(action.action_id)
        assert row.baseline.restarts == dict.fromkeys(pods, 0)
        assessments = await recorded_assessments(stack, action, 2)

    for assessment in assessments:
        assert assessment.verdict == EFFECTIVE, assessment.evidence
        evidence = list(assessment.evidence)
        assert evidence[0] == "pods are healthy and the alert resolved"
        assert f"pods: 2 of 2 pod(s) of Deployment {namespace}/checkout Ready" in evidence[2]
        assert "pods: no new restarts in 2 pod(s)" in evidence


async def test_an_alert_that_started_next_to_the_fix_keeps_it_from_being_effective(
    stack: InProcessStack,
    database_dsn: str,
    alertmanager: Alertmanager,
    kube: LocalCluster,
    cluster_context_api: str,
) -> None:
    """The target healed and its alert is gone, but a neighbour in its namespace started
    failing just after the action: a side effect, never effective, and at the final
    checkpoint ineffective."""
    namespace = unique_namespace()
    pods = await ready_deployment(kube, namespace)
    action = await recorded_action(stack, deployment_ref(namespace), pod=pods[0])
    acted_at = now()
    neighbour = {"alertname": "KubePodNotReady", "namespace": namespace, "pod": "cart-x-1"}
    await post_alert(alertmanager, neighbour, started=acted_at + dt.timedelta(seconds=1))
    # One that was failing before the action is not its doing.
    before = {"alertname": "KubeJobFailed", "namespace": namespace, "job_name": "backup"}
    await post_alert(alertmanager, before, started=acted_at - dt.timedelta(minutes=10))
    async with effectiveness(
        stack, database_dsn, context_api=cluster_context_api, alertmanager_url=alertmanager.url
    ) as service:
        await service.stub.ScheduleAssessment(schedule_request(action, acted_at))
        early, final = await recorded_assessments(stack, action, 2)

    assert early.verdict == UNKNOWN, early.evidence
    assert early.evidence[0].startswith("a side effect followed the action (medium")
    assert final.verdict == INEFFECTIVE, final.evidence
    effects = [line for line in final.evidence if line.startswith("side effect")]
    assert len(effects) == 1 and "KubePodNotReady" in effects[0], final.evidence
    assert "pod=cart-x-1" in effects[0]


async def test_healthy_pods_with_the_alert_still_active_wait_then_are_ineffective(
    stack: InProcessStack,
    database_dsn: str,
    alertmanager: Alertmanager,
    kube: LocalCluster,
    cluster_context_api: str,
) -> None:
    namespace = unique_namespace()
    pods = await ready_deployment(kube, namespace)
    action = await recorded_action(stack, deployment_ref(namespace), pod="checkout-old-pod")
    # The alert now fires for one of the workload's current pods.
    await post_alert(alertmanager, {**action.alert.labels, "pod": pods[1]})
    async with effectiveness(
        stack, database_dsn, context_api=cluster_context_api, alertmanager_url=alertmanager.url
    ) as service:
        await service.stub.ScheduleAssessment(schedule_request(action))
        early, final = await recorded_assessments(stack, action, 2)

    assert early.verdict == UNKNOWN
    assert early.evidence[0] == "pods recovered; the alert has not resolved yet"
    assert final.verdict == INEFFECTIVE
    assert final.evidence[0] == (
        "the alert is still active at the final checkpoint, although the pods recovered"
    )
    assert any(f"pod={pods[1]}" in line for line in final.evidence)


async def test_pods_that_never_become_ready_are_ineffective(
    stack: InProcessStack,
    database_dsn: str,
    alertmanager: Alertmanager,
    kube: LocalCluster,
    cluster_context_api: str,
) -> None:
    namespace = unique_namespace()
    pods = await ready_deployment(kube, namespace, schedulable=False)
    action = await recorded_action(stack, deployment_ref(namespace), deployment="checkout")
    async with effectiveness(
        stack,
        database_dsn,
        context_api=cluster_context_api,
        alertmanager_url=alertmanager.url,
        delays=(0.5,),
    ) as service:
        await service.stub.ScheduleAssessment(schedule_request(action))
        (assessment,) = await recorded_assessments(stack, action, 1)

    assert assessment.verdict == INEFFECTIVE
    evidence = list(assessment.evidence)
    assert evidence[0] == "the pods are not healthy after the action"
    assert (
        f"pods: Deployment {namespace}/checkout: only 0 of 2 desired replicas Ready, 0 available"
        in evidence
    )
    assert any(line.startswith("pods: not Ready:") and pods[0] in line for line in evidence)


async def test_a_pod_restarting_after_the_action_is_ineffective(
    stack: InProcessStack,
    database_dsn: str,
    alertmanager: Alertmanager,
    kube: LocalCluster,
    cluster_context_api: str,
) -> None:
    namespace = unique_namespace()
    pods = await ready_deployment(kube, namespace)
    action = await recorded_action(stack, deployment_ref(namespace), deployment="checkout")
    async with effectiveness(
        stack,
        database_dsn,
        context_api=cluster_context_api,
        alertmanager_url=alertmanager.url,
        # Time to write the restarts below before the assessment, on a busy machine too.
        delays=(10.0,),
    ) as service:
        await service.stub.ScheduleAssessment(schedule_request(action))
        # After the baseline: the container of one pod restarts three times (what the
        # kubelet would report; KWOK leaves the status as written).
        path = f"/api/v1/namespaces/{namespace}/pods/{pods[0]}"
        pod = await kube_api(kube, "GET", path)
        pod["status"]["containerStatuses"][0]["restartCount"] = 3
        await kube_api(kube, "PUT", f"{path}/status", pod)
        (assessment,) = await recorded_assessments(stack, action, 1)

    assert assessment.verdict == INEFFECTIVE
    assert assessment.evidence[0] == "the pods are not healthy after the action"
    assert f"pods: restarted since the action: {pods[0]} (+3, 3 now)" in assessment.evidence
