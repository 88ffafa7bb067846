"""context_api: the context other services need to decide."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import aiohttp
import grpc
from kubernaut.context_api.v1 import context_api_pb2, context_api_pb2_grpc
from kubernaut.effectiveness.v1.effectiveness_pb2_grpc import EffectivenessServiceStub
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernetes_asyncio.client.exceptions import ApiException

from kubernaut.runtime.clusters import ClusterRegistry, UnknownCluster
from kubernaut.runtime.interceptors import abort_invalid
from kubernaut.runtime.kube import ClusterNotConfigured
from kubernaut.runtime.prometheus import PrometheusAPI
from kubernaut.runtime.server import Context, ReadinessCheck, ServiceContext, ServiceSpec
from kubernaut.runtime.settings import KubeSettings
from kubernaut.services.context_api import knowledge
from kubernaut.services.context_api.history import IncidentHistoryReader, UnknownIncident
from kubernaut.services.context_api.holmes import HolmesClient, HolmesUnavailable
from kubernaut.services.context_api.logs import LogsUnavailable, NoPods, OutOfScope, PodLogReader
from kubernaut.services.context_api.resources import (
    ResourceContextReader,
    ResourceNotFound,
    UnsupportedKind,
)
from kubernaut.services.context_api.settings import ContextSettings
from kubernaut.services.signals import MetricReader

log = logging.getLogger(__name__)

# GetWorkloadMetrics' "then", when the caller names no window.
DEFAULT_METRICS_WINDOW_SECONDS = 600

T = TypeVar("T")

# An API server that has just started denies for a few seconds what RBAC allows (its
# authorizer's caches are still filling): a denial is read again after these pauses before
# it stands. A denial that stands is FAILED_PRECONDITION, and the alert goes on without
# context, visibly, rather than being held while RBAC is wrong.
FORBIDDEN_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)


async def through_brief_denials(
    read: Callable[[], Awaitable[T]], delays: Sequence[float] = FORBIDDEN_RETRY_DELAYS
) -> T:
    """`read()`, again after each of `delays` while the API server answers 401 or 403."""
    for delay in delays:
        try:
            return await read()
        except ApiException as error:
            if error.status not in (401, 403):
                raise
            log.warning(
                "the cluster denied a read; reading again",
                extra={"status": error.status, "retry_in_seconds": delay},
            )
        await asyncio.sleep(delay)
    return await read()


class ContextAPIServicer(context_api_pb2_grpc.ContextAPIServiceServicer):
    def __init__(
        self,
        clusters: ClusterRegistry,
        history: IncidentHistoryReader,
        settings: ContextSettings,
        holmes: HolmesClient | None = None,
        metrics: MetricReader | None = None,
    ) -> None:
        self.clusters = clusters
        self.history = history
        self.settings = settings
        self.holmes = holmes
        self.metrics = metrics
        # One reader (and cache) per cluster, by its resolved name.
        self._readers: dict[str, ResourceContextReader] = {}

    async def GetAlertKnowledge(
        self, request: context_api_pb2.GetAlertKnowledgeRequest, context: Context
    ) -> context_api_pb2.GetAlertKnowledgeResponse:
        try:
            entry = knowledge.get_alert_knowledge(request.alert_name)
        except knowledge.UnknownAlert as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            raise
        return context_api_pb2.GetAlertKnowledgeResponse(knowledge=entry)

    async def _resource_reader(self, cluster: str) -> ResourceContextReader:
        """The reader of the cluster a ResourceRef's `cluster` names (empty: the default
        one). Raises UnknownCluster: never another cluster's reader."""
        name = self.clusters.resolve(cluster)
        reader = self._readers.get(name)
        if reader is None:
            connection = self.clusters.connection(name)
            reader = ResourceContextReader(
                await connection.api(),
                self.settings.cache_seconds,
                timeout=connection.settings.request_timeout_seconds,
            )
            # Another request may have made one meanwhile: keep the first (and its cache).
            reader = self._readers.setdefault(name, reader)
        return reader

    async def GetResourceContext(
        self, request: context_api_pb2.GetResourceContextRequest, context: Context
    ) -> context_api_pb2.GetResourceContextResponse:
        async with _cluster_errors(context, "resource"):
            reader = await self._resource_reader(request.resource.cluster)
            found = await through_brief_denials(lambda: reader.context(request.resource))
        return context_api_pb2.GetResourceContextResponse(context=found)

    async def GetPodLogs(
        self, request: context_api_pb2.GetPodLogsRequest, context: Context
    ) -> context_api_pb2.GetPodLogsResponse:
        async with _cluster_errors(context, "scope"):
            try:
                logs = PodLogReader(await self._resource_reader(request.scope.cluster))
                found = await through_brief_denials(lambda: logs.logs(request))
            except OutOfScope as error:
                await abort_invalid(context, error.field, str(error))
                raise
            except NoPods as error:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
                raise
            except LogsUnavailable as error:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"the node cannot serve the logs: {error}"
                )
                raise
        return context_api_pb2.GetPodLogsResponse(logs=found)

    async def GetIncidentHistory(
        self, request: context_api_pb2.GetIncidentHistoryRequest, context: Context
    ) -> context_api_pb2.GetIncidentHistoryResponse:
        try:
            history = await self.history.history(request.incident_id, request.limit)
        except UnknownIncident as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            raise
        return context_api_pb2.GetIncidentHistoryResponse(history=history)

    async def Investigate(
        self, request: context_api_pb2.InvestigateRequest, context: Context
    ) -> context_api_pb2.InvestigateResponse:
        if self.holmes is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no HolmesGPT server is configured (KUBERNAUT_CONTEXT_HOLMES_URL)",
            )
            raise AssertionError("unreachable")
        try:
            found = await self.holmes.investigate(request.alert, request.resource)
        except HolmesUnavailable as error:
            log.warning("no investigation from HolmesGPT", extra={"why": str(error)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            raise
        return context_api_pb2.InvestigateResponse(investigation=found)

    async def GetWorkloadMetrics(
        self, request: context_api_pb2.GetWorkloadMetricsRequest, context: Context
    ) -> context_api_pb2.GetWorkloadMetricsResponse:
        if self.metrics is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no Prometheus is configured (KUBERNAUT_CONTEXT_PROMETHEUS_URL)",
            )
            raise AssertionError("unreachable")
        now = dt.datetime.now(dt.UTC)
        window = dt.timedelta(seconds=request.window_seconds or DEFAULT_METRICS_WINDOW_SECONDS)
        # The workload's golden signals only: the alert's own expression is ai_analysis'
        # alert_query.
        found = await self.metrics.evidence(None, request.resource, now - window, now)
        if found.missing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, found.missing)
        response = context_api_pb2.GetWorkloadMetricsResponse(
            signals=[
                context_api_pb2.MetricSignal(
                    name=signal.name,
                    trend=signal.trend.value,
                    good=bool(signal.good_after),
                    # The signals are worded around an action; here "then" is the window ago.
                    detail=signal.detail.replace(" before the action", " then").replace(
                        "s after (", "s since ("
                    ),
                )
                for signal in found.signals
            ]
        )
        if found.score is not None:
            response.score = found.score
        response.observed_at.FromDatetime(now)
        return response


