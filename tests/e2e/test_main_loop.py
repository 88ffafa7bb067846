"""Kubernaut's main job end to end, through the real AlertManager: a bad rollout
crash-loops, the alert arrives (several times), exactly one rollback fixes it, the action
and its assessment are stored, the incident is one trace, and people hear of it on every
channel routed on: one email per event, one Slack thread, one PagerDuty page triggered then
resolved, one signed webhook per event. A workflow one person requests waits until another
approves it (its requester may not), on the command line or with a click in Slack, then
acts on the cluster; no log line of the run holds a secret."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub
from selenium.webdriver.common.by import By

from kubernaut.cli.audit import list_entries
from kubernaut.cli.audit import verify as verify_chain
from kubernaut.cli.identity import CliIdentity
from kubernaut.cli.workflows import decide_workflow
from kubernaut.devstack.kube import default_bin_dir
from kubernaut.devstack.model import LlamaBuild
from kubernaut.devstack.oidc import LocalIssuer
from kubernaut.devstack.processes import free_port, free_port_base
from kubernaut.devstack.scenario import BAD_IMAGE, GOOD_IMAGE, BadRollout
from kubernaut.devstack.smtp import read_mailbox
from kubernaut.devstack.stack import DevStack, StackInfo
from kubernaut.devstack.system import (
    DEFAULT_RECIPIENT,
    System,
    Tuning,
    running_system,
    webhook_token_file,
)
from kubernaut.runtime.chat_approvals import SLACK_APPROVE_ACTION_ID
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import EDGE_ACCOUNT
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures import pagerduty_loopback
from tests.fixtures.browser import Browser, artefacts_dir, chromium
from tests.fixtures.pagerduty_loopback import PagerDutyLoopback
from tests.fixtures.slack_loopback import SlackLoopback, buttons_of, headline_of
from tests.fixtures.waiting import eventually
from tests.fixtures.webhook_loopback import WebhookReceiver
from tests.fixtures.workflows import restart_workflow

pytestmark = pytest.mark.e2e


# People of the run, as the local OIDC issuer's tokens name them, and their roles.
BOB = "bob@example.com"  # an operator: may ask for an action
ALICE = "alice@example.com"  # an approver
CAROL = "U0CAR0L42"  # an approver in Slack, by her Slack user ID
VERA = "vera@example.com"  # a viewer
ROLE_BINDINGS = {
    "viewer": ["group:engineering"],
    "operator": [f"user:{BOB}"],
    "approver": ["group:sre-approvers", f"slack:{CAROL}"],
}
# Whom the issuer's sign-in page offers, as the console's browser test picks them.
PEOPLE = {ALICE: ["sre-approvers"], BOB: [], VERA: ["engineering"]}
# The Slack app's signing secret, which the edge checks every click against.
SLACK_SIGNING_SECRET = "e2e0slack0signing0secret0a9c4f17"
SLACK_CHANNEL = "C0INCIDENTS"
# The kinds that page: whatever needs a person, and the ends that resolve the page.
PAGING_KINDS = [
    "opened",
    "failed",
    "rolled_back",
    "refused",
    "escalated",
    "storm",
    "remediated",
    "resolved",
]
# What each kind's Slack message starts with (its header block).
SLACK_HEADLINES = {
    "opened": ":rotating_light: New incident",
    "action_planned": ":hammer_and_wrench: Fix planned",
    "approval_needed": ":raised_hand: Approval needed",
    "remediated": ":white_check_mark: Remediated",
    "resolved": ":white_check_mark: Resolved",
}


@dataclass
class Loop:
    system: System
    dev: StackInfo
    state_dir: Path
    clients: Clients
    issuer: LocalIssuer
    # The vendors the notification service's routes send to, on loopback.
    slack: SlackLoopback
    pagerduty: PagerDutyLoopback
    webhooks: WebhookReceiver
    # What the run must never write to a log: tests add the credentials they use.
    secrets: list[str] = field(default_factory=list)

    def storage(self) -> StorageServiceStub:
        return self.clients.stub(StorageServiceStub)

    def log_lines(self, service: str) -> list[dict[str, object]]:
        path = self.state_dir / "logs" / f"{service}.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _write_routes(
    directory: Path, slack: SlackLoopback, pagerduty: PagerDutyLoopback, webhooks: WebhookReceiver
) -> tuple[Path, dict[str, str]]:
    """The credential files and the routing file of the run, in `directory`: (the routing
    file, each credential by file name)."""
    credentials = {
        "slack-bot-token": slack.token,
        "slack-signing-secret": SLACK_SIGNING_SECRET,
        "pagerduty-routing-key": pagerduty_loopback.ROUTING_KEY,
        "webhook-secret": webhooks.secret,
    }
    for name, value in credentials.items():
        (directory / name).write_text(value + "\n")
        (directory / name).chmod(0o600)
    everyone = ["oncall-mail", "ops-slack", "hooks"]
    routes = {
        "channels": {
            "oncall-mail": {"type": "email", "to": [DEFAULT_RECIPIENT]},
            "ops-slack": {
                "type": "slack",
                "api_url": slack.api_url,
                "bot_token_file": str(directory / "slack-bot-token"),
                "channel": SLACK_CHANNEL,
            },
            "pager": {
                "type": "pagerduty",
                "url": pagerduty.url,
                "routing_key_file": str(directory / "pagerduty-routing-key"),
            },
            "hooks": {
                "type": "webhook",
                "url": webhooks.hook_url,
                "secret_file": str(directory / "webhook-secret"),
            },
        },
        # Every event to mail, Slack and the webhook; the paging kinds to PagerDuty too.
        "route": {
            "channels": everyone,
            "routes": [{"match": {"kind": PAGING_KINDS}, "channels": [*everyone, "pager"]}],
        },
    }
    routes_file = directory / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(routes, sort_keys=False))
    return routes_file, credentials


@pytest.fixture(scope="module")
async def loop(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Loop]:
    state_dir = tmp_path_factory.mktemp("e2e")
    credentials_dir = tmp_path_factory.mktemp("e2e-credentials")
    edge_port = free_port()
    bin_dir = default_bin_dir()  # before KUBERNAUT_STATE_DIR points elsewhere
    llama_build = LlamaBuild.default()
    issuer = LocalIssuer(people=PEOPLE).start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBERNAUT_STATE_DIR", str(state_dir))
        env.setenv("KUBERNAUT_PORT_BASE", str(free_port_base()))
        env.setenv("KUBERNAUT_HTTP_PORT", str(edge_port))
        settings = RuntimeSettings()
        stack = DevStack(
            state_dir,
            webhook_url=f"http://127.0.0.1:{edge_port}/api/v1/alerts/alertmanager",
            alert_for="5s",
            group_interval="2s",
            # AlertManager re-sends the firing alert every few seconds: each must be
            # counted on the incident, never acted on again.
            repeat_interval="4s",
            k8s_bin_dir=bin_dir,
            # The local model on, as in `make demo`: ai_analysis asks it about every
            # incident, and the guard weighs its answer against the rules'.
            model=True,
            llama_build=llama_build,
        )
        dev = await asyncio.to_thread(stack.up, lambda line: None)
        try:
            with (
                SlackLoopback() as slack,
                PagerDutyLoopback() as pagerduty,
                WebhookReceiver() as webhooks,
            ):
                routes_file, credentials = _write_routes(
                    credentials_dir, slack, pagerduty, webhooks
                )
                tuning = Tuning(
                    assessment_delays="3s,6s,30m",
                    verify_timeout_seconds=60,
                    extra_env={
                        **issuer.settings_env(ROLE_BINDINGS),
                        "KUBERNAUT_NOTIFICATION_ROUTES_FILE": str(routes_file),
                        "KUBERNAUT_HTTP_SLACK_SIGNING_SECRET_FILE": str(
                            credentials_dir / "slack-signing-secret"
                        ),
                    },
                )
                async with running_system(settings, dev, tuning) as system:
                    assert system.ready, (system.statuses, system.fleet.exited())
                    clients = system.clients()
                    webhook_token = Path(webhook_token_file(dev)).read_text().strip()
                    yield Loop(
                        system,
                        dev,
                        state_dir,
                        clients,
                        issuer,
                        slack,
                        pagerduty,
                        webhooks,
                        [webhook_token, *credentials.values()],
                    )
                    await clients.close()
        finally:
            issuer.stop()
            await asyncio.to_thread(stack.down, lambda line: None)


def _slack_kind(blocks: list[dict[str, Any]]) -> str:
    """The event kind a Slack message tells of, by its header (the header itself when it is
    none of SLACK_HEADLINES')."""
    headline = headline_of(blocks)
    for kind, start in SLACK_HEADLINES.items():
        if headline.startswith(start):
            return kind
    return headline


def _slack_posts(loop: Loop, incident_id: str) -> list[dict[str, Any]]:
    """Every chat.postMessage of `incident_id`'s events (its id is in each message's
    context block), in the order they came."""
    return [
        call
        for call in loop.slack.calls("chat.postMessage")
        if incident_id in json.dumps(call.get("blocks", []))
    ]


def _webhook_deliveries(loop: Loop, incident_id: str) -> list[dict[str, Any]]:
    """Every verified webhook request of `incident_id`'s events, retries included, in the
    order they came."""
    events = loop.webhooks.events
    return [
        events[event_id]
        for event_id in list(loop.webhooks.deliveries)
        if events[event_id]["incident_id"] == incident_id
    ]


def _pages(loop: Loop, dedup_key: str) -> list[str]:
    """The event actions PagerDuty accepted for `dedup_key`, in order."""
    return [e["event_action"] for e in list(loop.pagerduty.events) if e["dedup_key"] == dedup_key]


async def _incident_for(loop: Loop, namespace: str) -> storage_pb2.GetIncidentResponse | None:
    storage = loop.storage()
    listed = await storage.ListIncidents(storage_pb2.ListIncidentsRequest(page_size=100))
    for incident in listed.incidents:
        if incident.subject.namespace == namespace:
            found: storage_pb2.GetIncidentResponse = await storage.GetIncident(
                storage_pb2.GetIncidentRequest(incident_id=incident.incident_id)
            )
            return found
    return None


async def test_a_bad_rollout_is_rolled_back_once_recorded_assessed_and_reported(loop: Loop) -> None:
    scenario = BadRollout(Path(loop.dev.detail("kubernetes", "kubeconfig")), "shop")
    mail_dir = Path(loop.dev.detail("smtp", "mail_dir"))
    mails_before = len(read_mailbox(mail_dir)) if mail_dir.exists() else 0
    try:
        await scenario.deploy()
        await scenario.break_it()
        # Fixed by Kubernaut alone: the good revision, every pod Ready.
        await eventually(scenario.healed, "the rollback", 240, interval=1)
        state = await scenario.state()
        assert state.image == GOOD_IMAGE and state.ready == state.replicas

        async def assessed() -> storage_pb2.GetIncidentResponse | None:
            found = await _incident_for(loop, "shop")
            return found if found is not None and found.assessments else None

        found = await eventually(assessed, "an assessment", 120, interval=1)

        # AlertManager re-sent the alert while it fired; it was counted, not re-acted on.
        async def resent() -> storage_pb2.GetIncidentResponse | None:
            again = await _incident_for(loop, "shop")
            return again if again is not None and again.incident.occurrences > 1 else None

        found = await eventually(resent, "a re-sent alert", 60, interval=1)
        # Every alert (one per crashing pod, re-sent, some after their pod was gone) is
        # the same problem: one incident on the Deployment.
        listed = await loop.storage().ListIncidents(storage_pb2.ListIncidentsRequest())
        assert [i.subject.namespace for i in listed.incidents].count("shop") == 1
        rollbacks = [a for a in found.actions if a.action == "rollback_deployment"]
        assert len(rollbacks) == 1, found.actions
        assert rollbacks[0].outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED
        assert GOOD_IMAGE in rollbacks[0].spec_after_json
        assert found.incident.subject.kind == "Deployment"
        assert found.assessments[0].action_id == rollbacks[0].action_id
        # It weighed the metrics Prometheus scraped from kube-state-metrics, before the
        # rollback and after it.
        evidence = list(found.assessments[0].evidence)
        for signal in ("alert", "ready", "restarts"):
            assert any(line.startswith(f"metrics: {signal}: ") for line in evidence), evidence
        assert any(line.startswith("metrics: score ") for line in evidence), evidence
        # The analysis acted on is the rules': shop is unguarded in the dev stack, so no
        # answer of the model could change the plan and the fix did not wait for it.
        acted_on = found.analyses[0].analysis
        assert acted_on.recommendation.action.HasField("rollback_deployment")
        assert acted_on.reasoning.guard == "rules first", acted_on.reasoning
        assert acted_on.reasoning.provider == "local"

        # The model's view follows on the record, within its time-out: either its answer
        # (validation and the guard's verdict) or, on this shared machine, why it had none.
        async def model_view() -> remediation_pb2.Analysis | None:
            again = await _incident_for(loop, "shop")
            assert again is not None
            views = [
                a.analysis for a in again.analyses if a.analysis.reasoning.asked_after_the_plan
            ]
            return views[0] if views else None

        view = await eventually(model_view, "the model's view", 120, interval=1)
        reasoning = view.reasoning
        assert reasoning.provider == "local" and reasoning.model == "smollm2-135m", reasoning
        assert "KubePodCrashLooping" in reasoning.prompt
        # Whatever it said, the plan it is weighed into is the one that ran.
        assert view.recommendation.action.HasField("rollback_deployment")
        if not reasoning.fallback_reason:
            assert reasoning.input_tokens > 0 and reasoning.answer, reasoning
            assert reasoning.validation == "valid"
            assert "no approval" in reasoning.guard or reasoning.guard == "agreed", reasoning

        async def subjects() -> list[str]:
            mails = read_mailbox(mail_dir)[mails_before:] if mail_dir.exists() else []
            return [
                " ".join(str(m["Subject"]).split())
                for m in mails
                if found.incident.incident_id in str(m)
            ]

        async def reported() -> list[str]:
            told = await subjects()
            return told if any("Remediated" in s for s in told) else []

        await eventually(reported, "the report's email", 60, interval=1)
        await asyncio.sleep(3)  # a second one of any kind would come now
        told = await subjects()
        # One email each: the incident opened, the fix planned, the fix's result. (Its
        # alert resolving after a remediation tells nobody: the report ended it.)
        assert [s.split(":")[0] for s in told] == [
            "[kubernaut] New incident",
            "[kubernaut] Fix planned",
            "[kubernaut] Remediated",
        ], told
        # The same events on the other channels routed on (each event's channels are
        # delivered together, so they are there by now or within moments).
        incident_id = found.incident.incident_id
        told_events = ["opened", "action_planned", "remediated"]

        async def told_everywhere() -> bool:
            return (
                "remediated" in [_slack_kind(p["blocks"]) for p in _slack_posts(loop, incident_id)]
                and "remediated" in [e["kind"] for e in _webhook_deliveries(loop, incident_id)]
                and "resolve" in _pages(loop, incident_id)
            )

        await eventually(told_everywhere, "Slack, PagerDuty and the webhook", 30, interval=1)
        # Slack: one thread. The opened event starts it, each later event is a reply in
        # order, and the parent is rewritten to show the latest state.
        posts = _slack_posts(loop, incident_id)
        assert [_slack_kind(p["blocks"]) for p in posts] == told_events, posts
        (parent,) = [m for m in loop.slack.top_level() if incident_id in json.dumps(m.blocks)]
        assert "thread_ts" not in posts[0] and posts[0]["channel"] == SLACK_CHANNEL
        assert all(p["thread_ts"] == parent.ts for p in posts[1:]), posts
        replies = loop.slack.thread(parent)
        assert [_slack_kind(m.blocks) for m in replies] == told_events[1:]
        assert _slack_kind(parent.blocks) == "remediated" and parent.edits == len(replies)
        # PagerDuty: paged when the incident opened, resolved once Kubernaut fixed it, both
        # under the incident's id.
        assert _pages(loop, incident_id) == ["trigger", "resolve"]
        page = loop.pagerduty.alerts[incident_id]
        assert page.status == "resolved" and page.triggers == 1
        assert page.event["payload"]["custom_details"]["event"] == "opened"
        # The webhook: each event once (a retry would repeat its id), every request signed
        # (the receiver verified each; it refused none), and the same events as Slack.
        deliveries = _webhook_deliveries(loop, incident_id)
        assert len({e["id"] for e in deliveries}) == len(deliveries), deliveries
        assert [e["kind"] for e in deliveries] == told_events
        assert {e["kind"] for e in deliveries} == {_slack_kind(p["blocks"]) for p in posts}
        assert loop.webhooks.refusals == []
        # One trace id on every hop of the incident.
        trace_id = found.incident.trace_id
        assert trace_id
        for service in (
            "gateway",
            "alert_processor",
            "ai_analysis",
            "context_api",
            "workflow",
            "executor",
            "storage",
            "notification",
        ):
            assert any(line.get("trace_id") == trace_id for line in loop.log_lines(service)), (
                service
            )
    finally:
        await scenario.close()


async def test_a_resolved_only_webhook_causes_no_action(loop: Loop) -> None:
    body = {
        "version": "4",
        "status": "resolved",
        "receiver": "kubernaut",
        "alerts": [
            {
                "status": "resolved",
                "labels": {"alertname": "KubePodCrashLooping", "namespace": "quiet", "pod": "x-1"},
                "annotations": {},
                "startsAt": "2026-11-26T10:00:00Z",
                "endsAt": "2026-11-26T10:05:00Z",
            }
        ],
    }
    token = Path(webhook_token_file(loop.dev)).read_text().strip()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        reply = await http.post(f"{loop.system.edge_url}/api/v1/alerts/alertmanager", json=body)
        # Without the token the edge refuses, before looking at the body.
        stranger = await http.post(
            f"{loop.system.edge_url}/api/v1/alerts/alertmanager",
            json=body,
            headers={"Authorization": "Bearer not-the-token"},
        )
    assert stranger.status_code == 401
    assert reply.status_code == 200
    assert reply.json()["outcomes"][0]["disposition"] == "ALERT_DISPOSITION_IGNORED_RESOLVED"
    assert await _incident_for(loop, "quiet") is None


async def test_a_namespace_not_opted_in_is_left_alone_and_the_incident_says_why(loop: Loop) -> None:
    scenario = BadRollout(
        Path(loop.dev.detail("kubernetes", "kubeconfig")), "untouched", opted_in=False
    )
    try:
        await scenario.deploy()
        await scenario.break_it()

        async def closed() -> storage_pb2.GetIncidentResponse | None:
            found = await _incident_for(loop, "untouched")
            return found if found is not None and found.incident.closed_at.ByteSize() else None

        found = await eventually(closed, "the incident to be closed", 180, interval=1)
        assert found.incident.status == storage_pb2.INCIDENT_STATUS_NO_ACTION
        assert "kubernaut.ai/managed" in found.incident.status_reason
        assert all(a.outcome == storage_pb2.ACTION_OUTCOME_REFUSED for a in found.actions)
        state = await scenario.state()
        assert state.simulate, "the deployment must not have been changed"
    finally:
        await scenario.close()


def _held_restart_subject(
    loop: Loop, namespace: str
) -> tuple[BadRollout, alert_pb2.ResourceRef, alert_pb2.Alert]:
    """The sample app in `namespace` (not yet deployed), the Deployment a held restart
    targets, and the alert the restart answers."""
    scenario = BadRollout(Path(loop.dev.detail("kubernetes", "kubeconfig")), namespace)
    target = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name=scenario.name)
    alert = alert_pb2.Alert(
        name="KubeDeploymentReplicasMismatch",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": namespace, "deployment": scenario.name},
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    alert.starts_at.GetCurrentTime()
    return scenario, target, alert


async def test_a_workflow_one_person_requests_acts_once_another_approves(
    loop: Loop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario, target, alert = _held_restart_subject(loop, "approvals")
    bob_token = loop.issuer.write_token(tmp_path / "bob.token", BOB)
    alice_token = loop.issuer.write_token(tmp_path / "alice.token", ALICE, groups=["sre-approvers"])
    loop.secrets += [bob_token.read_text().strip(), alice_token.read_text().strip()]
    bob = CliIdentity(token_file=bob_token).clients(loop.system.settings)
    alice = CliIdentity(token_file=alice_token).clients(loop.system.settings)
    try:
        await scenario.deploy()
        # Bob asks for a restart he is unsure of: it waits for a person.
        _, created = await restart_workflow(
            loop.storage(), bob.stub(WorkflowServiceStub), alert, target, confidence=0.2
        )
        assert created.requested_by == f"person:{BOB}"
        workflows = loop.clients.stub(WorkflowServiceStub)

        async def in_state(*states: int) -> workflow_pb2.Workflow | None:
            got = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=created.workflow_id)
            )
            return got.workflow if got.workflow.state in states else None

        await eventually(
            lambda: in_state(workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL), "waiting", 60
        )
        # Nothing acted while it waited.
        waiting = await _incident_for(loop, "approvals")
        assert waiting is not None and not waiting.actions

        # Bob may not approve his own request, even as an operator.
        assert await decide_workflow(bob, created.workflow_id, "approve", "", "") == 1
        refused = capsys.readouterr().err
        assert "PERMISSION_DENIED" in refused and f"{BOB} requested" in refused
        # Alice may not pass for Bob, nor for anyone: `--by` must be who she is.
        assert await decide_workflow(alice, created.workflow_id, "approve", BOB, "") == 1
        assert "PERMISSION_DENIED" in capsys.readouterr().err
        decided = await decide_workflow(
            alice, created.workflow_id, "approve", ALICE, "restart is safe"
        )
        assert decided == 0
        assert f"approved by {ALICE}: restart is safe" in capsys.readouterr().out
        done = await eventually(
            lambda: in_state(
                workflow_pb2.WORKFLOW_STATE_SUCCEEDED,
                workflow_pb2.WORKFLOW_STATE_FAILED,
                workflow_pb2.WORKFLOW_STATE_ROLLED_BACK,
                workflow_pb2.WORKFLOW_STATE_REFUSED,
            ),
            "the approved workflow to end",
            180,
            interval=1,
        )
        assert done.state == workflow_pb2.WORKFLOW_STATE_SUCCEEDED, done.message
        found = await _incident_for(loop, "approvals")
        assert found is not None
        (restart,) = found.actions
        assert restart.action == "restart_deployment"
        assert restart.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED
        assert "kubectl.kubernetes.io/restartedAt" in restart.spec_after_json
        assert found.incident.status == storage_pb2.INCIDENT_STATUS_REMEDIATED
        assert (await scenario.state()).healthy
        assert [(a.approver, a.decision) for a in done.approvals] == [
            (f"person:{ALICE}", workflow_pb2.APPROVAL_DECISION_APPROVE)
        ]

        # The audit trail has who asked and who approved, and its chain holds ...
        assert await list_entries(loop.clients, principal=f"person:{BOB}") == 0
        assert "CreateWorkflow" in capsys.readouterr().out
        assert await list_entries(loop.clients, principal=f"person:{ALICE}") == 0
        approvals = [line for line in capsys.readouterr().out.splitlines() if "Decide" in line]
        # Refused as Bob's approver, refused as "Bob", then approved: each on the record.
        assert len(approvals) == 2 and "OK" in approvals[-1], approvals
        assert await verify_chain(loop.clients) == 0
        assert "chain intact" in capsys.readouterr().out
        # ... until someone edits a row behind Kubernaut's back: verify names it.
        connection = await asyncpg.connect(loop.dev.detail("postgres", "dsn"))
        try:
            row = await connection.fetchrow(
                "SELECT seq, principal FROM audit.entries WHERE principal = $1"
                " AND method = 'DecideApproval' ORDER BY seq LIMIT 1",
                f"person:{ALICE}",
            )
            assert row is not None
            seq, principal = row["seq"], row["principal"]
            edit = "UPDATE audit.entries SET principal = $2 WHERE seq = $1"
            async with connection.transaction():
                # The trail refuses edits even to its owner; a superuser lifts that.
                await connection.execute("SET LOCAL session_replication_role = replica")
                await connection.execute(edit, seq, f"person:{BOB}")
            assert await verify_chain(loop.clients) == 1
            assert f"seq {seq}" in capsys.readouterr().out
            async with connection.transaction():
                await connection.execute("SET LOCAL session_replication_role = replica")
                await connection.execute(edit, seq, principal)
            assert await verify_chain(loop.clients) == 0
        finally:
            await connection.close()
    finally:
        await bob.close()
        await alice.close()
        await scenario.close()


