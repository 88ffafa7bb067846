"""intelligence: patterns from history. How each action fared per alert (with its Wilson
interval and trend), recurring incidents whose fix does not hold, clusters of similar
incidents, anomalous incident rates and the weekly insight report. It reads the history
only through storage's API; the logic is in the plain modules beside this one (see
patterns.py), the servicer only hands requests over and builds responses."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.intelligence.v1 import intelligence_pb2, intelligence_pb2_grpc
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.services.intelligence.monitor import AnomalyMonitor, publish
from kubernaut.services.intelligence.patterns import Patterns
from kubernaut.services.intelligence.settings import IntelligenceSettings


def _timestamp(at: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


class IntelligenceServicer(intelligence_pb2_grpc.IntelligenceServiceServicer):
    def __init__(
        self, storage: StorageServiceStub, settings: IntelligenceSettings | None = None
    ) -> None:
        self.patterns = Patterns(storage, settings or IntelligenceSettings())

    async def GetActionStats(
        self, request: intelligence_pb2.GetActionStatsRequest, context: Context
    ) -> intelligence_pb2.GetActionStatsResponse:
        stats = await self.patterns.action_stats(request.alert_name)
        return intelligence_pb2.GetActionStatsResponse(alert_name=request.alert_name, stats=stats)

    async def GetRecurringIncidents(
        self, request: intelligence_pb2.GetRecurringIncidentsRequest, context: Context
    ) -> intelligence_pb2.GetRecurringIncidentsResponse:
        found = await self.patterns.recurring(
            subject=request.subject if request.HasField("subject") else None,
            alert_name=request.alert_name,
            window_seconds=request.window_seconds,
            min_incidents=request.min_incidents,
        )
        return intelligence_pb2.GetRecurringIncidentsResponse(
            recurring=found.recurring, truncated=found.truncated
        )

    async def GetIncidentClusters(
        self, request: intelligence_pb2.GetIncidentClustersRequest, context: Context
    ) -> intelligence_pb2.GetIncidentClustersResponse:
        found = await self.patterns.clusters(
            window_seconds=request.window_seconds,
            max_incidents=request.max_incidents,
            min_cluster_size=request.min_cluster_size,
        )
        return intelligence_pb2.GetIncidentClustersResponse(
            clusters=found.clusters,
            embedding_model=found.embedding_model,
            incidents=found.incidents,
            unclustered=found.unclustered,
        )

    async def GetAnomalies(
        self, request: intelligence_pb2.GetAnomaliesRequest, context: Context
    ) -> intelligence_pb2.GetAnomaliesResponse:
        found = await self.patterns.anomalies()
        publish(found)
        return intelligence_pb2.GetAnomaliesResponse(
            anomalies=found.anomalies,
            bucket_start=_timestamp(found.bucket_start),
            bucket_end=_timestamp(found.bucket_end),
            baseline_buckets=self.patterns.settings.anomaly_baseline_buckets,
        )

    async def GetInsights(
        self, request: intelligence_pb2.GetInsightsRequest, context: Context
    ) -> intelligence_pb2.GetInsightsResponse:
        report = await self.patterns.insights(
            window_seconds=request.window_seconds, top=request.top
        )
        return intelligence_pb2.GetInsightsResponse(report=report)


async def build(ctx: ServiceContext) -> ServiceSpec:
    # Read once; an invalid value stops the service at start, naming the setting.
    settings = IntelligenceSettings()
    servicer = IntelligenceServicer(ctx.clients.stub(StorageServiceStub), settings)
    monitor = AnomalyMonitor(servicer.patterns.anomalies, settings.anomaly_interval_seconds)
    monitor.start()
    return ServiceSpec(servicer, on_stop=[monitor.stop])
