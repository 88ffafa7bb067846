"""A circuit breaker for a dependency that keeps failing (a cluster's API server, a model
provider, a HolmesGPT server): after `failures` failures in a row its calls are refused at
once for `open_seconds`, then one call may try again (half-open); its success closes the
breaker, its failure opens it again.

Callers call `check()` (or ask `allows()`) before a call and report how it went with
`success()` or `failure()`; only an outage is a failure (no answer, 5xx, 429), never an
answer that says no. Not thread-safe: one event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal, Protocol

__all__ = ["BreakerOpen", "BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half-open"]


class BreakerOpen(Exception):
    """The breaker refuses the call without trying: `name` failed `failures` times in a row;
    `retry_after` seconds until a call may try again."""

    def __init__(self, name: str, failures: int, retry_after: float) -> None:
        # Rounded up: a caller that waits what the message says finds the breaker willing.
        super().__init__(
            f"{name}: circuit open after {failures} failures in a row;"
            f" next try in {math.ceil(retry_after)}s"
        )
        self.name = name
        self.failures = failures
        self.retry_after = retry_after


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class CircuitBreaker:
    """Consecutive failures of one dependency, and whether calls to it may go ahead."""

    def __init__(
        self,
        name: str,
        *,
        failures: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        gauge: _Gauge | None = None,
        refusal: Callable[[str, int, float], Exception] = BreakerOpen,
    ) -> None:
        """`gauge` (a metric's child) is set to 1 while calls are refused, else 0;
        `refusal(name, failures, retry_after)` is what `check()` raises."""
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures}")
        if open_seconds <= 0:
            raise ValueError(f"open_seconds must be positive, not {open_seconds}")
        self.name = name
        self.failures_to_open = failures
        self.open_seconds = open_seconds
        self._clock = clock
        self._gauge = gauge
        self._refusal = refusal
        self._failures_in_a_row = 0
        self._opened_at: float | None = None
        # When the half-open trial went ahead; None while no trial is out.
        self._trial_started_at: float | None = None
        self._set_gauge(0)

    def _set_gauge(self, value: float) -> None:
        if self._gauge is not None:
            self._gauge.set(value)

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
        """Raise the refusal unless a call may go ahead now. Half-open, the first caller
        becomes the trial; the others are refused until it reports, or until it has been
        out for `open_seconds` (a trial whose caller never reported must not keep the
        dependency shut for good)."""
        if self._opened_at is None:
            return
        now = self._clock()
        reopens_at = self._opened_at + self.open_seconds
        if now < reopens_at:
            raise self._refusal(self.name, self._failures_in_a_row, reopens_at - now)
        if self._trial_started_at is not None:
            next_trial_at = self._trial_started_at + self.open_seconds
            if now < next_trial_at:
                raise self._refusal(self.name, self._failures_in_a_row, next_trial_at - now)
        self._trial_started_at = now

    def allows(self) -> bool:
        """`check()` as a yes or no (a yes while half-open makes the caller the trial)."""
        try:
            self.check()
        except Exception:
            return False
        return True

    def success(self) -> None:
        self._failures_in_a_row = 0
        self._opened_at = None
        self._trial_started_at = None
        self._set_gauge(0)

    def failure(self) -> None:
        self._failures_in_a_row += 1
        state = self.state
        if state == "half-open" or (
            state == "closed" and self._failures_in_a_row >= self.failures_to_open
        ):
            self._opened_at = self._clock()
            self._trial_started_at = None
            self._set_gauge(1)
        # Open: a late report of a call made before the breaker opened; the breaker
        # stays open for as long as it was going to.
