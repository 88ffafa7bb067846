"""notification: tells people what Kubernaut saw and did, on the configured channels."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc
from kubernaut.notification.v1 import notification_pb2, notification_pb2_grpc

from kubernaut.runtime.database import redact_dsn
from kubernaut.runtime.interceptors import abort_invalid
from kubernaut.runtime.server import Context, ReadinessCheck, ServiceContext, ServiceSpec
from kubernaut.services.notification.channels import (
    ChannelKind,
    DeliveryOutcome,
    NoChannelConfigured,
    Notifier,
    UnknownChannel,
)
from kubernaut.services.notification.links import LinkPolicy
from kubernaut.services.notification.outbox import (
    InvalidOutboxEntry,
    OutboxDatabase,
    OutboxUnavailable,
)
from kubernaut.services.notification.redelivery import Redelivery
from kubernaut.services.notification.rendering import EventRenderer, UnknownEventKind
from kubernaut.services.notification.settings import (
    NotificationSettings,
    OutboxSettings,
    RedeliverySettings,
)

log = logging.getLogger(__name__)

_KINDS = {ChannelKind.EMAIL: notification_pb2.CHANNEL_KIND_EMAIL}
# InvalidOutboxEntry.field -> the request field it is about.
_REQUEST_FIELDS = {"idempotency_key": "idempotency_key", "incident_id": "event.incident_id"}


def _results(outcomes: Sequence[DeliveryOutcome]) -> list[notification_pb2.DeliveryResult]:
    return [
        notification_pb2.DeliveryResult(
            channel=outcome.channel, delivered=outcome.delivered, error=outcome.error
        )
        for outcome in outcomes
    ]


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(
        self,
        notifier: Notifier,
        outbox: OutboxDatabase | None = None,
        renderer: EventRenderer | None = None,
    ) -> None:
        self.notifier = notifier
        self.outbox = outbox
        self.renderer = renderer or EventRenderer()

    async def ListChannels(
        self, request: notification_pb2.ListChannelsRequest, context: Context
    ) -> notification_pb2.ListChannelsResponse:
        return notification_pb2.ListChannelsResponse(
            channels=[
                notification_pb2.Channel(
                    name=info.name, kind=_KINDS[info.kind], destinations=info.destinations
                )
                for info in self.notifier.channels()
            ]
        )

    async def SendNotification(
        self, request: notification_pb2.SendNotificationRequest, context: Context
    ) -> notification_pb2.SendNotificationResponse:
        try:
            outcomes = await self.notifier.send(
                request.subject, request.body, list(request.channels), request.incident_id
            )
        except UnknownChannel as error:
            index = list(request.channels).index(error.name)
            await abort_invalid(context, f"channels[{index}]", f"no channel named {error.name!r}")
            raise
        except NoChannelConfigured as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise
        return notification_pb2.SendNotificationResponse(results=_results(outcomes))

    async def NotifyIncidentEvent(
        self, request: notification_pb2.NotifyIncidentEventRequest, context: Context
    ) -> notification_pb2.NotifyIncidentEventResponse:
        if not self.notifier.channels():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(NoChannelConfigured()))
        if self.outbox is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no outbox database is configured (KUBERNAUT_DATABASE_URL), so delivery "
                "once per idempotency key cannot be kept",
            )
            raise AssertionError("unreachable")  # abort raises
        event = request.event
        try:
            message = self.renderer.render(event)
        except UnknownEventKind as error:
            await abort_invalid(context, "event.kind", str(error))
            raise
        try:
            outbox = await self.outbox.outbox()
            delivery = await outbox.deliver_once(
                request.idempotency_key,
                message,
                self.notifier,
                incident_id=event.incident_id,
                event_kind=notification_pb2.IncidentEventKind.Name(event.kind),
            )
        except InvalidOutboxEntry as error:
            await abort_invalid(context, _REQUEST_FIELDS.get(error.field, error.field), str(error))
            raise
        except NoChannelConfigured as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise
        except OutboxUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            raise
        return notification_pb2.NotifyIncidentEventResponse(
            results=_results(delivery.results), sent=delivery.sent
        )


async def build(ctx: ServiceContext) -> ServiceSpec:
    # Read once: channels and the link allow-list come from the same frozen settings.
    channel_settings = NotificationSettings()
    # Each delivery, made now or by the redelivery, goes on the audit trail.
    notifier = Notifier.from_settings(channel_settings, recorder=ctx.audit)
    renderer = EventRenderer(links=LinkPolicy(channel_settings.link_hosts))
    settings = OutboxSettings()
    readiness: list[tuple[str, ReadinessCheck]] = []
    on_stop: list[Callable[[], Awaitable[None]]] = []
    outbox: OutboxDatabase | None = None
    if settings.database_url:
        # Connects lazily: the service starts NOT_SERVING while PostgreSQL is down.
        outbox = OutboxDatabase(settings.database_url)
        readiness.append(("postgresql", outbox.ready))
        # What no channel took is attempted again in the background; stopped before the
        # outbox closes (which lets a delivery in progress record).
        redelivery = Redelivery(outbox, notifier, RedeliverySettings())
        redelivery.start()
        on_stop += [redelivery.stop, outbox.close]
        log.info("notification outbox configured", extra={"dsn": redact_dsn(outbox.dsn)})
    else:
        log.warning(
            "no database configured: NotifyIncidentEvent is refused until "
            "KUBERNAUT_DATABASE_URL is set"
        )
    return ServiceSpec(
        NotificationServicer(notifier, outbox, renderer), readiness=readiness, on_stop=on_stop
    )
