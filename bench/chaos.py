"""The chaos run: incidents streamed through the whole loop on the local dev stack while
faults are injected at seeded random points (kubernaut/devstack/chaos.py), then the stored
record and the cluster are audited.

    .venv/bin/python -m bench.chaos [--minutes N] [--seed S] [--keep]

The stream: workloads (Deployments) rolled out to a crash-looping version, each followed by
AlertManager webhooks posted straight to the edge (KubePodCrashLooping on its crashing pod,
sometimes KubeDeploymentReplicasMismatch too, re-sent as AlertManager would, resolved later
or not); some in a namespace not opted in to Kubernaut; noise (Watchdog, InfoInhibitor, a
pod that does not exist). A webhook not answered 2xx is sent again, as AlertManager would.

The audit, once the stream ended and every fault healed (`audit`):
  - every alert the edge accepted is on the record (an incident of its workload, or a
    recorded drop), its duplicates counted, and the gateway's queue is empty;
  - no action ran twice (one executed action per workload; Deployment revisions);
  - every incident ended (NO_ACTION, REMEDIATED, FAILED, RESOLVED) or waits for a person;
  - every notification owed (a closed or waiting incident) is in the outbox, delivered
    (the mail is in the mailbox) or counted by kubernaut_notification_undelivered;
  - no workload is half-changed: the good version after a rollback that succeeded, the
    broken one (the snapshot restored) after one that failed or was undone, or untouched.

The seed is printed first; KUBERNAUT_CHAOS_SEED (or --seed) replays a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import httpx
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from bench.storm import environment
from kubernaut.devstack.chaos import (
    Fault,
    Injector,
    ProxyMesh,
    plan_faults,
)
from kubernaut.devstack.kube import default_bin_dir
from kubernaut.devstack.processes import free_port, free_port_base
from kubernaut.devstack.scenario import BAD_IMAGE, GOOD_IMAGE
from kubernaut.devstack.smtp import read_mailbox
from kubernaut.devstack.stack import DevStack, StackInfo
from kubernaut.devstack.stages import SIMULATE_ANNOTATION, PodSimulation
from kubernaut.devstack.system import (
    Tuning,
    running_system,
    service_env,
    webhook_token_file,
)
from kubernaut.edge.app import ALERTMANAGER_PATH
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.kube import MANAGED_LABEL, KubeConnection
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import KubeSettings, RuntimeSettings
from kubernaut.services.notification.channels import INCIDENT_HEADER

SEED_ENV = "KUBERNAUT_CHAOS_SEED"
MANAGED_NS = "chaos-managed"
UNMANAGED_NS = "chaos-unmanaged"
NAMESPACES = (MANAGED_NS, UNMANAGED_NS)
REVISION = "deployment.kubernetes.io/revision"

FINAL = {
    storage_pb2.INCIDENT_STATUS_NO_ACTION,
    storage_pb2.INCIDENT_STATUS_REMEDIATED,
    storage_pb2.INCIDENT_STATUS_FAILED,
    storage_pb2.INCIDENT_STATUS_RESOLVED,
}
EXECUTED = {
    storage_pb2.ACTION_OUTCOME_SUCCEEDED,
    storage_pb2.ACTION_OUTCOME_FAILED,
    storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
}
# Kubernaut's settings for the run: short enough that a run of minutes sees each path
# finish (the defaults are tuned for production), and no storm grouping (the storm has a
# test of its own; here each workload's alerts must reach their own incident).
RUN_ENV = {
    "KUBERNAUT_GATEWAY_STORM_THRESHOLD": "100000",
    "KUBERNAUT_NOTIFICATION_REDELIVERY_INTERVAL_SECONDS": "2",
    "KUBERNAUT_NOTIFICATION_REDELIVERY_FIRST_BACKOFF_SECONDS": "2",
    "KUBERNAUT_NOTIFICATION_REDELIVERY_MAX_BACKOFF_SECONDS": "10",
    "KUBERNAUT_NOTIFICATION_REDELIVERY_STALE_PENDING_SECONDS": "30",
    "KUBERNAUT_GATEWAY_FORWARD_MAX_BACKOFF_SECONDS": "5",
}

T = TypeVar("T")
Say = Callable[[str], None]


def seed_from_env(default: int | None = None) -> int:
    text = os.environ.get(SEED_ENV, "")
    if text.strip():
        return int(text)
    return default if default is not None else random.SystemRandom().randrange(1, 10**6)


async def retrying(op: Callable[[], Awaitable[T]], what: str, timeout: float = 90.0) -> T:
    """`op` until it works: the API server or the edge may be down for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await op()
        except (TimeoutError, ApiException, OSError, httpx.HTTPError) as error:
            if isinstance(error, ApiException) and error.status in (400, 403, 404, 409, 422):
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: still failing after {timeout:.0f}s: {error}") from None
            await asyncio.sleep(1.0)


