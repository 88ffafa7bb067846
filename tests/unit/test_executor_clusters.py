"""The executor's circuit breakers, without a cluster: the breaker's states on an injected
clock, and one breaker per cluster of the shared registry (whose own rules
tests/unit/test_clusters.py shows). tests/integration/test_executor_clusters.py connects
to two real ones."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from kubernaut.runtime.clusters import ClusterConfig, UnknownCluster
from kubernaut.runtime.settings import KubeSettings
from kubernaut.services.executor.cluster import ClusterUnavailable
from kubernaut.services.executor.clusters import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    ExecutorClusters,
)
from kubernaut.services.executor.settings import ExecutorSettings


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _breaker(clock: FakeClock, *, failures: int = 3, open_seconds: float = 30.0) -> CircuitBreaker:
    # A cluster name of its own: the gauge's series is per cluster, and shared by the process.
    name = f"test-{uuid.uuid4().hex[:8]}"
    return CircuitBreaker(name, failures=failures, open_seconds=open_seconds, clock=clock)


def _state(breaker: CircuitBreaker) -> BreakerState:
    # A call, so that mypy does not keep the last state it saw across the breaker's calls.
    return breaker.state


def _gauge(breaker: CircuitBreaker) -> float | None:
    return REGISTRY.get_sample_value(
        "kubernaut_executor_circuit_open", {"cluster": breaker.cluster}
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- the breaker ---------------------------------------------------------------------------


def test_breaker_opens_after_that_many_failures_in_a_row(clock: FakeClock) -> None:
    breaker = _breaker(clock, failures=3)
    assert _state(breaker) == "closed"
    assert _gauge(breaker) == 0
    for _ in range(2):
        breaker.check()
        breaker.failure()
    assert _state(breaker) == "closed"
    breaker.check()

    breaker.failure()

    assert _state(breaker) == "open"
    assert _gauge(breaker) == 1
    with pytest.raises(CircuitOpen) as refused:
        breaker.check()
    assert isinstance(refused.value, ClusterUnavailable)  # the engine's UNAVAILABLE path
    assert refused.value.retry_after == 30.0


def test_a_success_resets_the_count(clock: FakeClock) -> None:
    breaker = _breaker(clock, failures=3)
    breaker.failure()
    breaker.failure()

    breaker.success()
    breaker.failure()
    breaker.failure()

    assert _state(breaker) == "closed"
    breaker.check()
    breaker.failure()
    assert _state(breaker) == "open"


def test_circuit_open_says_which_cluster_why_and_when(clock: FakeClock) -> None:
    breaker = CircuitBreaker("prod", failures=5, open_seconds=30.0, clock=clock)
    for _ in range(5):
        breaker.failure()
    clock.advance(17.5)

    with pytest.raises(CircuitOpen) as refused:
        breaker.check()

    assert str(refused.value) == (
        "cluster prod: circuit open after 5 API failures in a row; next try in 13s"
    )
    assert refused.value.retry_after == pytest.approx(12.5)
    assert refused.value.cluster == "prod"
    assert refused.value.failures == 5


def test_half_open_lets_exactly_one_trial_through(clock: FakeClock) -> None:
    breaker = _breaker(clock, failures=1, open_seconds=30.0)
    breaker.failure()
    clock.advance(29.9)
    assert _state(breaker) == "open"
    clock.advance(0.1)
    assert _state(breaker) == "half-open"

    breaker.check()  # the trial

    assert _gauge(breaker) == 1
    clock.advance(2)
    for _ in range(3):
        with pytest.raises(CircuitOpen) as refused:
            breaker.check()
        # Another trial is let through once this one has been out for open_seconds.
        assert refused.value.retry_after == pytest.approx(28.0)
    breaker.success()
    assert _state(breaker) == "closed"
    assert _gauge(breaker) == 0
    breaker.check()
    breaker.check()


def test_a_failed_trial_reopens_for_open_seconds(clock: FakeClock) -> None:
    breaker = _breaker(clock, failures=2, open_seconds=10.0)
    breaker.failure()
    breaker.failure()
    clock.advance(10)
    breaker.check()
    clock.advance(3)  # the trial takes a while

    breaker.failure()

    assert _state(breaker) == "open"
    assert _gauge(breaker) == 1
    with pytest.raises(CircuitOpen) as refused:
        breaker.check()
    assert refused.value.retry_after == pytest.approx(10.0)
    assert refused.value.failures == 3
    clock.advance(10)
    assert _state(breaker) == "half-open"
    breaker.check()


def test_a_trial_that_never_reports_does_not_shut_the_cluster_for_good(
    clock: FakeClock,
) -> None:
    breaker = _breaker(clock, failures=1, open_seconds=10.0)
    breaker.failure()
    clock.advance(10)
    breaker.check()  # its caller is cancelled and reports nothing
    clock.advance(9)
    with pytest.raises(CircuitOpen):
        breaker.check()

    clock.advance(1)

    breaker.check()  # a new trial


def test_late_failures_while_open_do_not_extend_it(clock: FakeClock) -> None:
    breaker = _breaker(clock, failures=1, open_seconds=10.0)
    breaker.failure()
    clock.advance(5)

    breaker.failure()  # a call made before it opened, reporting now

    clock.advance(5)
    assert _state(breaker) == "half-open"
    breaker.check()


# -- the breakers on the shared registry ------------------------------------------------------


def test_each_named_cluster_has_a_breaker_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_BREAKER_FAILURES", "7")
    kube = KubeSettings(
        clusters={"prod": ClusterConfig(context="prod"), "stage": ClusterConfig(context="s")},
        default_cluster="prod",
    )

    clusters = ExecutorClusters(kube, ExecutorSettings())

    assert clusters.names == ("prod", "stage")
    assert clusters.breaker("stage").failures_to_open == 7
    assert clusters.breaker("stage") is not clusters.breaker("prod")
    assert clusters.breaker("") is clusters.breaker("prod")
    clusters.breaker("stage").failure()
    assert clusters.breaker("prod").failures_in_a_row == 0
    with pytest.raises(UnknownCluster):
        clusters.breaker("staging")
