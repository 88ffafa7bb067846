"""notification: tells people what Kubernaut saw and did, on the configured channels."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc
import httpx
from google.protobuf import json_format
from kubernaut.notification.v1 import notification_pb2, notification_pb2_grpc

from kubernaut.runtime.database import redact_dsn
from kubernaut.runtime.interceptors import abort_invalid
from kubernaut.runtime.server import Context, ReadinessCheck, ServiceContext, ServiceSpec
from kubernaut.services.notification.channels import (
    DeliveryOutcome,
    NoChannelConfigured,
    Notifier,
    UnknownChannel,
)
from kubernaut.services.notification.dispatch import Dispatcher, router_of
from kubernaut.services.notification.links import LinkPolicy
from kubernaut.services.notification.outbox import (
    InvalidOutboxEntry,
    OutboxDatabase,
    OutboxUnavailable,
    Routed,
)
from kubernaut.services.notification.redelivery import Redelivery
from kubernaut.services.notification.rendering import EventRenderer, UnknownEventKind
from kubernaut.services.notification.settings import (
    NotificationSettings,
    OutboxSettings,
    RedeliverySettings,
)
from kubernaut.services.notification.vendors.email import EmailVendorChannel

log = logging.getLogger(__name__)

# A vendor channel's kind (its `type` in the routing file) as the proto says it.
_KINDS = {
    "email": notification_pb2.CHANNEL_KIND_EMAIL,
    "slack": notification_pb2.CHANNEL_KIND_SLACK,
    "teams": notification_pb2.CHANNEL_KIND_TEAMS,
    "pagerduty": notification_pb2.CHANNEL_KIND_PAGERDUTY,
    "twilio": notification_pb2.CHANNEL_KIND_SMS,
    "servicenow": notification_pb2.CHANNEL_KIND_SERVICENOW,
    "jira": notification_pb2.CHANNEL_KIND_JIRA,
    "webhook": notification_pb2.CHANNEL_KIND_WEBHOOK,
}
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
        dispatcher: Dispatcher | None = None,
    ) -> None:
        # `notifier`: SendNotification's email channels; `dispatcher`: the routed channels
        # of incident events (None: no channel configured).
        self.notifier = notifier
        self.outbox = outbox
        self.dispatcher = dispatcher

    async def ListChannels(
        self, request: notification_pb2.ListChannelsRequest, context: Context
    ) -> notification_pb2.ListChannelsResponse:
        if self.dispatcher is None:
            return notification_pb2.ListChannelsResponse()
        router = self.dispatcher.router
        return notification_pb2.ListChannelsResponse(
            channels=[
                notification_pb2.Channel(
                    name=name,
                    kind=_KINDS.get(channel.kind, notification_pb2.CHANNEL_KIND_UNSPECIFIED),
                    destinations=channel.destinations(),
                )
                for name, channel in sorted(router.channels.items())
            ],
            routes=router.describe(),
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
            routed = self.dispatcher.router.channels if self.dispatcher is not None else {}
            why = f"no channel named {error.name!r}"
            if (found := routed.get(error.name)) is not None:
                why = (
                    f"{error.name!r} is a {found.kind} channel: SendNotification sends free"
                    " text by email only; incident events reach it through the routes"
                )
            await abort_invalid(context, f"channels[{index}]", why)
            raise
        except NoChannelConfigured as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise
        return notification_pb2.SendNotificationResponse(results=_results(outcomes))

    async def NotifyIncidentEvent(
        self, request: notification_pb2.NotifyIncidentEventRequest, context: Context
    ) -> notification_pb2.NotifyIncidentEventResponse:
        dispatcher = self.dispatcher
        if dispatcher is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(NoChannelConfigured()))
            raise AssertionError("unreachable")  # abort raises
        if self.outbox is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no outbox database is configured (KUBERNAUT_DATABASE_URL), so delivery "
                "once per idempotency key cannot be kept",
            )
            raise AssertionError("unreachable")  # abort raises
        event = request.event
        try:
            notice = dispatcher.notice(request.idempotency_key, event)
        except (UnknownEventKind, KeyError) as error:
            await abort_invalid(context, "event.kind", f"no channel can tell of it: {error}")
            raise
        try:
            outbox = await self.outbox.outbox()
            delivery = await outbox.deliver_once(
                request.idempotency_key,
                notice.message,
                self.notifier,
                incident_id=event.incident_id,
                event_kind=notification_pb2.IncidentEventKind.Name(event.kind),
                routed=Routed(notice, json_format.MessageToJson(event), dispatcher),
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
    # Read once: channels, routes and the link allow-list come from the same settings.
    channel_settings = NotificationSettings()
    renderer = EventRenderer(links=LinkPolicy(channel_settings.link_hosts))
    # One HTTP client for every vendor channel (connection reuse); closed at stop.
    http = httpx.AsyncClient(timeout=channel_settings.http_timeout_seconds)
    # A wrong routing file stops the service at start, saying where it is wrong.
    router = router_of(channel_settings, http, channel_settings.routes_file)
    # SendNotification's free text goes by email: the settings' recipients and the routing
    # file's email channels. Each delivery, made now or by the redelivery, is audited.
    routed_email = [
        channel.email
        for channel in (router.channels.values() if router is not None else ())
        if isinstance(channel, EmailVendorChannel)
    ]
    notifier = Notifier.from_settings(channel_settings, recorder=ctx.audit, also=routed_email)
    links = channel_settings.link_signer()
    dispatcher = Dispatcher(router, renderer, ctx.audit, links) if router is not None else None
    if router is not None:
        log.info("notification routes", extra={"routes": router.describe()})
    settings = OutboxSettings()
    readiness: list[tuple[str, ReadinessCheck]] = []
    on_stop: list[Callable[[], Awaitable[None]]] = []
    outbox: OutboxDatabase | None = None
    if settings.database_url:
        # Connects lazily: the service starts NOT_SERVING while PostgreSQL is down.
        outbox = OutboxDatabase(settings.database_url)
        readiness.append(("postgresql", outbox.ready))
        # What a channel did not take is attempted again in the background; stopped before
        # the outbox closes (which lets a delivery in progress record).
        redelivery = Redelivery(outbox, notifier, RedeliverySettings(), dispatcher)
        redelivery.start()
        on_stop += [redelivery.stop, outbox.close]
        log.info("notification outbox configured", extra={"dsn": redact_dsn(outbox.dsn)})
    else:
        log.warning(
            "no database configured: NotifyIncidentEvent is refused until "
            "KUBERNAUT_DATABASE_URL is set"
        )
    on_stop.append(http.aclose)
    return ServiceSpec(
        NotificationServicer(notifier, outbox, dispatcher), readiness=readiness, on_stop=on_stop
    )
