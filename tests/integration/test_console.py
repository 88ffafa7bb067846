"""The web console through the real edge app and the real services: a person signs in
with OIDC (the local issuer's authorization code flow, PKCE), sees the incidents, opens
one (its timeline and the action's diff), and decides a held workflow as themselves; a
viewer cannot; forms without the session's CSRF token change nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2
from kubernaut.effectiveness.v1.effectiveness_pb2_grpc import EffectivenessServiceStub
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.devstack.oidc import LocalIssuer
from kubernaut.devstack.smtp import MailSink
from kubernaut.edge.app import Edge, create_app
from kubernaut.edge.console.app import ConsoleApp
from kubernaut.edge.security import Authenticator
from kubernaut.edge.settings import EdgeSettings
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import EDGE_ACCOUNT, ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.kubernaut import InProcessStack, stack_env, start_stack
from tests.fixtures.postgres import fresh_database
from tests.fixtures.waiting import eventually
from tests.fixtures.workflows import restart_workflow

pytestmark = pytest.mark.integration

CONSOLE_URL = "http://console.test"
ALICE = "alice@example.com"  # an approver
VERA = "vera@example.com"  # a viewer
REFRESH = '<meta http-equiv="refresh"'
BINDINGS = {"viewer": ["group:engineering"], "approver": ["group:sre-approvers"]}


@dataclass
class Site:
    stack: InProcessStack
    issuer: LocalIssuer
    app: Edge
    operator: Clients

    def browser(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=CONSOLE_URL)

    async def sign_in(self, browser: httpx.AsyncClient, email: str, *groups: str) -> None:
        """What a browser does: /ui sends it to sign in, the issuer sends it back."""
        first = await browser.get("/ui")
        assert first.status_code == 303 and first.headers["location"].startswith("/ui/login")
        login = await browser.get(first.headers["location"])
        assert login.status_code == 303
        authorize = urlsplit(login.headers["location"])
        assert authorize.geturl().startswith(self.issuer.url + "/authorize")
        query = {k: v[0] for k, v in parse_qs(authorize.query).items()}
        assert query["code_challenge_method"] == "S256" and query["client_id"]
        back = self.issuer.authorize(
            email,
            list(groups),
            client_id=query["client_id"],
            redirect_uri=query["redirect_uri"],
            code_challenge=query["code_challenge"],
            state=query["state"],
            nonce=query["nonce"],
        )
        callback = await browser.get(back.removeprefix(CONSOLE_URL))
        assert callback.status_code == 303, callback.text
        session = callback.headers["set-cookie"]
        assert "HttpOnly" in session and "SameSite=lax" in session and "Path=/ui" in session
        assert callback.headers["location"] == "/ui"

    async def held_workflow(self) -> workflow_pb2.Workflow:
        target = alert_pb2.ResourceRef(
            namespace="shop", kind="Deployment", name=f"web-{uuid.uuid4().hex[:6]}"
        )
        alert = alert_pb2.Alert(
            name="KubePodCrashLooping",
            status=alert_pb2.ALERT_STATUS_FIRING,
            labels={"namespace": "shop", "severity": "critical"},
        )
        alert.starts_at.GetCurrentTime()
        # Unsure (confidence under the approval threshold): it waits for a person.
        _, created = await restart_workflow(
            self.operator.stub(StorageServiceStub),
            self.operator.stub(WorkflowServiceStub),
            alert,
            target,
            confidence=0.2,
            reasons=["the pods restart in a loop since the last rollout"],
        )
        workflows = self.operator.stub(WorkflowServiceStub)

        async def waiting() -> workflow_pb2.Workflow | None:
            got = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=created.workflow_id)
            )
            held = got.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
            return got.workflow if held else None

        return await eventually(waiting, "the workflow to wait for approval", 60)


@pytest_asyncio.fixture(scope="module")
async def site(
    runtime_settings: RuntimeSettings, postgres_dsn: str, session_mail: MailSink
) -> AsyncIterator[Site]:
    issuer = LocalIssuer().start()
    env = stack_env("", session_mail, **issuer.settings_env(BINDINGS))
    try:
        async with fresh_database(postgres_dsn) as dsn:
            env["KUBERNAUT_DATABASE_URL"] = dsn
            async with start_stack(runtime_settings, session_mail, env) as stack:
                edge_clients = stack.clients(EDGE_ACCOUNT)
                operator = stack.clients()
                with pytest.MonkeyPatch.context() as patch:
                    for name, value in issuer.settings_env(BINDINGS).items():
                        patch.setenv(name, value)
                    console = EdgeSettings(console_url=CONSOLE_URL).console(
                        edge_clients.stub(StorageServiceStub),
                        edge_clients.stub(WorkflowServiceStub),
                        edge_clients.stub(EffectivenessServiceStub),
                        "http://jaeger.test",
                    )
                assert isinstance(console, ConsoleApp)
                app = create_app(
                    edge_clients.stub(GatewayServiceStub).SubmitAlerts,
                    Authenticator.of(["webhook-token"]),
                    console=console,
                )
                try:
                    yield Site(stack, issuer, app, operator)
                finally:
                    await console.close()
                    await edge_clients.close()
                    await operator.close()
    finally:
        issuer.stop()


async def test_a_person_signs_in_and_follows_an_incident_to_its_diff(site: Site) -> None:
    held = await site.held_workflow()
    # The action as the executor records it: the spec before and after.
    executor = site.stack.clients(ServiceName.EXECUTOR.account)
    action = storage_pb2.ActionRecord(
        action_id=str(uuid.uuid4()),
        incident_id=held.incident_id,
        alert_name="KubePodCrashLooping",
        action="rollback_deployment",
        target=held.plan.target,
        outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED,
        spec_before_json=json.dumps({"image": "shop:bad", "replicas": 3}),
        spec_after_json=json.dumps({"image": "shop:good", "replicas": 3}),
        message="rolled back to revision 1",
    )
    action.started_at.GetCurrentTime()
    try:
        await executor.stub(StorageServiceStub).RecordAction(
            storage_pb2.RecordActionRequest(record=action)
        )
    finally:
        await executor.close()

    async with site.browser() as browser:
        await site.sign_in(browser, VERA, "engineering")
        listed = await browser.get("/ui")
        assert listed.status_code == 200
        assert "default-src 'none'" in listed.headers["content-security-policy"]
        assert f'href="/ui/incidents/{held.incident_id}"' in listed.text
        assert VERA in listed.text and "viewer" in listed.text
        assert '<td class="action">rollback_deployment: succeeded</td>' in listed.text
        # The search narrows the list to what matches the alert, subject or cluster.
        subject = held.plan.target.name
        found = await browser.get("/ui", params={"q": subject.upper()})
        assert f'href="/ui/incidents/{held.incident_id}"' in found.text
        missing = await browser.get("/ui", params={"q": "no-such-workload"})
        assert 'id="no-incidents"' in missing.text and "no-such-workload" in missing.text
        page = await browser.get(f"/ui/incidents/{held.incident_id}")
        assert page.status_code == 200, page.text
        text = page.text
        assert "KubePodCrashLooping fired" in text and "incident opened" in text
        assert '<span class="del">-  &#34;image&#34;: &#34;shop:bad&#34;,</span>' in text
        assert '<span class="add">+  &#34;image&#34;: &#34;shop:good&#34;,</span>' in text
        assert "the pods restart in a loop since the last rollout" in text

        # What people were told: the approval request's email, from the audit trail.
        async def told() -> str | None:
            again = await browser.get(f"/ui/incidents/{held.incident_id}")
            return again.text if '<ul id="notifications">' in again.text else None

        told_page = await eventually(told, "the approval request on the incident page", 30)
        assert 'email <span class="badge">sent</span>' in told_page
        # A viewer is told they cannot approve, and a forged decision changes nothing.
        assert 'id="cannot-approve"' in text and f'id="approve-{held.workflow_id}"' not in text
        # With no form to fill in, the page keeps itself fresh.
        assert REFRESH in text and REFRESH in listed.text
        csrf = text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        forced = await browser.post(
            f"/ui/approvals/{held.workflow_id}",
            data={"csrf": csrf, "decision": "approve", "next": "/ui/approvals"},
        )
        assert forced.status_code == 403
        assert "needs the approver role" in forced.text
        status = await browser.get("/ui?status=nonsense")
        assert status.status_code == 400
        # The overview counts the action, and draws its charts without a script.
        overview = await browser.get("/ui/overview")
        assert overview.status_code == 200, overview.text
        assert '<svg class="chart" id="by-outcome"' in overview.text
        assert ">succeeded</text>" in overview.text and "<script" not in overview.text


async def test_an_approver_decides_a_held_plan_as_themselves(site: Site) -> None:
    held = await site.held_workflow()
    async with site.browser() as browser:
        await site.sign_in(browser, ALICE, "sre-approvers")
        page = await browser.get("/ui/approvals")
        assert f'id="approve-{held.workflow_id}"' in page.text
        # It does not reload under the fingers of someone writing a reason.
        assert REFRESH not in page.text
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        # Without the session's CSRF token (a form another site made), nothing happens.
        forged = await browser.post(
            f"/ui/approvals/{held.workflow_id}", data={"csrf": "x", "decision": "approve"}
        )
        assert forged.status_code == 403
        decided = await browser.post(
            f"/ui/approvals/{held.workflow_id}",
            data={
                "csrf": csrf,
                "decision": "approve",
                "reason": "checked",
                "next": "/ui/approvals",
            },
        )
        assert decided.status_code == 303
        after = await browser.get(decided.headers["location"])
        assert f"You approved workflow {held.workflow_id}" in after.text
        # A link cannot make the console claim an outcome.
        spoofed = await browser.get("/ui/approvals?notice=You%20approved%20everything")
        assert "You approved everything" not in spoofed.text
    got = await site.operator.stub(WorkflowServiceStub).GetWorkflow(
        workflow_pb2.GetWorkflowRequest(workflow_id=held.workflow_id)
    )
    assert [(a.approver, a.reason) for a in got.workflow.approvals] == [
        (f"person:{ALICE}", "checked")
    ]
    assert got.workflow.state != workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL


async def test_without_a_session_nothing_is_shown_or_done(site: Site) -> None:
    async with site.browser() as browser:
        page = await browser.get("/ui/approvals")
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
        post = await browser.post("/ui/approvals/x", data={"decision": "approve"})
        assert post.status_code == 401
        # A forged session cookie is no session.
        browser.cookies.set("kubernaut_session", "not-a-token", domain="console.test", path="/ui")
        again = await browser.get("/ui")
        assert again.status_code == 303
        # A callback that did not start here is refused.
        stray = await browser.get("/ui/callback?code=abc&state=def")
        assert stray.status_code == 401
