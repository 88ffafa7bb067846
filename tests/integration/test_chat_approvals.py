"""Approvals from chat through the real edge and the real services: a click in "Slack"
(a request signed as Slack signs them) and a signed link decide a held workflow, recorded
as the person who clicked; forged, stale, expired and replayed requests change nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.devstack.smtp import MailSink
from kubernaut.edge.app import create_app
from kubernaut.edge.main import decide_for
from kubernaut.edge.security import Authenticator
from kubernaut.edge.settings import EdgeSettings
from kubernaut.runtime.chat_approvals import (
    SLACK_APPROVE_ACTION_ID,
    SLACK_REJECT_ACTION_ID,
    Decision,
    LinkSigner,
)
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import EDGE_ACCOUNT
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.kubernaut import InProcessStack, stack_env, start_stack
from tests.fixtures.postgres import fresh_database
from tests.fixtures.slack_loopback import SlackLoopback
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
LINK_SECRET = b"0123456789abcdef0123456789abcdef-approval-links"
ALICE = "U0AL1CE"  # an approver in Slack
VIEWER = "U0V1EWER"  # may look, not approve
BINDINGS = {
    "approver": [f"slack:{ALICE}", "link:oncall-mail"],
    "viewer": [f"slack:{VIEWER}"],
}
EDGE_URL = "http://edge.test"


@dataclass
class Chat:
    stack: InProcessStack
    operator: Clients
    edge: httpx.AsyncClient
    slack: SlackLoopback
    links: LinkSigner

    async def click(self, action_id: str, workflow_id: str, user: str) -> httpx.Response:
        body, headers = self.slack.click(SIGNING_SECRET, action_id, workflow_id, user)
        return await self.edge.post("/api/v1/approvals/slack", content=body, headers=headers)

    async def held_workflow(self, *, high_risk: bool = False) -> workflow_pb2.Workflow:
        """A workflow waiting for approval: a restart the analysis wants a person to
        approve (one approval), or a high-risk scale (two different people)."""
        target = alert_pb2.ResourceRef(
            namespace="shop",
            kind="StatefulSet" if high_risk else "Deployment",
            name=f"app-{uuid.uuid4().hex[:8]}",
        )
        alert = alert_pb2.Alert(
            name="KubePodCrashLooping",
            status=alert_pb2.ALERT_STATUS_FIRING,
            labels={"namespace": "shop", "severity": "critical"},
        )
        alert.starts_at.GetCurrentTime()
        opened = await self.operator.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=uuid.uuid4().hex, alert=alert, subject=target
            )
        )
        if high_risk:
            action = remediation_pb2.ActionParams(
                scale_statefulset=remediation_pb2.ScaleStatefulSetParams(replicas=3)
            )
        else:
            action = remediation_pb2.ActionParams(
                restart_deployment=remediation_pb2.RestartDeploymentParams()
            )
        created = await self.operator.stub(WorkflowServiceStub).CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(
                incident_id=opened.incident.incident_id,
                alert=alert,
                recommendation=remediation_pb2.Recommendation(
                    action=action,
                    target=target,
                    confidence=0.9,
                    approval_required=True,
                    approval_reason="a person looks first",
                ),
            )
        )
        workflow_id = created.workflow.workflow_id

        async def waiting() -> workflow_pb2.Workflow | None:
            got = await self.workflow(workflow_id)
            return got if got.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL else None

        return await eventually(waiting, "the workflow to wait for approval", 60)

    async def workflow(self, workflow_id: str) -> workflow_pb2.Workflow:
        got: workflow_pb2.GetWorkflowResponse = await self.operator.stub(
            WorkflowServiceStub
        ).GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id))
        return got.workflow


@pytest_asyncio.fixture(scope="module")
async def chat(
    runtime_settings: RuntimeSettings,
    postgres_dsn: str,
    session_mail: MailSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Chat]:
    secrets = tmp_path_factory.mktemp("chat-secrets")
    (secrets / "slack").write_text(SIGNING_SECRET + "\n")
    (secrets / "links").write_bytes(LINK_SECRET)
    env = stack_env(
        "",
        session_mail,
        KUBERNAUT_ACCESS_ROLE_BINDINGS=json.dumps(BINDINGS),
        KUBERNAUT_WORKFLOW_HIGH_RISK_APPROVERS="2",
    )
    async with fresh_database(postgres_dsn) as dsn:
        env["KUBERNAUT_DATABASE_URL"] = dsn
        async with start_stack(runtime_settings, session_mail, env) as stack:
            edge_clients = stack.clients(EDGE_ACCOUNT)
            operator = stack.clients()
            # The edge as `serve_edge` makes it, from its settings.
            approvals = EdgeSettings(
                slack_signing_secret_file=secrets / "slack",
                approval_link_secret_file=secrets / "links",
            ).approvals(decide_for(edge_clients.stub(WorkflowServiceStub)))
            assert approvals is not None
            app = create_app(
                edge_clients.stub(GatewayServiceStub).SubmitAlerts,
                Authenticator.of(["webhook-token"]),
                approvals=approvals,
            )
            transport = httpx.ASGITransport(app=app)
            try:
                async with httpx.AsyncClient(transport=transport, base_url=EDGE_URL) as edge:
                    with SlackLoopback() as slack:
                        yield Chat(
                            stack, operator, edge, slack, LinkSigner(LINK_SECRET, EDGE_URL, 600)
                        )
            finally:
                await approvals.close()
                await edge_clients.close()
                await operator.close()


async def _audited_principals(chat: Chat, incident_id: str) -> list[str]:
    listed = await chat.operator.stub(StorageServiceStub).ListAuditEntries(
        storage_pb2.ListAuditEntriesRequest(incident_id=incident_id, method="DecideApproval")
    )
    return [entry.principal for entry in listed.entries]


async def test_a_click_in_slack_lets_the_held_workflow_act_as_the_clicker(chat: Chat) -> None:
    held = await chat.held_workflow()
    answered = await chat.click(SLACK_APPROVE_ACTION_ID, held.workflow_id, ALICE)
    assert answered.status_code == 200

    async def acting() -> workflow_pb2.Workflow | None:
        got = await chat.workflow(held.workflow_id)
        return got if got.state != workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL else None

    acted = await eventually(acting, "the workflow to go on", 30)
    assert [a.approver for a in acted.approvals] == [f"person:slack:{ALICE}"]
    assert "clicked in Slack by alice" in acted.approvals[0].reason
    (approval,) = [s for s in acted.steps if s.kind == workflow_pb2.STEP_KIND_APPROVAL]
    assert approval.state == workflow_pb2.STEP_STATE_DONE
    assert approval.message.startswith(f"approved by slack:{ALICE}")
    # Past the approval, the workflow went on to act (this stack has no cluster, so the
    # action cannot succeed; that its dry-run was tried is what the approval allows).
    dry_run = [s for s in acted.steps if s.kind == workflow_pb2.STEP_KIND_DRY_RUN]

    async def tried() -> bool:
        got = await chat.workflow(held.workflow_id)
        steps = [s for s in got.steps if s.kind == workflow_pb2.STEP_KIND_DRY_RUN]
        return steps[0].state != workflow_pb2.STEP_STATE_PENDING

    assert dry_run
    await eventually(tried, "the dry-run to be tried", 30)
    # The clicker heard what came of it; the audit trail names both them and the edge.
    await eventually(lambda: _ready(chat.slack.answers()), "the answer to the clicker", 10)
    assert chat.slack.answers()[0]["response_type"] == "ephemeral"
    assert chat.slack.answers()[0]["text"].startswith(f"Approved as slack:{ALICE}")
    principals = await _audited_principals(chat, held.incident_id)
    assert principals == [f"person:slack:{ALICE} via {EDGE_ACCOUNT}"]


async def _ready(value: Sequence[object]) -> Sequence[object] | None:
    return value or None


async def test_replayed_forged_and_stale_slack_requests_change_nothing(chat: Chat) -> None:
    held = await chat.held_workflow(high_risk=True)  # needs two people: stays waiting
    body, headers = chat.slack.click(
        SIGNING_SECRET, SLACK_APPROVE_ACTION_ID, held.workflow_id, ALICE
    )
    first = await chat.edge.post("/api/v1/approvals/slack", content=body, headers=headers)
    replayed = await chat.edge.post("/api/v1/approvals/slack", content=body, headers=headers)
    assert first.status_code == replayed.status_code == 200
    after = await chat.workflow(held.workflow_id)
    assert [a.approver for a in after.approvals] == [f"person:slack:{ALICE}"]
    assert after.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL

    # Signed with another secret, or altered after signing: refused before anything.
    forged_body, forged_headers = chat.slack.click(
        "not-the-apps-secret", SLACK_APPROVE_ACTION_ID, held.workflow_id, "U0MALLORY"
    )
    forged = await chat.edge.post(
        "/api/v1/approvals/slack", content=forged_body, headers=forged_headers
    )
    assert forged.status_code == 401
    altered = await chat.edge.post(
        "/api/v1/approvals/slack",
        content=body.replace(ALICE.encode(), b"U0MALLORY"),
        headers=headers,
    )
    assert altered.status_code == 401
    # A genuine request, six minutes late (Slack's window is five).
    stale_body, stale_headers = chat.slack.click(
        SIGNING_SECRET,
        SLACK_APPROVE_ACTION_ID,
        held.workflow_id,
        "U0B0B",
        timestamp=int(time.time()) - 360,
    )
    stale = await chat.edge.post(
        "/api/v1/approvals/slack", content=stale_body, headers=stale_headers
    )
    assert stale.status_code == 401
    # A person without the approver role is told so, and nothing changes.
    await chat.click(SLACK_REJECT_ACTION_ID, held.workflow_id, VIEWER)
    still = await chat.workflow(held.workflow_id)
    assert [a.approver for a in still.approvals] == [f"person:slack:{ALICE}"]
    assert still.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL

    def answers_with(needle: str) -> list[object]:
        return [a for a in chat.slack.answers() if needle in a["text"]]

    await eventually(
        lambda: _ready(answers_with("needs the approver role")), "the viewer's answer", 10
    )
    assert answers_with(f"This was approved as slack:{ALICE} before")


async def test_a_signed_link_decides_once_and_only_when_posted(chat: Chat) -> None:
    held = await chat.held_workflow()
    reject = chat.links.link(held.workflow_id, held.incident_id, Decision.REJECT, "oncall-mail")
    path = httpx.URL(reject).path
    # Opening the link (a mail scanner does) decides nothing.
    page = await chat.edge.get(path)
    assert page.status_code == 200
    assert "Reject workflow" in page.text and '<form method="post">' in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert (await chat.workflow(held.workflow_id)).state == (
        workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
    )

    decided = await chat.edge.post(path)
    assert decided.status_code == 200, decided.text
    refused = await chat.workflow(held.workflow_id)
    assert [a.approver for a in refused.approvals] == ["person:link:oncall-mail"]
    assert refused.state != workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL

    again = await chat.edge.post(path)
    assert again.status_code == 409
    assert "Already used" in again.text
    # The approve link of the same request can no longer turn it around.
    approve = chat.links.link(held.workflow_id, held.incident_id, Decision.APPROVE, "oncall-mail")
    turned = await chat.edge.post(httpx.URL(approve).path)
    assert turned.status_code == 409


async def test_expired_forged_and_unbound_links_are_refused(chat: Chat) -> None:
    held = await chat.held_workflow()
    expired = chat.links.link(
        held.workflow_id, held.incident_id, Decision.APPROVE, "oncall-mail", now=time.time() - 601
    )
    answer = await chat.edge.post(httpx.URL(expired).path)
    assert answer.status_code == 410
    assert "expired" in answer.text

    forged = LinkSigner(b"x" * 48, EDGE_URL, 600).link(
        held.workflow_id, held.incident_id, Decision.APPROVE, "oncall-mail"
    )
    assert (await chat.edge.post(httpx.URL(forged).path)).status_code == 404
    # A link to a channel nobody gave the approver role.
    unbound = chat.links.link(held.workflow_id, held.incident_id, Decision.APPROVE, "town-hall")
    denied = await chat.edge.post(httpx.URL(unbound).path)
    assert denied.status_code == 403
    assert "needs the approver role" in denied.text
    assert (await chat.workflow(held.workflow_id)).approvals == []


async def test_a_link_never_counts_toward_four_eyes(chat: Chat) -> None:
    held = await chat.held_workflow(high_risk=True)
    approve = chat.links.link(held.workflow_id, held.incident_id, Decision.APPROVE, "oncall-mail")
    answer = await chat.edge.post(httpx.URL(approve).path)
    assert answer.status_code == 403
    assert "cannot tell people apart" in answer.text
    assert (await chat.workflow(held.workflow_id)).approvals == []
