"""An incident's history through context_api, from the real storage (pgvector search, the
real embedding model) and effectiveness (on intelligence's success rates), and how it
changes ai_analysis' decision."""

from __future__ import annotations

import datetime as dt
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from kubernaut.ai_analysis.v1 import ai_analysis_pb2
from kubernaut.ai_analysis.v1.ai_analysis_pb2_grpc import AIAnalysisServiceStub
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from tests.fixtures.grpc_errors import code_of
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def crash_loop(
    namespace: str, alert_name: str = "KubePodCrashLooping"
) -> tuple[alert_pb2.Alert, alert_pb2.ResourceRef]:
    alert = alert_pb2.Alert(
        name=alert_name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": namespace, "pod": "web-5d8f-abcde", "severity": "warning"},
        starts_at=_now(),
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    subject = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")
    return alert, subject


async def open_incident(
    storage: StorageServiceStub, alert: alert_pb2.Alert, subject: alert_pb2.ResourceRef
) -> storage_pb2.Incident:
    opened = await storage.OpenIncident(
        storage_pb2.OpenIncidentRequest(fingerprint=uuid.uuid4().hex, alert=alert, subject=subject)
    )
    incident: storage_pb2.Incident = opened.incident
    return incident


async def failed_restart(
    stack: InProcessStack, storage: StorageServiceStub, incident: storage_pb2.Incident
) -> str:
    """Record that a restart of the incident's workload was rolled back and judged
    ineffective, and close the incident as failed; the action's id."""
    executor = stack.clients(ServiceName.EXECUTOR.account)
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    action = storage_pb2.ActionRecord(
        action_id=str(uuid.uuid4()),
        incident_id=incident.incident_id,
        alert_name=incident.alert_name,
        action="restart_deployment",
        target=incident.subject,
        outcome=storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
        message="verification failed: pods kept crashing",
    )
    action.started_at.FromDatetime(started)
    try:
        await executor.stub(StorageServiceStub).RecordAction(
            storage_pb2.RecordActionRequest(record=action)
        )
    finally:
        await executor.close()
    assessment = storage_pb2.Assessment(
        assessment_id=str(uuid.uuid4()),
        action_id=action.action_id,
        delay=duration_pb2.Duration(seconds=30),
        verdict=remediation_pb2.VERDICT_INEFFECTIVE,
        evidence=["2 of 2 pods not Ready"],
        assessed_at=_now(),
    )
    await storage.RecordAssessment(storage_pb2.RecordAssessmentRequest(assessment=assessment))
    await storage.UpdateIncident(
        storage_pb2.UpdateIncidentRequest(
            incident_id=incident.incident_id,
            status=storage_pb2.INCIDENT_STATUS_FAILED,
            status_reason="the restart was rolled back",
        )
    )
    return action.action_id


async def test_history_names_similar_incidents_their_actions_and_success_rates(
    stack: InProcessStack,
) -> None:
    # A made-up alert name keeps the success rates to this test's records: the stack's
    # database is shared with other tests.
    alert_name = f"HistoryProbe{uuid.uuid4().hex[:8]}"
    namespace = f"history-{uuid.uuid4().hex[:6]}"
    operator = stack.clients()
    analysis = stack.clients(ServiceName.AI_ANALYSIS.account)
    storage = operator.stub(StorageServiceStub)
    try:
        earlier = await open_incident(storage, *crash_loop(namespace, alert_name))
        await failed_restart(stack, storage, earlier)
        now = await open_incident(storage, *crash_loop(namespace, alert_name))

        context_api = analysis.stub(ContextAPIServiceStub)
        found = await context_api.GetIncidentHistory(
            context_api_pb2.GetIncidentHistoryRequest(incident_id=now.incident_id, limit=20)
        )
        history = found.history
        assert history.incident_id == now.incident_id
        assert history.alert_name == alert_name
        assert history.embedding_model
        # The earlier incident of the same alert on the same workload is the nearest.
        nearest = history.similar_incidents[0]
        assert nearest.incident_id == earlier.incident_id
        assert nearest.distance < 0.05
        assert nearest.status == storage_pb2.INCIDENT_STATUS_FAILED
        assert nearest.subject == earlier.subject
        assert list(nearest.actions) == [
            context_api_pb2.PastAction(
                action="restart_deployment",
                outcome=storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
                verdict=remediation_pb2.VERDICT_INEFFECTIVE,
            )
        ]
        assert now.incident_id not in [p.incident_id for p in history.similar_incidents]
        # One attempt, none succeeded: too few to judge, never "effective".
        [restart] = history.action_effectiveness
        assert (restart.action, restart.attempts, restart.success_rate) == (
            "restart_deployment",
            1,
            0.0,
        )
        assert restart.verdict == remediation_pb2.VERDICT_UNKNOWN
    finally:
        await operator.close()
        await analysis.close()


async def test_history_refuses_unknown_malformed_and_unlisted_callers(
    stack: InProcessStack,
) -> None:
    analysis = stack.clients(ServiceName.AI_ANALYSIS.account)
    executor = stack.clients(ServiceName.EXECUTOR.account)
    try:
        context_api = analysis.stub(ContextAPIServiceStub)
        unknown = context_api_pb2.GetIncidentHistoryRequest(incident_id=str(uuid.uuid4()))
        assert await code_of(context_api.GetIncidentHistory(unknown)) == grpc.StatusCode.NOT_FOUND
        malformed = context_api_pb2.GetIncidentHistoryRequest(incident_id="nope", limit=99)
        assert (
            await code_of(context_api.GetIncidentHistory(malformed))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        # The executor acts; it has no business reading incident history.
        denied = executor.stub(ContextAPIServiceStub).GetIncidentHistory(unknown)
        assert await code_of(denied) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await analysis.close()
        await executor.close()


async def test_a_fix_that_failed_on_the_same_workload_is_not_repeated_without_a_person(
    stack: InProcessStack,
) -> None:
    """ai_analysis reads the history through context_api: the restart that was rolled back
    on this workload before drops the confidence below the approval threshold."""
    namespace = f"history-{uuid.uuid4().hex[:6]}"
    operator = stack.clients()
    processor: Clients = stack.clients(ServiceName.ALERT_PROCESSOR.account)
    storage = operator.stub(StorageServiceStub)
    try:
        earlier = await open_incident(storage, *crash_loop(namespace))
        await failed_restart(stack, storage, earlier)
        now = await open_incident(storage, *crash_loop(namespace))

        reply = await processor.stub(AIAnalysisServiceStub).AnalyzeIncident(
            ai_analysis_pb2.AnalyzeIncidentRequest(incident=now)
        )
        analysis = reply.analysis
        assert analysis.decision == remediation_pb2.DECISION_REMEDIATE
        assert analysis.recommendation.action.WhichOneof("params") == "restart_deployment"
        assert analysis.recommendation.confidence == pytest.approx(0.3)
        assert any(
            f"did not fix the same workload in incident {earlier.incident_id}" in reason
            for reason in analysis.reasons
        )
        assert any(
            reason.startswith(f"Similar past incident {earlier.incident_id}")
            for reason in analysis.reasons
        )
        # The workflow stops before acting until a person approves.
        workflows = operator.stub(WorkflowServiceStub)
        request = workflow_pb2.GetWorkflowRequest(workflow_id=reply.workflow_id)

        async def stopped() -> workflow_pb2.GetWorkflowResponse | None:
            found = await workflows.GetWorkflow(request)
            running = found.workflow.state == workflow_pb2.WORKFLOW_STATE_RUNNING
            return None if running else found

        found = await eventually(stopped, "the workflow to stop running", 30, interval=0.2)
        assert found.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
        applied = [s for s in found.workflow.steps if s.kind == workflow_pb2.STEP_KIND_APPLY]
        assert all(step.state == workflow_pb2.STEP_STATE_PENDING for step in applied)
        # The analysis is on the record (storage), with why it was decided: the rules
        # alone here (the stack configures no model).
        recorded = await storage.GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=now.incident_id)
        )
        assert [a.analysis.recommendation for a in recorded.analyses] == [analysis.recommendation]
        assert recorded.analyses[0].analysis.analyzer == "rules"
    finally:
        await operator.close()
        await processor.close()


