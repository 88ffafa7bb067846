"""A small time-bounded cache for answers read from elsewhere (the cluster, other
services): each answer is kept for `ttl` seconds, concurrent misses of one key share one
read, and expired answers are dropped as new ones come in, so keys that never repeat (pod
names, incident ids) do not make it grow without bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._locks: dict[K, asyncio.Lock] = {}

    def keys(self) -> list[K]:
        return list(self._entries)

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached answer for `key`, or `load()`'s (errors propagate, nothing is kept)."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one read per key at a time; the others get its answer
            now = self.clock()
            cached = self._entries.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
            self._forget_expired(now)
            fresh = await load()
            self._entries[key] = (self.clock() + self.ttl, fresh)
            return fresh

    def _forget_expired(self, now: float) -> None:
        for key in [key for key, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]
