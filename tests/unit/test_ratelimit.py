"""The token bucket shared by the edge (per sender) and the gateway (per calling service)."""

from __future__ import annotations

import pytest

from kubernaut.runtime.ratelimit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.take("a").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.take("a")
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    # Another sender has a bucket of its own.
    assert limiter.take("b").allowed
    clock.now = 0.5
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    # A batch costing more than the burst waits for a full bucket, not forever.
    clock.now = 100
    assert limiter.take("a", cost=50).allowed
    assert limiter.take("a", cost=50).retry_after == pytest.approx(1.5)


def test_a_limiter_forgets_the_least_recent_sources_beyond_its_size() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_sources=2, clock=Clock())
    for source in ("a", "b", "c"):
        assert limiter.take(source).allowed
    # "a" was forgotten: it starts again with a full bucket; "c" was not.
    assert limiter.take("a").allowed
    assert not limiter.take("c").allowed


def test_a_rate_of_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    assert not limiter.enabled
    assert all(limiter.take("a").allowed for _ in range(1000))


def test_retry_after_is_whole_seconds_never_zero() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 1.01)] == ["1", "1", "1", "2"]
