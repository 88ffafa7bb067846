"""No harm, no silence, in the in-process stack (real services, real PostgreSQL, a real
SMTP server): a failed fix on a workload holds every later plan for it for a person,
whatever alert leads there, and the same action with the same parameters is never
repeated on its own; an alert that does not become an incident is recorded with why;
a decline tells people; similar incidents are of the same kind of object."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.alert_processor.v1.alert_processor_pb2_grpc import AlertProcessorServiceStub
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.dropped_alerts import list_dropped_alerts
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def operator(stack: InProcessStack) -> AsyncIterator[Clients]:
    clients = stack.clients()
    try:
        yield clients
    finally:
        await clients.close()


@pytest_asyncio.fixture
async def executor(stack: InProcessStack) -> AsyncIterator[StorageServiceStub]:
    """Storage as the executor calls it: the only caller that records actions."""
    clients = stack.clients(ServiceName.EXECUTOR.account)
    try:
        yield clients.stub(StorageServiceStub)
    finally:
        await clients.close()


@pytest_asyncio.fixture
async def analysis(stack: InProcessStack) -> AsyncIterator[WorkflowServiceStub]:
    clients = stack.clients(ServiceName.AI_ANALYSIS.account)
    try:
        yield clients.stub(WorkflowServiceStub)
    finally:
        await clients.close()


@pytest_asyncio.fixture
async def gateway(stack: InProcessStack) -> AsyncIterator[AlertProcessorServiceStub]:
    clients = stack.clients(ServiceName.GATEWAY.account)
    try:
        yield clients.stub(AlertProcessorServiceStub)
    finally:
        await clients.close()


def _alert(name: str, labels: dict[str, str]) -> alert_pb2.Alert:
    started = Timestamp()
    started.GetCurrentTime()
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels=labels,
        starts_at=started,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


def _deployment() -> alert_pb2.ResourceRef:
    # A namespace of its own: the guard would hold other tests' plans for a shared one.
    return alert_pb2.ResourceRef(
        namespace=f"noharm-{uuid.uuid4().hex[:8]}", kind="Deployment", name="web"
    )


_RESTART = remediation_pb2.ActionParams(
    restart_deployment=remediation_pb2.RestartDeploymentParams()
)
_ROLLBACK = remediation_pb2.ActionParams(
    rollback_deployment=remediation_pb2.RollbackDeploymentParams(to_revision=2)
)


def _memory(factor: float) -> remediation_pb2.ActionParams:
    return remediation_pb2.ActionParams(
        increase_memory_limit=remediation_pb2.IncreaseMemoryLimitParams(
            container="app", factor=factor, max_limit="4Gi"
        )
    )


async def _failed(
    executor: StorageServiceStub,
    target: alert_pb2.ResourceRef,
    params: remediation_pb2.ActionParams,
    *,
    alert_name: str = "KubePodCrashLooping",
    ago: dt.timedelta = dt.timedelta(minutes=15),
    outcome: storage_pb2.ActionOutcome.ValueType = storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
) -> storage_pb2.ActionRecord:
    """Record, as the executor does, an action that failed on `target` `ago`."""
    record = storage_pb2.ActionRecord(
        action_id=str(uuid.uuid4()),
        incident_id=str(uuid.uuid4()),
        alert_name=alert_name,
        action=params.WhichOneof("params") or "",
        target=target,
        outcome=outcome,
        message="verification failed: pods not Ready within 120s; the change was undone",
        params=params,
    )
    finished = dt.datetime.now(dt.UTC) - ago
    record.started_at.FromDatetime(finished - dt.timedelta(minutes=2))
    record.finished_at.FromDatetime(finished)
    await executor.RecordAction(storage_pb2.RecordActionRequest(record=record))
    return record


def _recommend(
    target: alert_pb2.ResourceRef, params: remediation_pb2.ActionParams, confidence: float = 0.9
) -> remediation_pb2.Recommendation:
    return remediation_pb2.Recommendation(
        action=params, target=target, confidence=confidence, reasons=["a rule chose it"]
    )


async def test_a_failed_fix_holds_the_next_plan_for_the_workload_under_another_alert(
    operator: Clients, executor: StorageServiceStub, analysis: WorkflowServiceStub
) -> None:
    """The issue's repro: a restart failed verification and was undone on a Deployment
    (KubePodCrashLooping); then KubeDeploymentReplicasMismatch fires for it and a confident
    rollback is recommended. It must wait for a person, and say why."""
    target = _deployment()
    failed = await _failed(executor, target, _RESTART)
    storage = operator.stub(StorageServiceStub)

    # Only the target's records come back, newest first, with their parameters.
    await _failed(executor, _deployment(), _RESTART)  # another workload
    listed = await storage.ListActionRecords(
        storage_pb2.ListActionRecordsRequest(target=target, page_size=10)
    )
    assert [r.action_id for r in listed.records] == [failed.action_id]
    assert listed.records[0].params == _RESTART

    alert = _alert(
        "KubeDeploymentReplicasMismatch", {"namespace": target.namespace, "deployment": "web"}
    )
    opened = await storage.OpenIncident(
        storage_pb2.OpenIncidentRequest(fingerprint=uuid.uuid4().hex, alert=alert, subject=target)
    )
    created = await analysis.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(
            incident_id=opened.incident.incident_id,
            alert=alert,
            recommendation=_recommend(target, _ROLLBACK, confidence=0.9),
        )
    )
    plan = created.workflow.plan
    assert plan.requires_approval
    assert "restart_deployment failed verification and was undone" in plan.approval_reason
    assert failed.action_id in plan.approval_reason
    assert "no automatic action on it for 6.0h" in plan.approval_reason

    workflows = operator.stub(WorkflowServiceStub)

    async def waiting() -> workflow_pb2.Workflow | None:
        got = await workflows.GetWorkflow(
            workflow_pb2.GetWorkflowRequest(workflow_id=created.workflow.workflow_id)
        )
        waits = got.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
        return got.workflow if waits else None

    await eventually(waiting, "the workflow to wait for approval", 30)
    # Nothing acted on the workload while it waits.
    after = await storage.ListActionRecords(
        storage_pb2.ListActionRecordsRequest(target=target, page_size=10)
    )
    assert [r.action_id for r in after.records] == [failed.action_id]


async def test_the_same_fix_that_failed_is_never_planned_again_on_its_own(
    operator: Clients, executor: StorageServiceStub
) -> None:
    """The OOM repro: a memory raise that failed verification, asked for again (here long
    after the hold, and under another alert). A different raise is planned as usual."""
    target = _deployment()
    await _failed(
        executor,
        target,
        _memory(1.5),
        alert_name="KubeContainerOOMKilled",
        ago=dt.timedelta(hours=7),
    )
    workflows = operator.stub(WorkflowServiceStub)

    again = await workflows.PlanWorkflow(
        workflow_pb2.PlanWorkflowRequest(recommendation=_recommend(target, _memory(1.5)))
    )
    assert again.plan.requires_approval
    assert "same parameters" in again.plan.approval_reason
    assert "never repeated automatically" in again.plan.approval_reason

    other = await workflows.PlanWorkflow(
        workflow_pb2.PlanWorkflowRequest(recommendation=_recommend(target, _memory(2.0)))
    )
    assert not other.plan.requires_approval, other.plan.approval_reason

    # A refusal changed nothing: it is no failed fix.
    refused_target = _deployment()
    await _failed(executor, refused_target, _RESTART, outcome=storage_pb2.ACTION_OUTCOME_REFUSED)
    after_refusal = await workflows.PlanWorkflow(
        workflow_pb2.PlanWorkflowRequest(recommendation=_recommend(refused_target, _RESTART))
    )
    assert not after_refusal.plan.requires_approval, after_refusal.plan.approval_reason


async def test_an_alert_about_no_object_is_recorded_as_dropped_with_why(
    operator: Clients,
    gateway: AlertProcessorServiceStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = uuid.uuid4().hex[:8]
    alert = _alert("TargetDown", {"job": f"scrape-{marker}", "namespace": "monitoring"})
    first = await gateway.ProcessAlert(alert_processor_pb2.ProcessAlertRequest(alert=alert))
    assert first.disposition == remediation_pb2.ALERT_DISPOSITION_FILTERED
    assert "recorded as dropped alert" in first.reason
    # The forwarder's retry of the same alert records nothing twice.
    again = await gateway.ProcessAlert(alert_processor_pb2.ProcessAlertRequest(alert=alert))
    assert again.reason == first.reason

    listed = await operator.stub(StorageServiceStub).ListDroppedAlerts(
        storage_pb2.ListDroppedAlertsRequest(page_size=100)
    )
    ours = [d for d in listed.alerts if d.alert.labels.get("job") == f"scrape-{marker}"]
    assert len(ours) == 1
    assert ours[0].reason_code == storage_pb2.ALERT_DROP_REASON_NO_SUBJECT
    assert "horizontalpodautoscaler" in ours[0].reason  # which labels this version maps
    assert "job, namespace" in ours[0].reason  # which labels it had

    assert await list_dropped_alerts(operator, 100) == 0
    shown = capsys.readouterr().out
    assert "TargetDown" in shown and "no_subject" in shown


async def test_an_hpa_alert_becomes_an_incident_and_its_decline_tells_people(
    stack: InProcessStack, operator: Clients, gateway: AlertProcessorServiceStub
) -> None:
    """KubeHpaMaxedOut used to vanish (its label was not a subject). It is an incident on
    the HorizontalPodAutoscaler now, and what is not acted on is mailed, as refusals are."""
    namespace = f"noharm-{uuid.uuid4().hex[:8]}"
    alert = _alert("KubeHpaMaxedOut", {"namespace": namespace, "horizontalpodautoscaler": "web"})
    before = len(stack.mail.messages())
    processed = await gateway.ProcessAlert(alert_processor_pb2.ProcessAlertRequest(alert=alert))
    assert processed.subject.kind == "HorizontalPodAutoscaler"
    assert processed.incident_id
    assert processed.analysis.decision == remediation_pb2.DECISION_NO_ACTION

    async def told() -> list[str]:
        subjects = [
            " ".join(str(m.message["Subject"]).split())
            for m in stack.mail.messages()[before:]
            if processed.incident_id in str(m.message)
        ]
        return subjects if len(subjects) >= 2 else []

    # That it opened, then that it is not acted on.
    subjects = await eventually(told, "the opened and not-acted-on mails", 30)
    assert [s.partition(":")[0] for s in subjects] == [
        "[kubernaut] New incident",
        "[kubernaut] Not acted on",
    ], subjects
    incident = await operator.stub(StorageServiceStub).GetIncident(
        storage_pb2.GetIncidentRequest(incident_id=processed.incident_id)
    )
    assert incident.incident.status == storage_pb2.INCIDENT_STATUS_NO_ACTION


async def test_similar_incidents_are_of_the_same_kind_and_alert_family(
    operator: Clients,
) -> None:
    """A node alert's past is nodes': pod crash loops with near-identical words are not
    listed (the issue saw them listed)."""
    storage = operator.stub(StorageServiceStub)
    marker = uuid.uuid4().hex[:8]
    node = alert_pb2.ResourceRef(kind="Node", name=f"worker-{marker}")
    crashing = alert_pb2.ResourceRef(
        namespace=f"noharm-{marker}", kind="Deployment", name=f"worker-{marker}"
    )

    async def open_incident(name: str, subject: alert_pb2.ResourceRef) -> str:
        labels = (
            {"node": subject.name}
            if subject.kind == "Node"
            else {
                "namespace": subject.namespace,
                "deployment": subject.name,
            }
        )
        opened = await storage.OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=uuid.uuid4().hex, alert=_alert(name, labels), subject=subject
            )
        )
        incident_id: str = opened.incident.incident_id
        return incident_id

    past_node = await open_incident("KubeNodeUnreachable", node)
    past_crash = await open_incident("KubePodCrashLooping", crashing)
    now = await open_incident("KubeNodeNotReady", node)

    history = await operator.stub(ContextAPIServiceStub).GetIncidentHistory(
        context_api_pb2.GetIncidentHistoryRequest(incident_id=now, limit=20)
    )
    listed = [p.incident_id for p in history.history.similar_incidents]
    assert past_node in listed
    assert past_crash not in listed
    assert all(p.subject.kind == "Node" for p in history.history.similar_incidents)


async def test_a_drop_whose_labels_name_no_valid_object_is_still_recorded(
    operator: Clients, gateway: AlertProcessorServiceStub
) -> None:
    """An informational or pipeline alert is dropped before its labels are checked; labels
    no object could have must not make the record fail (the gateway would hand the alert
    over again and again)."""
    marker = uuid.uuid4().hex[:8]
    informational = _alert(
        "KubeletTooManyPods",
        {"namespace": "Shop_1", "pod": "p" * 300, "severity": "info", "marker": marker},
    )
    watchdog = _alert("Watchdog", {"namespace": "x" * 80, "marker": marker})
    for alert in (informational, watchdog):
        dropped = await gateway.ProcessAlert(alert_processor_pb2.ProcessAlertRequest(alert=alert))
        assert "recorded as dropped alert" in dropped.reason
    listed = await operator.stub(StorageServiceStub).ListDroppedAlerts(
        storage_pb2.ListDroppedAlertsRequest(page_size=100)
    )
    ours = {d.alert.name: d for d in listed.alerts if d.alert.labels.get("marker") == marker}
    assert set(ours) == {"KubeletTooManyPods", "Watchdog"}
    assert not ours["KubeletTooManyPods"].HasField("subject")
    assert ours["KubeletTooManyPods"].reason_code == storage_pb2.ALERT_DROP_REASON_INFORMATIONAL
    assert ours["Watchdog"].reason_code == storage_pb2.ALERT_DROP_REASON_PIPELINE
