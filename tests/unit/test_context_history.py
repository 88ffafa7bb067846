"""context_api's incident history reader, on in-memory sources."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.services.context_api.history import IncidentHistoryReader, UnknownIncident

NOW_ID = "00000000-0000-4000-8000-000000000001"
PAST_ID = "00000000-0000-4000-8000-000000000002"
SUBJECT = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web")


class Sources:
    """Storage and effectiveness as the reader sees them; counts the calls. `recurrence`
    is what effectiveness says of the subject's alert recurring (or why it could not)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.recurrence: intelligence_pb2.RecurringIncident | str | None = None

    async def GetIncident(self, request: storage_pb2.GetIncidentRequest, **_: Any) -> Any:
        self.calls.append(f"GetIncident {request.incident_id}")
        if request.incident_id not in (NOW_ID, PAST_ID):
            raise AioRpcError(grpc.StatusCode.NOT_FOUND, Metadata(), Metadata(), "no such")
        found = storage_pb2.GetIncidentResponse(
            incident=storage_pb2.Incident(
                incident_id=request.incident_id, alert_name="KubePodCrashLooping", subject=SUBJECT
            )
        )
        if request.incident_id == PAST_ID:
            for n, outcome in enumerate(
                [storage_pb2.ACTION_OUTCOME_FAILED, storage_pb2.ACTION_OUTCOME_SUCCEEDED]
            ):
                found.actions.add(action_id=f"a{n}", action="restart_deployment", outcome=outcome)
            found.assessments.add(action_id="a1", verdict=remediation_pb2.VERDICT_UNKNOWN)
            found.assessments.add(action_id="a1", verdict=remediation_pb2.VERDICT_EFFECTIVE)
        return found

    async def SearchSimilarIncidents(
        self, request: storage_pb2.SearchSimilarIncidentsRequest, **_: Any
    ) -> Any:
        self.calls.append(f"SearchSimilarIncidents {request.limit}")
        past = storage_pb2.Incident(
            incident_id=PAST_ID,
            alert_name="KubePodCrashLooping",
            subject=SUBJECT,
            status=storage_pb2.INCIDENT_STATUS_REMEDIATED,
        )
        past.opened_at.FromSeconds(1_700_000_000)
        return storage_pb2.SearchSimilarIncidentsResponse(
            incidents=[storage_pb2.SimilarIncident(incident=past, distance=0.04)],
            embedding_model="minilm",
        )

    async def GetActionEffectiveness(
        self, request: effectiveness_pb2.GetActionEffectivenessRequest, **_: Any
    ) -> Any:
        self.calls.append(f"GetActionEffectiveness {request.alert_name}")
        assert request.subject == SUBJECT
        found = effectiveness_pb2.GetActionEffectivenessResponse(
            alert_name=request.alert_name,
            actions=[effectiveness_pb2.ActionEffectiveness(action="restart_deployment")],
        )
        if isinstance(self.recurrence, str):
            found.recurrence_unavailable_reason = self.recurrence
        elif self.recurrence is not None:
            found.recurrence.CopyFrom(self.recurrence)
        return found


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_history_joins_each_past_action_with_its_latest_verdict() -> None:
    sources = Sources()
    history = await IncidentHistoryReader(sources, sources).history(NOW_ID)
    assert history.alert_name == "KubePodCrashLooping"
    assert history.embedding_model == "minilm"
    [past] = history.similar_incidents
    assert (past.incident_id, past.distance, past.subject) == (PAST_ID, 0.04, SUBJECT)
    assert past.status == storage_pb2.INCIDENT_STATUS_REMEDIATED
    assert past.opened_at.seconds == 1_700_000_000
    assert [(a.outcome, a.verdict) for a in past.actions] == [
        (storage_pb2.ACTION_OUTCOME_FAILED, remediation_pb2.VERDICT_UNKNOWN),
        (storage_pb2.ACTION_OUTCOME_SUCCEEDED, remediation_pb2.VERDICT_EFFECTIVE),
    ]
    assert [e.action for e in history.action_effectiveness] == ["restart_deployment"]
    assert "SearchSimilarIncidents 5" in sources.calls  # 0 means the default


async def test_answers_are_cached_briefly_then_read_again() -> None:
    sources, clock = Sources(), Clock()
    reader = IncidentHistoryReader(sources, sources, ttl=3.0, clock=clock)
    first = await reader.history(NOW_ID)
    calls = len(sources.calls)
    assert await reader.history(NOW_ID) == first
    assert len(sources.calls) == calls
    clock.now = 3.5
    await reader.history(NOW_ID)
    assert len(sources.calls) == 2 * calls


async def test_expired_answers_are_dropped_so_the_cache_does_not_grow() -> None:
    sources, clock = Sources(), Clock()
    reader = IncidentHistoryReader(sources, sources, ttl=1.0, clock=clock)
    await reader.history(NOW_ID, limit=1)
    await reader.history(NOW_ID, limit=2)
    clock.now = 5.0
    await reader.history(NOW_ID, limit=3)
    assert reader.cache.keys() == [(NOW_ID, 3)]


async def test_an_unknown_incident_is_named() -> None:
    sources = Sources()
    with pytest.raises(UnknownIncident, match="incident nope is not known"):
        await IncidentHistoryReader(sources, sources).history("nope")


async def test_a_recurring_workload_is_in_the_history_and_an_outage_is_said() -> None:
    sources = Sources()
    assert not (await IncidentHistoryReader(sources, sources).history(NOW_ID)).HasField(
        "recurrence"
    )
    recurring = intelligence_pb2.RecurringIncident(
        subject=SUBJECT, alert_name="KubePodCrashLooping", incidents=4, fixes_not_held=3
    )
    sources.recurrence = recurring
    history = await IncidentHistoryReader(sources, sources).history(NOW_ID)
    assert history.recurrence == recurring
    sources.recurrence = "intelligence: UNAVAILABLE: down"
    history = await IncidentHistoryReader(sources, sources).history(NOW_ID)
    # The rest of the history stands.
    assert history.recurrence_unavailable_reason == "intelligence: UNAVAILABLE: down"
    assert len(history.similar_incidents) == 1