async def test_a_click_in_slack_lets_a_held_workflow_act_as_the_clicker(
    loop: Loop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario, target, alert = _held_restart_subject(loop, "chat-approvals")
    bob_token = loop.issuer.write_token(tmp_path / "bob.token", BOB)
    loop.secrets.append(bob_token.read_text().strip())
    bob = CliIdentity(token_file=bob_token).clients(loop.system.settings)
    workflows = loop.clients.stub(WorkflowServiceStub)
    slack_url = f"{loop.system.edge_url}/api/v1/approvals/slack"
    try:
        await scenario.deploy()
        # Bob asks for a restart he is unsure of: it waits for a person.
        incident_id, created = await restart_workflow(
            loop.storage(), bob.stub(WorkflowServiceStub), alert, target, confidence=0.2
        )

        async def workflow() -> workflow_pb2.Workflow:
            got: workflow_pb2.GetWorkflowResponse = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=created.workflow_id)
            )
            return got.workflow

        async def waiting() -> workflow_pb2.Workflow | None:
            got = await workflow()
            return got if got.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL else None

        await eventually(waiting, "waiting", 60)

        # The approval request reached Slack with its buttons, for this workflow.
        async def approve_button() -> dict[str, Any] | None:
            for post in _slack_posts(loop, incident_id):
                if _slack_kind(post["blocks"]) == "approval_needed":
                    buttons = buttons_of(post["blocks"])
                    approve = [b for b in buttons if b["action_id"] == SLACK_APPROVE_ACTION_ID]
                    return approve[0] if approve else None
            return None

        button = await eventually(approve_button, "the approval request in Slack", 60)
        assert button["value"] == created.workflow_id

        async with httpx.AsyncClient(timeout=30) as http:
            # A click signed with another secret is refused before anything is decided.
            forged_body, forged_headers = loop.slack.click(
                "not-the-apps-signing-secret",
                button["action_id"],
                button["value"],
                "U0MALL0RY",
                username="mallory",
            )
            forged = await http.post(slack_url, content=forged_body, headers=forged_headers)
            assert forged.status_code == 401
            still = await workflow()
            assert still.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
            assert not still.approvals
            # Carol clicks Approve in Slack.
            body, headers = loop.slack.click(
                SLACK_SIGNING_SECRET, button["action_id"], button["value"], CAROL, username="carol"
            )
            clicked = await http.post(slack_url, content=body, headers=headers)
        assert clicked.status_code == 200, clicked.text

        async def ended() -> workflow_pb2.Workflow | None:
            got = await workflow()
            ends = (
                workflow_pb2.WORKFLOW_STATE_SUCCEEDED,
                workflow_pb2.WORKFLOW_STATE_FAILED,
                workflow_pb2.WORKFLOW_STATE_ROLLED_BACK,
                workflow_pb2.WORKFLOW_STATE_REFUSED,
            )
            return got if got.state in ends else None

        done = await eventually(ended, "the approved workflow to end", 180, interval=1)
        assert done.state == workflow_pb2.WORKFLOW_STATE_SUCCEEDED, done.message
        # The restart happened on the cluster.
        found = await _incident_for(loop, "chat-approvals")
        assert found is not None
        (restart,) = found.actions
        assert restart.action == "restart_deployment"
        assert restart.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED
        assert "kubectl.kubernetes.io/restartedAt" in restart.spec_after_json
        assert (await scenario.state()).healthy
        # The clicker is the approver, on the workflow and in its approval step.
        assert [(a.approver, a.decision) for a in done.approvals] == [
            (f"person:slack:{CAROL}", workflow_pb2.APPROVAL_DECISION_APPROVE)
        ]
        assert "clicked in Slack by carol" in done.approvals[0].reason
        (step,) = [s for s in done.steps if s.kind == workflow_pb2.STEP_KIND_APPROVAL]
        assert step.state == workflow_pb2.STEP_STATE_DONE
        assert step.message.startswith(f"approved by slack:{CAROL}"), step.message

        # Carol was told, in Slack, what came of her click.
        async def answered() -> list[dict[str, Any]]:
            return loop.slack.answers()

        (answer,) = await eventually(answered, "the answer to the clicker", 30)
        assert answer["response_type"] == "ephemeral"
        assert answer["text"].startswith(f"Approved as slack:{CAROL}"), answer

        # The audit trail names her and the edge that spoke for her.
        capsys.readouterr()
        via_slack = f"person:slack:{CAROL} via {EDGE_ACCOUNT}"
        assert await list_entries(loop.clients, principal=via_slack, method="DecideApproval") == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if "DecideApproval" in line]
        assert len(rows) == 1, rows
        assert via_slack in rows[0] and incident_id in rows[0] and "OK" in rows[0], rows
    finally:
        await bob.close()
        await scenario.close()


