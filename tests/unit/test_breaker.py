"""The shared circuit breaker as the model providers and HolmesGPT use it (the executor's
cluster breaker is the same one, tested in test_executor_clusters): `allows()` and the
generic refusal."""

from __future__ import annotations

import pytest

from kubernaut.runtime.breaker import BreakerOpen, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_allows_says_no_while_open_and_lets_one_trial_through_after() -> None:
    clock = Clock()
    breaker = CircuitBreaker("holmesgpt", failures=2, open_seconds=30, clock=clock)
    breaker.failure()
    assert breaker.allows()
    breaker.failure()
    assert not breaker.allows() and breaker.state == "open"
    with pytest.raises(
        BreakerOpen,
        match=r"holmesgpt: circuit open after 2 failures in a row;"
        r" next try in 30s",
    ):
        breaker.check()
    clock.now += 30
    assert breaker.allows()  # the trial
    assert not breaker.allows()  # the others wait for it
    breaker.success()
    after: str = breaker.state
    assert after == "closed" and breaker.allows()
