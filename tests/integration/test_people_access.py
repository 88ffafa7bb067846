"""People through the real services: a stack configured as a shared install is (an OIDC
issuer, role bindings, no shared operator, four eyes for high risk), called with real ID
tokens and a personal certificate over mTLS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.devstack.oidc import LocalIssuer
from kubernaut.devstack.smtp import MailSink
from kubernaut.runtime.certs import issue_person_certificate, person_cert_name
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.kubernaut import InProcessStack, stack_env, start_stack
from tests.fixtures.postgres import fresh_database
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

BINDINGS = {
    "viewer": ["group:engineering"],
    "approver": ["group:sre-leads", "cert:carol"],
    "operator": ["user:bob@example.com"],
    "admin": ["group:platform"],
}


@dataclass
class People:
    stack: InProcessStack
    issuer: LocalIssuer
    tokens: Path

    def as_token(self, email: str, *groups: str) -> Clients:
        path = self.issuer.write_token(self.tokens / f"{email}.token", email, groups=groups)
        return Clients(self.stack.settings, addresses=self.stack.addresses, token_file=path)

    def as_cert(self, name: str) -> Clients:
        return Clients(self.stack.settings, person_cert_name(name), addresses=self.stack.addresses)


@pytest_asyncio.fixture(scope="module")
async def people(
    runtime_settings: RuntimeSettings,
    postgres_dsn: str,
    session_mail: MailSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[People]:
    issuer = LocalIssuer().start()
    issue_person_certificate(
        runtime_settings.resolved_certs_dir, "carol", trust_domain=runtime_settings.trust_domain
    )
    env = stack_env(
        "",
        session_mail,
        **issuer.settings_env(BINDINGS),
        KUBERNAUT_ACCESS_SHARED_OPERATOR="false",
        KUBERNAUT_WORKFLOW_HIGH_RISK_APPROVERS="2",
    )
    try:
        async with fresh_database(postgres_dsn) as dsn:
            env["KUBERNAUT_DATABASE_URL"] = dsn
            async with start_stack(runtime_settings, session_mail, env) as stack:
                yield People(stack, issuer, tmp_path_factory.mktemp("tokens"))
    finally:
        issuer.stop()


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_the_shared_operator_and_bad_tokens_are_refused(people: People) -> None:
    operator = Clients(people.stack.settings, addresses=people.stack.addresses)
    code, details = await _code(
        operator.stub(StorageServiceStub).ListIncidents(storage_pb2.ListIncidentsRequest())
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "local dev stack only" in details
    await operator.close()

    expired = people.tokens / "expired.token"
    people.issuer.write_token(expired, "bob@example.com", lifetime_seconds=-300)
    stale = Clients(people.stack.settings, addresses=people.stack.addresses, token_file=expired)
    code, details = await _code(
        stale.stub(StorageServiceStub).ListIncidents(storage_pb2.ListIncidentsRequest())
    )
    assert (code, "expired" in details) == (grpc.StatusCode.UNAUTHENTICATED, True), details
    await stale.close()


async def test_roles_rule_what_each_person_may_call(people: People) -> None:
    viewer = people.as_token("dev@example.com", "engineering")
    try:
        await viewer.stub(StorageServiceStub).ListIncidents(storage_pb2.ListIncidentsRequest())
        code, details = await _code(
            viewer.stub(WorkflowServiceStub).DecideApproval(
                workflow_pb2.DecideApprovalRequest(
                    workflow_id=str(uuid.uuid4()), decision=workflow_pb2.APPROVAL_DECISION_APPROVE
                )
            )
        )
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert "needs the approver role (held: viewer)" in details
    finally:
        await viewer.close()


async def test_a_high_risk_workflow_waits_for_two_people_other_than_its_requester(
    people: People,
) -> None:
    admin = people.as_token("root@example.com", "platform")
    bob = people.as_token("bob@example.com")
    alice = people.as_token("alice@example.com", "sre-leads")
    carol = people.as_cert("carol")
    target = alert_pb2.ResourceRef(namespace="db", kind="StatefulSet", name="postgres")
    alert = alert_pb2.Alert(
        name="KubeStatefulSetReplicasMismatch",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": "db", "statefulset": "postgres"},
    )
    alert.starts_at.GetCurrentTime()
    try:
        opened = await admin.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=uuid.uuid4().hex, alert=alert, subject=target
            )
        )
        created = await bob.stub(WorkflowServiceStub).CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(
                incident_id=opened.incident.incident_id,
                alert=alert,
                recommendation=remediation_pb2.Recommendation(
                    action=remediation_pb2.ActionParams(
                        scale_statefulset=remediation_pb2.ScaleStatefulSetParams(replicas=3)
                    ),
                    target=target,
                    confidence=0.9,
                ),
            )
        )
        workflow = created.workflow
        assert workflow.requested_by == "person:bob@example.com"
        assert workflow.plan.risk == remediation_pb2.RISK_LEVEL_HIGH
        assert workflow.plan.approvals_required == 2
        workflows = alice.stub(WorkflowServiceStub)

        async def waiting() -> workflow_pb2.Workflow | None:
            got = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=workflow.workflow_id)
            )
            waits = got.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
            return got.workflow if waits else None

        await eventually(waiting, "the workflow to wait for approval", 60)

        def approve(reason: str = "") -> workflow_pb2.DecideApprovalRequest:
            return workflow_pb2.DecideApprovalRequest(
                workflow_id=workflow.workflow_id,
                decision=workflow_pb2.APPROVAL_DECISION_APPROVE,
                reason=reason,
            )

        # The requester never approves, though an operator holds the approver's rights.
        code, details = await _code(bob.stub(WorkflowServiceStub).DecideApproval(approve()))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert "bob@example.com requested workflow" in details

        first = await workflows.DecideApproval(approve("capacity checked"))
        assert first.decided
        assert first.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
        assert "(1 of 2)" in first.workflow.message
        # The same person twice is still one approval.
        again = await workflows.DecideApproval(approve())
        assert not again.decided
        assert again.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL

        second = await carol.stub(WorkflowServiceStub).DecideApproval(approve())
        assert second.decided
        (step,) = [s for s in second.workflow.steps if s.kind == workflow_pb2.STEP_KIND_APPROVAL]
        assert step.state == workflow_pb2.STEP_STATE_DONE
        assert step.message.startswith("approved by alice@example.com, carol")
        assert [a.approver for a in second.workflow.approvals] == [
            "person:alice@example.com",
            "person:carol",
        ]
    finally:
        for clients in (admin, bob, alice, carol):
            await clients.close()
