"""The approval policy as code, in the workflow service over gRPC: a policy file loaded at
start decides each plan on the facts it records (the namespace's labels read through the
executor, the runbook, the analysis' confidence and source), a denied plan never acts and
says which rule denied it, `kubernaut policy test` replays a stored incident's facts under
another file, runbook templates are listed, and a bad file stops the service at start."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.policy import run_policy_test
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import RunningService, start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.workflow.policy import ApprovalPolicy, PolicyError
from tests.fixtures.executor import Admin
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLICY = """\
version: 1
default: {outcome: require_approval, approvers: 1, reason: "no rule matched"}
rules:
  - name: frozen-namespaces
    description: "namespaces labelled freeze=true are never changed automatically"
    when: '"freeze" in namespace.labels && namespace.labels["freeze"] == "true"'
    outcome: deny
  - name: runbooks-need-two
    description: "a runbook of several steps needs two approvers"
    when: 'plan.runbook != ""'
    outcome: require_approval
    approvers: 2
  - name: confident-rules
    description: "the rules, sure of a low-risk fix"
    when: 'risk == "low" && analysis.source == "rules" && analysis.confidence >= 0.9'
    outcome: allow
"""
# The same, without the freeze: what `policy test` compares with.
THAWED = POLICY.replace("frozen-namespaces", "was-frozen").replace(
    'namespace.labels["freeze"] == "true"', 'namespace.labels["freeze"] == "never"'
)


@dataclass
class Services:
    workflow: RunningService
    clients: Clients
    analysis: Clients
    policy_file: Path


@pytest_asyncio.fixture
async def services(
    stack: InProcessStack,
    admin: Admin,
    runtime_settings: RuntimeSettings,
    database_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> AsyncIterator[Services]:
    """A workflow service with POLICY and an executor that reads the cluster (the policy's
    namespace labels come through its DescribeTarget), on a database of their own; the
    stack's other services."""
    policy_file = tmp_path / "approval.yaml"
    policy_file.write_text(POLICY)
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", database_dsn)
    monkeypatch.setenv("KUBECONFIG", str(admin.info.kubeconfig))
    monkeypatch.setenv("KUBERNAUT_WORKFLOW_POLICY_FILE", str(policy_file))
    base = stack.beside(
        runtime_settings, ServiceName.STORAGE, ServiceName.EFFECTIVENESS, ServiceName.NOTIFICATION
    )
    executor = await start_service(ServiceName.EXECUTOR, base, serve_metrics=False)
    settings = base.model_copy(update={"executor_address": executor.address})
    workflow = await start_service(ServiceName.WORKFLOW, settings, serve_metrics=False)
    here = {ServiceName.EXECUTOR: executor.address, ServiceName.WORKFLOW: workflow.address}
    clients = stack.clients(settings=settings)
    clients.addresses.update(here)
    analysis = Clients(settings, ServiceName.AI_ANALYSIS.account, addresses=here)
    try:
        await wait_serving(clients, list(here), timeout=30)
        yield Services(workflow, clients, analysis, policy_file)
    finally:
        await clients.close()
        await analysis.close()
        await workflow.shutdown()
        await executor.shutdown()


def restart(namespace: str, confidence: float = 0.95) -> remediation_pb2.Recommendation:
    return remediation_pb2.Recommendation(
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web"),
        confidence=confidence,
        reasons=["pods crash-loop"],
        source="rules",
    )


def firing(name: str, namespace: str) -> alert_pb2.Alert:
    alert = alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": namespace, "deployment": "web", "severity": "warning"},
    )
    alert.starts_at.GetCurrentTime()
    return alert


async def plan_of(
    services: Services, recommendation: remediation_pb2.Recommendation, alert: alert_pb2.Alert
) -> workflow_pb2.WorkflowPlan:
    planned = await services.clients.stub(WorkflowServiceStub).PlanWorkflow(
        workflow_pb2.PlanWorkflowRequest(recommendation=recommendation, alert=alert)
    )
    plan: workflow_pb2.WorkflowPlan = planned.plan
    return plan