# -- the stream --------------------------------------------------------------------------------


@dataclass
class Sent:
    """One alert as posted and what the edge answered for it."""

    alert: str
    namespace: str
    # The Deployment it is about ('' for noise that names none that exists).
    workload: str
    labels: dict[str, str]
    firing: bool
    disposition: str
    fingerprint: str
    # What it must become: "incident" (of its workload) or "drop".
    expect: str


@dataclass
class Workload:
    namespace: str
    name: str
    managed: bool
    broken: bool = False


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Stream:
    edge_url: str
    token: str
    kubeconfig: Path
    seed: int
    say: Say = print
    # Seconds from an episode's last firing webhook to its resolve (when it gets one).
    resolve_after: tuple[float, float] = (10.0, 30.0)
    sent: list[Sent] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)
    # Webhooks answered other than 2xx (or not at all), each sent again.
    retried_posts: int = 0
    # Episodes the cluster itself did not play in time (a Deployment not Ready, no pod
    # crashing yet, after an API server outage): no alert was sent for them.
    skipped: list[str] = field(default_factory=list)
    episode_errors: list[str] = field(default_factory=list)
    _connection: KubeConnection | None = None
    _http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Stream:
        self._connection = KubeConnection(KubeSettings(kubeconfig=str(self.kubeconfig)))
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self.token}"}, timeout=15.0
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._connection is not None:
            await self._connection.close()

    async def _api(self) -> client.ApiClient:
        assert self._connection is not None
        return await self._connection.api()

    async def prepare(self) -> None:
        core = client.CoreV1Api(await self._api())
        for namespace in NAMESPACES:
            labels = {MANAGED_LABEL: "true"} if namespace == MANAGED_NS else {}
            body: Any = {"metadata": {"name": namespace, "labels": labels}}
            try:
                await core.create_namespace(body)
            except ApiException as error:
                if error.status != 409:
                    raise

    # -- webhooks --

    async def post(self, alerts: list[dict[str, Any]], meta: list[Sent]) -> None:
        """One AlertManager webhook; sent again until answered 2xx (as AlertManager does)."""
        assert self._http is not None
        firing = any(a["status"] == "firing" for a in alerts)
        body: dict[str, Any] = {
            "version": "4",
            "status": "firing" if firing else "resolved",
            "receiver": "kubernaut",
            "groupLabels": {},
            "commonLabels": {},
            "alerts": alerts,
        }
        http = self._http
        deadline = time.monotonic() + 180
        while True:
            try:
                reply = await http.post(self.edge_url + ALERTMANAGER_PATH, json=body)
                if 200 <= reply.status_code < 300:
                    break
                if reply.status_code == 400:
                    raise RuntimeError(f"the edge refused a webhook: {reply.text}")
            except httpx.HTTPError:
                pass
            self.retried_posts += 1
            if time.monotonic() > deadline:
                raise TimeoutError("a webhook was not accepted within 180 s")
            await asyncio.sleep(1.0)
        outcomes = reply.json().get("outcomes", [])
        for entry, outcome in zip(meta, outcomes, strict=True):
            entry.disposition = outcome.get("disposition", "")
            entry.fingerprint = outcome.get("fingerprint", "")
            self.sent.append(entry)

    def _alert(
        self,
        name: str,
        namespace: str,
        workload: str,
        labels: dict[str, str],
        starts: datetime,
        *,
        firing: bool = True,
        expect: str = "incident",
    ) -> tuple[dict[str, Any], Sent]:
        full = {"alertname": name, **labels}
        alert: dict[str, Any] = {
            "status": "firing" if firing else "resolved",
            "labels": full,
            "annotations": {"summary": f"chaos run {self.seed}: {name}"},
            "startsAt": _iso(starts),
            "endsAt": "0001-01-01T00:00:00Z" if firing else _iso(datetime.now(UTC)),
        }
        return alert, Sent(name, namespace, workload, full, firing, "", "", expect)

    # -- episodes --

    async def episode(self, index: int) -> None:
        rng = random.Random(self.seed * 100_003 + index)
        roll = rng.random()
        try:
            if roll < 0.15:
                await self._noise(index, rng)
            else:
                await self._crash_loop(index, rng, managed=roll >= 0.3)
        except Exception as error:  # the stream goes on; the audit reports it
            self.episode_errors.append(f"episode {index}: {type(error).__name__}: {error}")

    async def _noise(self, index: int, rng: random.Random) -> None:
        now = datetime.now(UTC) - timedelta(seconds=5)
        alerts = [
            self._alert(
                rng.choice(["Watchdog", "InfoInhibitor"]),
                "",
                "",
                {"severity": "none", "chaos_episode": str(index)},
                now,
                expect="drop",
            ),
            self._alert(
                "KubePodCrashLooping",
                MANAGED_NS,
                "",
                {
                    "namespace": MANAGED_NS,
                    "pod": f"ghost-{index}-6b7c9d-x2x4q",
                    "container": "app",
                    "severity": "warning",
                },
                now,
                expect="drop",
            ),
        ]
        await self.post([a for a, _ in alerts], [s for _, s in alerts])

    def _deployment(self, name: str) -> dict[str, Any]:
        labels = {"app": name}
        return {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": GOOD_IMAGE,
                                "resources": {"limits": {"memory": "256Mi"}},
                            }
                        ]
                    },
                },
            },
        }

    async def _crash_loop(self, index: int, rng: random.Random, *, managed: bool) -> None:
        namespace = MANAGED_NS if managed else UNMANAGED_NS
        name = f"app-{index}"
        workload = Workload(namespace, name, managed)
        self.workloads.append(workload)

        async def apps() -> client.AppsV1Api:
            return client.AppsV1Api(await self._api())

        async def create() -> None:
            try:
                body: Any = self._deployment(name)
                await (await apps()).create_namespaced_deployment(namespace, body)
            except ApiException as error:
                if error.status != 409:  # created by an attempt whose answer was lost
                    raise

        await retrying(create, f"creating {namespace}/{name}")

        async def ready() -> bool:
            got = await (await apps()).read_namespaced_deployment(name, namespace)
            return bool(got.status.ready_replicas)

        try:
            await self._until(ready, f"{namespace}/{name} Ready", 180)
        except TimeoutError as error:
            self.skipped.append(str(error))
            return
        patch = {
            "spec": {
                "template": {
                    "metadata": {
                        "annotations": {SIMULATE_ANNOTATION: PodSimulation.CRASHLOOP.value}
                    },
                    "spec": {"containers": [{"name": "app", "image": BAD_IMAGE}]},
                }
            }
        }

        async def do_break() -> None:
            await (await apps()).patch_namespaced_deployment(name, namespace, patch)

        await retrying(do_break, f"breaking {namespace}/{name}")
        workload.broken = True
        started = datetime.now(UTC)

        async def crashing_pod() -> str | None:
            pods = await client.CoreV1Api(await self._api()).list_namespaced_pod(
                namespace, label_selector=f"app={name}"
            )
            for pod in pods.items:
                annotations = pod.metadata.annotations or {}
                statuses = pod.status.container_statuses or []
                if annotations.get(SIMULATE_ANNOTATION) and any(
                    (s.restart_count or 0) > 0 for s in statuses
                ):
                    return str(pod.metadata.name)
            return None

        try:
            pod = await self._until(crashing_pod, f"a crashing pod of {namespace}/{name}", 180)
        except TimeoutError as error:
            self.skipped.append(str(error))
            return
        firing = [
            self._alert(
                "KubePodCrashLooping",
                namespace,
                name,
                {"namespace": namespace, "pod": pod, "container": "app", "severity": "warning"},
                started,
            )
        ]
        if rng.random() < 0.3:
            firing.append(
                self._alert(
                    "KubeDeploymentReplicasMismatch",
                    namespace,
                    name,
                    {"namespace": namespace, "deployment": name, "severity": "warning"},
                    started,
                )
            )
        # AlertManager's first notification, then its repeats.
        for _ in range(1 + rng.randint(0, 3)):
            alerts = [self._alert(s.alert, namespace, name, _labels(s), started) for _, s in firing]
            await self.post([a for a, _ in alerts], [s for _, s in alerts])
            await asyncio.sleep(rng.uniform(1.0, 4.0))
        if rng.random() < 0.6:
            await asyncio.sleep(rng.uniform(*self.resolve_after))
            resolved = [
                self._alert(s.alert, namespace, name, _labels(s), started, firing=False)
                for _, s in firing
            ]
            await self.post([a for a, _ in resolved], [s for _, s in resolved])

    async def _until(
        self, check: Callable[[], Awaitable[T | None]], what: str, timeout: float
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(ApiException, OSError, asyncio.TimeoutError):
                got = await check()
                if got:
                    return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s")
            await asyncio.sleep(0.5)


def _subjects(sent: Sent) -> list[str]:
    """The names an incident of `sent` may be about: its workload, or the object its labels
    name when that could not be resolved to one (a pod that does not exist)."""
    names = [sent.workload] if sent.workload else []
    return names + [sent.labels[k] for k in ("pod", "deployment") if sent.labels.get(k)]


def _labels(sent: Sent) -> dict[str, str]:
    return {k: v for k, v in sent.labels.items() if k != "alertname"}


# -- the record and the audit ------------------------------------------------------------------


@dataclass
class Record:
    """What the stored record and the cluster say after the run."""

    incidents: list[storage_pb2.GetIncidentResponse]
    workflows: dict[str, workflow_pb2.Workflow]
    dropped: list[storage_pb2.DroppedAlert]
    queue_rows: int
    queue_failed: int
    outbox: list[dict[str, Any]]
    mail_subjects: Counter[tuple[str, str]]
    undelivered_gauge: float | None
    deployments: dict[tuple[str, str], dict[str, Any]]


async def _pages(fetch: Callable[[str], Awaitable[tuple[list[T], str]]]) -> list[T]:
    out: list[T] = []
    token = ""
    while True:
        items, token = await fetch(token)
        out.extend(items)
        if not token:
            return out


async def read_record(
    clients: Clients, dsn: str, mail_dir: Path, metrics_url: str, kubeconfig: Path
) -> Record:
    storage = clients.stub(StorageServiceStub)
    workflows_stub = clients.stub(WorkflowServiceStub)

    async def incidents_page(token: str) -> tuple[list[storage_pb2.Incident], str]:
        got = await storage.ListIncidents(
            storage_pb2.ListIncidentsRequest(page_size=1000, page_token=token)
        )
        return list(got.incidents), got.next_page_token

    async def dropped_page(token: str) -> tuple[list[storage_pb2.DroppedAlert], str]:
        got = await storage.ListDroppedAlerts(
            storage_pb2.ListDroppedAlertsRequest(page_size=1000, page_token=token)
        )
        return list(got.alerts), got.next_page_token

    listed = [
        i
        for i in await _pages(incidents_page)
        if i.subject.namespace in NAMESPACES or i.alert_name in ("Watchdog", "InfoInhibitor")
    ]
    incidents = []
    workflows: dict[str, workflow_pb2.Workflow] = {}
    for incident in listed:
        incidents.append(
            await storage.GetIncident(
                storage_pb2.GetIncidentRequest(incident_id=incident.incident_id)
            )
        )
        try:
            got = await workflows_stub.GetWorkflow(
                workflow_pb2.GetWorkflowRequest(incident_id=incident.incident_id)
            )
            workflows[incident.incident_id] = got.workflow
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
    dropped = await _pages(dropped_page)
    conn = await asyncpg.connect(dsn)
    try:
        queue = await conn.fetchrow(
            "SELECT count(*) AS n, count(failed_at) AS failed FROM gateway.queue"
        )
        outbox = [
            dict(r)
            for r in await conn.fetch(
                "SELECT idempotency_key, incident_id, event_kind, subject, status, attempts,"
                " last_error FROM notification.outbox"
            )
        ]
    finally:
        await conn.close()
    subjects = await asyncio.to_thread(_mail_subjects, mail_dir)
    gauge: float | None = None
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(metrics_url)).text
        for line in text.splitlines():
            if line.startswith("kubernaut_notification_undelivered "):
                gauge = float(line.split()[1])
    deployments: dict[tuple[str, str], dict[str, Any]] = {}
    connection = KubeConnection(KubeSettings(kubeconfig=str(kubeconfig)))
    try:
        apps = client.AppsV1Api(await connection.api())
        for namespace in NAMESPACES:
            listed_d = await apps.list_namespaced_deployment(namespace)
            for d in listed_d.items:
                template = d.spec.template
                deployments[(namespace, d.metadata.name)] = {
                    "image": template.spec.containers[0].image,
                    "simulate": (template.metadata.annotations or {}).get(SIMULATE_ANNOTATION, ""),
                    "revision": int((d.metadata.annotations or {}).get(REVISION, "0")),
                }
    finally:
        await connection.close()
    return Record(
        incidents,
        workflows,
        dropped,
        int(queue["n"]) if queue else 0,
        int(queue["failed"]) if queue else 0,
        outbox,
        subjects,
        gauge,
        deployments,
    )