def _sign_in(browser: Browser, console: str, email: str) -> None:
    """Open the console, get sent to the issuer, pick `email` there, land back signed in."""
    browser.open(console)
    person = f"//button[@class='person' and starts-with(normalize-space(.), '{email}')]"
    browser.driver.find_element(By.XPATH, person).click()
    browser.until(
        lambda: browser.url.startswith(console) and browser.all("#signed-in-as"),
        f"signed in as {email}",
        30,
        reload=False,
    )
    assert browser.text("#signed-in-as") == email


def _follow_the_rollback_as_a_viewer(
    browser: Browser, console: str, shop_id: str, held_id: str
) -> None:
    _sign_in(browser, console, VERA)
    link = f'a[href="/ui/incidents/{shop_id}"]'
    browser.until(lambda: browser.all(link), "the rollout's incident in the list", 60)
    browser.shot("1-incidents")
    browser.click(link)
    # The rollback's diff: the bad image out, the good one in.
    removed = browser.texts(".diff .del")
    added = browser.texts(".diff .add")
    assert any(BAD_IMAGE in line for line in removed), removed
    assert any(GOOD_IMAGE in line for line in added), added
    timeline = browser.text("#timeline")
    assert "KubePodCrashLooping fired" in timeline and "incident opened" in timeline, timeline
    # The analysis, and the model's part in it (its answer or why the rules went alone).
    analyses = browser.text("body")
    assert ("smollm2-135m" in analyses and "The guard" in analyses) or "Rules decided alone" in (
        analyses
    ), analyses
    browser.shot("2-incident-rolled-back")
    # A viewer sees the held plan but is offered no Approve.
    browser.click("#nav-approvals")
    browser.until(lambda: browser.all(f"#held-{held_id}"), "the held plan", 30)
    assert not browser.all(f"#approve-{held_id}")
    assert "needs the approver role" in browser.text(f"#held-{held_id}")
    browser.shot("3-approvals-as-viewer")
    browser.click("#nav-overview")
    assert browser.all("svg.chart")
    browser.shot("4-overview")


