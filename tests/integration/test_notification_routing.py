"""Routed incident events through the real outbox (PostgreSQL): each channel its route
chose gets the event once; a channel that failed is tried again alone, a 429 waits its
Retry-After, a refused configuration is not tried again; a process killed mid-send leaves
the channels that answered answered, and the redelivery sends to the others only.
SendNotification's free text reaches the routing file's email channels."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import json_format
from kubernaut.notification.v1 import notification_pb2
from kubernaut.notification.v1.notification_pb2_grpc import NotificationServiceStub

from kubernaut.devstack.smtp import MailSink
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.notification.channels import Notifier
from kubernaut.services.notification.dispatch import Dispatcher, router_of
from kubernaut.services.notification.outbox import Delivery, DeliveryStatus, Outbox, Routed
from kubernaut.services.notification.rendering import EventRenderer
from kubernaut.services.notification.settings import NotificationSettings
from tests.fixtures.scripted_http import Answer
from tests.fixtures.waiting import eventually
from tests.fixtures.webhook_loopback import SECRET, WebhookReceiver, status
from tests.integration.test_notification_events import make_event

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


@dataclass
class Routing:
    outbox: Outbox
    dispatcher: Dispatcher
    notifier: Notifier
    mail: MailSink
    hooks: WebhookReceiver
    dsn: str
    routes: Path

    async def deliver(self, key: str, incident: str = "inc-1") -> Delivery:
        event = make_event(incident)
        notice = self.dispatcher.notice(key, event)
        return await self.outbox.deliver_once(
            key,
            notice.message,
            self.notifier,
            incident_id=incident,
            event_kind="INCIDENT_EVENT_KIND_SUCCEEDED",
            routed=Routed(notice, json_format.MessageToJson(event), self.dispatcher),
        )

    async def channels(self, key: str) -> dict[str, tuple[str, int, str]]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT channel, status, attempts, last_error FROM notification.deliveries"
                " WHERE idempotency_key = $1",
                key,
            )
        finally:
            await conn.close()
        return {r["channel"]: (r["status"], r["attempts"], r["last_error"]) for r in rows}


@pytest.fixture
async def routing(
    database_dsn: str, mail_sink: MailSink, receiver: WebhookReceiver, tmp_path: Path
) -> AsyncIterator[Routing]:
    secret = tmp_path / "webhook-secret"
    secret.write_text(SECRET + "\n")
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        f"""
channels:
  oncall: {{type: email, to: [oncall@example.com]}}
  hooks: {{type: webhook, url: "{receiver.hook_url}", secret_file: "{secret}"}}
route:
  channels: [oncall, hooks]
