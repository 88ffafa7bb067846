"""Start order of the services, derived from the call table: callees first."""

from __future__ import annotations

from graphlib import TopologicalSorter

from services.runtime.edges import EDGES
from services.runtime.names import ServiceName


def start_order() -> list[ServiceName]:
    graph: dict[ServiceName, set[ServiceName]] = {service: set() for service in ServiceName}
    for edge in EDGES:
        graph[edge.caller].add(edge.callee)
    return list(TopologicalSorter(graph).static_order())
