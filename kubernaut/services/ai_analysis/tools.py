"""The read-only tools a model may call while it investigates an incident. Each answers
from one of the incident's own sources (its targets' state, its history, the alert's own
expression in Prometheus); none takes a free-form query or writes anything. Arguments
are checked here, whatever the decoder let through: a refused call tells the model why.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.services.ai_analysis import contract
from kubernaut.services.ai_analysis.prompt import proto_data
from kubernaut.services.ai_analysis.providers.base import ToolSpec

ToolHandler = Callable[[Mapping[str, Any]], Awaitable[Any]]
# Series of the alert's expression shown to the model, at most.
MAX_SERIES = 20
PROMETHEUS_TIMEOUT_SECONDS = 5.0


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
        return proto_data(await read(target.ref))

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


def alert_expression(alert: alert_pb2.Alert) -> str:
    """The PromQL expression of the rule that fired, from the alert's generator URL
    (Prometheus writes it as g0.expr), or ""."""
    if not alert.generator_url:
        return ""
    query = urllib.parse.urlsplit(alert.generator_url).query
    found = urllib.parse.parse_qs(query).get("g0.expr", [])
    return found[0] if found else ""


def prometheus_tool(base_url: str, expression: str) -> Tool:
    """`alert_query`: the alert's own expression evaluated now in Prometheus (at most
    MAX_SERIES series): whether it still fires, and for which labels."""

    async def handler(arguments: Mapping[str, Any]) -> Any:
        try:
            async with httpx.AsyncClient(timeout=PROMETHEUS_TIMEOUT_SECONDS) as http:
                response = await http.get(
                    f"{base_url.rstrip('/')}/api/v1/query", params={"query": expression}
                )
        except httpx.HTTPError as error:
            raise ToolRefused(f"Prometheus did not answer ({type(error).__name__})") from None
        json_body = response.headers.get("content-type", "").startswith("application/json")
        body = response.json() if json_body else {}
        if response.status_code != 200 or body.get("status") != "success":
            why = str(body.get("error", ""))[:200]
            raise ToolRefused(f"Prometheus answered {response.status_code}: {why}")
        result = body["data"]["result"]
        series = [
            {"labels": item.get("metric", {}), "value": item.get("value", [None, None])[1]}
            for item in result[:MAX_SERIES]
        ]
        return {"expression": expression, "series": series, "total_series": len(result)}

    spec = ToolSpec(
        "alert_query",
        "Evaluate the alert's own PromQL expression now: which series still fire.",
        {"type": "object", "properties": {}, "additionalProperties": False},
    )
    return Tool(spec, handler)
