"""notification: tells people what Kubernaut saw and did, on the configured channels."""

from __future__ import annotations

from typing import Any

import grpc
from kubernaut.notification.v1 import notification_pb2, notification_pb2_grpc

from services.notification.channels import (
    ChannelKind,
    NoChannelConfigured,
    Notifier,
    UnknownChannel,
)
from services.runtime.interceptors import abort_invalid
from services.runtime.server import ServiceContext, ServiceSpec

_KINDS = {ChannelKind.EMAIL: notification_pb2.CHANNEL_KIND_EMAIL}


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    async def ListChannels(
        self, request: notification_pb2.ListChannelsRequest, context: Any
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
        self, request: notification_pb2.SendNotificationRequest, context: Any
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
        return notification_pb2.SendNotificationResponse(
            results=[
                notification_pb2.DeliveryResult(
                    channel=outcome.channel, delivered=outcome.delivered, error=outcome.error
                )
                for outcome in outcomes
            ]
        )


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(NotificationServicer(Notifier.from_settings()))
