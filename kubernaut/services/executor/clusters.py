"""The executor's clusters: the shared named clusters (kubernaut.runtime.clusters,
KUBERNAUT_KUBE_CLUSTERS) with a circuit breaker for each.

The breaker keeps a cluster whose API server keeps failing from tying up every action
slot until each request times out: after `breaker_failures` API failures in a row the
cluster's actions are refused at once for `breaker_open_seconds`, then one action may try
again (half-open); its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Gauge

from kubernaut.runtime import breaker
from kubernaut.runtime.breaker import BreakerState
from kubernaut.runtime.clusters import ClusterRegistry
from kubernaut.runtime.settings import KubeSettings
from kubernaut.services.executor.cluster import ClusterUnavailable
from kubernaut.services.executor.settings import ExecutorSettings

__all__ = [
    "CIRCUIT_OPEN",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "ExecutorClusters",
]

CIRCUIT_OPEN: Final = Gauge(
    "kubernaut_executor_circuit_open",
    "1 while the cluster's circuit breaker refuses actions (open or half-open), else 0.",
    ["cluster"],
)


class CircuitOpen(ClusterUnavailable):
    """The cluster's breaker refuses the call without trying: its API server failed
    `failures` times in a row; `retry_after` seconds until a call may try again."""

    def __init__(self, cluster: str, failures: int, retry_after: float) -> None:
        # Rounded up: a caller that waits what the message says finds the breaker willing.
        super().__init__(
            f"cluster {cluster}: circuit open after {failures} API failures in a row;"
            f" next try in {math.ceil(retry_after)}s"
        )
        self.cluster = cluster
        self.failures = failures
        self.retry_after = retry_after


class CircuitBreaker(breaker.CircuitBreaker):
    """One cluster's breaker (the shared runtime's), refusing with CircuitOpen, and its
    state in kubernaut_executor_circuit_open{cluster}. Failures are what
    ClusterUnavailable means: no answer, 5xx, 429; an API server that answers "no" is
    healthy."""

    def __init__(
        self,
        cluster: str,
        *,
        failures: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            cluster,
            failures=failures,
            open_seconds=open_seconds,
            clock=clock,
            gauge=CIRCUIT_OPEN.labels(cluster=cluster),
            refusal=CircuitOpen,
        )
        self.cluster = cluster


class ExecutorClusters(ClusterRegistry):
    """The shared cluster registry, with one CircuitBreaker per cluster."""

    def __init__(self, kube: KubeSettings, settings: ExecutorSettings) -> None:
        super().__init__(kube)
        self._breakers = {
            name: CircuitBreaker(
                name,
                failures=settings.breaker_failures,
                open_seconds=settings.breaker_open_seconds,
            )
            for name in self.names
        }

    def breaker(self, name: str) -> CircuitBreaker:
        return self._breakers[self.resolve(name)]
