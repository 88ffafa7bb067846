"""How fast each source may send: one token bucket per source. Plain logic, no I/O; the
edge keys it by the authenticated sender, the gateway by the calling service account.

A bucket holds up to `burst` tokens and refills at `rate` per second; a request takes one
token per alert it carries. A refused request learns how long until it would fit, which
becomes Retry-After (HTTP) or RetryInfo (gRPC).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    # When refused: seconds until the request would be allowed (0 when allowed).
    retry_after: float = 0.0


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """Token buckets per key. `rate` <= 0 turns limiting off. At most `max_sources` buckets
    are kept (least recently used dropped first): a full bucket is what a new source gets
    anyway, so forgetting an idle source loses nothing, and a flood of new sources cannot
    grow memory without bound."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: float = 1.0) -> Verdict:
        """Take `cost` tokens from `key`'s bucket if it has them. A request costing more
        than the burst is judged as costing the burst, so that a large batch waits for a
        full bucket instead of never fitting."""
        if not self.enabled:
            return Verdict(True)
        now = self._clock()
        cost = min(cost, self.burst)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return Verdict(True)
        return Verdict(False, (cost - bucket.tokens) / self.rate)


def retry_after_header(seconds: float) -> str:
    """HTTP Retry-After is whole seconds; never 0, which would invite an immediate retry."""
    return str(max(1, math.ceil(seconds)))
