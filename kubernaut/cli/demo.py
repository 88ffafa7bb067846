"""`kubernaut demo` (the README's first command): Kubernaut's main job on embedded
defaults, live.

It brings up the dev stack (Kubernetes with KWOK nodes, PostgreSQL, Prometheus,
AlertManager, SMTP) and the ten services, deploys a sample app, breaks it with a rollout
whose pods crash-loop, and lets Prometheus and AlertManager raise KubePodCrashLooping for
Kubernaut to fix by rolling back. It prints the incident's timeline as it happens (the
workflow's steps live, from WatchWorkflow), then where to look next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from email.message import EmailMessage
from pathlib import Path

import grpc
from kubernaut.common.v1 import remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.tables import print_readiness
from kubernaut.devstack.monitoring import fetch_alerts
from kubernaut.devstack.oidc import sign_in_hint
from kubernaut.devstack.scenario import BAD_IMAGE, GOOD_IMAGE, BadRollout
from kubernaut.devstack.smtp import read_mailbox
from kubernaut.devstack.stack import DevStack
from kubernaut.devstack.system import System, Tuning, edge_webhook_url, running_system
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings

# Short enough to watch: the alerts' `for:` and the first assessments.
DEMO_ALERT_FOR = "10s"
DEMO_ASSESSMENTS = "10s,30s,30m"
DEMO_TIMEOUT = 300.0


class Timeline:
    """Prints each event once, with the time since the demo broke the app."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seen: set[str] = set()

    def __call__(self, key: str, what: str, detail: str = "") -> None:
        if key in self.seen:
            return
        self.seen.add(key)
        elapsed = time.monotonic() - self.started
        text = f"[{elapsed:6.1f}s] {what}"
        if detail:
            text += "\n" + "\n".join(f"          {line}" for line in detail.splitlines())
        print(text, flush=True)


async def _incident_of(
    storage: StorageServiceStub, namespace: str
) -> storage_pb2.GetIncidentResponse | None:
    listed = await storage.ListIncidents(storage_pb2.ListIncidentsRequest(page_size=50))
    for incident in listed.incidents:
        if incident.subject.namespace == namespace:
            found: storage_pb2.GetIncidentResponse = await storage.GetIncident(
                storage_pb2.GetIncidentRequest(incident_id=incident.incident_id)
            )
            return found
    return None


# The subjects of the emails sent while an incident is worked on (the templates opened.txt
# and action_planned.txt); the demo waits for the one after them.
_PROGRESS_SUBJECTS = ("[kubernaut] New incident:", "[kubernaut] Fix planned:")


def _mails(mail_dir: Path) -> list[EmailMessage]:
    return read_mailbox(mail_dir) if mail_dir.exists() else []