"""
    )
    settings = NotificationSettings(
        smtp_host="127.0.0.1", smtp_port=mail_sink.port, smtp_timeout_seconds=5
    )
    outbox = await Outbox.connect(database_dsn)
    await outbox.migrate()
    async with httpx.AsyncClient(timeout=5) as http:
        router = router_of(settings, http, routes)
        assert router is not None
        dispatcher = Dispatcher(router, EventRenderer())
        try:
            yield Routing(
                outbox, dispatcher, Notifier([]), mail_sink, receiver, database_dsn, routes
            )
        finally:
            await outbox.close()


async def test_each_channel_gets_the_event_once_and_a_repeat_sends_nothing(
    routing: Routing,
) -> None:
    first = await routing.deliver("wf-1/succeeded")
    assert first.sent and first.entry.status is DeliveryStatus.SENT
    assert len(routing.mail.messages()) == 1
    assert list(routing.hooks.events) == ["wf-1/succeeded"]
    assert await routing.channels("wf-1/succeeded") == {
        "oncall": ("sent", 1, ""),
        "hooks": ("sent", 1, ""),
    }
    again = await routing.deliver("wf-1/succeeded")
    assert not again.sent
    assert len(routing.mail.messages()) == 1
    assert routing.hooks.deliveries == ["wf-1/succeeded"]


async def test_a_channel_that_failed_is_tried_again_alone(routing: Routing) -> None:
    routing.hooks.script(status(503))
    first = await routing.deliver("wf-2/succeeded")
    assert first.entry.status is DeliveryStatus.FAILED
    channels = await routing.channels("wf-2/succeeded")
    assert channels["oncall"] == ("sent", 1, "")
    assert channels["hooks"][:2] == ("failed", 1) and "503" in channels["hooks"][2]

    second = await routing.deliver("wf-2/succeeded")
    assert second.entry.status is DeliveryStatus.SENT
    # The mail went once; only the webhook was tried again.
    assert len(routing.mail.messages()) == 1
    assert await routing.channels("wf-2/succeeded") == {
        "oncall": ("sent", 1, ""),
        "hooks": ("sent", 2, ""),
    }
    assert list(routing.hooks.events) == ["wf-2/succeeded"]


async def test_a_429_waits_its_retry_after_and_a_refusal_is_not_tried_again(
    routing: Routing,
) -> None:
    routing.hooks.script(status(429, retry_after="3600"))
    await routing.deliver("wf-3/succeeded")
    assert (await routing.channels("wf-3/succeeded"))["hooks"][:2] == ("failed", 1)
    # Within the hour it asked for, the webhook is not called again.
    await routing.deliver("wf-3/succeeded")
    assert (await routing.channels("wf-3/succeeded"))["hooks"][:2] == ("failed", 1)
    assert routing.hooks.deliveries == ["wf-3/succeeded"]

    routing.hooks.script(status(410))
    done = await routing.deliver("wf-4/succeeded", incident="inc-4")
    hooks = (await routing.channels("wf-4/succeeded"))["hooks"]
    assert hooks[:2] == ("permanent", 1) and "410" in hooks[2]
    # Nothing is left to send: the mail went, the webhook refused for good.
    assert done.entry.status is DeliveryStatus.SENT
    await routing.deliver("wf-4/succeeded", incident="inc-4")
    assert (await routing.channels("wf-4/succeeded"))["hooks"][:2] == ("permanent", 1)
    assert SECRET not in json.dumps(await routing.channels("wf-4/succeeded"))


async def test_the_channels_and_routes_are_listed(routing: Routing) -> None:
    router = routing.dispatcher.router
    assert router.describe() == ["0: match everything -> oncall, hooks"]
    # The webhook's host only: a path can carry a token.
    assert router.channels["hooks"].destinations() == (routing.hooks.url.rstrip("/") + "/",)


# A notification process that delivers one routed event, as the service does.
_DELIVER = """
import asyncio, sys
from pathlib import Path
import httpx
from google.protobuf import json_format
from kubernaut.notification.v1 import notification_pb2
from kubernaut.services.notification.channels import Notifier
from kubernaut.services.notification.dispatch import Dispatcher, router_of
from kubernaut.services.notification.outbox import Outbox, Routed
from kubernaut.services.notification.rendering import EventRenderer
from kubernaut.services.notification.settings import NotificationSettings

async def main() -> None:
    dsn, routes, port, key, event_json = sys.argv[1:6]
    settings = NotificationSettings(smtp_host="127.0.0.1", smtp_port=int(port))
    outbox = await Outbox.connect(dsn)
    async with httpx.AsyncClient(timeout=120) as http:
        dispatcher = Dispatcher(router_of(settings, http, Path(routes)), EventRenderer())
        event = json_format.Parse(event_json, notification_pb2.IncidentEvent())
        notice = dispatcher.notice(key, event)
        await outbox.deliver_once(
            key, notice.message, Notifier([]), incident_id=event.incident_id,
            event_kind="INCIDENT_EVENT_KIND_SUCCEEDED",
            routed=Routed(notice, event_json, dispatcher),
        )

