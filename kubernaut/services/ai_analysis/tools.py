"""The read-only tools a model may call while it investigates an incident. Each answers
from one of the incident's own sources (its targets' state, its history, the alert's own
expression in Prometheus); none takes a free-form query or writes anything. Arguments
are checked here, whatever the decoder let through: a refused call tells the model why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub

from kubernaut.runtime.prometheus import PrometheusAPI, PrometheusUnavailable
from kubernaut.services.ai_analysis import contract
from kubernaut.services.ai_analysis.prompt import evidence_view, proto_data
from kubernaut.services.ai_analysis.providers.base import ToolSpec

ToolHandler = Callable[[Mapping[str, Any]], Awaitable[Any]]
# Series of the alert's expression shown to the model, at most.
MAX_SERIES = 20
PROMETHEUS_TIMEOUT_SECONDS = 5.0
# Log lines a model may ask for (context_api's own cap), and how many when it does not say.
LOG_MAX_LINES = 200
LOG_DEFAULT_LINES = 50
# Characters of log lines shown, at most (the newest kept): a tool result is data, and data
# beyond the prompt's per-piece limit is cut from its end, which for a log is the news.
LOG_MAX_CHARS = 4000
# The kinds whose pods context_api reads logs of.
LOG_KINDS = frozenset({"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


@dataclass(frozen=True)
class Tool:
    """A read-only investigation tool: its spec and what answers it."""

    spec: ToolSpec
    handler: ToolHandler


class ToolRefused(Exception):
    """A tool call the tool will not answer (e.g. a target it may not read); the model is
    told, and may go on."""


def evidence_tool(
    read: Callable[[alert_pb2.ResourceRef], Awaitable[context_api_pb2.ResourceContext]],
    targets: Sequence[contract.Target],
) -> Tool:
    """`resource_context`: what the cluster shows of one of the incident's targets."""
    labels = {t.label: t for t in targets}

    async def handler(arguments: Mapping[str, Any]) -> Any:
        target = labels.get(str(arguments.get("target", "")))
        if target is None:
            raise ToolRefused(f"target must be one of {sorted(labels)}")
        return evidence_view(await read(target.ref))

    spec = ToolSpec(
        "resource_context",
        "Read the pods, events and rollout of one of the incident's targets.",
        {
            "type": "object",
            "properties": {"target": {"enum": sorted(labels)}},
            "required": ["target"],
            "additionalProperties": False,
        },
    )
    return Tool(spec, handler)


def history_tool(read: Callable[[], Awaitable[context_api_pb2.IncidentHistory]]) -> Tool:
    """`incident_history`: similar past incidents, what was done and whether it worked."""

    async def handler(arguments: Mapping[str, Any]) -> Any:
        return proto_data(await read())

    spec = ToolSpec(
        "incident_history",
        "Read similar past incidents with the actions taken and their verdicts.",
        {"type": "object", "properties": {}, "additionalProperties": False},
    )
    return Tool(spec, handler)


def workload_metrics_tool(
    context_api: ContextAPIServiceStub, workload: alert_pb2.ResourceRef
) -> Tool:
    """`workload_metrics`: the workload's golden signals in Prometheus (context_api's
    GetWorkloadMetrics), now against ten minutes ago; a fixed set of queries."""

    async def handler(arguments: Mapping[str, Any]) -> Any:
        try:
            found = await context_api.GetWorkloadMetrics(
                context_api_pb2.GetWorkloadMetricsRequest(resource=workload)
            )
        except grpc.aio.AioRpcError as error:
            raise ToolRefused(f"{error.code().name}: {error.details()}"[:300]) from None
        return proto_data(found)

    spec = ToolSpec(
        "workload_metrics",
        "Read the workload's golden signals in Prometheus (ready replicas, restarts, CPU and"
        " memory against limits), now against ten minutes ago.",
        {"type": "object", "properties": {}, "additionalProperties": False},
    )
    return Tool(spec, handler)


def prometheus_tool(prometheus: PrometheusAPI, expression: str) -> Tool:
    """`alert_query`: the alert's own expression evaluated now in Prometheus (at most
    MAX_SERIES series): whether it still fires, and for which labels."""

    async def handler(arguments: Mapping[str, Any]) -> Any:
        try:
            result = await prometheus.query(expression)
        except PrometheusUnavailable as error:
            raise ToolRefused(str(error)) from None
        series = [
            {"labels": dict(sample.labels), "value": f"{sample.value:g}"}
            for sample in result[:MAX_SERIES]
        ]
        return {"expression": expression, "series": series, "total_series": len(result)}

    spec = ToolSpec(
        "alert_query",
        "Evaluate the alert's own PromQL expression now: which series still fire.",
        {"type": "object", "properties": {}, "additionalProperties": False},
    )
    return Tool(spec, handler)


LogRead = Callable[[context_api_pb2.GetPodLogsRequest], Awaitable[context_api_pb2.PodLogs]]