async def watch(
    system: System, scenario: BadRollout, mail_dir: Path, step: Timeline, timeout: float
) -> str | None:
    """Print the incident's timeline until it is fixed, assessed and reported; returns
    the incident id (None if there never was one)."""
    clients = system.clients()
    storage = clients.stub(StorageServiceStub)
    workflows = clients.stub(WorkflowServiceStub)
    mail_before = len(await asyncio.to_thread(_mails, mail_dir))
    incident_id: str | None = None
    # Follows the incident's workflow live once there is one (again, should its stream
    # fail: the timeline prints each step's state once either way).
    follower: asyncio.Task[None] | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            state = await scenario.state()
            if state.simulate and state.ready < state.replicas:
                step(
                    "crash",
                    f"pods crash-looping on {BAD_IMAGE}",
                    f"{state.ready}/{state.replicas} Ready",
                )
            for alert in await fetch_alerts(system.dev.url("prometheus")):
                if (
                    alert.name == "KubePodCrashLooping"
                    and alert.labels.get("namespace") == scenario.namespace
                ):
                    step(
                        f"prom-{alert.state}",
                        f"Prometheus: KubePodCrashLooping {alert.state}",
                        f"pod {alert.labels.get('pod')}",
                    )
            found = await _incident_of(storage, scenario.namespace)
            view_owed = False
            if found is not None:
                incident = found.incident
                incident_id = incident.incident_id
                step(
                    "incident",
                    "alert received from AlertManager: incident opened",
                    f"{incident.incident_id}: {incident.alert_name} on "
                    f"{incident.subject.kind} {incident.subject.namespace}/{incident.subject.name}",
                )
                if incident.occurrences > 1:
                    step(
                        "dup",
                        "AlertManager re-sent the alert: counted on the incident, not acted on",
                    )
                for recorded in found.analyses:
                    _show_model(recorded.analysis, step)
                reasonings = [recorded.analysis.reasoning for recorded in found.analyses]
                # A model asked after the plan answers within its time-out: show its view.
                view_owed = any(r.guard == "rules first" for r in reasonings) and not any(
                    r.asked_after_the_plan for r in reasonings
                )
                if await _show_workflow(workflows, incident, step) and _follow_again(follower):
                    follower = asyncio.create_task(
                        _follow_workflow(workflows, incident.incident_id, step)
                    )
                for action in found.actions:
                    outcome = storage_pb2.ActionOutcome.Name(action.outcome)
                    step(
                        f"action-{action.action_id}",
                        f"executor recorded {action.action}: {outcome}",
                        action.message,
                    )
                for assessment in found.assessments:
                    verdict = remediation_pb2.Verdict.Name(assessment.verdict)
                    delay = assessment.delay.ToTimedelta().total_seconds()
                    step(
                        f"assess-{assessment.assessment_id}",
                        f"effectiveness +{delay:g}s: {verdict}",
                        "\n".join(assessment.evidence),
                    )
                if incident.status == storage_pb2.INCIDENT_STATUS_NO_ACTION:
                    step("no-action", "no action taken", incident.status_reason)
            if state.healed:
                step(
                    "healed",
                    f"recovered: {state.ready}/{state.replicas} pods Ready on {GOOD_IMAGE}",
                )
            mails = (await asyncio.to_thread(_mails, mail_dir))[mail_before:]
            for mail in mails:
                step(
                    f"mail-{mail['Message-ID']}",
                    f"email sent to {mail['To']}",
                    str(mail["Subject"]),
                )
            # The report of what was done, not only the incident's opening and plan.
            reported = any(not str(m["Subject"]).startswith(_PROGRESS_SUBJECTS) for m in mails)
            done = (
                {"healed"} <= step.seen
                and any(k.startswith("assess-") for k in step.seen)
                and reported
                and not view_owed
            )
            if done or "no-action" in step.seen:
                break
            await asyncio.sleep(1)
    finally:
        if follower is not None:
            follower.cancel()
            # The demo goes on without its live steps should the stream have failed.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        await clients.close()
    return incident_id


def _show_model(analysis: remediation_pb2.Analysis, step: Timeline) -> None:
    """The model's part in the analysis, when one was asked."""
    reasoning = analysis.reasoning
    if not reasoning.provider:
        return
    key, when = (
        ("model-view", ", after the plan") if reasoning.asked_after_the_plan else ("model", "")
    )
    if reasoning.guard == "rules first":
        step(key, f"model {reasoning.provider}: asked after the plan", reasoning.fallback_reason)
    elif reasoning.fallback_reason:
        step(
            key,
            f"model {reasoning.provider}{when}: the rules decided without it",
            reasoning.fallback_reason,
        )
    else:
        step(
            key,
            f"model {reasoning.provider} ({reasoning.model}) answered in "
            f"{reasoning.latency_seconds:.1f}s{when}: guard {reasoning.guard}",
            reasoning.answer,
        )


