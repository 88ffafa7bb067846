"""`kubernaut demo`: the whole system on embedded defaults, one alert through it.

Starts PostgreSQL, a local SMTP sink, the ten services and the HTTP edge, then sends an
AlertManager webhook to the edge and shows, step by step, what each service did with
it: the analysis, the workflow plan, the email. Then a resolved alert, which must not
become work.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import time

import httpx
from google.protobuf.json_format import ParseDict
from kubernaut.common.v1 import remediation_pb2
from kubernaut.gateway.v1 import gateway_pb2
from kubernaut.notification.v1 import notification_pb2
from kubernaut.notification.v1.notification_pb2_grpc import NotificationServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from services.cli import print_readiness, running_stack
from services.devstack.smtp import MailSink
from services.runtime.clients import Clients
from services.runtime.settings import RuntimeSettings

RECIPIENT = "sre@example.com"


def sample_webhook(status: str) -> dict[str, object]:
    now = datetime.datetime.now(datetime.UTC).isoformat()
    labels = {
        "alertname": "KubeDeploymentRolloutStuck",
        "namespace": "shop",
        "deployment": "checkout",
        "severity": "warning",
        "cluster": "local",
    }
    return {
        "version": "4",
        "groupKey": '{}:{alertname="KubeDeploymentRolloutStuck"}',
        "status": status,
        "receiver": "kubernaut",
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {
                    "description": "Rollout of deployment shop/checkout is not progressing."
                },
                "startsAt": now,
                "endsAt": now if status == "resolved" else "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.local/graph",
                "fingerprint": "demo0001",
            }
        ],
    }


class Timeline:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, what: str, detail: str = "") -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.2f}s] {what}" + (f"\n          {detail}" if detail else ""), flush=True)


async def run_demo(*, keep_running: bool = False) -> int:
    settings = RuntimeSettings()
    mail = MailSink(settings.state_dir / "mail")
    mail.start()
    os.environ.update(
        {
            "KUBERNAUT_NOTIFICATION_SMTP_HOST": mail.host,
            "KUBERNAUT_NOTIFICATION_SMTP_PORT": str(mail.port),
            "KUBERNAUT_NOTIFICATION_EMAIL_TO": RECIPIENT,
        }
    )
    try:
        async with running_stack(settings) as stack:
            if not print_readiness(stack):
                return 1
            await _walk_through(stack.edge_url, settings, mail)
            print(f"\nlogs: {stack.fleet.log_dir}/<service>.log   mail: {mail.directory}")
            print("inspect with grpcurl: see README.md, 'Calling the services'")
            if keep_running:
                print("everything keeps running; Ctrl-C stops it", flush=True)
                await asyncio.Event().wait()
    finally:
        mail.stop()
    return 0


async def _post(
    client: httpx.AsyncClient, url: str, body: dict[str, object]
) -> gateway_pb2.AlertOutcome:
    """POST a webhook to the edge; returns the outcome of its one alert."""
    for _ in range(50):  # the edge may still be binding its port
        try:
            response = await client.post(url, json=body)
            break
        except httpx.ConnectError:
            await asyncio.sleep(0.2)
    else:
        raise RuntimeError(f"the HTTP edge at {url} did not answer")
    response.raise_for_status()
    return ParseDict(response.json()["outcomes"][0], gateway_pb2.AlertOutcome())


def _kind(step: workflow_pb2.WorkflowStep) -> str:
    return workflow_pb2.StepKind.Name(step.kind).removeprefix("STEP_KIND_").lower()


async def _walk_through(edge_url: str, settings: RuntimeSettings, mail: MailSink) -> None:
    step = Timeline()
    url = f"{edge_url}/api/v1/alerts/alertmanager"
    clients = Clients(settings)
    async with httpx.AsyncClient(timeout=30) as http:
        step("alert sent", f"POST {url}: KubeDeploymentRolloutStuck firing on shop/checkout")
        outcome = await _post(http, url, sample_webhook("firing"))
        disposition = remediation_pb2.AlertDisposition.Name(outcome.disposition)
        step(
            "taken by gateway, triaged by alert_processor",
            f"fingerprint {outcome.fingerprint}, {disposition}",
        )
        analysis = outcome.analysis
        step(
            "analysed by ai_analysis (rules, with knowledge from context_api)",
            f"{remediation_pb2.Decision.Name(analysis.decision)}: {'; '.join(analysis.reasons)}"
            f"\n          runbook {analysis.runbook_url or '-'}",
        )
        planned = await clients.stub(WorkflowServiceStub).PlanWorkflow(
            workflow_pb2.PlanWorkflowRequest(recommendation=analysis.recommendation)
        )
        plan = planned.plan
        steps = "\n          ".join(
            f"{i}. {_kind(s)}: {s.description}" for i, s in enumerate(plan.steps, 1)
        )
        step(
            f"planned by workflow against the executor's catalogue: {plan.action}",
            f"approval needed: {plan.requires_approval} ({plan.approval_reason})"
            f"\n          {steps}",
        )
        sent = await clients.stub(NotificationServiceStub).SendNotification(
            notification_pb2.SendNotificationRequest(
                subject=f"[kubernaut] {plan.action} planned for KubeDeploymentRolloutStuck",
                body=f"Analysis: {'; '.join(analysis.reasons)}\nPlan:\n{steps}\n",
                incident_id=outcome.fingerprint,
            )
        )
        received = await mail.wait_for(1, timeout=10)
        result = sent.results[0]
        step(
            "notified by notification over SMTP",
            f"{result.channel}: delivered={result.delivered}; "
            f"{len(received)} mail in {mail.directory}",
        )
        resolved = await _post(http, url, sample_webhook("resolved"))
        step(
            "resolved alert sent",
            f"{remediation_pb2.AlertDisposition.Name(resolved.disposition)}: {resolved.reason}",
        )
    await clients.close()