def log_targets(
    targets: Sequence[contract.Target], evidence: context_api_pb2.ResourceContext | None
) -> dict[str, tuple[alert_pb2.ResourceRef, str]]:
    """What `log_tail` may read, by label: the incident's targets that have pods (as
    scope, a pod picked by context_api), and each pod the evidence lists (scoped by the
    incident's workload, or the alert's resource)."""
    readable: dict[str, tuple[alert_pb2.ResourceRef, str]] = {}
    scopes = [t.ref for t in targets if t.ref.kind in LOG_KINDS and t.ref.namespace]
    for ref in scopes:
        readable[contract.Target(ref).label] = (ref, "")
    if evidence is not None and scopes:
        scope = next((r for r in scopes if r.kind != "Pod"), scopes[0])
        for pod in evidence.pods[:20]:
            ref = alert_pb2.ResourceRef(
                cluster=scope.cluster, namespace=scope.namespace, kind="Pod", name=pod.name
            )
            readable.setdefault(contract.Target(ref).label, (scope, pod.name))
    return readable


def log_request(
    arguments: Mapping[str, Any], readable: Mapping[str, tuple[alert_pb2.ResourceRef, str]]
) -> context_api_pb2.GetPodLogsRequest:
    """The GetPodLogs request for a `log_tail` call, or ToolRefused saying what is wrong."""
    unknown = sorted(set(arguments) - {"target", "container", "previous", "lines"})
    if unknown:
        raise ToolRefused(f"unknown arguments {unknown}")
    found = readable.get(str(arguments.get("target", "")))
    if found is None:
        raise ToolRefused(f"target must be one of {sorted(readable)}")
    scope, pod = found
    container = arguments.get("container", "")
    if not isinstance(container, str) or len(container) > 63:
        raise ToolRefused("container must be a container's name")
    previous = arguments.get("previous", False)
    if not isinstance(previous, bool):
        raise ToolRefused("previous must be true or false")
    lines = arguments.get("lines", LOG_DEFAULT_LINES)
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= LOG_MAX_LINES:
        raise ToolRefused(f"lines must be a whole number from 1 to {LOG_MAX_LINES}")
    return context_api_pb2.GetPodLogsRequest(
        scope=scope, pod=pod, container=container, previous=previous, tail_lines=lines
    )


_LOG_REFUSALS = {
    grpc.StatusCode.FAILED_PRECONDITION: (
        "the node cannot serve these logs (with previous=true: the container has no previous run)"
    ),
    grpc.StatusCode.INVALID_ARGUMENT: "not one of the incident's pods, or no such container",
    grpc.StatusCode.NOT_FOUND: "the pod or its workload is gone, or it has no pods",
}


def log_refusal(code: grpc.StatusCode) -> str:
    """Why context_api gave no logs, in fixed words (the model sees refusals unfenced)."""
    return _LOG_REFUSALS.get(code, f"context_api could not read them ({code.name})")


def context_api_logs(context_api: ContextAPIServiceStub) -> LogRead:
    """Log tails from context_api's GetPodLogs; what it refuses, the model is told in
    fixed words."""

    async def read(request: context_api_pb2.GetPodLogsRequest) -> context_api_pb2.PodLogs:
        try:
            found = await context_api.GetPodLogs(request)
        except grpc.aio.AioRpcError as error:
            # A refusal reaches the model unfenced: our words only, never the cluster's
            # (its messages carry object names, which are data).
            raise ToolRefused(log_refusal(error.code())) from None
        logs: context_api_pb2.PodLogs = found.logs
        return logs

    return read


def log_view(logs: context_api_pb2.PodLogs) -> dict[str, Any]:
    """What the model is shown of a log tail: its newest lines within LOG_MAX_CHARS."""
    shown: list[str] = []
    size = 0
    for line in reversed(logs.lines):
        size += len(line) + 4  # quotes, comma, space in the JSON
        if size > LOG_MAX_CHARS:
            break
        shown.append(line)
    shown.reverse()
    return {
        "pod": logs.pod.name,
        "container": logs.container,
        "previous": logs.previous,
        "lines": shown,
        "older_lines_left_out": logs.truncated or len(shown) < len(logs.lines),
        "pods": list(logs.pods),
        "containers": list(logs.containers),
    }


def log_tool(
    read: LogRead,
    targets: Sequence[contract.Target],
    evidence: context_api_pb2.ResourceContext | None,
) -> Tool | None:
    """`log_tail`: the last lines of a container of one of the incident's pods (or of its
    previous run, for a crash loop). None when the incident has no pods to read."""
    readable = log_targets(targets, evidence)
    if not readable:
        return None

    async def handler(arguments: Mapping[str, Any]) -> Any:
        return log_view(await read(log_request(arguments, readable)))

    spec = ToolSpec(
        "log_tail",
        "Read the last lines a container of one of the incident's pods printed; "
        "previous=true reads its last crashed run.",
        {
            "type": "object",
            "properties": {
                "target": {"enum": sorted(readable)},
                "container": {"type": "string"},
                "previous": {"type": "boolean"},
                "lines": {"type": "integer", "minimum": 1, "maximum": LOG_MAX_LINES},
            },
            "required": ["target"],
            "additionalProperties": False,
        },
    )
    return Tool(spec, handler)
