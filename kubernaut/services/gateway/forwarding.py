"""The gateway's forwarder: hands queued alerts to the alert processor and counts
duplicates on their incidents, in the background of every replica.

Replicas share the queue: a row is claimed for a lease, forwarded, then deleted, so each
accepted alert reaches the alert processor once (twice only if a replica dies after the
alert processor answered and before the row was deleted; the alert processor counts such
a repeat on the incident, it does not act twice). Nothing accepted is lost: a failure
that may pass is retried with backoff for as long as it takes, and only an alert the
alert processor refuses as malformed is set aside (kept, never retried).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc
from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.storage.v1 import storage_pb2
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge

from kubernaut.runtime.leases import ClaimLoop
from kubernaut.services.gateway.backend import Intake, IntakeSource, IntakeUnavailable, QueuedAlert
from kubernaut.services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

FORWARDED = Counter(
    "kubernaut_gateway_forwarded_total",
    "Queued alerts handed on by the forwarder, by kind and result.",
    ["kind", "result"],
)
QUEUE_DEPTH = Gauge(
    "kubernaut_gateway_queue_depth", "Accepted alerts not yet taken by the alert processor."
)
QUEUE_OLDEST = Gauge(
    "kubernaut_gateway_queue_oldest_seconds", "Age of the oldest alert waiting to be forwarded."
)


class ProcessAlert(Protocol):
    """alert_processor's ProcessAlert stub method; `timeout` is the call's gRPC deadline
    (without one, the runtime's default deadline for calls, far shorter, would apply)."""

    def __call__(
        self, request: alert_processor_pb2.ProcessAlertRequest, *, timeout: float
    ) -> Awaitable[alert_processor_pb2.ProcessAlertResponse]: ...


CountIncidentAlerts = Callable[
    [storage_pb2.CountIncidentAlertsRequest], Awaitable[storage_pb2.CountIncidentAlertsResponse]
]

# How often the queue depth is measured and finished lives are forgotten.
_GAUGE_INTERVAL = 5.0
_HOUSEKEEPING_INTERVAL = 600.0


class Forwarder:
    def __init__(
        self,
        database: IntakeSource,
        process_alert: ProcessAlert,
        count_incident_alerts: CountIncidentAlerts,
        settings: GatewaySettings,
    ) -> None:
        self.database = database
        self.process_alert = process_alert
        self.count_incident_alerts = count_incident_alerts
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.forward_concurrency)
        self._next_count = 0.0
        self._next_gauge = 0.0
        self._next_housekeeping = 0.0
        # What a forward came to that the database was down to record (by queue row): a
        # forward done, a retry's backoff. Recorded first thing once it answers, instead
        # of leaving the row leased by this replica until its lease runs out.
        self._unrecorded: dict[int, Callable[[Intake], Awaitable[None]]] = {}
        self._loop = ClaimLoop(
            "gateway-forwarder",
            self.run_once,
            log=log,
            store="forwarder's database",
            poll_seconds=settings.forward_poll_seconds,
            unavailable=IntakeUnavailable,
            next_poll=self._next_poll,
            backoff=self._backoff,
        )

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        """Stop taking rows; rows in flight keep their lease and are taken again after it
        by any replica, so stopping loses nothing."""
        await self._loop.stop()

    def wake(self, due_in: float = 0.0) -> None:
        """New rows were queued by this replica, due in `due_in` seconds: look for them
        then rather than at the next poll. An idle forwarder that looks by then anyway is
        left alone (a held alert is due only after the hold: waking for each would cost a
        query per request)."""
        self._loop.wake(due_in)

    def _backoff(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failures: doubling from 1 s, capped."""
        return min(self.settings.forward_max_backoff_seconds, 0.5 * 2.0 ** min(attempts, 8))

    async def _next_poll(self) -> float:
        """Until the next queued row is due (a held alert, a retry's backoff)."""
        due = await (await self.database.store()).next_due_in()
        return self.settings.forward_poll_seconds if due is None else max(due, 0.01)

    async def run_once(self) -> bool:
        """Forward what is due, count what is uncounted, keep house; True when it forwarded
        something (there may be more)."""
        store = await self.database.store()
        if self._unrecorded:
            await self._record_unrecorded()
        claimed = await store.claim(
            self.settings.forward_batch, self.settings.forward_lease_seconds
        )
        if claimed:
            await asyncio.gather(*(self._forward(queued) for queued in claimed))
        now = time.monotonic()
        if now >= self._next_count:
            self._next_count = now + self.settings.count_interval_seconds
            await self.count_duplicates()
        if now >= self._next_gauge:
            self._next_gauge = now + _GAUGE_INTERVAL
            depth, oldest = await store.queue_depth()
            QUEUE_DEPTH.set(depth)
            QUEUE_OLDEST.set(oldest)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + _HOUSEKEEPING_INTERVAL
            removed = await store.forget_finished()
            if removed:
                log.info("forgot finished alert lives", extra={"count": removed})
        return bool(claimed)

    async def _forward(self, queued: QueuedAlert) -> None:
        # Continues the trace of the request that queued it: one trace per incident, from
        # the webhook on.
        parent = propagate.extract({"traceparent": queued.trace_context})
        with _tracer.start_as_current_span(f"forward {queued.kind} alert", context=parent):
            result = await self._forward_in_span(queued)
        FORWARDED.labels(queued.kind, result).inc()

    async def _forward_in_span(self, queued: QueuedAlert) -> str:
        store = await self.database.store()
        async with self._slots:
            try:
                if queued.kind == "resolved":
                    result = await self._forward_resolution(queued)
                else:
                    response = await asyncio.wait_for(
                        self.process_alert(
                            alert_processor_pb2.ProcessAlertRequest(
                                alert=queued.alert,
                                storm_id=queued.storm_id,
                                dedup_key=queued.fingerprint,
                            ),
                            timeout=self.settings.forward_timeout_seconds,
                        ),
                        self.settings.forward_timeout_seconds,
                    )
                    await self._record(queued, lambda s: s.forwarded(queued, response.incident_id))
                    result = "forwarded"
                    log.info(
                        "alert forwarded",
                        extra={
                            "fingerprint": queued.fingerprint,
                            "incident_id": response.incident_id,
                            "disposition": response.disposition,
                        },
                    )
            except grpc.aio.AioRpcError as error:
                message = f"{error.code().name}: {error.details()}"
                if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    log.error(
                        "the alert processor refused a queued alert; set aside",
                        extra={"fingerprint": queued.fingerprint, "error": message},
                    )
                    await store.give_up(queued, message)
                    result = "refused"
                else:
                    await self._retry_later(queued, message)
                    result = "retry"
            except TimeoutError:
                await self._retry_later(queued, "timed out")
                result = "retry"
        return result

    async def _retry_later(self, queued: QueuedAlert, error: str) -> None:
        delay = self._backoff(queued.attempts)
        log.warning(
            "forwarding failed; will retry",
            extra={
                "fingerprint": queued.fingerprint,
                "error": error,
                "attempt": queued.attempts,
                "retry_in_seconds": delay,
            },
        )
        await self._record(queued, lambda store: store.retry_later(queued, error, delay))

    async def _record(
        self, queued: QueuedAlert, write: Callable[[Intake], Awaitable[None]]
    ) -> None:
        """`write` what came of forwarding `queued`; kept for the next round when the
        database is down (IntakeUnavailable still raised: the round fails and backs off)."""
        try:
            await write(await self.database.store())
        except IntakeUnavailable:
            self._unrecorded[queued.row_id] = write
            raise

    async def _record_unrecorded(self) -> None:
        """What an outage kept from the record, recorded now (a retried row is due after its
        backoff)."""
        store = await self.database.store()
        for row_id, write in list(self._unrecorded.items()):
            await write(store)
            del self._unrecorded[row_id]

    async def _forward_resolution(self, queued: QueuedAlert) -> str:
        """Resolve the incident once the last of its fingerprints resolved."""
        store = await self.database.store()
        incident_id, still_firing = await store.resolution_target(queued)
        if incident_id and not still_firing:
            await asyncio.wait_for(
                self.process_alert(
                    alert_processor_pb2.ProcessAlertRequest(
                        alert=queued.alert, incident_id=incident_id
                    ),
                    timeout=self.settings.forward_timeout_seconds,
                ),
                self.settings.forward_timeout_seconds,
            )
            result = "resolved"
        else:
            # No incident (the alert was filtered), or others of it still fire.
            result = "dropped"
        await self._record(queued, lambda s: s.forwarded(queued, ""))
        return result

    async def count_duplicates(self) -> None:
        """Add the duplicates counted since the last time to their incidents. An incident
        found closed ends the lives of its fingerprints: the next alert is new work."""
        store = await self.database.store()
        async with store.counting_lease() as held:
            if held:  # else another replica is counting these very rows
                await self._count(store)

    async def _count(self, store: Intake) -> None:
        by_incident: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for fingerprint, incident_id, count in await store.uncounted(500):
            by_incident[incident_id].append((fingerprint, count))
        for incident_id, counts in by_incident.items():
            try:
                counted = await self.count_incident_alerts(
                    storage_pb2.CountIncidentAlertsRequest(
                        incident_id=incident_id, count=sum(c for _, c in counts)
                    )
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.NOT_FOUND:
                    # The incident is gone (storage was reset): start afresh.
                    await store.counted(incident_id, counts, incident_closed=True)
                else:
                    log.warning(
                        "cannot count duplicates yet",
                        extra={"incident_id": incident_id, "error": error.code().name},
                    )
                continue
            closed = counted.incident.HasField("closed_at")
            await store.counted(incident_id, counts, incident_closed=closed)
