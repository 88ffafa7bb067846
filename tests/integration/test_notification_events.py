"""NotifyIncidentEvent: rendered incident emails through the outbox, against a real
PostgreSQL and a real SMTP server (aiosmtpd), and through gRPC in the in-process stack."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2
from kubernaut.common.v1 import alert_pb2
from kubernaut.notification.v1 import notification_pb2, notification_pb2_grpc

from kubernaut.devstack.processes import free_port
from kubernaut.devstack.smtp import MailSink, ReceivedMail
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import health_of, wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import RunningService, start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.notification.channels import (
    INCIDENT_HEADER,
    DeliveryOutcome,
    NoChannelConfigured,
    Notifier,
    RetryPolicy,
)
from kubernaut.services.notification.outbox import (
    DeliveryStatus,
    InvalidOutboxEntry,
    Outbox,
    OutboxDatabase,
    OutboxUnavailable,
)
from kubernaut.services.notification.rendering import EventRenderer, RenderedMessage
from kubernaut.services.notification.settings import NotificationSettings
from tests.fixtures.kubernaut import InProcessStack

SUCCEEDED = notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED
pytestmark = pytest.mark.integration

ENV_PREFIX = "KUBERNAUT_NOTIFICATION_"
FAST_RETRY = RetryPolicy(attempts=2, initial_backoff_seconds=0.01)
KIND_NAME = "INCIDENT_EVENT_KIND_SUCCEEDED"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


@pytest.fixture
async def outbox(database_dsn: str) -> AsyncIterator[Outbox]:
    opened = await Outbox.connect(database_dsn)
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.close()


def notifier_for(port: int, host: str = "127.0.0.1") -> Notifier:
    settings = NotificationSettings(
        smtp_host=host, smtp_port=port, smtp_timeout_seconds=5, email_to=("oncall@example.com",)
    )
    return Notifier.from_settings(settings, retry=FAST_RETRY)


def timestamp(at: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def make_event(
    incident_id: str = "inc-1",
    kind: notification_pb2.IncidentEventKind.ValueType = SUCCEEDED,
) -> notification_pb2.IncidentEvent:
    return notification_pb2.IncidentEvent(
        incident_id=incident_id,
        kind=kind,
        alert=alert_pb2.Alert(
            name="KubePodCrashLooping",
            status=alert_pb2.ALERT_STATUS_FIRING,
            labels={"severity": "warning", "namespace": "shop"},
            annotations={"summary": "Pod is crash looping.", "description": "{{ 7*7 }}"},
            starts_at=timestamp(dt.datetime(2025, 3, 14, 9, 26, 53, tzinfo=dt.UTC)),
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout"),
        action="restart_deployment",
        # As the executor writes them: the change was applied.
        stages=[
            "dry-run: ok: the API server accepted the change (dryRun=All)",
            "apply: rollout restarted (generation 4)",
            "verify: ok: 3/3 ready after 21.0s",
        ],
        verdict="not assessed yet",
        occurred_at=timestamp(dt.datetime(2025, 3, 14, 9, 31, 2, tzinfo=dt.UTC)),
    )


def rendered(incident_id: str = "inc-1") -> RenderedMessage:
    return EventRenderer().render(make_event(incident_id))


async def outbox_row(dsn: str, key: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT status, attempts, results, last_error, sent_at"
            " FROM notification.outbox WHERE idempotency_key = $1",
            key,
        )
    finally:
        await conn.close()
    assert row is not None
    return row


def subject_of(mail: ReceivedMail) -> str:
    """The Subject as a mail client shows it. Python folds a long Subject right after
    "Subject:" (valid RFC 5322) and its parser keeps the space of the fold."""
    return " ".join(str(mail.message["Subject"]).split())


async def settle(
    sink: MailSink, expected: int, dsn: str, *keys: str, incident_id: str | None = None
) -> None:
    """Assert that `sink` got exactly `expected` messages (about `incident_id`, when given)
    and will get no more for `keys`.

    No pause: a delivery holds its key's outbox row locked from before it sends until it
    has recorded the attempt, and the sink stores a message before it answers DATA. So once
    each key's row can be locked, no delivery of it is in flight and everything ever sent
    for it is in the sink; a late duplicate is counted, not raced. (Call it after every
    caller has returned: a caller still on its way to the lock is not waited for.)"""
    conn = await asyncpg.connect(dsn)
    try:
        for key in keys:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT status FROM notification.outbox WHERE idempotency_key = $1 FOR UPDATE",
                    key,
                )
            assert row is not None, f"no outbox row for {key!r}"
            # Pending: a delivery started and never recorded its outcome.
            assert row["status"] != "pending", f"{key!r} is still pending"
    finally:
        await conn.close()
    received = [
        m
        for m in sink.messages()
        if incident_id is None or m.message[INCIDENT_HEADER] == incident_id
    ]
    assert len(received) == expected, [subject_of(m) for m in received]


# -- the outbox, with a real PostgreSQL and a real SMTP server ----------------------------------


async def test_migration_creates_its_own_schema_and_is_idempotent(
    outbox: Outbox, database_dsn: str
) -> None:
    assert await outbox.migrate() == []  # the fixture applied them already
    conn = await asyncpg.connect(database_dsn)
    try:
        tables = {
            (r["table_schema"], r["table_name"])
            for r in await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
        }
        versions = [
            r["version"]
            for r in await conn.fetch(
                "SELECT version FROM notification.schema_migrations ORDER BY version"
            )
        ]
    finally:
        await conn.close()
    assert tables == {
        ("notification", "outbox"),
        ("notification", "deliveries"),
        ("notification", "threads"),
        ("notification", "schema_migrations"),
    }
    assert versions == [1, 2]


async def test_one_mail_per_key_and_a_repeat_sends_nothing(
    outbox: Outbox, mail_sink: MailSink, database_dsn: str
) -> None:
    notifier = notifier_for(mail_sink.port)
    message = rendered("inc-42")

    first = await outbox.deliver_once(
        "wf-1/succeeded", message, notifier, incident_id="inc-42", event_kind=KIND_NAME
    )

    assert first.sent
    assert first.results == (DeliveryOutcome("email", True, ""),)
    [mail] = await mail_sink.wait_for(1)
    assert subject_of(mail) == message.subject
    assert subject_of(mail) == (
        "[kubernaut] Remediated: KubePodCrashLooping on Deployment shop/checkout"
    )
    assert mail.message[INCIDENT_HEADER] == "inc-42"
    assert mail.message.get_content() == message.body
    assert "{{ 7*7 }}" in message.body

    repeat = await outbox.deliver_once(
        "wf-1/succeeded", message, notifier, incident_id="inc-42", event_kind=KIND_NAME
    )

    assert not repeat.sent
    assert repeat.results == first.results
    assert repeat.entry.status is DeliveryStatus.SENT
    assert repeat.entry.attempts == 1
    await settle(mail_sink, 1, database_dsn, "wf-1/succeeded")
    row = await outbox_row(database_dsn, "wf-1/succeeded")
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 1, "")
    assert row["sent_at"] is not None

    # Another key is another event.
    other = await outbox.deliver_once(
        "wf-1/rolled_back", message, notifier, incident_id="inc-42", event_kind=KIND_NAME
    )
    assert other.sent
    await settle(mail_sink, 2, database_dsn, "wf-1/succeeded", "wf-1/rolled_back")


async def test_a_repeat_after_a_restart_sends_nothing(
    database_dsn: str, mail_sink: MailSink
) -> None:
    notifier = notifier_for(mail_sink.port)
    before = OutboxDatabase(database_dsn)
    first = await (await before.outbox()).deliver_once(
        "wf-2/succeeded", rendered(), notifier, incident_id="inc-1", event_kind=KIND_NAME
    )
    await before.close()

    after = OutboxDatabase(database_dsn)  # a new process: new pool, migrations found applied
    try:
        assert await after.ready()
        repeat = await (await after.outbox()).deliver_once(
            "wf-2/succeeded", rendered(), notifier, incident_id="inc-1", event_kind=KIND_NAME
        )
    finally:
        await after.close()

    assert first.sent and not repeat.sent
    assert repeat.results == first.results
    await settle(mail_sink, 1, database_dsn, "wf-2/succeeded")


async def test_ten_concurrent_calls_with_one_key_deliver_once(
    outbox: Outbox, mail_sink: MailSink, database_dsn: str
) -> None:
    notifier = notifier_for(mail_sink.port)
    message = rendered()

    deliveries = await asyncio.gather(
        *(
            outbox.deliver_once(
                "wf-3/succeeded", message, notifier, incident_id="inc-1", event_kind=KIND_NAME
            )
            for _ in range(10)
        )
    )

    assert sum(d.sent for d in deliveries) == 1
    assert {d.results for d in deliveries} == {(DeliveryOutcome("email", True, ""),)}
    assert {d.entry.attempts for d in deliveries} == {1}
    await settle(mail_sink, 1, database_dsn, "wf-3/succeeded")


async def test_concurrent_calls_on_two_replicas_deliver_once(
    database_dsn: str, mail_sink: MailSink
) -> None:
    # Two pools are two replicas: only the row lock in PostgreSQL keeps them apart.
    replicas = [await Outbox.connect(database_dsn) for _ in range(2)]
    try:
        await asyncio.gather(*(replica.migrate() for replica in replicas))
        notifier = notifier_for(mail_sink.port)
        message = rendered()
        deliveries = await asyncio.gather(
            *(
                replica.deliver_once(
                    "wf-4/succeeded", message, notifier, incident_id="inc-1", event_kind=KIND_NAME
                )
                for replica in replicas
                for _ in range(5)
            )
        )
    finally:
        for replica in replicas:
            await replica.close()

    assert sum(d.sent for d in deliveries) == 1
    assert all(d.results == (DeliveryOutcome("email", True, ""),) for d in deliveries)
    await settle(mail_sink, 1, database_dsn, "wf-4/succeeded")


async def test_smtp_down_then_up_the_retry_delivers(
    outbox: Outbox, mail_sink: MailSink, database_dsn: str, tmp_path: Path
) -> None:
    port = mail_sink.port
    notifier = notifier_for(port)
    message = rendered()
    mail_sink.stop()

    down = await outbox.deliver_once(
        "wf-5/failed", message, notifier, incident_id="inc-1", event_kind=KIND_NAME
    )

    assert not down.sent
    [outcome] = down.results
    assert not outcome.delivered
    assert f"127.0.0.1:{port}" in outcome.error
    row = await outbox_row(database_dsn, "wf-5/failed")
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert f"127.0.0.1:{port}" in row["last_error"]

    with MailSink(tmp_path / "mail-again", port=port) as restarted:
        up = await outbox.deliver_once(
            "wf-5/failed", message, notifier, incident_id="inc-1", event_kind=KIND_NAME
        )
        again = await outbox.deliver_once(
            "wf-5/failed", message, notifier, incident_id="inc-1", event_kind=KIND_NAME
        )
        await settle(restarted, 1, database_dsn, "wf-5/failed")

    assert up.sent and up.results == (DeliveryOutcome("email", True, ""),)
    assert not again.sent and again.results == up.results
    row = await outbox_row(database_dsn, "wf-5/failed")
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 2, "")
    assert mail_sink.messages() == []


async def test_a_retry_delivers_the_message_stored_first(
    outbox: Outbox, mail_sink: MailSink, database_dsn: str
) -> None:
    notifier = notifier_for(mail_sink.port)
    mail_sink.refuse_recipient("oncall@example.com", "550 5.1.1 No such user", times=1)
    first = rendered("inc-1")
    await outbox.deliver_once(
        "wf-6/succeeded", first, notifier, incident_id="inc-1", event_kind=KIND_NAME
    )

    retry = await outbox.deliver_once(
        "wf-6/succeeded",
        RenderedMessage("another subject", "another body\n"),
        notifier,
        incident_id="inc-1",
        event_kind=KIND_NAME,
    )

    assert retry.sent
    await settle(mail_sink, 1, database_dsn, "wf-6/succeeded")
    [mail] = mail_sink.messages()
    assert subject_of(mail) == first.subject


async def test_no_channel_stores_nothing(outbox: Outbox) -> None:
    with pytest.raises(NoChannelConfigured):
        await outbox.deliver_once(
            "wf-7/succeeded", rendered(), Notifier([]), incident_id="inc-1", event_kind=KIND_NAME
        )
    assert await outbox.get("wf-7/succeeded") is None


async def test_nul_characters_are_refused(outbox: Outbox, mail_sink: MailSink) -> None:
    notifier = notifier_for(mail_sink.port)
    with pytest.raises(InvalidOutboxEntry) as caught:
        await outbox.deliver_once(
            "wf\x00", rendered(), notifier, incident_id="inc-1", event_kind=KIND_NAME
        )
    assert caught.value.field == "idempotency_key"
    with pytest.raises(InvalidOutboxEntry) as caught:
        await outbox.deliver_once(
            "wf-8", rendered(), notifier, incident_id="inc\x00", event_kind=KIND_NAME
        )
    assert caught.value.field == "incident_id"


async def test_unreachable_database_is_unavailable_and_not_ready() -> None:
    database = OutboxDatabase(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    assert not await database.ready()
    with pytest.raises(OutboxUnavailable, match=r"127\.0\.0\.1"):
        await database.outbox()


# -- through gRPC, in the in-process stack, as the workflow engine -------------------------------


async def test_notify_incident_event_over_grpc_as_the_workflow(
    stack: InProcessStack, postgres_dsn: str
) -> None:
    mail = stack.mail  # session-wide: count, do not assume it is empty
    clients = stack.clients("workflow")
    try:
        stub = clients.stub(notification_pb2_grpc.NotificationServiceStub)
        incident_id = str(uuid.uuid4())
        request = notification_pb2.NotifyIncidentEventRequest(
            event=make_event(incident_id, notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK),
            idempotency_key=f"{uuid.uuid4()}/rolled_back",
        )
        before = len(mail.messages())

        first = await stub.NotifyIncidentEvent(request)

        assert first.sent
        assert [(r.channel, r.delivered, r.error) for r in first.results] == [("email", True, "")]
        received = await mail.wait_for(before + 1)
        [ours] = [m for m in received if m.message[INCIDENT_HEADER] == incident_id]
        assert subject_of(ours) == (
            "[kubernaut] Fix failed, undone: KubePodCrashLooping on Deployment shop/checkout "
            "still broken, needs a person"
        )
        assert ours.rcpt_tos == ("sre@example.com",)
        body = ours.message.get_content()
        assert f"Incident:      {incident_id}" in body
        assert "  - verify: ok: 3/3 ready after 21.0s" in body
        assert "is still broken and needs a person" in body
        assert "{{ 7*7 }}" in body

        repeat = await stub.NotifyIncidentEvent(request)

        assert not repeat.sent
        assert list(repeat.results) == list(first.results)
        # The stack's outbox is on the session database (the stack's KUBERNAUT_DATABASE_URL).
        # Other tests' mail arrives meanwhile, so count only ours.
        await settle(mail, 1, postgres_dsn, request.idempotency_key, incident_id=incident_id)
        assert [m for m in mail.messages() if m.message[INCIDENT_HEADER] == incident_id] == [ours]
    finally:
        await clients.close()


async def test_notify_incident_event_refusals_over_grpc(stack: InProcessStack) -> None:
    workflow = stack.clients("workflow")
    context_api = stack.clients("context-api")
    try:
        stub = workflow.stub(notification_pb2_grpc.NotificationServiceStub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.NotifyIncidentEvent(
                notification_pb2.NotifyIncidentEventRequest(idempotency_key="k")
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.NotifyIncidentEvent(
                notification_pb2.NotifyIncidentEventRequest(
                    event=make_event(), idempotency_key="\x00"
                )
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "idempotency_key" in (caught.value.details() or "")

        # The call table lets the context API send notifications, not incident events.
        denied = context_api.stub(notification_pb2_grpc.NotificationServiceStub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await denied.NotifyIncidentEvent(
                notification_pb2.NotifyIncidentEventRequest(
                    event=make_event(), idempotency_key=str(uuid.uuid4())
                )
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        await workflow.close()
        await context_api.close()


async def test_notification_is_serving_with_its_database(stack: InProcessStack) -> None:
    clients = stack.clients()
    try:
        statuses = await wait_serving(clients, [ServiceName.NOTIFICATION], timeout=10)
        assert statuses == {ServiceName.NOTIFICATION: "SERVING"}, statuses
        spec = stack.services[ServiceName.NOTIFICATION].spec
        assert [name for name, _ in spec.readiness] == ["postgresql"]
    finally:
        await clients.close()


# -- one notification service on its own, configured by its environment ------------------------


@contextlib.asynccontextmanager
async def notification_service(
    runtime_settings: RuntimeSettings, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> AsyncIterator[tuple[RunningService, notification_pb2_grpc.NotificationServiceStub]]:
    monkeypatch.delenv("KUBERNAUT_DATABASE_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = runtime_settings.model_copy(update={"grpc_port": 0})
    running = await start_service(ServiceName.NOTIFICATION, settings, serve_metrics=False)
    clients = Clients(
        runtime_settings, "workflow", addresses={ServiceName.NOTIFICATION: running.address}
    )
    try:
        yield running, clients.stub(notification_pb2_grpc.NotificationServiceStub)
    finally:
        await clients.close()
        await running.shutdown()


def incident_request() -> notification_pb2.NotifyIncidentEventRequest:
    return notification_pb2.NotifyIncidentEventRequest(
        event=make_event(), idempotency_key=str(uuid.uuid4())
    )


async def test_without_a_channel_or_a_database_it_is_a_failed_precondition(
    runtime_settings: RuntimeSettings,
    monkeypatch: pytest.MonkeyPatch,
    mail_sink: MailSink,
    database_dsn: str,
) -> None:
    # A database but no channel.
    async with notification_service(
        runtime_settings, monkeypatch, {"KUBERNAUT_DATABASE_URL": database_dsn}
    ) as (running, stub):
        assert [name for name, _ in running.spec.readiness] == ["postgresql"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.NotifyIncidentEvent(incident_request())
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "no notification channel" in (caught.value.details() or "")

    # A channel but no database: no outbox, so no promise of one delivery per key.
    channel_env = {
        f"{ENV_PREFIX}SMTP_HOST": mail_sink.host,
        f"{ENV_PREFIX}SMTP_PORT": str(mail_sink.port),
        f"{ENV_PREFIX}EMAIL_TO": "oncall@example.com",
    }
    async with notification_service(runtime_settings, monkeypatch, channel_env) as (
        running,
        stub,
    ):
        assert list(running.spec.readiness) == []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.NotifyIncidentEvent(incident_request())
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "KUBERNAUT_DATABASE_URL" in (caught.value.details() or "")
    # Both services have stopped, and a stopping one lets its deliveries finish first:
    # whatever they would ever send has arrived.
    assert mail_sink.messages() == []


async def test_an_unreachable_database_is_unavailable_and_not_serving(
    runtime_settings: RuntimeSettings, monkeypatch: pytest.MonkeyPatch, mail_sink: MailSink
) -> None:
    env = {
        f"{ENV_PREFIX}SMTP_HOST": mail_sink.host,
        f"{ENV_PREFIX}SMTP_PORT": str(mail_sink.port),
        f"{ENV_PREFIX}EMAIL_TO": "oncall@example.com",
        f"{ENV_PREFIX}DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
    }
    async with notification_service(runtime_settings, monkeypatch, env) as (running, stub):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.NotifyIncidentEvent(incident_request())
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        # The readiness check itself fails (not only the NOT_SERVING every service starts
        # with).
        checks = dict(running.spec.readiness)
        assert list(checks) == ["postgresql"]
        assert await checks["postgresql"]() is False
        await asyncio.sleep(3 * running.settings.health_interval_seconds)
        operator = Clients(
            runtime_settings, "operator", addresses={ServiceName.NOTIFICATION: running.address}
        )
        try:
            status = await health_of(operator, ServiceName.NOTIFICATION)
        finally:
            await operator.close()
        assert status == "NOT_SERVING"
    # Stopped, after its deliveries in progress (none, without an outbox): nothing more comes.
    assert mail_sink.messages() == []