@pytest.mark.usefixtures("cleanup")
async def test_the_policy_decides_each_plan_and_records_the_rule_and_the_facts(
    services: Services, admin: Admin
) -> None:
    namespace = await admin.namespace(managed=True)
    plan = await plan_of(services, restart(namespace), firing("KubePodCrashLooping", namespace))
    assert plan.policy.rule == "confident-rules", plan.policy
    assert plan.policy.outcome == workflow_pb2.POLICY_OUTCOME_ALLOW
    assert plan.policy.policy.startswith("approval.yaml sha256:")
    assert not plan.requires_approval
    assert "policy rule confident-rules" in plan.approval_reason
    facts = ApprovalPolicy.parse(POLICY, "approval.yaml").decide_json(plan.policy.input_json)
    assert facts.rule == "confident-rules"

    # Less sure, or the model's choice: the default asks one person.
    unsure = await plan_of(
        services, restart(namespace, 0.7), firing("KubePodCrashLooping", namespace)
    )
    assert (unsure.policy.rule, unsure.requires_approval, unsure.approvals_required) == (
        "default",
        True,
        1,
    )

    # A runbook answers a stuck rollout: its several steps need two people.
    rollback = remediation_pb2.Recommendation(
        action=remediation_pb2.ActionParams(
            rollback_deployment=remediation_pb2.RollbackDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web"),
        confidence=0.95,
        source="rules",
    )
    runbook = await plan_of(services, rollback, firing("KubeDeploymentRolloutStuck", namespace))
    assert runbook.runbook.name.startswith("bad-rollout-"), runbook.runbook
    assert runbook.nodes and runbook.runbook.version and runbook.runbook.digest
    assert runbook.policy.rule == "runbooks-need-two"
    assert runbook.requires_approval and runbook.approvals_required == 2


@pytest.mark.usefixtures("cleanup")
async def test_a_denied_plan_never_acts_and_policy_test_replays_its_facts(
    services: Services, admin: Admin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = await admin.namespace(managed=True)
    frozen = await admin.core.read_namespace(namespace)
    frozen.metadata.labels["freeze"] = "true"
    await admin.core.replace_namespace(namespace, frozen)
    alert = firing("KubePodCrashLooping", namespace)
    opened = await services.clients.stub(StorageServiceStub).OpenIncident(
        storage_pb2.OpenIncidentRequest(
            fingerprint=uuid.uuid4().hex, alert=alert, subject=restart(namespace).target
        )
    )
    incident_id = opened.incident.incident_id
    created = await services.analysis.stub(WorkflowServiceStub).CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(
            incident_id=incident_id, alert=alert, recommendation=restart(namespace)
        )
    )
    assert created.workflow.plan.policy.outcome == workflow_pb2.POLICY_OUTCOME_DENY
    workflows = services.clients.stub(WorkflowServiceStub)

    async def ended() -> workflow_pb2.Workflow | None:
        got = await workflows.GetWorkflow(
            workflow_pb2.GetWorkflowRequest(workflow_id=created.workflow.workflow_id)
        )
        done = got.workflow.state != workflow_pb2.WORKFLOW_STATE_RUNNING
        return got.workflow if done else None

    workflow = await eventually(ended, "the denied workflow to end", 30)
    assert workflow.state == workflow_pb2.WORKFLOW_STATE_REFUSED
    validate = workflow.steps[0]
    assert validate.kind == workflow_pb2.STEP_KIND_VALIDATE
    assert validate.state == workflow_pb2.STEP_STATE_FAILED
    assert "denied by policy rule frozen-namespaces" in validate.message
    states = {workflow_pb2.StepKind.Name(s.kind): s.state for s in workflow.steps}
    assert states["STEP_KIND_APPLY"] == workflow_pb2.STEP_STATE_SKIPPED
    incident = await services.clients.stub(StorageServiceStub).GetIncident(
        storage_pb2.GetIncidentRequest(incident_id=incident_id)
    )
    assert incident.incident.status == storage_pb2.INCIDENT_STATUS_NO_ACTION
    assert "frozen-namespaces" in incident.incident.status_reason
    records = await services.clients.stub(StorageServiceStub).ListActionRecords(
        storage_pb2.ListActionRecordsRequest(target=restart(namespace).target)
    )
    assert not records.records  # nothing acted

    # The same facts under a policy without the freeze: another decision, shown side by side.
    thawed = tmp_path / "thawed.yaml"
    thawed.write_text(THAWED)
    capsys.readouterr()
    code = await run_policy_test(services.clients, ApprovalPolicy.load(thawed), incident_id)
    shown = capsys.readouterr().out
    assert code == 0
    assert "frozen-namespaces" in shown and "deny" in shown
    assert "confident-rules" in shown and "allow" in shown


async def test_runbook_templates_are_listed(services: Services) -> None:
    listed = await services.clients.stub(WorkflowServiceStub).ListRunbooks(
        workflow_pb2.ListRunbooksRequest()
    )
    names = [runbook.name for runbook in listed.runbooks]
    assert names == sorted(names) and len(names) >= 6
    assert {"node-not-ready", "job-failed-rerun", "bad-rollout-with-scale-guard"} <= set(names)
    for runbook in listed.runbooks:
        assert runbook.version and len(runbook.digest) == 64 and runbook.alerts and runbook.steps


async def test_a_bad_policy_file_stops_the_service_at_start(
    runtime_settings: RuntimeSettings,
    database_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace('risk == "low"', "risk == "))
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", database_dsn)
    monkeypatch.setenv("KUBERNAUT_WORKFLOW_POLICY_FILE", str(broken))
    settings = runtime_settings.model_copy(update={"grpc_port": 0})
    with pytest.raises(PolicyError, match=r"broken\.yaml: rule confident-rules"):
        await start_service(ServiceName.WORKFLOW, settings, serve_metrics=False)