def _decide(browser: Browser, held_id: str, reason: str) -> str:
    """Approve the held plan on the approvals page; the page's notice or error."""
    browser.click("#nav-approvals")
    browser.until(lambda: browser.all(f"#approve-{held_id}"), "the Approve button", 30)
    browser.find(f"#reason-{held_id}").send_keys(reason)
    browser.click(f"#approve-{held_id}")
    return browser.text("main")


async def test_the_console_follows_an_incident_and_an_approver_decides_a_held_plan(
    loop: Loop, tmp_path: Path
) -> None:
    """In headless Chromium: a viewer follows the rollout's incident to its rollback diff
    and the model's analysis, and cannot approve; the operator who asked for a plan cannot
    approve it himself; an approver approves it, and sees it act on the cluster."""
    console = loop.system.console_url
    assert console.endswith("/ui"), console
    shots = artefacts_dir() / "console"

    async def rolled_back() -> storage_pb2.GetIncidentResponse | None:
        found = await _incident_for(loop, "shop")
        return found if found is not None and found.actions else None

    # The incident of the first test's bad rollout (this module's tests run in order).
    shop = await eventually(rolled_back, "the rollout's incident (run the module whole)", 120)
    scenario, target, alert = _held_restart_subject(loop, "console")
    bob_token = loop.issuer.write_token(tmp_path / "bob.token", BOB)
    loop.secrets.append(bob_token.read_text().strip())
    bob = CliIdentity(token_file=bob_token)
    workflows = loop.clients.stub(WorkflowServiceStub)
    bob_clients = bob.clients(loop.system.settings)
    try:
        await scenario.deploy()
        incident_id, created = await restart_workflow(
            loop.storage(), bob_clients.stub(WorkflowServiceStub), alert, target, confidence=0.2
        )

        async def state() -> int:
            got = await workflows.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=created.workflow_id)
            )
            return int(got.workflow.state)

        async def held() -> bool:
            return await state() == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL

        await eventually(held, "the plan to wait for approval", 60)
        held_id = created.workflow_id

        def as_viewer() -> None:
            with chromium(shots) as browser:
                _follow_the_rollback_as_a_viewer(
                    browser, console, shop.incident.incident_id, held_id
                )

        def as_requester() -> str:
            with chromium(shots) as browser:
                _sign_in(browser, console, BOB)
                said = _decide(browser, held_id, "my own plan")
                browser.shot("5-self-approval-refused")
                return said

        await asyncio.to_thread(as_viewer)
        refused = await asyncio.to_thread(as_requester)
        assert "Not allowed" in refused and f"{BOB} requested" in refused, refused
        assert await held(), "a refused self-approval changed the workflow"

        def as_approver() -> None:
            with chromium(shots) as browser:
                _sign_in(browser, console, ALICE)
                notice = _decide(browser, held_id, "restart is safe")
                assert f"You approved workflow {held_id}" in notice, notice
                browser.shot("6-approved")
                # The incident's page shows the plan act: its state, then the restart's diff.
                browser.open(f"{console}/incidents/{incident_id}")
                browser.until(
                    lambda: (
                        "succeeded" in browser.text("#workflow-state") and browser.all(".diff .add")
                    ),
                    "the approved restart acting",
                    180,
                )
                added = " ".join(browser.texts(".diff .add"))
                assert "kubectl.kubernetes.io/restartedAt" in added, added
                assert f"person:{ALICE}" in browser.text("main")
                browser.shot("7-incident-after-approval")

        await asyncio.to_thread(as_approver)
        assert await state() == workflow_pb2.WORKFLOW_STATE_SUCCEEDED
        assert (await scenario.state()).healthy
    finally:
        await bob_clients.close()
        await scenario.close()
    for page in ("1-incidents", "2-incident-rolled-back", "3-approvals-as-viewer", "6-approved"):
        assert (shots / f"{page}.png").stat().st_size > 10_000, page


