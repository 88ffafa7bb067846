"""Redelivery: messages the outbox took but no channel delivered are attempted again in
the background, so that a notification is not lost because the mail server was down when
the workflow asked (an approval request above all: nobody would know a workflow waits).

Every `interval_seconds` the sweep asks the outbox for messages due again (failed ones
after a backoff doubling from `first_backoff_seconds` up to `max_backoff_seconds`, and
pending ones an attempt left behind), and delivers each through `Outbox.deliver_once`
with the message stored first: the same row lock and attempt count as a caller's repeat,
so a replica's sweep, another replica's and a caller's repeat never deliver one message
twice. A message stops being attempted after `max_attempts` attempts or `max_age_seconds`;
`kubernaut_notification_undelivered` keeps counting it, for an alert.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from google.protobuf import json_format
from kubernaut.notification.v1 import notification_pb2
from prometheus_client import Counter, Gauge

from kubernaut.runtime.leases import ClaimLoop
from kubernaut.services.notification.channels import Notifier
from kubernaut.services.notification.dispatch import Dispatcher
from kubernaut.services.notification.outbox import (
    DeliveryStatus,
    OutboxDatabase,
    OutboxEntry,
    OutboxUnavailable,
    Routed,
)
from kubernaut.services.notification.settings import RedeliverySettings

log = logging.getLogger(__name__)

REDELIVERIES: Final = Counter(
    "kubernaut_notification_redeliveries_total",
    "Background attempts to deliver a message no channel took before, by result (sent, "
    "failed, skipped: another attempt of it was in progress or delivered it first).",
    ["result"],
)
UNDELIVERED: Final = Gauge(
    "kubernaut_notification_undelivered",
    "Messages the outbox took that no channel delivered yet, including those no longer "
    "attempted (too old, too many attempts): alert when it stays above zero.",
)


@dataclass(frozen=True)
class Sweep:
    """What one sweep did."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0


class Redelivery:
    def __init__(
        self,
        outbox: OutboxDatabase,
        notifier: Notifier,
        settings: RedeliverySettings,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.outbox = outbox
        self.notifier = notifier
        self.settings = settings
        # Routed events (stored with their event) go to the channels their route chose.
        self.dispatcher = dispatcher
        self._loop = ClaimLoop(
            "notification-redelivery",
            self._sweep_round,
            log=log,
            store="notification outbox",
            poll_seconds=settings.interval_seconds,
            unavailable=OutboxUnavailable,
            start_idle=True,
        )

    def start(self) -> None:
        if self.settings.interval_seconds > 0:
            self._loop.start()

    async def stop(self) -> None:
        """Stop sweeping. A delivery in progress finishes and records (the outbox waits for
        it when it closes)."""
        await self._loop.stop()

    async def _sweep_round(self) -> bool:
        await self.sweep()
        return False  # what is still due waits for the next sweep (its backoff)

    async def sweep(self) -> Sweep:
        """Attempt every message due again, once; count what is still undelivered."""
        outbox = await self.outbox.outbox()
        sent = failed = skipped = 0
        if self.notifier.channels() or self.dispatcher is not None:
            for entry in await outbox.due(self.settings.policy(), self.settings.batch):
                try:
                    delivery = await outbox.deliver_once(
                        entry.idempotency_key,
                        entry.message,
                        self.notifier,
                        incident_id=entry.incident_id,
                        event_kind=entry.event_kind,
                        routed=self._routed(entry),
                    )
                except OutboxUnavailable as error:
                    # Its attempt in progress elsewhere held the row past the lock timeout.
                    log.info("redelivery skipped", extra={"error": str(error)})
                    skipped += 1
                    REDELIVERIES.labels("skipped").inc()
                    continue
                if delivery.sent:
                    result, sent = "sent", sent + 1
                elif delivery.entry.status is DeliveryStatus.SENT:
                    result, skipped = "skipped", skipped + 1  # a caller's repeat was first
                else:
                    result, failed = "failed", failed + 1
                REDELIVERIES.labels(result).inc()
                log.log(
                    logging.WARNING if result == "failed" else logging.INFO,
                    f"notification redelivery: {result}",
                    extra={
                        "idempotency_key": entry.idempotency_key,
                        "incident_id": entry.incident_id,
                        "attempt": delivery.entry.attempts,
                        "error": delivery.entry.last_error,
                    },
                )
        UNDELIVERED.set(await outbox.undelivered())
        return Sweep(sent, failed, skipped)

    def _routed(self, entry: OutboxEntry) -> Routed | None:
        """A routed event again, from the event stored with it (None for rows stored
        before routing, which email delivers as then)."""
        if entry.event is None or self.dispatcher is None:
            return None
        event = json_format.Parse(entry.event, notification_pb2.IncidentEvent())
        notice = self.dispatcher.notice(entry.idempotency_key, event)
        return Routed(notice, entry.event, self.dispatcher)
