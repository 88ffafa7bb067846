"""Issue 15's quiet-period repro on the local cluster: a Deployment's state as the executor
records it after a fix and as context_api reads it when the alert fires again, and storage
deciding with those states. After a fix, Kubernaut's own mark on the template changes
nothing, and a new rollout that crash-loops opens a new incident instead of being counted
on the fixed one."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.stages import PodSimulation, simulate
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import KubeSettings, RuntimeSettings
from kubernaut.runtime.workload_state import workload_state
from kubernaut.services.executor.changes import label_selector
from kubernaut.services.executor.cluster import Cluster
from kubernaut.services.storage.store import Store
from tests.fixtures.cluster import create_deployment, eventually, kube_api
from tests.fixtures.executor import (
    Admin,
    ExecutorFactory,
    action_request,
    outcome,
    stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
async def context_api(
    runtime_settings: RuntimeSettings, cluster_context_api: str
) -> AsyncIterator[ContextAPIServiceStub]:
    """The module's context_api (reading the cluster), called as alert_processor does."""
    clients = Clients(
        runtime_settings,
        ServiceName.ALERT_PROCESSOR.account,
        addresses={ServiceName.CONTEXT_API: cluster_context_api},
    )
    try:
        yield clients.stub(ContextAPIServiceStub)
    finally:
        await clients.close()


@pytest.fixture
async def executor_json(kube: LocalCluster) -> AsyncIterator[Cluster]:
    """The executor's own JSON access to the cluster (admin credentials: reading only)."""
    connection = KubeConnection(KubeSettings(kubeconfig=str(kube.kubeconfig)))
    try:
        yield Cluster(await connection.api())
    finally:
        await connection.close()


@pytest.fixture
async def quiet_store(database_dsn: str) -> AsyncIterator[Store]:
    store = await Store.connect(database_dsn, quiet_seconds=600)
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


def crash_loop_alert(subject: alert_pb2.ResourceRef) -> alert_pb2.Alert:
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": subject.namespace, "deployment": subject.name},
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    alert.starts_at.GetCurrentTime()
    return alert


async def state_when(
    context_api: ContextAPIServiceStub,
    subject: alert_pb2.ResourceRef,
    what: str,
    settled: Callable[[context_api_pb2.ResourceContext], bool],
) -> remediation_pb2.WorkloadState:
    """The workload's state as context_api reads it, once `settled` holds for its context."""

    async def read() -> remediation_pb2.WorkloadState | None:
        found = await context_api.GetResourceContext(
            context_api_pb2.GetResourceContextRequest(resource=subject)
        )
        context: context_api_pb2.ResourceContext = found.context
        return context.state if context.HasField("state") and settled(context) else None

    return await eventually(read, what, timeout=90)


def rolled_out(context: context_api_pb2.ResourceContext) -> bool:
    """One pod, Ready, of the current template (the old ones gone)."""
    return len(context.pods) == 1 and context.pods[0].ready


async def update_template(
    kube: LocalCluster, subject: alert_pb2.ResourceRef, change: Callable[[dict[str, Any]], None]
) -> None:
    path = f"/apis/apps/v1/namespaces/{subject.namespace}/deployments/{subject.name}"
    deployment = await kube_api(kube, "GET", path)
    change(deployment["spec"]["template"])
    await kube_api(kube, "PUT", path, deployment)


