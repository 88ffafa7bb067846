"""What happens to one alert the gateway hands over, without gRPC: triage, the subject's
owner and state, the incident (opened, counted, resolved, or a storm's), the analysis of
the alert that opened it, and what people are told. Every call to another service goes
through `Downstream`, whose gRPC form is in server.py."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Final, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.ai_analysis.v1 import ai_analysis_pb2
from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.notification.v1 import notification_pb2
from kubernaut.storage.v1 import storage_pb2
from opentelemetry import trace

from kubernaut.runtime.logs import incident_id_var
from kubernaut.runtime.validation import violations_of
from kubernaut.services.alert_processor.processing import triage
from kubernaut.services.alerts import dedup_key_of, incident_key_of

log = logging.getLogger(__name__)


class ClosedMeanwhile(Exception):
    """The incident was closed by someone else first."""


class SubjectGone(Exception):
    """The cluster says the alert's object does not exist."""


class UnknownIncident(Exception):
    """Storage has no incident with the id the gateway named."""


class NotDelivered(Exception):
    """The notification service did not take the message."""


class Downstream(Protocol):
    """The calls the pipeline makes. Errors other than the ones named propagate (the
    gateway hands the alert over again)."""

    async def resource_context(
        self, subject: alert_pb2.ResourceRef
    ) -> context_api_pb2.ResourceContext | None:
        """None when the cluster cannot say; SubjectGone when the object does not exist."""
        ...

    async def open_incident(
        self, request: storage_pb2.OpenIncidentRequest
    ) -> storage_pb2.OpenIncidentResponse: ...

    async def update_incident(self, request: storage_pb2.UpdateIncidentRequest) -> None:
        """ClosedMeanwhile when the incident is closed."""
        ...

    async def resolve_incident(
        self, request: storage_pb2.ResolveIncidentRequest
    ) -> storage_pb2.ResolveIncidentResponse:
        """UnknownIncident for an unknown id."""
        ...

    async def record_dropped_alert(
        self, request: storage_pb2.RecordDroppedAlertRequest
    ) -> storage_pb2.RecordDroppedAlertResponse: ...

    async def analyze_incident(
        self, request: ai_analysis_pb2.AnalyzeIncidentRequest
    ) -> ai_analysis_pb2.AnalyzeIncidentResponse: ...

    async def notify_incident_event(
        self, request: notification_pb2.NotifyIncidentEventRequest
    ) -> None:
        """NotDelivered when the notification service did not take it."""
        ...


# The statuses after which an incident's alerts resolving ends it for people, who are told
# (RESOLVED: pages resolve, tickets close): closed by the resolution (nothing acted on it),
# or left to people (not acted on, refused, escalated, a failed fix). Not while a workflow
# acts (its outcome tells), nor after a remediation (its message ended the incident).
ENDED_BY_RESOLUTION: Final = frozenset(
    {
        storage_pb2.INCIDENT_STATUS_RESOLVED,
        storage_pb2.INCIDENT_STATUS_NO_ACTION,
        storage_pb2.INCIDENT_STATUS_FAILED,
    }
)


def opened_stages(quiet_period: str) -> list[str]:
    """The stages of an OPENED event: what happens next, and why a new incident when the
    quiet period after a fix decided it."""
    stages = ["analysing: Kubernaut is working out whether and how to fix it"]
    if quiet_period:
        stages.append(quiet_period[:2048])
    return stages


def resolved_stages(incident: storage_pb2.Incident) -> list[str]:
    """The stages of a RESOLVED event: that every alert resolved, and how the incident
    stood."""
    when = ""
    if incident.HasField("alert_resolved_at"):
        at = incident.alert_resolved_at.ToDatetime(tzinfo=dt.UTC)
        when = f" at {at:%Y-%m-%d %H:%M:%S} UTC"
    stages = [f"every alert of the incident resolved{when}"]
    if incident.status == storage_pb2.INCIDENT_STATUS_RESOLVED:
        stages.append("nothing was done: it resolved before anything acted on it")
    elif incident.status_reason:
        stages.append(f"it was left to people: {incident.status_reason}"[:2048])
    return stages


def _trace_id() -> str:
    span = trace.get_current_span().get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else ""


