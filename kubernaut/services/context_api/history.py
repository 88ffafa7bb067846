"""The past that bears on an incident: similar past incidents and how they were handled,
how each action has worked for the incident's alert name, and whether the incident's
workload and alert recur after fixes. Read from storage and effectiveness (which asks
intelligence), cached briefly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc
from kubernaut.common.v1 import remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.runtime.cache import TtlCache
from kubernaut.services.alerts import alert_family

DEFAULT_LIMIT = 5


class UnknownIncident(LookupError):
    def __init__(self, incident_id: str) -> None:
        super().__init__(f"incident {incident_id} is not known to storage")


class IncidentStore(Protocol):
    """The storage calls history needs (a StorageServiceStub satisfies it)."""

    def GetIncident(self, request: storage_pb2.GetIncidentRequest, **kwargs: Any) -> Any: ...

    def SearchSimilarIncidents(
        self, request: storage_pb2.SearchSimilarIncidentsRequest, **kwargs: Any
    ) -> Any: ...


class EffectivenessSource(Protocol):
    """The effectiveness call history needs (an EffectivenessServiceStub satisfies it)."""

    def GetActionEffectiveness(
        self, request: effectiveness_pb2.GetActionEffectivenessRequest, **kwargs: Any
    ) -> Any: ...


def past_actions(found: storage_pb2.GetIncidentResponse) -> list[context_api_pb2.PastAction]:
    """Each recorded action of an incident with the verdict of its latest assessment."""
    latest: dict[str, storage_pb2.Assessment] = {}
    for assessment in found.assessments:  # oldest first, so the last one wins
        latest[assessment.action_id] = assessment
    actions = []
    for record in found.actions:
        assessed = latest.get(record.action_id)
        actions.append(
            context_api_pb2.PastAction(
                action=record.action,
                outcome=record.outcome,
                verdict=assessed.verdict if assessed else remediation_pb2.VERDICT_UNKNOWN,
            )
        )
    return actions


def past_incident(
    similar: storage_pb2.SimilarIncident, found: storage_pb2.GetIncidentResponse
) -> context_api_pb2.PastIncident:
    incident = similar.incident
    past = context_api_pb2.PastIncident(
        incident_id=incident.incident_id,
        alert_name=incident.alert_name,
        subject=incident.subject,
        status=incident.status,
        status_reason=incident.status_reason,
        distance=similar.distance,
        actions=past_actions(found),
    )
    if incident.HasField("opened_at"):
        past.opened_at.CopyFrom(incident.opened_at)
    return past


class IncidentHistoryReader:
    """Reads through the storage and effectiveness clients; answers are cached for `ttl`
        seconds per (incident, limit). An unknown incident raises UnknownIncident; other
    errors of the calls propagate unchanged."""

    def __init__(
        self,
        storage: IncidentStore,
        effectiveness: EffectivenessSource,
        ttl: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.effectiveness = effectiveness
        self.cache: TtlCache[tuple[str, int], context_api_pb2.IncidentHistory] = TtlCache(
            ttl, clock
        )

    async def history(self, incident_id: str, limit: int = 0) -> context_api_pb2.IncidentHistory:
        limit = limit or DEFAULT_LIMIT
        return await self.cache.get((incident_id, limit), lambda: self._read(incident_id, limit))

    async def _read(self, incident_id: str, limit: int) -> context_api_pb2.IncidentHistory:
        try:
            found = await self.storage.GetIncident(
                storage_pb2.GetIncidentRequest(incident_id=incident_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                raise UnknownIncident(incident_id) from error
            raise
        alert_name = found.incident.alert_name
        similar, effectiveness = await asyncio.gather(
            self.storage.SearchSimilarIncidents(
                # Only the past of the same kind of object and, where known, the same
                # family of alerts: a node's crash loops say nothing about a Deployment.
                storage_pb2.SearchSimilarIncidentsRequest(
                    incident_id=incident_id,
                    limit=limit,
                    subject_kind=found.incident.subject.kind,
                    alert_names=alert_family(alert_name),
                )
            ),
            # With the subject: also whether its alert recurs after fixes.
            self.effectiveness.GetActionEffectiveness(
                effectiveness_pb2.GetActionEffectivenessRequest(
                    alert_name=alert_name, subject=found.incident.subject
                )
            ),
        )
        details = await asyncio.gather(
            *(
                self.storage.GetIncident(
                    storage_pb2.GetIncidentRequest(incident_id=entry.incident.incident_id)
                )
                for entry in similar.incidents
            )
        )
        history = context_api_pb2.IncidentHistory(
            incident_id=incident_id,
            alert_name=alert_name,
            similar_incidents=[
                past_incident(entry, detail)
                for entry, detail in zip(similar.incidents, details, strict=True)
            ],
            action_effectiveness=effectiveness.actions,
            embedding_model=similar.embedding_model,
            similar_unavailable_reason=similar.unavailable_reason,
        )
        if effectiveness.HasField("recurrence"):
            history.recurrence.CopyFrom(effectiveness.recurrence)
        history.recurrence_unavailable_reason = effectiveness.recurrence_unavailable_reason
        return history