async def test_a_new_bad_rollout_after_a_fix_opens_a_new_incident(
    kube: LocalCluster,
    context_api: ContextAPIServiceStub,
    executor_json: Cluster,
    quiet_store: Store,
) -> None:
    namespace = f"quiet-{uuid.uuid4().hex[:8]}"
    await create_deployment(kube, namespace, "web", replicas=1)
    subject = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")
    fixed_state = await state_when(context_api, subject, "web to run", rolled_out)

    # What the executor records after verifying its fix: its own JSON reads of the same
    # objects give the same state as context_api's.
    workload = await executor_json.get("Deployment", namespace, "web")
    pods = await executor_json.pods(namespace, label_selector(workload["spec"]["selector"]))
    verified = workload_state(workload, pods)
    for field in ("generation", "template_digest", "images", "restarts"):
        assert getattr(verified, field) == getattr(fixed_state, field), field
    assert list(verified.images) == ["example.invalid/web:1"]

    fingerprint = f"fp-{uuid.uuid4().hex}"
    incident, created = await quiet_store.open_incident(
        fingerprint, crash_loop_alert(subject), subject
    )
    assert created
    fix = storage_pb2.ActionRecord(
        action_id=str(uuid.uuid4()),
        incident_id=incident.incident_id,
        alert_name="KubePodCrashLooping",
        action="rollback_deployment",
        target=subject,
        outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED,
        observed_after=verified,
    )
    fix.started_at.FromDatetime(dt.datetime.now(dt.UTC))
    await quiet_store.record_action(fix)
    await quiet_store.update_incident(
        incident.incident_id, storage_pb2.INCIDENT_STATUS_REMEDIATED, "rolled back"
    )

    # Kubernaut's own mark on the template rolls the pods but is no new version: the alert
    # (its lookback still sees the old crashes) is counted on the fixed incident.
    await update_template(
        kube,
        subject,
        lambda t: (
            t["metadata"]
            .setdefault("annotations", {})
            .update({"kubernaut.ai/restartedAt": dt.datetime.now(dt.UTC).isoformat()})
        ),
    )
    marked = await state_when(
        context_api,
        subject,
        "the marked template to roll out",
        lambda c: rolled_out(c) and c.state.generation > verified.generation,
    )
    assert marked.template_digest == verified.template_digest
    counted = await quiet_store.open_or_count(
        fingerprint, crash_loop_alert(subject), subject, workload_state=marked
    )
    assert not counted.created and counted.incident.incident_id == incident.incident_id
    assert counted.quiet_period.endswith("the workload has not changed since its fix")

    # A new rollout (v3) whose pods crash-loop: a new failure.
    def bad_rollout(template: dict[str, Any]) -> None:
        template["spec"]["containers"][0]["image"] = "example.invalid/web:3"
        template["metadata"].setdefault("annotations", {}).update(simulate(PodSimulation.CRASHLOOP))

    await update_template(kube, subject, bad_rollout)
    crashing = await state_when(
        context_api, subject, "the v3 pods to crash-loop", lambda c: c.state.restarts > 0
    )
    opened = await quiet_store.open_or_count(
        fingerprint, crash_loop_alert(subject), subject, workload_state=crashing
    )
    assert opened.created and opened.incident.incident_id != incident.incident_id
    reason = opened.incident.status_reason
    assert reason.startswith(
        f"opened by alert KubePodCrashLooping: incident {incident.incident_id} was fixed "
    )
    assert "images example.invalid/web:1→example.invalid/web:3" in reason
    assert "template " in reason and "restarts 0→" in reason
    assert opened.quiet_period.endswith("opened a new incident")


async def test_the_executor_records_the_state_it_verified(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub, cleanup: None
) -> None:
    """The baseline: a change that was applied and verified carries the workload's state
    as read at the end of verification; a refused one carries none."""
    ns = await admin.namespace()
    await admin.create(ns, replicas=2)
    request = action_request(ns, restart_deployment={})
    result = await make_executor().execute(request)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    record = await stored(operator, request)
    assert record.HasField("observed_after")
    after = await admin.get(ns)
    expected = workload_state(after, await admin.pods(ns))
    observed = record.observed_after
    assert observed.generation == after["metadata"]["generation"] == 2
    assert observed.template_digest == expected.template_digest
    assert list(observed.images) == ["registry.invalid/app:v1"]
    assert observed.restarts == 0
    assert record.started_at.ToDatetime() <= observed.observed_at.ToDatetime()

    unmanaged = await admin.namespace()
    await admin.create(unmanaged, managed=False, replicas=1)
    refused = action_request(unmanaged, restart_deployment={})
    result = await make_executor().execute(refused)
    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    assert not (await stored(operator, refused)).HasField("observed_after")
