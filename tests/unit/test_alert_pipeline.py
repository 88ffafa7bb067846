"""The alert processor's pipeline without gRPC: what it asks of the other services for
each kind of alert, through a Downstream that records the calls."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
from kubernaut.ai_analysis.v1 import ai_analysis_pb2
from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.notification.v1 import notification_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.services.alert_processor.pipeline import (
    AlertPipeline,
    NotDelivered,
    SubjectGone,
    UnknownIncident,
)
from kubernaut.services.alerts import dedup_key_of, incident_key_of


@dataclass
class RecordingDownstream:
    """Answers as the services would, and keeps every request."""

    context: context_api_pb2.ResourceContext | None = None
    gone: bool = False
    decision: remediation_pb2.Decision.ValueType = remediation_pb2.DECISION_NO_ACTION
    notification_down: bool = False
    incident_known: bool = True
    # What OpenIncident answers: a new incident, or one it counted the alert on (its status).
    created: bool = True
    counted_on: storage_pb2.IncidentStatus.ValueType = storage_pb2.INCIDENT_STATUS_OPEN
    # What ResolveIncident answers: the incident's status after it, and whether it closed it.
    resolved_status: storage_pb2.IncidentStatus.ValueType = storage_pb2.INCIDENT_STATUS_RESOLVED
    closed: bool = True
    calls: list[tuple[str, object]] = field(default_factory=list)

    async def resource_context(
        self, subject: alert_pb2.ResourceRef
    ) -> context_api_pb2.ResourceContext | None:
        self.calls.append(("resource_context", subject))
        if self.gone:
            raise SubjectGone(f"{subject.kind} {subject.name} does not exist")
        return self.context

    async def open_incident(
        self, request: storage_pb2.OpenIncidentRequest
    ) -> storage_pb2.OpenIncidentResponse:
        self.calls.append(("open_incident", request))
        incident = storage_pb2.Incident(
            incident_id=str(uuid.uuid4()),
            status=storage_pb2.INCIDENT_STATUS_OPEN if self.created else self.counted_on,
            subject=request.subject,
            alert=request.alert,
            occurrences=1 if self.created else 2,
        )
        return storage_pb2.OpenIncidentResponse(incident=incident, created=self.created)

    async def update_incident(self, request: storage_pb2.UpdateIncidentRequest) -> None:
        self.calls.append(("update_incident", request))

    async def resolve_incident(
        self, request: storage_pb2.ResolveIncidentRequest
    ) -> storage_pb2.ResolveIncidentResponse:
        self.calls.append(("resolve_incident", request))
        if not self.incident_known:
            raise UnknownIncident(request.incident_id)
        incident = storage_pb2.Incident(
            incident_id=request.incident_id,
            status=self.resolved_status,
            status_reason=(
                "every alert of the incident resolved before anything acted on it"
                if self.resolved_status == storage_pb2.INCIDENT_STATUS_RESOLVED
                else "No rule handles alert KubePodCrashLooping for this workload"
            ),
            subject=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web"),
        )
        incident.alert_resolved_at.FromSeconds(1_741_944_662)  # 2025-03-14 09:31:02 UTC
        return storage_pb2.ResolveIncidentResponse(incident=incident, closed=self.closed)

    async def record_dropped_alert(
        self, request: storage_pb2.RecordDroppedAlertRequest
    ) -> storage_pb2.RecordDroppedAlertResponse:
        self.calls.append(("record_dropped_alert", request))
        dropped = storage_pb2.DroppedAlert(drop_id="d-1", reason_code=request.reason_code)
        return storage_pb2.RecordDroppedAlertResponse(dropped=dropped, created=True)

    async def analyze_incident(
        self, request: ai_analysis_pb2.AnalyzeIncidentRequest
    ) -> ai_analysis_pb2.AnalyzeIncidentResponse:
        self.calls.append(("analyze_incident", request))
        analysis = remediation_pb2.Analysis(decision=self.decision, reasons=["No rule fits."])
        return ai_analysis_pb2.AnalyzeIncidentResponse(analysis=analysis)

    async def notify_incident_event(
        self, request: notification_pb2.NotifyIncidentEventRequest
    ) -> None:
        self.calls.append(("notify_incident_event", request))
        if self.notification_down:
            raise NotDelivered("UNAVAILABLE")

    def called(self, name: str) -> list[object]:
        return [request for called, request in self.calls if called == name]

    def told(self) -> list[notification_pb2.NotifyIncidentEventRequest]:
        return [
            request
            for called, request in self.calls
            if isinstance(request, notification_pb2.NotifyIncidentEventRequest)
        ]

    def kinds_told(self) -> list[str]:
        return [
            notification_pb2.IncidentEventKind.Name(r.event.kind).removeprefix(
                "INCIDENT_EVENT_KIND_"
            )
            for r in self.told()
        ]


def firing(**labels: str) -> alert_processor_pb2.ProcessAlertRequest:
    name = labels.pop("alertname", "KubePodCrashLooping")
    alert = alert_pb2.Alert(name=name, status=alert_pb2.ALERT_STATUS_FIRING, labels=labels)
    alert.starts_at.GetCurrentTime()
    return alert_processor_pb2.ProcessAlertRequest(alert=alert)


async def test_an_alert_about_no_object_is_recorded_as_dropped_and_nothing_else() -> None:
    downstream = RecordingDownstream()
    response = await AlertPipeline(downstream).process(firing(job="scrape"))
    assert response.disposition == remediation_pb2.ALERT_DISPOSITION_FILTERED
    assert response.reason.endswith("recorded as dropped alert d-1")
    [drop] = downstream.called("record_dropped_alert")
    assert isinstance(drop, storage_pb2.RecordDroppedAlertRequest)
    assert drop.reason_code == storage_pb2.ALERT_DROP_REASON_NO_SUBJECT
    assert drop.dedup_key == response.fingerprint
    assert [name for name, _ in downstream.calls] == ["record_dropped_alert"]


async def test_an_object_that_does_not_exist_is_dropped_before_any_incident() -> None:
    downstream = RecordingDownstream(gone=True)
    response = await AlertPipeline(downstream).process(firing(namespace="shop", deployment="gone"))
    assert "does not exist" in response.reason
    [drop] = downstream.called("record_dropped_alert")
    assert isinstance(drop, storage_pb2.RecordDroppedAlertRequest)
    assert drop.reason_code == storage_pb2.ALERT_DROP_REASON_SUBJECT_NOT_FOUND
    assert drop.subject.name == "gone"
    assert not downstream.called("open_incident")


async def test_the_incident_is_about_the_owning_workload_and_carries_its_state() -> None:
    workload = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web")
    state = remediation_pb2.WorkloadState(generation=3, restarts=7)
    downstream = RecordingDownstream(
        context_api_pb2.ResourceContext(workload=workload, state=state),
        decision=remediation_pb2.DECISION_REMEDIATE,
    )
    response = await AlertPipeline(downstream).process(
        firing(namespace="shop", pod="web-5d8f-abcde")
    )
    assert response.subject == workload
    [opened] = downstream.called("open_incident")
    assert isinstance(opened, storage_pb2.OpenIncidentRequest)
    assert opened.subject == workload and opened.workload_state == state
    assert opened.fingerprint == incident_key_of(opened.alert, workload)
    # What was read travels with the incident: the analysis need not read it again.
    [analysed] = downstream.called("analyze_incident")
    assert isinstance(analysed, ai_analysis_pb2.AnalyzeIncidentRequest)
    assert analysed.evidence.workload == workload and analysed.evidence.state == state
    # Only that it opened: acting is told by the workflow.
    assert downstream.kinds_told() == ["OPENED"]


async def test_a_drop_is_recorded_under_the_gateways_key_as_it_sent_it() -> None:
    downstream = RecordingDownstream()
    request = firing(job="scrape")
    request.dedup_key = "f" * 32
    response = await AlertPipeline(downstream).process(request)
    [drop] = downstream.called("record_dropped_alert")
    assert isinstance(drop, storage_pb2.RecordDroppedAlertRequest)
    assert drop.dedup_key == response.fingerprint == "f" * 32
    # Without one (a caller other than the gateway), the same key is worked out.
    response = await AlertPipeline(downstream).process(firing(job="scrape"))
    assert response.fingerprint == dedup_key_of(firing(job="scrape").alert)


@pytest.mark.parametrize("notification_down", [False, True])
async def test_a_decline_closes_the_incident_and_tells_people_best_effort(
    notification_down: bool,
) -> None:
    downstream = RecordingDownstream(notification_down=notification_down)
    response = await AlertPipeline(downstream).process(
        firing(alertname="KubeHpaMaxedOut", namespace="shop", horizontalpodautoscaler="web")
    )
    assert response.analysis.decision == remediation_pb2.DECISION_NO_ACTION
    [update] = downstream.called("update_incident")
    assert isinstance(update, storage_pb2.UpdateIncidentRequest)
    assert update.status == storage_pb2.INCIDENT_STATUS_NO_ACTION
    opened, told = downstream.told()
    assert opened.event.kind == notification_pb2.INCIDENT_EVENT_KIND_OPENED
    assert told.event.kind == notification_pb2.INCIDENT_EVENT_KIND_NOT_ACTED_ON
    assert told.idempotency_key == f"{response.incident_id}/not_acted_on"
    assert list(told.event.stages) == ["No rule fits."]


async def test_a_resolved_alert_of_an_unknown_incident_says_so() -> None:
    downstream = RecordingDownstream(incident_known=False)
    request = firing(namespace="shop", deployment="web")
    request.alert.status = alert_pb2.ALERT_STATUS_RESOLVED
    request.incident_id = str(uuid.uuid4())
    response = await AlertPipeline(downstream).process(request)
    assert response.incident_id == ""
    assert response.reason.endswith("is unknown")
    assert not downstream.called("analyze_incident")


# -- what people are told of the incident: opened and resolved ---------------------------------


@pytest.mark.parametrize("notification_down", [False, True])
async def test_a_new_incident_is_told_as_the_analysis_starts_best_effort(
    notification_down: bool,
) -> None:
    downstream = RecordingDownstream(
        decision=remediation_pb2.DECISION_REMEDIATE, notification_down=notification_down
    )
    response = await AlertPipeline(downstream).process(firing(namespace="shop", deployment="web"))

    # Told first, as the analysis (which can take long) starts, and analysed even when the
    # notification service did not take it.
    assert [name for name, _ in downstream.calls] == [
        "resource_context",
        "open_incident",
        "notify_incident_event",
        "analyze_incident",
    ]
    [opened] = downstream.told()
    assert opened.idempotency_key == f"{response.incident_id}/opened"
    event = opened.event
    assert event.kind == notification_pb2.INCIDENT_EVENT_KIND_OPENED
    assert event.incident_id == response.incident_id
    assert event.alert.name == "KubePodCrashLooping"
    assert event.target == alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web")
    assert event.verdict == "not analysed yet"
    assert list(event.stages) == ["analysing: Kubernaut is working out whether and how to fix it"]
    assert event.occurred_at.seconds > 0


async def test_an_alert_counted_on_a_closed_incident_is_not_told_as_opened() -> None:
    downstream = RecordingDownstream(
        created=False, counted_on=storage_pb2.INCIDENT_STATUS_REMEDIATED
    )
    response = await AlertPipeline(downstream).process(firing(namespace="shop", deployment="web"))
    assert response.disposition == remediation_pb2.ALERT_DISPOSITION_DUPLICATE
    assert downstream.told() == []
    assert not downstream.called("analyze_incident")


async def test_the_retry_of_the_alert_that_opened_an_incident_tells_it_again_under_its_key() -> (
    None
):
    # Still OPEN: the first attempt's analysis (and perhaps its notification) failed; the
    # notification service sends the key once, so telling again is how a lost one arrives.
    downstream = RecordingDownstream(created=False)
    response = await AlertPipeline(downstream).process(firing(namespace="shop", deployment="web"))
    assert response.disposition == remediation_pb2.ALERT_DISPOSITION_DUPLICATE
    assert downstream.kinds_told() == ["OPENED", "NOT_ACTED_ON"]
    assert downstream.told()[0].idempotency_key == f"{response.incident_id}/opened"


async def test_a_storm_is_told_as_a_storm_not_as_opened() -> None:
    downstream = RecordingDownstream()
    request = firing(namespace="shop", pod="web-1")
    request.storm_id = "storm-" + "a" * 32
    response = await AlertPipeline(downstream).process(request)
    assert response.disposition == remediation_pb2.ALERT_DISPOSITION_STORM
    assert downstream.kinds_told() == ["STORM"]


def resolved_alert(incident_id: str) -> alert_processor_pb2.ProcessAlertRequest:
    request = firing(namespace="shop", deployment="web")
    request.alert.status = alert_pb2.ALERT_STATUS_RESOLVED
    request.incident_id = incident_id
    return request


@pytest.mark.parametrize(
    ("status", "closed", "last_stage"),
    [
        # Closed by this resolution: nothing had acted on it.
        (
            storage_pb2.INCIDENT_STATUS_RESOLVED,
            True,
            "nothing was done: it resolved before anything acted on it",
        ),
        # A repeat of the resolved alert (the gateway's retry): told again, sent once.
        (
            storage_pb2.INCIDENT_STATUS_RESOLVED,
            False,
            "nothing was done: it resolved before anything acted on it",
        ),
        # Left to people before (not acted on, refused, escalated, a failed fix): their page
        # resolves now.
        (
            storage_pb2.INCIDENT_STATUS_NO_ACTION,
            False,
            "it was left to people: No rule handles alert KubePodCrashLooping for this workload",
        ),
        (
            storage_pb2.INCIDENT_STATUS_FAILED,
            False,
            "it was left to people: No rule handles alert KubePodCrashLooping for this workload",
        ),
    ],
)
async def test_the_resolution_that_ends_an_incident_is_told(
    status: storage_pb2.IncidentStatus.ValueType, closed: bool, last_stage: str
) -> None:
    downstream = RecordingDownstream(resolved_status=status, closed=closed)
    incident_id = str(uuid.uuid4())
    response = await AlertPipeline(downstream).process(resolved_alert(incident_id))

    assert response.incident_id == incident_id
    [resolved] = downstream.told()
    assert resolved.idempotency_key == f"{incident_id}/resolved"
    event = resolved.event
    assert event.kind == notification_pb2.INCIDENT_EVENT_KIND_RESOLVED
    assert event.alert.status == alert_pb2.ALERT_STATUS_RESOLVED
    # On the incident's subject (the workload), not only what the alert names.
    assert event.target.kind == "Deployment" and event.target.name == "web"
    assert list(event.stages) == [
        "every alert of the incident resolved at 2025-03-14 09:31:02 UTC",
        last_stage,
    ]
    assert event.verdict == "resolved: the alert stopped firing"


@pytest.mark.parametrize(
    "status",
    [
        # A workflow acts: its outcome tells.
        storage_pb2.INCIDENT_STATUS_REMEDIATING,
        # Remediated: that message already ended the incident on every channel.
        storage_pb2.INCIDENT_STATUS_REMEDIATED,
    ],
)
async def test_a_resolution_that_does_not_end_the_incident_is_not_told(
    status: storage_pb2.IncidentStatus.ValueType,
) -> None:
    downstream = RecordingDownstream(resolved_status=status, closed=False)
    response = await AlertPipeline(downstream).process(resolved_alert(str(uuid.uuid4())))
    assert "marked resolved" in response.reason
    assert downstream.told() == []


async def test_a_resolution_is_recorded_when_telling_fails() -> None:
    downstream = RecordingDownstream(notification_down=True)
    incident_id = str(uuid.uuid4())
    response = await AlertPipeline(downstream).process(resolved_alert(incident_id))
    assert downstream.kinds_told() == ["RESOLVED"]
    assert response.reason == (
        f"the alert is resolved; incident {incident_id} closed: every alert of it resolved "
        "before anything acted on it"
    )