def _one_line(text: str) -> str:
    # The sink keeps mail as sent: a long subject comes folded.
    return " ".join(text.split())


def _mail_subjects(mail_dir: Path) -> Counter[tuple[str, str]]:
    """(incident id, subject) of every mail received, counted."""
    mails = read_mailbox(mail_dir) if mail_dir.exists() else []
    return Counter(
        (str(m.get(INCIDENT_HEADER, "")).strip(), _one_line(str(m["Subject"]))) for m in mails
    )


def _waiting(record: Record, incident: storage_pb2.Incident) -> bool:
    workflow = record.workflows.get(incident.incident_id)
    return workflow is not None and workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL


def unsettled(record: Record) -> list[str]:
    """What is still moving (the audit waits for none of it, up to a bound)."""
    moving = []
    if record.queue_rows - record.queue_failed:
        moving.append(f"{record.queue_rows} alerts still queued at the gateway")
    for found in record.incidents:
        incident = found.incident
        if incident.status not in FINAL and not _waiting(record, incident):
            moving.append(f"incident {incident.incident_id} is {_status(incident.status)}")
    pending = [r for r in record.outbox if r["status"] != "sent"]
    if pending:
        moving.append(f"{len(pending)} notifications not delivered yet")
    return moving


def _status(value: int) -> str:
    return storage_pb2.IncidentStatus.Name(value)  # type: ignore[arg-type]


