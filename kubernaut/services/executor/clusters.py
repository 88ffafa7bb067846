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
from typing import Final, Literal

from prometheus_client import Gauge

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

BreakerState = Literal["closed", "open", "half-open"]


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


class CircuitBreaker:
    """Consecutive API failures of one cluster, and whether calls to it may go ahead.

    Callers call `check()` before a call to the API server and report how it went with
    `success()` or `failure()` (failures are what ClusterUnavailable means: no answer, 5xx,
    429; an API server that answers "no" is healthy). Not thread-safe: one event loop.
    """

    def __init__(
        self,
        cluster: str,
        *,
        failures: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures}")
        if open_seconds <= 0:
            raise ValueError(f"open_seconds must be positive, not {open_seconds}")
        self.cluster = cluster
        self.failures_to_open = failures
        self.open_seconds = open_seconds
        self._clock = clock
        self._failures_in_a_row = 0
        self._opened_at: float | None = None
        # When the half-open trial went ahead; None while no trial is out.
        self._trial_started_at: float | None = None
        self._gauge = CIRCUIT_OPEN.labels(cluster=cluster)
        self._gauge.set(0)

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() < self._opened_at + self.open_seconds:
            return "open"
        return "half-open"

    @property
    def failures_in_a_row(self) -> int:
        return self._failures_in_a_row

    def check(self) -> None:
        """Raise CircuitOpen unless a call may go ahead now. Half-open, the first caller
        becomes the trial; the others are refused until it reports, or until it has been
        out for `open_seconds` (a trial whose caller never reported must not keep the
        cluster shut for good)."""
        if self._opened_at is None:
            return
        now = self._clock()
        reopens_at = self._opened_at + self.open_seconds
        if now < reopens_at:
            raise CircuitOpen(self.cluster, self._failures_in_a_row, reopens_at - now)
        if self._trial_started_at is not None:
            next_trial_at = self._trial_started_at + self.open_seconds
            if now < next_trial_at:
                raise CircuitOpen(self.cluster, self._failures_in_a_row, next_trial_at - now)
        self._trial_started_at = now

    def success(self) -> None:
        self._failures_in_a_row = 0
        self._opened_at = None
        self._trial_started_at = None
        self._gauge.set(0)

    def failure(self) -> None:
        self._failures_in_a_row += 1
        state = self.state
        if state == "half-open" or (
            state == "closed" and self._failures_in_a_row >= self.failures_to_open
        ):
            self._opened_at = self._clock()
            self._trial_started_at = None
            self._gauge.set(1)
        # Open: a late report of a call made before the breaker opened; the breaker
        # stays open for as long as it was going to.


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
