"""The gateway service with everything behind it: two replicas on one database forward
each alert once; a storm opens one incident listing its resources; a firing alert that
resolves closes its incident before anything acts; integrators are rate limited."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.gateway.v1 import gateway_pb2
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.devstack.smtp import MailSink
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.logs import incident_id_var
from kubernaut.runtime.names import EDGE_ACCOUNT, OPERATOR_ACCOUNT, ServiceName
from kubernaut.runtime.server import RunningService, start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.notification.channels import INCIDENT_HEADER
from tests.fixtures.kubernaut import InProcessStack, stack_env, start_stack
from tests.fixtures.postgres import fresh_database
from tests.fixtures.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ACCEPTED = remediation_pb2.ALERT_DISPOSITION_ACCEPTED
DUPLICATE = remediation_pb2.ALERT_DISPOSITION_DUPLICATE
PROCESS_ALERT = "/kubernaut.alert_processor.v1.AlertProcessorService/ProcessAlert"


def alert(
    namespace: str, deployment: str, *, name: str = "KubeDeploymentRolloutStuck", **extra: str
) -> alert_pb2.Alert:
    started = Timestamp()
    started.FromDatetime(dt.datetime.now(dt.UTC))
    resolved = extra.pop("status", "") == "resolved"
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_RESOLVED if resolved else alert_pb2.ALERT_STATUS_FIRING,
        labels={
            "alertname": name,
            "namespace": namespace,
            "deployment": deployment,
            "severity": "warning",
            **extra,
        },
        starts_at=started,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


async def incidents_in(clients: Clients, namespace: str) -> list[storage_pb2.Incident]:
    listed = await clients.stub(StorageServiceStub).ListIncidents(
        storage_pb2.ListIncidentsRequest(page_size=1000)
    )
    return [i for i in listed.incidents if i.subject.namespace == namespace]


class ProcessAlertCalls(logging.Handler):
    """Counts ProcessAlert calls per incident, from the alert processor's own RPC log (the
    incident id is the call's context when it logs)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_incident: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "rpc", None) == PROCESS_ALERT:
            incident = incident_id_var.get()
            self.by_incident[incident] = self.by_incident.get(incident, 0) + 1


@pytest.fixture
def process_alert_calls() -> Iterator[ProcessAlertCalls]:
    handler = ProcessAlertCalls()
    logger = logging.getLogger("kubernaut.rpc")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
async def replicas_database(postgres_dsn: str) -> AsyncIterator[str]:
    """The DSN of the database the gateway replicas share (theirs alone)."""
    async with fresh_database(postgres_dsn) as dsn:
        yield dsn


@pytest.fixture
async def replicas(
    stack: InProcessStack, runtime_settings: RuntimeSettings, replicas_database: str
) -> AsyncIterator[list[RunningService]]:
    """Two more gateway replicas sharing a database of their own, in front of the stack's
    alert processor and storage; integrators may send 20 alerts at once, 2 a second."""
    env = {
        "KUBERNAUT_GATEWAY_DATABASE_URL": replicas_database,
        "KUBERNAUT_GATEWAY_HOLD_SECONDS": "0.3",
        "KUBERNAUT_GATEWAY_COUNT_INTERVAL_SECONDS": "0.2",
        "KUBERNAUT_GATEWAY_CALLER_RATE_PER_SECOND": "2",
        "KUBERNAUT_GATEWAY_CALLER_BURST": "20",
    }
    addresses = {f"{n.value}_address": a for n, a in stack.addresses.items()}
    started: list[RunningService] = []
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        for _ in range(2):
            settings = runtime_settings.model_copy(update={**addresses, "grpc_port": 0})
            started.append(await start_service(ServiceName.GATEWAY, settings, serve_metrics=False))
    try:
        for running in started:
            clients = Clients(runtime_settings, addresses={ServiceName.GATEWAY: running.address})
            statuses = await wait_serving(clients, [ServiceName.GATEWAY], timeout=30)
            await clients.close()
            assert statuses == {ServiceName.GATEWAY: "SERVING"}
        yield started
    finally:
        for running in started:
            await running.shutdown()


async def queue_empty(dsn: str) -> bool:
    """No row waits in the gateway's queue, to be forwarded or given up on."""
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM gateway.queue)"))
    finally:
        await conn.close()


def gateway_of(stack: InProcessStack, running: RunningService, account: str) -> Clients:
    return Clients(stack.settings, account, addresses={ServiceName.GATEWAY: running.address})