@contextlib.asynccontextmanager
async def _cluster_errors(context: Context, ref_field: str) -> AsyncIterator[None]:
    """A failed read of the cluster as the status that says why; `ref_field` is the
    request's ResourceRef field, which the field violations name."""
    try:
        yield
    except UnknownCluster as error:
        await abort_invalid(context, f"{ref_field}.cluster", str(error))
        raise
    except ClusterNotConfigured as error:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        raise
    except UnsupportedKind as error:
        await abort_invalid(context, f"{ref_field}.kind", str(error))
        raise
    except ResourceNotFound as error:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        raise
    except ApiException as error:
        if error.status in (401, 403):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"context_api's cluster identity may not read this: {error.reason}",
            )
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the cluster answered {error.status}")
        raise
    except (aiohttp.ClientError, OSError) as error:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the cluster did not answer: {error}")
        raise


async def build(ctx: ServiceContext) -> ServiceSpec:
    clusters = ClusterRegistry(KubeSettings())
    readiness: list[tuple[str, ReadinessCheck]] = []
    if clusters.configured:
        # Ready while every configured cluster answers.
        readiness.append(("kubernetes", clusters.ready))
        log.info("clusters configured", extra={"clusters": list(clusters.names)})
    else:
        log.warning("no Kubernetes cluster configured; GetResourceContext will refuse")
    settings = ContextSettings()
    history = IncidentHistoryReader(
        ctx.clients.stub(StorageServiceStub),
        ctx.clients.stub(EffectivenessServiceStub),
        settings.cache_seconds,
    )
    holmes = None
    if settings.holmes_url:
        holmes = HolmesClient(
            settings.holmes_url,
            timeout=settings.holmes_timeout_seconds,
            breaker_failures=settings.holmes_breaker_failures,
            breaker_open_seconds=settings.holmes_breaker_open_seconds,
        )
        # Not a readiness check: HolmesGPT is optional, and analyses go on without it.
        log.info("HolmesGPT configured", extra={"holmes": holmes.display_url})
    prometheus = (
        PrometheusAPI(settings.prometheus_url, settings.prometheus_timeout_seconds)
        if settings.prometheus_url
        else None
    )
    stops = [clusters.close]
    stops += [holmes.close] if holmes is not None else []
    stops += [prometheus.close] if prometheus is not None else []
    return ServiceSpec(
        ContextAPIServicer(
            clusters,
            history,
            settings,
            holmes,
            MetricReader(prometheus) if prometheus is not None else None,
        ),
        readiness=readiness,
        on_stop=stops,
    )