asyncio.run(main())
"""


async def test_a_crash_mid_send_redelivers_only_the_channel_that_had_not_answered(
    routing: Routing,
) -> None:
    # Channels are sent in name order: the mail first, then the webhook, which takes the
    # request and answers only after the process is gone.
    routes = routing.routes.with_name("crash-routes.yaml")
    routes.write_text(
        routing.routes.read_text()
        .replace("oncall:", "a-mail:")
        .replace("hooks:", "z-hooks:")
        .replace("[oncall, hooks]", "[a-mail, z-hooks]")
    )
    routing.hooks.script(Answer(200, {"ok": True}, delay=30))
    key = "wf-5/succeeded"
    event = make_event("inc-5")
    event_json = json_format.MessageToJson(event)
    argv = [sys.executable, "-c", _DELIVER, routing.dsn, str(routes)]
    argv += [str(routing.mail.port), key, event_json]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await eventually(
            lambda: _true(len(routing.mail.messages()) == 1 and routing.hooks.deliveries),
            "the mail sent and the webhook called",
            60,
        )
    finally:
        process.kill()  # a crash: no clean-up, no outcome recorded for the webhook
        await process.wait()
    channels = await routing.channels(key)
    assert channels["a-mail"][0] == "sent" and channels["z-hooks"][0] == "pending", channels

    # The redelivery (or a caller's repeat) after the crash: the mail is not sent again.
    async with httpx.AsyncClient(timeout=5) as http:
        settings = NotificationSettings(smtp_host="127.0.0.1", smtp_port=routing.mail.port)
        router = router_of(settings, http, routes)
        assert router is not None
        dispatcher = Dispatcher(router, EventRenderer())
        notice = dispatcher.notice(key, event)
        delivery = await routing.outbox.deliver_once(
            key,
            notice.message,
            routing.notifier,
            incident_id="inc-5",
            event_kind="INCIDENT_EVENT_KIND_SUCCEEDED",
            routed=Routed(notice, event_json, dispatcher),
        )
    assert delivery.entry.status is DeliveryStatus.SENT
    assert len(routing.mail.messages()) == 1
    assert (await routing.channels(key))["z-hooks"][0] == "sent"
    # The webhook call in flight at the crash arrives again, with the same event id:
    # receivers keep it once (X-Kubernaut-Event).
    assert routing.hooks.deliveries == [key, key]
    assert list(routing.hooks.events) == [key]


async def _true(value: object) -> bool | None:
    return True if value else None


async def test_send_notification_reaches_the_routing_files_email_channels_only(
    runtime_settings: RuntimeSettings, mail_sink: MailSink, tmp_path: Path
) -> None:
    token = tmp_path / "slack-token"
    token.write_text("xoxb-1-2-abc\n")
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        f"""
channels:
  oncall: {{type: email, to: [oncall@example.com]}}
  ops: {{type: slack, bot_token_file: "{token}", channel: C0123456789}}
route:
  channels: [oncall, ops]
"""
    )
    env = {
        "KUBERNAUT_NOTIFICATION_ROUTES_FILE": str(routes),
        "KUBERNAUT_NOTIFICATION_SMTP_HOST": "127.0.0.1",
        "KUBERNAUT_NOTIFICATION_SMTP_PORT": str(mail_sink.port),
        "KUBERNAUT_NOTIFICATION_EMAIL_TO": "",
        "KUBERNAUT_DATABASE_URL": "",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        running = await start_service(
            ServiceName.NOTIFICATION,
            runtime_settings.model_copy(update={"grpc_port": 0}),
            serve_metrics=False,
        )
    clients = Clients(runtime_settings, addresses={ServiceName.NOTIFICATION: running.address})
    try:
        notifications = clients.stub(NotificationServiceStub)
        sent = await notifications.SendNotification(
            notification_pb2.SendNotificationRequest(
                subject="drill", body="a test", channels=["oncall"]
            )
        )
        assert [(r.channel, r.delivered) for r in sent.results] == [("oncall", True)]
        (mail,) = mail_sink.messages()
        assert mail.message["To"] == "oncall@example.com"
        # A Slack channel takes incident events through the routes, not free text: said so.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await notifications.SendNotification(
                notification_pb2.SendNotificationRequest(
                    subject="drill", body="a test", channels=["oncall", "ops"]
                )
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "'ops' is a slack channel" in (refused.value.details() or "")
        assert len(mail_sink.messages()) == 1  # nothing half-sent
    finally:
        await clients.close()
        await running.shutdown()