async def test_two_replicas_hit_with_identical_posts_forward_each_alert_once(
    stack: InProcessStack,
    replicas: list[RunningService],
    replicas_database: str,
    process_alert_calls: ProcessAlertCalls,
) -> None:
    namespace = f"replicas-{uuid.uuid4().hex[:6]}"
    batch = [alert(namespace, f"app-{i}") for i in range(5)]
    edges = [gateway_of(stack, running, EDGE_ACCOUNT) for running in replicas]
    operator = stack.clients()
    try:
        posts = [
            edges[i % 2]
            .stub(GatewayServiceStub)
            .SubmitAlerts(gateway_pb2.SubmitAlertsRequest(alerts=batch))
            for i in range(12)
        ]
        responses = await asyncio.gather(*posts)
        outcomes = [o for response in responses for o in response.outcomes]
        assert sum(o.disposition == ACCEPTED for o in outcomes) == 5
        assert sum(o.disposition == DUPLICATE for o in outcomes) == 55

        async def all_counted() -> list[storage_pb2.Incident] | None:
            found = await incidents_in(operator, namespace)
            done = len(found) == 5 and all(i.occurrences == 12 for i in found)
            return found if done else None

        # One incident per alert, every repeat counted on it.
        found = await eventually(all_counted, "12 alerts counted on each of 5 incidents", 30)
        # No pause: every post has returned, so no queue row can be added any more; a row is
        # deleted only after its ProcessAlert answered (logged before the answer), and its
        # 180s lease keeps the other replica off it meanwhile. So once the queue is empty,
        # every forward that will ever happen has been counted; a second one is not raced.
        await eventually(
            lambda: queue_empty(replicas_database), "the replicas' queue to be empty", 30
        )
        for incident in found:
            assert process_alert_calls.by_incident.get(incident.incident_id) == 1, incident
    finally:
        for clients in (*edges, operator):
            await clients.close()