class AlertPipeline:
    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream

    async def process(
        self, request: alert_processor_pb2.ProcessAlertRequest
    ) -> alert_processor_pb2.ProcessAlertResponse:
        alert = request.alert
        result = triage(alert)
        # Until an incident key is known, the answer names the gateway's key.
        response = alert_processor_pb2.ProcessAlertResponse(
            fingerprint=request.dedup_key or dedup_key_of(alert),
            disposition=result.disposition,
            reason=result.reason,
            subject=result.subject,
        )
        if alert.status == alert_pb2.ALERT_STATUS_RESOLVED:
            if request.incident_id:
                response.incident_id, response.reason = await self._resolve(request)
            return response
        if (
            result.disposition != remediation_pb2.ALERT_DISPOSITION_ANALYZED
            or result.subject is None
        ):
            if result.drop_reason != storage_pb2.ALERT_DROP_REASON_UNSPECIFIED:
                return await self._drop(
                    response, alert, result.drop_reason, result.reason, result.subject
                )
            return response
        if request.storm_id:
            return await self._count_in_storm(request, result.subject, response)

        try:
            found = await self.downstream.resource_context(result.subject)
        except SubjectGone as gone:
            return await self._drop(
                response,
                alert,
                storage_pb2.ALERT_DROP_REASON_SUBJECT_NOT_FOUND,
                f"the object it names does not exist: {gone}",
                result.subject,
            )
        subject = found.workload if found is not None and found.workload.name else result.subject
        response.subject.CopyFrom(subject)
        response.fingerprint = incident_key_of(alert, subject)
        opened = await self.downstream.open_incident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=response.fingerprint,
                alert=alert,
                subject=subject,
                trace_id=_trace_id(),
                # Tells a new failure from the old one within the quiet period after a fix.
                workload_state=found.state
                if found is not None and found.HasField("state")
                else None,
            )
        )
        incident = opened.incident
        response.incident_id = incident.incident_id
        incident_id_var.set(incident.incident_id)
        if opened.quiet_period:
            response.reason = f"firing; {opened.quiet_period}"
        if not opened.created:
            response.disposition = remediation_pb2.ALERT_DISPOSITION_DUPLICATE
            open_or_closed = (
                "open" if incident.status == storage_pb2.INCIDENT_STATUS_OPEN else "closed"
            )
            response.reason = opened.quiet_period or (
                f"counted on {open_or_closed} incident {incident.incident_id} "
                f"({incident.occurrences} alerts so far)"
            )
            if incident.status != storage_pb2.INCIDENT_STATUS_OPEN:
                return response
            # Still OPEN: the analysis of the alert that opened it may have failed (and
            # that alert's retry is this duplicate). Analysing again is safe: an incident
            # has at most one workflow; telling again is too: the key sends it once.

        # Sent as the analysis starts, not before it: a slow channel must not delay the fix.
        # The notification service delivers an incident's events one at a time in the order
        # they come, so this one (sent first) opens the Slack thread or the ticket.
        telling = asyncio.create_task(
            self._tell(
                incident.incident_id,
                notification_pb2.INCIDENT_EVENT_KIND_OPENED,
                alert,
                incident.subject if incident.HasField("subject") else subject,
                opened_stages(opened.quiet_period if opened.created else ""),
                "not analysed yet",
            )
        )
        await asyncio.sleep(0)  # its request goes out first
        try:
            # The evidence read above travels with the incident when it is about the same
            # workload, so the analysis need not read it again.
            evidence = found if found is not None and found.workload == incident.subject else None
            analyzed = await self.downstream.analyze_incident(
                ai_analysis_pb2.AnalyzeIncidentRequest(incident=incident, evidence=evidence)
            )
        finally:
            # Told before anything else is (it never raises).
            await telling
        response.analysis.CopyFrom(analyzed.analysis)
        response.workflow_id = analyzed.workflow_id
        if analyzed.analysis.decision != remediation_pb2.DECISION_REMEDIATE:
            try:
                await self._update_incident(
                    incident.incident_id,
                    storage_pb2.INCIDENT_STATUS_NO_ACTION,
                    "; ".join(analyzed.analysis.reasons),
                )
            except ClosedMeanwhile:
                return response
            # A decline is news too: people learn that the alert was seen and why nothing
            # was done, as they do of a refusal.
            await self._tell(
                incident.incident_id,
                notification_pb2.INCIDENT_EVENT_KIND_NOT_ACTED_ON,
                alert,
                subject,
                [reason[:2048] for reason in analyzed.analysis.reasons[:64]],
                "not acted on",
            )
        return response

    async def _drop(
        self,
        response: alert_processor_pb2.ProcessAlertResponse,
        alert: alert_pb2.Alert,
        reason_code: storage_pb2.AlertDropReason.ValueType,
        reason: str,
        subject: alert_pb2.ResourceRef | None,
    ) -> alert_processor_pb2.ProcessAlertResponse:
        """Record the alert as dropped, with why, before answering: an accepted alert is
        an incident or a recorded drop, never nothing. A storage outage fails the call, so
        the gateway hands the alert over again."""
        if subject is not None and violations_of(subject):
            # Labels no object could have (a pipeline or informational alert is dropped
            # before they are checked): the alert itself is kept, the subject is not.
            subject = None
        recorded = await self.downstream.record_dropped_alert(
            storage_pb2.RecordDroppedAlertRequest(
                dedup_key=response.fingerprint,
                alert=alert,
                reason_code=reason_code,
                reason=reason[:4096],
                subject=subject,
            )
        )
        response.disposition = remediation_pb2.ALERT_DISPOSITION_FILTERED
        response.reason = f"{reason}; recorded as dropped alert {recorded.dropped.drop_id}"
        log.info(
            "alert dropped",
            extra={
                "alert": alert.name,
                "why": storage_pb2.AlertDropReason.Name(reason_code),
                "drop_id": recorded.dropped.drop_id,
            },
        )
        return response

    async def _resolve(self, request: alert_processor_pb2.ProcessAlertRequest) -> tuple[str, str]:
        """Resolve the incident the gateway named: (incident_id, what happened)."""
        alert = request.alert
        try:
            resolved = await self.downstream.resolve_incident(
                storage_pb2.ResolveIncidentRequest(
                    incident_id=request.incident_id,
                    resolved_at=alert.ends_at if alert.HasField("ends_at") else None,
                )
            )
        except UnknownIncident:
            return "", f"the alert is resolved; incident {request.incident_id} is unknown"
        incident = resolved.incident
        if resolved.closed:
            why = "closed: every alert of it resolved before anything acted on it"
        else:
            status = storage_pb2.IncidentStatus.Name(incident.status)
            why = f"marked resolved, left {status}"
        if incident.status in ENDED_BY_RESOLUTION:
            # Not only when this call closed it: a repeat of this alert (the gateway's retry)
            # tells again, and the key sends it once.
            await self._tell(
                incident.incident_id,
                notification_pb2.INCIDENT_EVENT_KIND_RESOLVED,
                alert,
                incident.subject,
                resolved_stages(incident),
                "resolved: the alert stopped firing",
            )
        return incident.incident_id, f"the alert is resolved; incident {incident.incident_id} {why}"

    async def _count_in_storm(
        self,
        request: alert_processor_pb2.ProcessAlertRequest,
        subject: alert_pb2.ResourceRef,
        response: alert_processor_pb2.ProcessAlertResponse,
    ) -> alert_processor_pb2.ProcessAlertResponse:
        """List the alert's subject on the storm's one incident. A storm is left to people:
        one alert on many resources at once has a shared cause that acting on each
        resource would not fix (and acting on all at once could make worse)."""
        alert = request.alert
        opened = await self.downstream.open_incident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=request.storm_id, alert=alert, subject=subject, trace_id=_trace_id()
            )
        )
        incident = opened.incident
        incident_id_var.set(incident.incident_id)
        response.fingerprint = request.storm_id
        response.incident_id = incident.incident_id
        response.disposition = remediation_pb2.ALERT_DISPOSITION_STORM
        response.reason = f"listed on storm incident {incident.incident_id}"
        if opened.created:
            with contextlib.suppress(ClosedMeanwhile):
                await self._update_incident(
                    incident.incident_id,
                    storage_pb2.INCIDENT_STATUS_OPEN,
                    f"storm: {alert.name} fires on many resources at once; a shared cause is "
                    "likely, so nothing is done to each one; the affected resources are "
                    "listed on the incident",
                )
            await self._tell(
                incident.incident_id,
                notification_pb2.INCIDENT_EVENT_KIND_STORM,
                alert,
                subject,
                ["listed on the storm's one incident; nothing done to each"],
                "left to people",
            )
        return response

    async def _tell(
        self,
        incident_id: str,
        kind: notification_pb2.IncidentEventKind.ValueType,
        alert: alert_pb2.Alert,
        subject: alert_pb2.ResourceRef,
        stages: list[str],
        verdict: str,
    ) -> None:
        """People are told once per incident and kind (the key makes a repeat send
        nothing). Best effort: the alert is taken whether or not the message goes out,
        since a retry of it would count it twice; the notification service's outbox
        delivers what it took later."""
        occurred_at = Timestamp()
        occurred_at.GetCurrentTime()
        name = notification_pb2.IncidentEventKind.Name(kind).removeprefix("INCIDENT_EVENT_KIND_")
        try:
            await self.downstream.notify_incident_event(
                notification_pb2.NotifyIncidentEventRequest(
                    idempotency_key=f"{incident_id}/{name.lower()}",
                    event=notification_pb2.IncidentEvent(
                        incident_id=incident_id,
                        kind=kind,
                        alert=alert,
                        target=subject,
                        stages=stages,
                        verdict=verdict,
                        occurred_at=occurred_at,
                    ),
                )
            )
        except NotDelivered as error:
            log.warning(
                "notification not delivered",
                extra={"incident_id": incident_id, "kind": name, "code": str(error)},
            )

    async def _update_incident(
        self, incident_id: str, status: storage_pb2.IncidentStatus.ValueType, reason: str
    ) -> None:
        await self.downstream.update_incident(
            storage_pb2.UpdateIncidentRequest(
                incident_id=incident_id, status=status, status_reason=reason[:4096]
            )
        )
