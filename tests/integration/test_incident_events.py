"""An incident's own events through the real services (the in-process stack: the alert
processor, storage, ai_analysis and notification with its outbox on PostgreSQL, mail to a
real SMTP server): "opened" when an alert opens an incident, "resolved" when its alerts
resolving ends it, each delivered once however often the alert, and so the notify, is
retried."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.alert_processor.v1.alert_processor_pb2_grpc import AlertProcessorServiceStub
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.devstack.smtp import MailSink
from kubernaut.runtime.names import ServiceName
from kubernaut.services.alert_processor.processing import triage
from kubernaut.services.alerts import fingerprint_of
from kubernaut.services.notification.channels import INCIDENT_HEADER
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration


def _alert(namespace: str, status: alert_pb2.AlertStatus.ValueType) -> alert_pb2.Alert:
    started = Timestamp()
    started.GetCurrentTime()
    return alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=status,
        # The stack has no cluster: the subject stays the pod, whose owner is unknown, so
        # the analysis declines (and says so).
        labels={"namespace": namespace, "pod": "web-5d8f-abcde", "severity": "warning"},
        starts_at=started,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


async def _settled_subjects(
    mail: MailSink, dsn: str, incident_id: str, kinds: tuple[str, ...]
) -> list[str]:
    """The subjects of every email about `incident_id`, once no delivery of the incident's
    `kinds` is in flight (a delivery holds its outbox row locked until it has recorded what
    it sent, and the sink keeps a message before it answers)."""
    conn = await asyncpg.connect(dsn)
    try:
        for kind in kinds:
            key = f"{incident_id}/{kind}"
            async with conn.transaction():
                status = await conn.fetchval(
                    "SELECT status FROM notification.outbox WHERE idempotency_key = $1 FOR UPDATE",
                    key,
                )
            assert status == "sent", (key, status)
    finally:
        await conn.close()
    return [
        " ".join(str(m.message["Subject"]).split())
        for m in mail.messages()
        if m.message[INCIDENT_HEADER] == incident_id
    ]


async def test_an_incident_is_told_opened_and_resolved_once_each_through_retries(
    stack: InProcessStack, postgres_dsn: str
) -> None:
    namespace = f"told-{uuid.uuid4().hex[:8]}"
    firing = alert_processor_pb2.ProcessAlertRequest(
        alert=_alert(namespace, alert_pb2.ALERT_STATUS_FIRING)
    )
    gateway = stack.clients(ServiceName.GATEWAY.account)
    operator = stack.clients()
    try:
        processor = gateway.stub(AlertProcessorServiceStub)
        processed = await processor.ProcessAlert(firing)
        incident_id = processed.incident_id
        assert processed.analysis.decision == remediation_pb2.DECISION_NO_ACTION
        # AlertManager sends the alert again while it fires: counted, nobody is told again.
        again = await processor.ProcessAlert(firing)
        assert again.incident_id == incident_id
        assert again.disposition == remediation_pb2.ALERT_DISPOSITION_DUPLICATE

        # It stops firing; the gateway hands the resolution over twice (a retry after a
        # lost answer): each tells, under the same key.
        resolved = alert_processor_pb2.ProcessAlertRequest(
            alert=_alert(namespace, alert_pb2.ALERT_STATUS_RESOLVED), incident_id=incident_id
        )
        for _ in range(2):
            answered = await processor.ProcessAlert(resolved)
            assert answered.incident_id == incident_id
            assert "marked resolved, left INCIDENT_STATUS_NO_ACTION" in answered.reason
        got = await operator.stub(StorageServiceStub).GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=incident_id)
        )
        assert got.incident.HasField("alert_resolved_at")
    finally:
        await gateway.close()
        await operator.close()

    subjects = await _settled_subjects(
        stack.mail, postgres_dsn, incident_id, ("opened", "not_acted_on", "resolved")
    )
    on = f"KubePodCrashLooping on Pod {namespace}/web-5d8f-abcde"
    # In the order they happened, one email each.
    assert subjects == [
        f"[kubernaut] New incident: {on}",
        f"[kubernaut] Not acted on: {on}",
        f"[kubernaut] Resolved: {on}",
    ]
    mails = [m.message for m in stack.mail.messages() if m.message[INCIDENT_HEADER] == incident_id]
    resolved_body = mails[-1].get_content()
    assert f"{on} is resolved: every alert of the incident stopped" in resolved_body
    assert "  - it was left to people: " in resolved_body
    # One thread in a mail client: every email refers to the incident's root.
    assert len({m["References"] for m in mails}) == 1
    assert incident_id in mails[0]["References"]


async def test_the_retries_of_an_alert_whose_first_attempt_died_tell_it_opened_once(
    stack: InProcessStack, postgres_dsn: str
) -> None:
    namespace = f"retold-{uuid.uuid4().hex[:8]}"
    alert = _alert(namespace, alert_pb2.ALERT_STATUS_FIRING)
    gateway = stack.clients(ServiceName.GATEWAY.account)
    operator = stack.clients()
    try:
        # The first ProcessAlert opened the incident and died before it told anyone (or
        # before the analysis): the incident is OPEN and nothing was sent.
        subject = triage(alert).subject
        assert subject is not None
        opened = await operator.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=fingerprint_of(alert, subject), alert=alert, subject=subject
            )
        )
        assert opened.created
        incident_id = opened.incident.incident_id

        # The gateway's retries, racing: each may find it OPEN and tell it opened.
        processor = gateway.stub(AlertProcessorServiceStub)
        request = alert_processor_pb2.ProcessAlertRequest(alert=alert)
        retries = await asyncio.gather(*(processor.ProcessAlert(request) for _ in range(3)))
        assert {r.incident_id for r in retries} == {incident_id}

        # It resolves: the incident the analysis closed is resolved for people too.
        resolved = alert_processor_pb2.ProcessAlertRequest(
            alert=_alert(namespace, alert_pb2.ALERT_STATUS_RESOLVED), incident_id=incident_id
        )
        await processor.ProcessAlert(resolved)
    finally:
        await gateway.close()
        await operator.close()

    subjects = await _settled_subjects(
        stack.mail, postgres_dsn, incident_id, ("opened", "not_acted_on", "resolved")
    )
    on = f"KubePodCrashLooping on Pod {namespace}/web-5d8f-abcde"
    assert subjects == [
        f"[kubernaut] New incident: {on}",
        f"[kubernaut] Not acted on: {on}",
        f"[kubernaut] Resolved: {on}",
    ]


async def test_an_incident_closed_by_its_resolution_is_told_resolved(
    stack: InProcessStack, postgres_dsn: str
) -> None:
    namespace = f"closed-{uuid.uuid4().hex[:8]}"
    alert = _alert(namespace, alert_pb2.ALERT_STATUS_FIRING)
    gateway = stack.clients(ServiceName.GATEWAY.account)
    operator = stack.clients()
    try:
        # Opened, and nothing acted on it yet (the analysis is still running, say).
        subject = triage(alert).subject
        assert subject is not None
        opened = await operator.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=fingerprint_of(alert, subject), alert=alert, subject=subject
            )
        )
        incident_id = opened.incident.incident_id
        processor = gateway.stub(AlertProcessorServiceStub)
        answered = await processor.ProcessAlert(
            alert_processor_pb2.ProcessAlertRequest(
                alert=_alert(namespace, alert_pb2.ALERT_STATUS_RESOLVED), incident_id=incident_id
            )
        )
        assert "closed: every alert of it resolved" in answered.reason
    finally:
        await gateway.close()
        await operator.close()

    subjects = await _settled_subjects(stack.mail, postgres_dsn, incident_id, ("resolved",))
    assert subjects == [
        f"[kubernaut] Resolved: KubePodCrashLooping on Pod {namespace}/web-5d8f-abcde"
    ]
    [mail] = [m.message for m in stack.mail.messages() if m.message[INCIDENT_HEADER] == incident_id]
    assert "  - nothing was done: it resolved before anything acted on it\n" in mail.get_content()