async def test_integrators_are_rate_limited_with_retry_info(
    stack: InProcessStack, replicas: list[RunningService]
) -> None:
    namespace = f"integrator-{uuid.uuid4().hex[:6]}"
    integrator = gateway_of(stack, replicas[0], OPERATOR_ACCOUNT)
    try:
        gateway = integrator.stub(GatewayServiceStub)
        batch = [alert(namespace, f"svc-{i}") for i in range(20)]
        first = await gateway.SubmitAlerts(gateway_pb2.SubmitAlertsRequest(alerts=batch))
        assert len(first.outcomes) == 20
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await gateway.SubmitAlerts(gateway_pb2.SubmitAlertsRequest(alerts=batch))
        assert limited.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(limited.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
        assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 10
    finally:
        await integrator.close()


async def test_a_storm_opens_one_incident_listing_its_resources(stack: InProcessStack) -> None:
    namespace = f"storm-{uuid.uuid4().hex[:6]}"
    name = f"StormTest{uuid.uuid4().hex[:6]}"
    edge = stack.clients(EDGE_ACCOUNT)
    operator = stack.clients()
    try:
        batch = [alert(namespace, f"web-{i}", name=name) for i in range(12)]
        response = await edge.stub(GatewayServiceStub).SubmitAlerts(
            gateway_pb2.SubmitAlertsRequest(alerts=batch)
        )
        # The default threshold is 10 resources within a minute: all twelve are the storm.
        assert {o.disposition for o in response.outcomes} == {
            remediation_pb2.ALERT_DISPOSITION_STORM
        }

        async def listed() -> storage_pb2.GetIncidentResponse | None:
            found = await incidents_in(operator, namespace)
            if len(found) != 1:
                return None
            got: storage_pb2.GetIncidentResponse = await operator.stub(
                StorageServiceStub
            ).GetIncident(storage_pb2.GetIncidentRequest(incident_id=found[0].incident_id))
            return got if len(got.affected_resources) == 12 else None

        got = await eventually(listed, "one incident listing 12 resources", 30)
        assert {r.name for r in got.affected_resources} == {f"web-{i}" for i in range(12)}
        assert got.incident.fingerprint.startswith("storm-")
        assert got.incident.status == storage_pb2.INCIDENT_STATUS_OPEN
        assert got.incident.status_reason.startswith("storm:")
        # Left to people: no analysis, no workflow, no action.
        assert list(got.actions) == []
        with pytest.raises(grpc.aio.AioRpcError) as none:
            await operator.stub(WorkflowServiceStub).GetWorkflow(
                workflow_pb2.GetWorkflowRequest(incident_id=got.incident.incident_id)
            )
        assert none.value.code() is grpc.StatusCode.NOT_FOUND

        # People are told, once.
        async def told() -> list[str] | None:
            subjects = [
                str(m.message["Subject"])
                for m in stack.mail.messages()
                if got.incident.incident_id in m.message.get_content()
            ]
            return subjects or None

        subjects = await eventually(told, "the storm's email", 30)
        assert subjects == [f"[kubernaut] Storm: {name} on many resources"]
        # Once every member resolved, the storm's incident is resolved.
        await edge.stub(GatewayServiceStub).SubmitAlerts(
            gateway_pb2.SubmitAlertsRequest(
                alerts=[
                    alert(namespace, f"web-{i}", name=name, status="resolved") for i in range(12)
                ]
            )
        )

        async def resolved() -> storage_pb2.Incident | None:
            [incident] = await incidents_in(operator, namespace)
            return incident if incident.status == storage_pb2.INCIDENT_STATUS_RESOLVED else None

        await eventually(resolved, "the storm's incident resolved", 30)

        # And people are told it is over (their page resolves), once.
        async def told_resolved() -> list[str] | None:
            subjects = await told()
            return subjects if subjects is not None and len(subjects) > 1 else None

        subjects = await eventually(told_resolved, "the storm's resolution email", 30)
        assert [" ".join(s.split()).partition(f"{name} on ")[0] for s in subjects] == [
            "[kubernaut] Storm: ",
            "[kubernaut] Resolved: ",
        ]
    finally:
        await edge.close()
        await operator.close()


@pytest.fixture(scope="module")
async def approval_stack(
    runtime_settings: RuntimeSettings, postgres_dsn: str, session_mail: MailSink
) -> AsyncIterator[InProcessStack]:
    """A stack of its own in which every workflow waits for a person's approval."""
    async with fresh_database(postgres_dsn) as dsn:
        env = stack_env(dsn, session_mail, KUBERNAUT_WORKFLOW_APPROVAL_MIN_CONFIDENCE="1.0")
        async with start_stack(runtime_settings, session_mail, env) as started:
            yield started


async def test_firing_then_resolved_closes_the_incident_and_nothing_acts(
    approval_stack: InProcessStack,
) -> None:
    namespace = f"resolves-{uuid.uuid4().hex[:6]}"
    edge = approval_stack.clients(EDGE_ACCOUNT)
    operator = approval_stack.clients()
    try:
        gateway = edge.stub(GatewayServiceStub)
        await gateway.SubmitAlerts(
            gateway_pb2.SubmitAlertsRequest(alerts=[alert(namespace, "checkout")])
        )

        async def waiting() -> workflow_pb2.Workflow | None:
            found = await incidents_in(operator, namespace)
            if not found:
                return None
            try:
                got = await operator.stub(WorkflowServiceStub).GetWorkflow(
                    workflow_pb2.GetWorkflowRequest(incident_id=found[0].incident_id)
                )
            except grpc.aio.AioRpcError:
                return None
            workflow: workflow_pb2.Workflow = got.workflow
            waits = workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
            return workflow if waits else None

        workflow = await eventually(waiting, "the workflow waiting for approval", 30)
        resolved = await gateway.SubmitAlerts(
            gateway_pb2.SubmitAlertsRequest(
                alerts=[alert(namespace, "checkout", status="resolved")]
            )
        )
        assert resolved.outcomes[0].incident_id == workflow.incident_id

        async def closed() -> storage_pb2.GetIncidentResponse | None:
            got: storage_pb2.GetIncidentResponse = await operator.stub(
                StorageServiceStub
            ).GetIncident(storage_pb2.GetIncidentRequest(incident_id=workflow.incident_id))
            return got if got.incident.status == storage_pb2.INCIDENT_STATUS_RESOLVED else None

        got = await eventually(closed, "the incident resolved", 30)
        assert got.incident.HasField("closed_at") and got.incident.HasField("alert_resolved_at")

        # People heard of each step, once: it opened, the plan, the request to decide, and
        # that it resolved before anyone decided.
        async def told() -> list[str] | None:
            subjects = [
                " ".join(str(m.message["Subject"]).split()).partition(":")[0]
                for m in approval_stack.mail.messages()
                if m.message[INCIDENT_HEADER] == workflow.incident_id
            ]
            return subjects if "[kubernaut] Resolved" in subjects else None

        assert await eventually(told, "the incident's emails", 30) == [
            "[kubernaut] New incident",
            "[kubernaut] Fix planned",
            "[kubernaut] Approval needed",
            "[kubernaut] Resolved",
        ]
        # Nothing acted: no action was recorded, the workflow never went past approval.
        assert list(got.actions) == []
        again = await operator.stub(WorkflowServiceStub).GetWorkflow(
            workflow_pb2.GetWorkflowRequest(incident_id=workflow.incident_id)
        )
        assert again.workflow.state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL
        # The alert firing again is a new problem: a new incident.
        refired = await gateway.SubmitAlerts(
            gateway_pb2.SubmitAlertsRequest(alerts=[alert(namespace, "checkout")])
        )
        assert refired.outcomes[0].disposition == ACCEPTED
    finally:
        await edge.close()
        await operator.close()
