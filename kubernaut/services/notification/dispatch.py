"""Incident events to routed channels: which channels an event goes to (the routing tree),
and one send on one channel, measured, audited and never raising.

The outbox (outbox.py) decides when to send and keeps what each channel answered; this
module only sends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import httpx
from kubernaut.notification.v1 import notification_pb2
from prometheus_client import Counter, Histogram

from kubernaut.runtime.chat_approvals import LinkSigner
from kubernaut.services.notification.channels import DeliveryRecorder, content_digest
from kubernaut.services.notification.rendering import EventRenderer, EventView
from kubernaut.services.notification.routing import Chosen, Route, Router, load_routing
from kubernaut.services.notification.settings import NotificationSettings
from kubernaut.services.notification.vendors.base import EventKind, Notice, SendResult
from kubernaut.services.notification.vendors.email import EmailConfig
from kubernaut.services.notification.vendors.email import build as build_email

log = logging.getLogger(__name__)

DELIVERIES: Final = Counter(
    "kubernaut_notification_channel_deliveries_total",
    "Sends of incident events per channel, by result: delivered, failed (tried again),"
    " permanent (the vendor refused the configuration) or held (a route's rate limit).",
    ["channel", "vendor", "result"],
)
DELIVERY_SECONDS: Final = Histogram(
    "kubernaut_notification_channel_delivery_seconds",
    "How long one send to a channel took.",
    ["channel", "vendor"],
)

# The proto's event kinds, as routes match them.
EVENT_KINDS: Final = {
    notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED: EventKind.APPROVAL_NEEDED,
    notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED: EventKind.REMEDIATED,
    notification_pb2.INCIDENT_EVENT_KIND_FAILED: EventKind.FAILED,
    notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK: EventKind.ROLLED_BACK,
    notification_pb2.INCIDENT_EVENT_KIND_REFUSED: EventKind.REFUSED,
    notification_pb2.INCIDENT_EVENT_KIND_STORM: EventKind.STORM,
    notification_pb2.INCIDENT_EVENT_KIND_NOT_ACTED_ON: EventKind.NOT_ACTED_ON,
    notification_pb2.INCIDENT_EVENT_KIND_OPENED: EventKind.OPENED,
    notification_pb2.INCIDENT_EVENT_KIND_ACTION_PLANNED: EventKind.ACTION_PLANNED,
    notification_pb2.INCIDENT_EVENT_KIND_ESCALATED: EventKind.ESCALATED,
    notification_pb2.INCIDENT_EVENT_KIND_RESOLVED: EventKind.RESOLVED,
}


class Dispatcher:
    """The routed channels of incident events."""

    def __init__(
        self,
        router: Router,
        renderer: EventRenderer,
        recorder: DeliveryRecorder | None = None,
        links: LinkSigner | None = None,
    ) -> None:
        self.router = router
        self.renderer = renderer
        # Each send (made or failed) goes on the audit trail; None records nothing.
        self._recorder = recorder
        # Signs each channel's approve/reject links; None: approval requests carry none.
        self._links = links

    def notice(self, key: str, event: notification_pb2.IncidentEvent) -> Notice:
        """The event as channels get it (rendering errors raise UnknownEventKind)."""
        return Notice(
            key=key,
            kind=EVENT_KINDS[event.kind],
            view=EventView.of(event, self.renderer.links),
            message=self.renderer.render(event),
            inspect_command=f"kubernaut incidents show {event.incident_id}",
        )

    def choose(self, notice: Notice) -> list[Chosen]:
        return self.router.choose(notice)

    def vendor(self, channel: str) -> str:
        found = self.router.channels.get(channel)
        return found.kind if found is not None else "unknown"

    async def send(self, channel: str, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        """One send on one channel; a channel that is gone from the routing file, or that
        raises, is a failed send with the reason."""
        found = self.router.channels.get(channel)
        if found is None:
            return SendResult(False, f"channel {channel} is no longer configured", permanent=True)
        notice = self._with_links(notice, channel)
        started = time.perf_counter()
        try:
            result = await found.send(notice, thread)
        except Exception as error:  # a channel broke its contract; keep the others going
            log.exception("channel raised while sending", extra={"channel": channel})
            result = SendResult(False, f"internal error: {type(error).__name__}")
        DELIVERY_SECONDS.labels(channel, found.kind).observe(time.perf_counter() - started)
        outcome = "delivered" if result.delivered else "permanent" if result.permanent else "failed"
        DELIVERIES.labels(channel, found.kind, outcome).inc()
        if not result.delivered:
            log.warning(
                "channel did not take the event",
                extra={
                    "channel": channel,
                    "incident_id": notice.incident_id,
                    "error": result.error,
                },
            )
        if self._recorder is not None:
            await self._recorder.record_delivery(
                found.kind,
                len(found.destinations()),
                notice.incident_id,
                content_digest(notice.message.subject, notice.message.body),
                result.delivered,
                result.error,
            )
        return result

    def _with_links(self, notice: Notice, channel: str) -> Notice:
        """An approval request with its links, made for `channel`: whoever uses one is
        recorded as `link:<channel>`. Made at each attempt, so a late redelivery carries
        links that still work."""
        if (
            self._links is None
            or notice.kind is not EventKind.APPROVAL_NEEDED
            or not notice.view.workflow_id
        ):
            return notice
        approve, reject = self._links.links(notice.view.workflow_id, notice.incident_id, channel)
        return dataclasses.replace(notice, approve_url=approve, reject_url=reject)

    def held(self, chosen: Chosen) -> None:
        DELIVERIES.labels(chosen.channel, self.vendor(chosen.channel), "held").inc()


def default_router(settings: NotificationSettings, http: httpx.AsyncClient) -> Router | None:
    """Without a routing file: everything to the email recipients of the settings (None
    when there are none)."""
    if not settings.email_to:
        return None
    email = build_email("email", EmailConfig(type="email", to=settings.email_to), http, settings)
    return Router(Route(channels=("email",)), {"email": email})


def router_of(
    settings: NotificationSettings, http: httpx.AsyncClient, routes_file: Path | None
) -> Router | None:
    """The routing file's router, or the default one."""
    if routes_file is not None:
        return load_routing(routes_file, http, settings)
    return default_router(settings, http)