async def _show_workflow(
    workflows: WorkflowServiceStub, incident: storage_pb2.Incident, step: Timeline
) -> bool:
    """What the analysis decided, once the incident has a workflow; whether it has one."""
    try:
        reply = await workflows.GetWorkflow(
            workflow_pb2.GetWorkflowRequest(incident_id=incident.incident_id)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return False
        raise
    plan = reply.workflow.plan
    step(
        "analysis",
        f"ai_analysis decided: {plan.action} (risk {remediation_pb2.RiskLevel.Name(plan.risk)})",
        plan.approval_reason,
    )
    return True


def _follow_again(follower: asyncio.Task[None] | None) -> bool:
    """Whether to (re)start following the workflow: never started, or its stream failed
    (not when it ended with the workflow, nor while it runs)."""
    if follower is None:
        return True
    if not follower.done():
        return False
    return follower.cancelled() or follower.exception() is not None


async def _follow_workflow(
    workflows: WorkflowServiceStub, incident_id: str, step: Timeline
) -> None:
    """The workflow's steps as they change (WatchWorkflow), each state of each attempt of
    a step once; returns when the workflow finished (the stream ends)."""
    request = workflow_pb2.WatchWorkflowRequest(incident_id=incident_id)
    async for response in workflows.WatchWorkflow(request):
        for event in response.events:
            run = event.step
            if run.state == workflow_pb2.STEP_STATE_PENDING:
                continue
            kind = workflow_pb2.StepKind.Name(run.kind).removeprefix("STEP_KIND_").lower()
            state = workflow_pb2.StepState.Name(run.state).removeprefix("STEP_STATE_").lower()
            step(
                f"step-{event.index}-{run.attempts}-{state}",
                f"workflow step {event.index + 1} {kind}: {state}",
                run.message,
            )


def _next_steps(system: System, incident_id: str | None, *, keep_running: bool) -> None:
    settings, info = system.settings, system.dev
    certs = settings.resolved_certs_dir
    storage_port = settings.grpc_port_of(ServiceName.STORAGE)
    print("\nwhere to look next:")
    if system.console_url:
        page = system.console_url + (f"/incidents/{incident_id}" if incident_id else "")
        print(f"  web console: {page}  ({sign_in_hint()})")
        if not keep_running:
            print("    (the demo stops when it ends: `make demo ARGS=--keep-running` keeps it up)")
    if incident_id:
        print(f"  .venv/bin/kubernaut incidents show {incident_id}")
        tls = f"-cacert {certs}/ca.crt -cert {certs}/operator.crt -key {certs}/operator.key"
        body = f'{{"incidentId":"{incident_id}"}}'
        print(
            f"  grpcurl {tls} -d '{body}' localhost:{storage_port} "
            "kubernaut.storage.v1.StorageService/GetIncident"
        )
    print(
        f"  logs: {settings.state_dir / 'logs'}/<service>.log (JSON, with trace_id and incident_id)"
    )
    print(
        f"  dev stack: .venv/bin/kubernaut dev-stack status   (Prometheus {info.url('prometheus')})"
    )


async def run_demo(*, keep_running: bool = False, model: bool = True) -> int:
    settings = RuntimeSettings()
    stack = DevStack(
        settings.state_dir,
        webhook_url=edge_webhook_url(),
        alert_for=DEMO_ALERT_FOR,
        group_interval="5s",
        repeat_interval="15s",
        model=model,
        tracing=True,
    )
    print(f"1/4  dev stack in {stack.root}", flush=True)
    info = await asyncio.to_thread(stack.up)
    print("2/4  the ten services and the HTTP edge", flush=True)
    tuning = Tuning(assessment_delays=DEMO_ASSESSMENTS)
    async with running_system(settings, info, tuning) as system:
        if not print_readiness(system):
            return 1
        namespace = f"shop-{int(time.time()) % 100000}"
        scenario = BadRollout(Path(info.detail("kubernetes", "kubeconfig")), namespace)
        try:
            print(f"3/4  sample app {namespace}/checkout on {GOOD_IMAGE}", flush=True)
            await scenario.deploy()
            print(f"4/4  bad rollout to {BAD_IMAGE}; Kubernaut takes it from here\n", flush=True)
            await scenario.break_it()
            step = Timeline()
            incident_id = await watch(
                system, scenario, Path(info.detail("smtp", "mail_dir")), step, DEMO_TIMEOUT
            )
        finally:
            await scenario.close()
        _next_steps(system, incident_id, keep_running=keep_running)
        fixed = "healed" in step.seen
        print("\nfixed." if fixed else "\nnot fixed within the demo's time; see the logs.")
        if keep_running:
            print(
                "everything keeps running; Ctrl-C stops Kubernaut (then: kubernaut dev-stack down)"
            )
            await asyncio.Event().wait()
    if not keep_running:
        await asyncio.to_thread(stack.down)
    return 0 if fixed else 1