def _outcome(value: int) -> str:
    return storage_pb2.ActionOutcome.Name(value)  # type: ignore[arg-type]


@dataclass
class Audit:
    problems: list[str]
    figures: dict[str, Any]


def audit(stream: Stream, record: Record) -> Audit:
    problems: list[str] = []
    problems += stream.episode_errors
    # 1. Every accepted alert is accounted for.
    accepted = [
        s for s in stream.sent if s.firing and s.disposition == "ALERT_DISPOSITION_ACCEPTED"
    ]
    counted = [
        s
        for s in stream.sent
        if s.firing
        and s.disposition in ("ALERT_DISPOSITION_ACCEPTED", "ALERT_DISPOSITION_DUPLICATE")
    ]
    odd = [s for s in stream.sent if not s.disposition]
    problems += [f"no outcome for an alert the edge took: {s.labels}" for s in odd]
    by_key: dict[tuple[str, str, str], list[storage_pb2.GetIncidentResponse]] = {}
    for found in record.incidents:
        incident = found.incident
        key = (incident.alert_name, incident.subject.namespace, incident.subject.name)
        by_key.setdefault(key, []).append(found)

    def dropped_for(sent: Sent) -> list[storage_pb2.DroppedAlert]:
        return [
            d
            for d in record.dropped
            if d.alert.name == sent.alert
            and all(d.alert.labels.get(k) == v for k, v in sent.labels.items() if k != "alertname")
        ]

    lost: list[Sent] = []
    for sent in accepted:
        if any(by_key.get((sent.alert, sent.namespace, name)) for name in _subjects(sent)):
            continue
        if not dropped_for(sent):
            lost.append(sent)
    problems += [f"lost: accepted but on no record: {s.labels}" for s in lost]
    uncounted = 0
    for key, incidents in by_key.items():
        arrived = [s for s in counted if (s.alert, s.namespace, s.workload) == key]
        on_record = sum(i.incident.occurrences for i in incidents)
        if on_record < len(arrived) - sum(len(dropped_for(s)) > 0 for s in arrived):
            uncounted += len(arrived) - on_record
            problems.append(
                f"{key}: {len(arrived)} firing alerts accepted, {on_record} counted on "
                f"its incidents"
            )
    if record.queue_rows:
        problems.append(
            f"the gateway's queue still holds {record.queue_rows} alerts "
            f"({record.queue_failed} refused for good)"
        )
    # 2. No action ran twice.
    doubled = 0
    action_ids: Counter[str] = Counter()
    executed: dict[tuple[str, str], list[storage_pb2.ActionRecord]] = {}
    for found in record.incidents:
        for action in found.actions:
            action_ids[action.action_id] += 1
            if action.outcome in EXECUTED:
                executed.setdefault((action.target.namespace, action.target.name), []).append(
                    action
                )
    for action_id, n in action_ids.items():
        if n > 1:
            doubled += n - 1
            problems.append(f"action {action_id} is on the record {n} times")
    for target, actions in executed.items():
        # One incident's runbook may take several steps on its workload (scale up, roll
        # back, scale back down); a second incident acting on it is the same fix twice.
        acting = {a.incident_id for a in actions}
        if len(acting) > 1:
            doubled += len(acting) - 1
            problems.append(
                f"{target}: {len(acting)} incidents acted on it: "
                + ", ".join(f"{a.action} {_outcome(a.outcome)}" for a in actions)
            )
        # ... and never the same change twice.
        repeats = Counter(
            (a.incident_id, a.action, a.params.SerializeToString(deterministic=True))
            for a in actions
        )
        for (incident_id, name, _), n in repeats.items():
            if n > 1:
                doubled += n - 1
                problems.append(f"{target}: incident {incident_id} ran {name} {n} times")
    for (namespace, name), state in record.deployments.items():
        # Created (1), broken (2); a change that stays adds one revision, a change undone
        # two (the undo brings the broken template back as the newest revision).
        changes = executed.get((namespace, name), [])
        allowed = 2 + sum(
            1 if a.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED else 2 for a in changes
        )
        if state["revision"] > allowed and changes:
            doubled += 1
            problems.append(
                f"{namespace}/{name} has revision {state['revision']} after "
                f"{len(changes)} actions (at most {allowed}): changed more than recorded"
            )
    # 3. Every incident ended or waits for a person.
    for found in record.incidents:
        incident = found.incident
        if incident.status not in FINAL and not _waiting(record, incident):
            workflow = record.workflows.get(incident.incident_id)
            flow = workflow_pb2.WorkflowState.Name(workflow.state) if workflow else "no workflow"
            problems.append(
                f"incident {incident.incident_id} ({incident.alert_name} on "
                f"{incident.subject.namespace}/{incident.subject.name}) is "
                f"{_status(incident.status)}, {flow}"
            )
    # 4. Every notification owed is delivered or counted undelivered.
    rows_by_incident: dict[str, list[dict[str, Any]]] = {}
    for row in record.outbox:
        rows_by_incident.setdefault(row["incident_id"], []).append(row)
    for found in record.incidents:
        incident = found.incident
        owed = incident.status in (
            storage_pb2.INCIDENT_STATUS_REMEDIATED,
            storage_pb2.INCIDENT_STATUS_FAILED,
            storage_pb2.INCIDENT_STATUS_NO_ACTION,
        ) or _waiting(record, incident)
        if owed and not rows_by_incident.get(incident.incident_id):
            problems.append(
                f"incident {incident.incident_id} is {_status(incident.status)} but nobody "
                "was told (no notification in the outbox)"
            )
    undelivered = [r for r in record.outbox if r["status"] != "sent"]
    mailed_twice = 0
    for row in record.outbox:
        mails = record.mail_subjects.get((row["incident_id"], _one_line(row["subject"])), 0)
        if row["status"] == "sent" and not mails:
            problems.append(f"notification {row['idempotency_key']} is sent but no mail has it")
        # At least once: a crash between the SMTP server's answer and the outbox's
        # update sends it again. Counted, not a failure.
        mailed_twice += max(0, mails - 1)
    if record.undelivered_gauge is None:
        problems.append("kubernaut_notification_undelivered could not be read")
    elif int(record.undelivered_gauge) != len(undelivered):
        problems.append(
            f"{len(undelivered)} notifications undelivered, the gauge says "
            f"{record.undelivered_gauge:.0f}"
        )
    # 5. No workload half-changed.
    unrecorded = 0
    for workload in stream.workloads:
        current = record.deployments.get((workload.namespace, workload.name))
        if current is None:
            problems.append(f"{workload.namespace}/{workload.name} is gone")
            continue
        good = current["image"] == GOOD_IMAGE and not current["simulate"]
        bad = current["image"] == BAD_IMAGE and bool(current["simulate"])
        where = f"{workload.namespace}/{workload.name}"
        if not (good or bad):
            problems.append(f"{where} is half-changed: {current}")
            continue
        actions = executed.get((workload.namespace, workload.name), [])
        succeeded = [a for a in actions if a.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED]
        if succeeded and not good:
            problems.append(f"{where}: an action succeeded but the workload is {current}")
        if actions and not succeeded and not bad:
            problems.append(f"{where}: the failed action was not undone: {current}")
        if not actions and workload.broken and not bad:
            unrecorded += 1
            problems.append(f"{where} changed with no action on the record: {current}")
        if not workload.managed and actions:
            problems.append(f"{where} is not opted in, yet actions ran on it")
    statuses = Counter(_status(f.incident.status) for f in record.incidents)
    outcomes = Counter(_outcome(a.outcome) for acts in executed.values() for a in acts)
    figures = {
        "webhook alerts posted": len(stream.sent),
        "alerts accepted": len(accepted),
        "duplicates counted": len(counted) - len(accepted),
        "resolves": sum(1 for s in stream.sent if not s.firing),
        "webhooks sent again": stream.retried_posts,
        "workloads": len(stream.workloads),
        "incidents": len(record.incidents),
        "incident statuses": dict(statuses),
        "waiting for a person": sum(1 for f in record.incidents if _waiting(record, f.incident)),
        "actions executed": dict(outcomes),
        "accepted alerts dropped (on the record)": sum(1 for s in accepted if dropped_for(s)),
        "notifications": len(record.outbox),
        "undelivered": len(undelivered),
        "mails sent twice": mailed_twice,
        "lost": len(lost),
        "doubled": doubled,
        "changed without a record": unrecorded,
        "episodes the cluster did not play in time": len(stream.skipped),
        "uncounted duplicates": uncounted,
    }
    return Audit(problems, figures)