async def test_a_closed_or_resolved_incident_is_not_analysed(stack: InProcessStack) -> None:
    namespace = f"closed-{uuid.uuid4().hex[:6]}"
    operator = stack.clients()
    processor: Clients = stack.clients(ServiceName.ALERT_PROCESSOR.account)
    storage = operator.stub(StorageServiceStub)
    analysis = processor.stub(AIAnalysisServiceStub)
    try:
        incident = await open_incident(storage, *crash_loop(namespace))
        resolved = storage_pb2.Incident()
        resolved.CopyFrom(incident)
        resolved.alert_resolved_at.GetCurrentTime()
        closed = storage_pb2.Incident()
        closed.CopyFrom(incident)
        closed.status = storage_pb2.INCIDENT_STATUS_RESOLVED
        for stale in (resolved, closed):
            refused = analysis.AnalyzeIncident(
                ai_analysis_pb2.AnalyzeIncidentRequest(incident=stale)
            )
            assert await code_of(refused) == grpc.StatusCode.FAILED_PRECONDITION
        recorded = await storage.GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=incident.incident_id)
        )
        assert not recorded.analyses  # nothing analysed, nothing recorded
    finally:
        await operator.close()
        await processor.close()


async def test_a_fix_that_does_not_hold_waits_for_a_person(stack: InProcessStack) -> None:
    """Two crash loops on one workload, each closed REMEDIATED after a restart that worked
    (hours ago: no settle or oscillation guard holds), then a third: intelligence flags the
    workload's alert as recurring, context_api puts that in the history, and ai_analysis
    asks for a person instead of restarting a third time."""
    namespace = f"recur-{uuid.uuid4().hex[:6]}"
    operator = stack.clients()
    processor = stack.clients(ServiceName.ALERT_PROCESSOR.account)
    executor = stack.clients(ServiceName.EXECUTOR.account)
    storage = operator.stub(StorageServiceStub)
    try:
        for hours_ago in (5, 3):
            earlier = await open_incident(storage, *crash_loop(namespace))
            started = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
            record = storage_pb2.ActionRecord(
                action_id=str(uuid.uuid4()),
                incident_id=earlier.incident_id,
                alert_name=earlier.alert_name,
                action="restart_deployment",
                target=earlier.subject,
                outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED,
                params=remediation_pb2.ActionParams(
                    restart_deployment=remediation_pb2.RestartDeploymentParams()
                ),
            )
            record.started_at.FromDatetime(started)
            record.finished_at.FromDatetime(started + dt.timedelta(minutes=1))
            await executor.stub(StorageServiceStub).RecordAction(
                storage_pb2.RecordActionRequest(record=record)
            )
            await storage.UpdateIncident(
                storage_pb2.UpdateIncidentRequest(
                    incident_id=earlier.incident_id,
                    status=storage_pb2.INCIDENT_STATUS_REMEDIATED,
                    status_reason="the restart was verified",
                )
            )
        now = await open_incident(storage, *crash_loop(namespace))

        reply = await processor.stub(AIAnalysisServiceStub).AnalyzeIncident(
            ai_analysis_pb2.AnalyzeIncidentRequest(incident=now)
        )
        recommendation = reply.analysis.recommendation
        assert recommendation.action.WhichOneof("params") == "restart_deployment"
        assert recommendation.approval_required
        assert recommendation.approval_reason.startswith(
            f"the fix does not hold: 3 incidents of KubePodCrashLooping on Deployment "
            f"{namespace}/web"
        )
        assert "2 of them after a fix that was verified (restart_deployment)" in (
            recommendation.approval_reason
        )
        workflows = operator.stub(WorkflowServiceStub)
        request = workflow_pb2.GetWorkflowRequest(workflow_id=reply.workflow_id)

        async def held() -> workflow_pb2.Workflow | None:
            found = await workflows.GetWorkflow(request)
            waiting = found.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
            return found.workflow if waiting else None

        workflow = await eventually(held, "the third restart to wait for a person", 30)
        applied = [s for s in workflow.steps if s.kind == workflow_pb2.STEP_KIND_APPLY]
        assert all(step.state == workflow_pb2.STEP_STATE_PENDING for step in applied)
    finally:
        await operator.close()
        await processor.close()
        await executor.close()
