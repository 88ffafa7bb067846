"""Email notifications against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernaut.common.v1 import alert_pb2
from kubernaut.notification.v1 import notification_pb2, notification_pb2_grpc

from kubernaut.devstack.smtp import MailSink, read_mailbox
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.notification.channels import (
    INCIDENT_HEADER,
    ChannelInfo,
    ChannelKind,
    DeliveryOutcome,
    EmailChannel,
    NoChannelConfigured,
    Notifier,
    RetryPolicy,
    UnknownChannel,
)
from kubernaut.services.notification.settings import NotificationSettings

pytestmark = pytest.mark.integration

ENV_PREFIX = "KUBERNAUT_NOTIFICATION_"
# Retries in these tests should not make them slow; the default policy is tested too.
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_seconds=0.01)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own KUBERNAUT_NOTIFICATION_* variables must not leak into the tests.
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def settings_for(sink: MailSink, **overrides: Any) -> NotificationSettings:
    values: dict[str, Any] = {
        "smtp_host": sink.host,
        "smtp_port": sink.port,
        "smtp_timeout_seconds": 5,
        "email_to": ("oncall@example.com",),
    }
    values.update(overrides)
    return NotificationSettings(**values)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: bound (so nobody else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_sent_email_arrives_with_subject_body_recipients_and_incident(
    mail_sink: MailSink,
) -> None:
    settings = settings_for(
        mail_sink,
        email_to=("oncall@example.com", "sre@example.com"),
        smtp_from="kubernaut@cluster.example",
    )
    notifier = Notifier.from_settings(settings, retry=FAST_RETRY)
    body = "Pod api-7f9 restarted 5 times.\nRemediation: rolled back — deployment healthy.\n"

    outcomes = await notifier.send(
        "[firing] CrashLoopBackOff in prod/api", body, [], incident_id="inc-42"
    )

    assert outcomes == [DeliveryOutcome(channel="email", delivered=True, error="")]
    [mail] = await mail_sink.wait_for(1)
    assert mail.mail_from == "kubernaut@cluster.example"
    assert mail.rcpt_tos == ("oncall@example.com", "sre@example.com")
    message = mail.message
    assert message["Subject"] == "[firing] CrashLoopBackOff in prod/api"
    assert message["From"] == "kubernaut@cluster.example"
    assert message["To"] == "oncall@example.com, sre@example.com"
    assert message["Date"]
    assert message["Message-ID"].endswith("@cluster.example>")
    assert message[INCIDENT_HEADER] == "inc-42"
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == body


async def test_an_incidents_emails_thread_under_one_root(mail_sink: MailSink) -> None:
    settings = settings_for(mail_sink, smtp_from="kubernaut@cluster.example")
    notifier = Notifier.from_settings(settings, retry=FAST_RETRY)
    incident_id = str(uuid.uuid4())
    for subject, incident in (
        ("[kubernaut] New incident", incident_id),
        ("[kubernaut] Resolved", incident_id),
        ("another incident", "inc 7/\u00e9"),  # not safe in a Message-ID: hashed
    ):
        await notifier.send(subject, "body", [], incident_id=incident)
    opened, resolved, other = [mail.message for mail in await mail_sink.wait_for(3)]

    root = f"<incident-{incident_id}@cluster.example>"
    # Each message is its own, and refers to the incident's root, so clients thread them.
    assert opened["Message-ID"] != resolved["Message-ID"]
    for message in (opened, resolved):
        assert (message["In-Reply-To"], message["References"]) == (root, root)
    assert re.fullmatch(r"<incident-[0-9a-f]{32}@cluster\.example>", other["References"])
    assert other["In-Reply-To"] == other["References"] != root


async def test_no_incident_header_without_incident_and_subject_kept_on_one_line(
    mail_sink: MailSink,
) -> None:
    notifier = Notifier.from_settings(settings_for(mail_sink), retry=FAST_RETRY)

    outcomes = await notifier.send("disk full\r\nBcc: evil@example.com", "body", [], "")

    assert [o.delivered for o in outcomes] == [True]
    [mail] = await mail_sink.wait_for(1)
    assert INCIDENT_HEADER not in mail.message
    assert mail.message["Subject"] == "disk full Bcc: evil@example.com"
    assert "Bcc" not in mail.message
    assert "References" not in mail.message  # no incident, no thread
    assert mail.rcpt_tos == ("oncall@example.com",)


def two_channel_notifier(sink: MailSink) -> Notifier:
    settings = settings_for(sink)
    return Notifier(
        [
            EmailChannel(
                settings, name="oncall", recipients=["oncall@example.com"], retry=FAST_RETRY
            ),
            EmailChannel(
                settings, name="platform", recipients=["platform@example.com"], retry=FAST_RETRY
            ),
        ]
    )


async def test_send_on_a_named_channel_uses_only_that_channel(mail_sink: MailSink) -> None:
    notifier = two_channel_notifier(mail_sink)
    assert notifier.channels() == [
        ChannelInfo("oncall", ChannelKind.EMAIL, ("oncall@example.com",)),
        ChannelInfo("platform", ChannelKind.EMAIL, ("platform@example.com",)),
    ]

    outcomes = await notifier.send("only platform", "body", ["platform"], "inc-1")

    assert outcomes == [DeliveryOutcome("platform", True)]
    [mail] = await mail_sink.wait_for(1)
    assert mail.rcpt_tos == ("platform@example.com",)
    await asyncio.sleep(0.2)  # nothing else is on its way
    assert len(mail_sink.messages()) == 1


async def test_send_with_no_channel_named_uses_every_channel(mail_sink: MailSink) -> None:
    notifier = two_channel_notifier(mail_sink)

    outcomes = await notifier.send("everyone", "body", [], "inc-2")

    assert outcomes == [DeliveryOutcome("oncall", True), DeliveryOutcome("platform", True)]
    received = await mail_sink.wait_for(2)
    assert sorted(m.rcpt_tos for m in received) == [
        ("oncall@example.com",),
        ("platform@example.com",),
    ]
    assert {m.message["Subject"] for m in received} == {"everyone"}


async def test_unknown_channel_raises_before_anything_is_sent(mail_sink: MailSink) -> None:
    notifier = two_channel_notifier(mail_sink)

    with pytest.raises(UnknownChannel) as caught:
        await notifier.send("subject", "body", ["oncall", "pager"], "inc-3")

    assert caught.value.name == "pager"
    await asyncio.sleep(0.3)  # give a (wrongly) sent message time to arrive
    assert mail_sink.messages() == []
    assert read_mailbox(mail_sink.directory) == []


async def test_no_channel_configured(mail_sink: MailSink) -> None:
    notifier = Notifier.from_settings(settings_for(mail_sink, email_to=()))

    assert notifier.channels() == []
    with pytest.raises(NoChannelConfigured):
        await notifier.send("subject", "body", [], "")


async def test_server_down_is_reported_not_raised_within_bounded_time(closed_port: int) -> None:
    settings = NotificationSettings(
        smtp_host="127.0.0.1", smtp_port=closed_port, email_to=("oncall@example.com",)
    )
    notifier = Notifier.from_settings(settings)  # the default retry policy

    started = time.monotonic()
    [outcome] = await notifier.send("subject", "body", [], "inc-4")
    elapsed = time.monotonic() - started

    assert outcome.channel == "email"
    assert not outcome.delivered
    assert f"127.0.0.1:{closed_port}" in outcome.error
    assert "3 attempts" in outcome.error  # connection refused is transient: retried
    assert elapsed < 5.0


async def test_server_that_never_answers_times_out(mail_sink: MailSink) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        # Listening, so the connection is accepted by the kernel, but nobody greets.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = NotificationSettings(
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_timeout_seconds=0.2,
            email_to=("oncall@example.com",),
        )

        started = time.monotonic()
        [outcome] = await Notifier.from_settings(settings, retry=FAST_RETRY).send(
            "subject", "body", [], ""
        )

    assert not outcome.delivered
    assert f"127.0.0.1:{port}" in outcome.error
    assert "Timed out" in outcome.error
    assert time.monotonic() - started < 3.0


async def test_permanent_refusal_is_not_retried(mail_sink: MailSink) -> None:
    mail_sink.refuse_recipient("gone@example.com", "550 5.1.1 No such user")
    settings = settings_for(mail_sink, email_to=("gone@example.com",))

    [outcome] = await Notifier.from_settings(settings, retry=FAST_RETRY).send(
        "subject", "body", [], ""
    )

    assert not outcome.delivered
    assert "550" in outcome.error and "gone@example.com" in outcome.error
    assert "not retried" in outcome.error
    assert mail_sink.refused_recipients() == ["gone@example.com"]  # exactly one attempt
    assert mail_sink.messages() == []


async def test_temporary_refusal_is_retried_until_delivered(mail_sink: MailSink) -> None:
    mail_sink.refuse_recipient("busy@example.com", "451 4.3.0 Try again later", times=2)
    settings = settings_for(mail_sink, email_to=("busy@example.com",))

    [outcome] = await Notifier.from_settings(settings, retry=FAST_RETRY).send(
        "subject", "body", [], ""
    )

    assert outcome == DeliveryOutcome("email", True)
    assert mail_sink.refused_recipients() == ["busy@example.com"] * 2
    [mail] = await mail_sink.wait_for(1)
    assert mail.rcpt_tos == ("busy@example.com",)


async def test_temporary_refusal_gives_up_after_three_attempts(mail_sink: MailSink) -> None:
    mail_sink.refuse_recipient("busy@example.com", "451 4.3.0 Try again later")
    settings = settings_for(mail_sink, email_to=("busy@example.com",))

    [outcome] = await Notifier.from_settings(settings, retry=FAST_RETRY).send(
        "subject", "body", [], ""
    )

    assert not outcome.delivered
    assert "451" in outcome.error and "3 attempts" in outcome.error
    assert mail_sink.refused_recipients() == ["busy@example.com"] * 3


async def test_partly_refused_recipients_are_reported(mail_sink: MailSink) -> None:
    mail_sink.refuse_recipient("gone@example.com", "550 5.1.1 No such user")
    settings = settings_for(mail_sink, email_to=("oncall@example.com", "gone@example.com"))

    [outcome] = await Notifier.from_settings(settings, retry=FAST_RETRY).send(
        "subject", "body", [], ""
    )

    # Delivered to someone, so no retry (it would duplicate), but the refusal is named.
    assert outcome.delivered
    assert "gone@example.com" in outcome.error and "550" in outcome.error
    [mail] = await mail_sink.wait_for(1)
    assert mail.rcpt_tos == ("oncall@example.com",)


async def test_read_mailbox_reads_what_the_sink_wrote(mail_sink: MailSink) -> None:
    notifier = Notifier.from_settings(settings_for(mail_sink), retry=FAST_RETRY)
    for n in range(3):
        await notifier.send(f"message {n}", f"body {n}", [], f"inc-{n}")
    received = await mail_sink.wait_for(3)

    # What another process would see: only the files.
    messages = read_mailbox(mail_sink.directory)

    assert [m["Subject"] for m in messages] == ["message 0", "message 1", "message 2"]
    assert [m[INCIDENT_HEADER] for m in messages] == ["inc-0", "inc-1", "inc-2"]
    assert [m.get_content() for m in messages] == ["body 0\n", "body 1\n", "body 2\n"]
    assert [m["X-RcptTo"] for m in messages] == ["oncall@example.com"] * 3
    assert [m["X-MailFrom"] for m in messages] == ["kubernaut@localhost"] * 3
    assert sorted(p.name for p in mail_sink.directory.iterdir()) == sorted(
        m.path.name for m in received
    )


async def test_settings_from_environment(
    mail_sink: MailSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "SMTP_HOST": mail_sink.host,
        "SMTP_PORT": str(mail_sink.port),
        "SMTP_FROM": "Kubernaut <bot@cluster.example>",
        "EMAIL_TO": " oncall@example.com, ,sre@example.com,",
        "SMTP_PASSWORD": "hunter2",
    }
    for key, value in env.items():
        monkeypatch.setenv(ENV_PREFIX + key, value)

    settings = NotificationSettings()

    assert settings.email_to == ("oncall@example.com", "sre@example.com")
    assert settings.smtp_starttls is False
    assert settings.smtp_timeout_seconds == 10
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    with pytest.raises(Exception, match="frozen"):
        settings.smtp_port = 1

    # The sink offers no AUTH; deliver without credentials, as a dev stack would.
    monkeypatch.delenv(ENV_PREFIX + "SMTP_PASSWORD")
    notifier = Notifier.from_settings(NotificationSettings())
    assert notifier.channels() == [
        ChannelInfo("email", ChannelKind.EMAIL, ("oncall@example.com", "sre@example.com"))
    ]
    assert await notifier.send("from env", "body", ["email"], "") == [
        DeliveryOutcome("email", True)
    ]
    [mail] = await mail_sink.wait_for(1)
    assert mail.mail_from == "bot@cluster.example"
    assert mail.message["From"] == "Kubernaut <bot@cluster.example>"


# -- incident events as the service renders them, from its environment -----------------------

EVIL_RUNBOOK = "https://evil.example/runbooks/fix-it-now"
GOOD_RUNBOOK = "https://runbooks.example.com/kubernetes/kubepodcrashlooping"
# What mail clients turn into links in plain text: a scheme, "www.", a bare domain name.
LINKABLE = re.compile(
    r"(?i)\b(?:https?|ftp|file|mailto|javascript|data):\S+|\bwww\.\S+"
    r"|\b[a-z0-9-]+(?:\.[a-z0-9-]+)+\b"
)


def incident_event(
    kind: notification_pb2.IncidentEventKind.ValueType, runbook: str, stages: list[str]
) -> notification_pb2.NotifyIncidentEventRequest:
    event = notification_pb2.IncidentEvent(
        incident_id=str(uuid.uuid4()),
        kind=kind,
        alert=alert_pb2.Alert(
            name="KubePodCrashLooping",
            status=alert_pb2.ALERT_STATUS_FIRING,
            labels={"severity": "warning", "namespace": "shop"},
            annotations={"summary": "Pod is crash looping.", "runbook_url": runbook},
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout"),
        stages=stages,
    )
    event.alert.starts_at.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    event.occurred_at.FromDatetime(dt.datetime.now(dt.UTC))
    kind_name = notification_pb2.IncidentEventKind.Name(kind).removeprefix("INCIDENT_EVENT_KIND_")
    return notification_pb2.NotifyIncidentEventRequest(
        event=event, idempotency_key=f"{event.incident_id}/{kind_name.lower()}"
    )


async def test_incident_mail_says_what_happened_and_links_only_allowed_hosts(
    runtime_settings: RuntimeSettings,
    monkeypatch: pytest.MonkeyPatch,
    mail_sink: MailSink,
    database_dsn: str,
) -> None:
    # The service as deployed: every setting from its environment, read once at start.
    env = {
        "SMTP_HOST": mail_sink.host,
        "SMTP_PORT": str(mail_sink.port),
        "EMAIL_TO": "oncall@example.com",
        "DATABASE_URL": database_dsn,
        "LINK_HOSTS": "runbooks.example.com",
    }
    for key, value in env.items():
        monkeypatch.setenv(ENV_PREFIX + key, value)
    monkeypatch.delenv("KUBERNAUT_DATABASE_URL", raising=False)
    running = await start_service(
        ServiceName.NOTIFICATION,
        runtime_settings.model_copy(update={"grpc_port": 0}),
        serve_metrics=False,
    )
    # Each event from the service that sends it: declines from the alert processor,
    # results from the workflow.
    addresses = {ServiceName.NOTIFICATION: running.address}
    callers = [
        Clients(runtime_settings, account, addresses=addresses)
        for account in ("alert-processor", "workflow")
    ]
    try:
        declined = incident_event(
            notification_pb2.INCIDENT_EVENT_KIND_NOT_ACTED_ON,
            EVIL_RUNBOOK,
            ["No rule handles alert KubePodCrashLooping for this workload"],
        )
        declined.event.verdict = "not acted on"
        undone = incident_event(
            notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK,
            GOOD_RUNBOOK,
            [
                "apply: rollout restarted (generation 4)",
                "verify: failed: timed out after 120s: 0/3 ready",
                "rollback: restored spec.template from the snapshot (generation 5)",
            ],
        )
        undone.event.action = "restart_deployment"
        for clients, request in zip(callers, (declined, undone), strict=True):
            stub = clients.stub(notification_pb2_grpc.NotificationServiceStub)
            response = await stub.NotifyIncidentEvent(request)
            assert response.sent and [r.delivered for r in response.results] == [True]
        received = await mail_sink.wait_for(2)
    finally:
        for clients in callers:
            await clients.close()
        await running.shutdown()

    mails = {mail.message[INCIDENT_HEADER]: mail.message for mail in received}
    decline = mails[declined.event.incident_id]
    # As a mail client shows it (Python folds a long Subject after "Subject:").
    assert " ".join(str(decline["Subject"]).split()) == (
        "[kubernaut] Not acted on: KubePodCrashLooping on Deployment shop/checkout"
    )
    body = decline.get_content()
    assert body.startswith(
        "Kubernaut saw KubePodCrashLooping on Deployment shop/checkout and did not act on it."
    )
    assert (
        "Why it was not acted on\n  - No rule handles alert KubePodCrashLooping for this workload\n"
    ) in body
    # The evil runbook is labelled, defanged, and nothing in the mail is linkable to it.
    assert (
        "  Runbook (from the alert's annotations): hxxps://evil[.]example/runbooks/fix-it-now\n"
        "    (not a link: host not on KUBERNAUT_NOTIFICATION_LINK_HOSTS)\n"
    ) in body
    assert not [link for link in LINKABLE.findall(body) if "evil" in link]

    rolled_back = mails[undone.event.incident_id]
    assert " ".join(str(rolled_back["Subject"]).split()) == (
        "[kubernaut] Fix failed, undone: KubePodCrashLooping on Deployment shop/checkout "
        "still broken, needs a person"
    )
    body = rolled_back.get_content()
    assert body.startswith(
        "KubePodCrashLooping on Deployment shop/checkout is still broken and needs a person."
    )
    # On the allow-list: shown as it is, and still said to come from the alert.
    assert f"  Runbook (from the alert's annotations): {GOOD_RUNBOOK}\n" in body
    assert "not a link" not in body