# -- the run -----------------------------------------------------------------------------------


@dataclass
class ChaosReport:
    seed: int
    faults: list[Fault]
    injected: dict[str, int]
    recoveries: list[str]
    audit: Audit
    unsettled: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.audit.problems

    def lines(self) -> list[str]:
        out = [f"chaos run, seed {self.seed} (replay: {SEED_ENV}={self.seed})"]
        out.append(
            "faults injected: "
            + ", ".join(f"{kind} {n}" for kind, n in self.injected.items())
            + f" ({sum(self.injected.values())} in all)"
        )
        out += [f"  {line}" for line in self.recoveries]
        for name, value in self.audit.figures.items():
            out.append(f"{name}: {value}")
        if self.unsettled:
            out.append("still moving at the audit: " + "; ".join(self.unsettled))
        out.append(f"problems: {len(self.audit.problems)}")
        out += [f"  - {p}" for p in self.audit.problems]
        out.append(f"took {self.seconds:.0f}s")
        return out


@contextlib.asynccontextmanager
async def _stack(
    state_dir: Path, edge_port: int, bin_dir: Path, say: Say
) -> AsyncIterator[tuple[DevStack, StackInfo]]:
    stack = DevStack(
        state_dir,
        webhook_url=f"http://127.0.0.1:{edge_port}{ALERTMANAGER_PATH}",
        k8s_bin_dir=bin_dir,
    )
    try:
        dev = await asyncio.to_thread(stack.up, lambda line: say(f"dev stack: {line.strip()}"))
        yield stack, dev
    finally:
        await asyncio.to_thread(stack.down, lambda line: None)


