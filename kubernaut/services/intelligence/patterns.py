"""What each intelligence RPC computes: read the history it needs from storage (reads),
hand it to the plain logic modules, with the settings' defaults for what the request left
unset. No gRPC server types here: the servicer validates and maps, this computes."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kubernaut.common.v1 import alert_pb2
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.services.intelligence import reads
from kubernaut.services.intelligence.anomalies import Anomalies, find_anomalies
from kubernaut.services.intelligence.clusters import Clusters, incident_clusters
from kubernaut.services.intelligence.insights import (
    DEFAULT_TOP,
    DEFAULT_WINDOW,
    InsightPolicy,
    handled_by_people,
    insight_report,
)
from kubernaut.services.intelligence.recurring import recurring_incidents
from kubernaut.services.intelligence.settings import IntelligenceSettings
from kubernaut.services.intelligence.stats import action_stats

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Recurring:
    recurring: list[intelligence_pb2.RecurringIncident]
    truncated: bool


class Patterns:
    """The intelligence service's computations over storage's history."""

    def __init__(
        self,
        storage: StorageServiceStub,
        settings: IntelligenceSettings,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock

    async def action_stats(self, alert_name: str) -> list[intelligence_pb2.ActionStats]:
        """How each action fared for `alert_name`, over its newest max_action_records."""
        read = await reads.actions_since(
            self.storage, _EPOCH, self.settings.max_action_records, alert_name
        )
        return action_stats(
            read.items,
            min_attempts=self.settings.min_attempts,
            trend=self.settings.trend_policy(),
            now=self.clock(),
        )

    async def recurring(
        self,
        *,
        subject: alert_pb2.ResourceRef | None = None,
        alert_name: str = "",
        window_seconds: int = 0,
        min_incidents: int = 0,
    ) -> Recurring:
        """The recurring incidents of the window (0: the settings' defaults)."""
        window = dt.timedelta(seconds=window_seconds or self.settings.recurring_window_seconds)
        since = self.clock() - window
        incidents = await reads.incidents_since(
            self.storage,
            since,
            self.settings.max_incidents,
            alert_name=alert_name,
            subject=subject,
        )
        actions = await reads.actions_since(
            self.storage, since, self.settings.max_action_records, alert_name
        )
        found = recurring_incidents(
            incidents.items,
            actions.items,
            min_incidents=min_incidents or self.settings.recurring_min_incidents,
        )
        return Recurring(found, incidents.truncated or actions.truncated)

    async def clusters(
        self, *, window_seconds: int = 0, max_incidents: int = 0, min_cluster_size: int = 0
    ) -> Clusters:
        """The clusters of the most recent embedded incidents (0: the settings' defaults)."""
        window = dt.timedelta(seconds=window_seconds or self.settings.cluster_window_seconds)
        read = await reads.embeddings_since(
            self.storage,
            self.clock() - window,
            max_incidents or self.settings.cluster_max_incidents,
        )
        # Seconds of CPU for thousands of incidents: off the event loop.
        return await asyncio.to_thread(
            incident_clusters, read.items, min_cluster_size or self.settings.cluster_min_size
        )

    async def anomalies(self) -> Anomalies:
        """The anomalous incident rates of the last bucket."""
        policy = self.settings.anomaly_policy()
        now = self.clock()
        read = await reads.incidents_since(
            self.storage, now - policy.history, self.settings.max_incidents
        )
        return find_anomalies(read.items, now, policy)

    async def insights(
        self, *, window_seconds: int = 0, top: int = 0
    ) -> intelligence_pb2.InsightReport:
        """The report of the window before now (0: a week; top 0: 5 rows a table)."""
        end = self.clock()
        start = end - (dt.timedelta(seconds=window_seconds) if window_seconds else DEFAULT_WINDOW)
        limit_incidents = self.settings.max_incidents
        incidents = await reads.incidents_since(self.storage, start, limit_incidents)
        actions = await reads.actions_since(self.storage, start, self.settings.max_action_records)
        people = await reads.people_entries_since(self.storage, start, limit_incidents)
        return insight_report(
            incidents.items,
            actions.items,
            handled_by_people(people.items),
            window_start=start,
            window_end=end,
            top=top or DEFAULT_TOP,
            policy=InsightPolicy(
                min_attempts=self.settings.min_attempts,
                min_incidents=self.settings.recurring_min_incidents,
                minutes_per_manual_incident=self.settings.minutes_per_manual_incident,
            ),
            truncated=incidents.truncated or actions.truncated or people.truncated,
        )
