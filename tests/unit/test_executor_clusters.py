"""The executor's named clusters and their circuit breakers, without a cluster: the
breaker's states on an injected clock, and how the registry names and configures its
clusters. tests/integration/test_executor_clusters.py connects to two real ones."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kubernaut.runtime.kube import ClusterNotConfigured
from kubernaut.runtime.settings import KubeSettings
from kubernaut.services.executor.cluster import ClusterUnavailable
from kubernaut.services.executor.clusters import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    ClusterRegistry,
    UnknownCluster,
)
from kubernaut.services.executor.settings import ClusterConfig, ExecutorSettings


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


# -- the registry --------------------------------------------------------------------------


@pytest.fixture
def executor_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No cluster settings from the environment the tests run in."""
    for variable in ("KUBERNAUT_EXECUTOR_CLUSTERS", "KUBERNAUT_EXECUTOR_DEFAULT_CLUSTER"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_no_clusters_configured_is_one_default_cluster_from_kube_settings(
    executor_env: pytest.MonkeyPatch,
) -> None:
    executor_env.setenv("KUBERNAUT_KUBE_KUBECONFIG", "/etc/kubernaut/kubeconfig")
    executor_env.setenv("KUBERNAUT_KUBE_CONTEXT", "admin@prod")

    registry = ClusterRegistry(ExecutorSettings(), KubeSettings())

    assert registry.names == ("default",)
    assert registry.default == "default"
    assert registry.resolve("") == "default"
    assert registry.resolve("default") == "default"
    settings = registry.connection("").settings
    assert (settings.kubeconfig, settings.context, settings.in_cluster) == (
        "/etc/kubernaut/kubeconfig",
        "admin@prod",
        False,
    )
    assert registry.connection("") is registry.connection("default")
    assert registry.breaker("") is registry.breaker("default")
    assert registry.configured


def test_the_single_cluster_takes_the_configured_default_name(
    executor_env: pytest.MonkeyPatch,
) -> None:
    registry = ClusterRegistry(ExecutorSettings(default_cluster="local"), KubeSettings())

    assert registry.names == ("local",)
    assert registry.resolve("") == "local"


def test_named_clusters_from_json_each_with_its_context(
    executor_env: pytest.MonkeyPatch,
) -> None:
    executor_env.setenv(
        "KUBERNAUT_EXECUTOR_CLUSTERS",
        json.dumps(
            {
                "prod": {"context": "prod-admin"},
                "stage": {"kubeconfig": "/etc/kubernaut/stage.kubeconfig", "context": "stage"},
                "local": {"in_cluster": True},
            }
        ),
    )
    executor_env.setenv("KUBERNAUT_EXECUTOR_DEFAULT_CLUSTER", "prod")
    executor_env.setenv("KUBERNAUT_EXECUTOR_BREAKER_FAILURES", "7")
    base = KubeSettings(kubeconfig="/etc/kubernaut/kubeconfig", request_timeout_seconds=3.0)

    registry = ClusterRegistry(ExecutorSettings(), base)

    assert registry.names == ("local", "prod", "stage")
    assert registry.default == "prod"
    assert registry.resolve("") == "prod"
    assert registry.resolve("stage") == "stage"
    prod = registry.connection("prod").settings
    stage = registry.connection("stage").settings
    local = registry.connection("local").settings
    # An empty kubeconfig is the base lookup; the context is the cluster's own.
    assert (prod.kubeconfig, prod.context, prod.in_cluster) == (
        "/etc/kubernaut/kubeconfig",
        "prod-admin",
        False,
    )
    assert (stage.kubeconfig, stage.context) == ("/etc/kubernaut/stage.kubeconfig", "stage")
    assert local.in_cluster
    assert {s.request_timeout_seconds for s in (prod, stage, local)} == {3.0}
    assert registry.connection("prod") is registry.connection("")
    assert len({id(registry.connection(name)) for name in registry.names}) == 3
    assert registry.breaker("stage").failures_to_open == 7
    assert registry.breaker("stage") is not registry.breaker("prod")


def test_one_named_cluster_is_the_default_whatever_default_cluster_says(
    executor_env: pytest.MonkeyPatch,
) -> None:
    settings = ExecutorSettings(clusters={"prod": ClusterConfig(context="prod")})

    registry = ClusterRegistry(settings, KubeSettings())

    assert registry.default == "prod"
    assert registry.resolve("") == "prod"


def test_a_default_that_is_not_a_configured_cluster_is_refused(
    executor_env: pytest.MonkeyPatch,
) -> None:
    settings = ExecutorSettings(
        clusters={"prod": ClusterConfig(context="prod"), "stage": ClusterConfig(context="s")},
        default_cluster="production",
    )

    with pytest.raises(ValueError) as refused:
        ClusterRegistry(settings, KubeSettings())

    message = str(refused.value)
    assert "'production'" in message
    assert "KUBERNAUT_EXECUTOR_DEFAULT_CLUSTER" in message
    assert "(prod, stage)" in message


def test_an_unknown_cluster_names_the_known_ones(executor_env: pytest.MonkeyPatch) -> None:
    settings = ExecutorSettings(
        clusters={"prod": ClusterConfig(context="prod"), "stage": ClusterConfig(context="s")},
        default_cluster="prod",
    )
    registry = ClusterRegistry(settings, KubeSettings())

    with pytest.raises(UnknownCluster) as unknown:
        registry.connection("staging")

    assert str(unknown.value) == "unknown cluster 'staging'; the executor knows prod, stage"
    assert unknown.value.known == ("prod", "stage")
    with pytest.raises(UnknownCluster):
        registry.breaker("staging")
    with pytest.raises(LookupError):
        registry.resolve("staging")


async def test_an_in_cluster_cluster_ignores_kubeconfig_outside_a_pod(
    executor_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    executor_env.setenv("KUBECONFIG", str(kubeconfig))
    executor_env.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = ExecutorSettings(
        clusters={"local": ClusterConfig(in_cluster=True), "prod": ClusterConfig()},
        default_cluster="local",
    )
    registry = ClusterRegistry(settings, KubeSettings())

    assert not registry.configured  # not in a pod: the kubeconfig does not stand in
    assert registry.connection("prod").configured
    with pytest.raises(ClusterNotConfigured, match="not run in a pod"):
        await registry.connection("local").api()
    # In a pod (as read when the executor starts), the in-cluster cluster is configured.
    executor_env.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert not registry.configured  # read once, at start
    assert ClusterRegistry(settings, KubeSettings()).configured