async def run_chaos(
    seed: int,
    duration: float,
    state_dir: Path,
    *,
    episode_every: tuple[float, float] = (3.0, 7.0),
    fault_gap: tuple[float, float] = (4.0, 15.0),
    outage: tuple[float, float] = (5.0, 12.0),
    resolve_after: tuple[float, float] = (10.0, 30.0),
    settle_timeout: float = 150.0,
    say: Say = print,
) -> ChaosReport:
    """The whole run: dev stack, system, stream with faults, audit; everything stopped after."""
    began = time.monotonic()
    say(f"chaos run, seed {seed} (replay: {SEED_ENV}={seed}), {duration:.0f}s of faults")
    edge_port = free_port()
    bin_dir = default_bin_dir()  # before KUBERNAUT_STATE_DIR points elsewhere
    env: dict[str, str | None] = {
        "KUBERNAUT_STATE_DIR": str(state_dir),
        "KUBERNAUT_PORT_BASE": str(free_port_base()),
        "KUBERNAUT_HTTP_PORT": str(edge_port),
    }
    with environment(env):
        settings = RuntimeSettings()
        proxies = ProxyMesh.for_services(settings)
        proxies.start()
        try:
            async with _stack(state_dir, edge_port, bin_dir, say) as (stack, dev):
                tuning = Tuning(
                    assessment_delays="5s,10s,30m",
                    verify_timeout_seconds=30,
                    extra_env={**RUN_ENV, **proxies.addresses_env()},
                )
                _, per_service = service_env(dev, tuning)
                async with running_system(settings, dev, tuning) as system:
                    if not system.ready:
                        raise RuntimeError(
                            f"the system did not start: {system.statuses}, "
                            f"exited {system.fleet.exited()}"
                        )
                    say(f"system up after {time.monotonic() - began:.0f}s")
                    injector = Injector(
                        state_dir,
                        dev,
                        system.fleet,
                        settings,
                        per_service,
                        proxies,
                        nodes=stack.nodes,
                        k8s_bin_dir=bin_dir,
                        say=say,
                    )
                    try:
                        return await _drive(
                            seed,
                            duration,
                            state_dir,
                            dev,
                            system.edge_url,
                            settings,
                            injector,
                            episode_every,
                            fault_gap,
                            outage,
                            resolve_after,
                            settle_timeout,
                            began,
                            say,
                        )
                    finally:
                        injector.close()
        finally:
            proxies.stop()