async def test_no_log_line_of_the_run_holds_a_secret(loop: Loop) -> None:
    """Last in the module: every log line every process wrote while the tests above ran
    (the webhook token AlertManager presented on every alert, the people's ID tokens on
    every call they made) is free of them, whole or in part (a JWT's signature alone)."""
    # The AlertManager token, the four vendor credentials, and the people's tokens the
    # approval tests add.
    assert len(loop.secrets) >= 8, loop.secrets
    needles = set()
    for secret in loop.secrets:
        needles.add(secret)
        if secret.count(".") == 2:  # a JWT: its signature is the secret part
            needles.add(secret.rsplit(".", 1)[1])
    logs = sorted(loop.state_dir.rglob("*.log"))
    lines = 0
    for log in logs:
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            lines += 1
            for needle in needles:
                assert needle not in line, f"{log.name}:{number} holds a secret"
    assert lines > 1000, f"only {lines} log lines in {[str(p) for p in logs]}"

    # Nor does any row of any table in PostgreSQL: credentials live in files and Secrets.
    connection = await asyncpg.connect(loop.dev.detail("postgres", "dsn"))
    try:
        tables = await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            "   AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        rows = 0
        for table in tables:
            name = f'"{table["table_schema"]}"."{table["table_name"]}"'
            for row in await connection.fetch(f"SELECT t::text AS row FROM {name} t"):
                rows += 1
                for needle in needles:
                    assert needle not in row["row"], f"{name} holds a secret"
    finally:
        await connection.close()
    assert rows > 10, f"only {rows} rows in {len(tables)} tables"