async def _drive(
    seed: int,
    duration: float,
    state_dir: Path,
    dev: StackInfo,
    edge_url: str,
    settings: RuntimeSettings,
    injector: Injector,
    episode_every: tuple[float, float],
    fault_gap: tuple[float, float],
    outage: tuple[float, float],
    resolve_after: tuple[float, float],
    settle_timeout: float,
    began: float,
    say: Say,
) -> ChaosReport:
    kubeconfig = Path(dev.detail("kubernetes", "kubeconfig"))
    token = (await asyncio.to_thread(Path(webhook_token_file(dev)).read_text)).strip()
    faults = plan_faults(seed, duration, gap=fault_gap, outage=outage)
    say("faults planned: " + "; ".join(f"{f.at:.0f}s {f.describe()}" for f in faults))
    recoveries: list[str] = []
    async with Stream(edge_url, token, kubeconfig, seed, say, resolve_after) as stream:
        await retrying(stream.prepare, "the namespaces")
        start = time.monotonic()
        episodes: list[asyncio.Task[None]] = []

        async def feed() -> None:
            rng = random.Random(seed)
            index = 0
            while time.monotonic() - start < duration:
                episodes.append(asyncio.create_task(stream.episode(index)))
                index += 1
                await asyncio.sleep(rng.uniform(*episode_every))

        async def inject() -> None:
            for fault in faults:
                wait = fault.at - (time.monotonic() - start)
                if wait > 0:
                    await asyncio.sleep(wait)
                say(f"{time.monotonic() - start:5.0f}s fault: {fault.describe()}")
                try:
                    done = await injector.inject(fault)
                except Exception as error:
                    recoveries.append(f"{fault.describe()}: did not recover: {error}")
                    say(recoveries[-1])
                    continue
                line = (
                    f"{fault.describe()}: healed, every service SERVING "
                    f"{done.recovered_after:.1f}s later" + (f" ({done.note})" if done.note else "")
                )
                recoveries.append(line)
                say(f"{time.monotonic() - start:5.0f}s {line}")

        await asyncio.gather(feed(), inject())
        say(
            f"stream over after {time.monotonic() - start:.0f}s; finishing {len(episodes)} episodes"
        )
        await asyncio.gather(*episodes)
        clients = Clients(settings)
        try:
            metrics_url = (
                f"http://127.0.0.1:{settings.metrics_port_of(ServiceName.NOTIFICATION)}/metrics"
            )
            deadline = time.monotonic() + settle_timeout
            while True:
                record = await read_record(
                    clients,
                    dev.detail("postgres", "dsn"),
                    Path(dev.detail("smtp", "mail_dir")),
                    metrics_url,
                    kubeconfig,
                )
                moving = unsettled(record)
                if not moving or time.monotonic() > deadline:
                    break
                await asyncio.sleep(2.0)
            # The gauge is set by the redelivery sweep: one more sweep after the last change.
            await asyncio.sleep(3.0)
            record = await read_record(
                clients,
                dev.detail("postgres", "dsn"),
                Path(dev.detail("smtp", "mail_dir")),
                metrics_url,
                kubeconfig,
            )
            moving = unsettled(record)
        finally:
            await clients.close()
        result = audit(stream, record)
    if injector.fleet.exited():
        result.problems.append(f"services exited: {injector.fleet.exited()}")
    return ChaosReport(
        seed,
        faults,
        injector.counts(),
        recoveries,
        result,
        moving,
        time.monotonic() - began,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long faults go on")
    parser.add_argument("--seed", type=int, default=None, help=f"default: ${SEED_ENV} or random")
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a temporary one")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else seed_from_env()
    with contextlib.ExitStack() as stack:
        state_dir = args.state_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        report = asyncio.run(run_chaos(seed, args.minutes * 60, state_dir, settle_timeout=240.0))
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
