"""Lease/claim queues: the one way a service's replicas share work kept in its own schema.

A replica claims due rows for a lease (FOR UPDATE SKIP LOCKED, so replicas never take the
same row and never wait on each other), works on them, and gives the lease up when done;
a replica that dies leaves leases that run out, and another one takes the rows then.

What is here, and who uses it:

- `ClaimLoop`: the background loop of one replica. It runs a round (claim a batch and
  handle it) again at once while a round says there may be more, otherwise waits for the
  poll interval, a `wake()` or `stop()`; logs a store outage once per outage and its end
  once; logs and survives anything else; on `stop()` lets the work in flight finish
  within a grace period, then gives up this replica's leases. The gateway's forwarder,
  the effectiveness assessor, the workflow runner and the notification redelivery.
- `hold()`: runs one piece of work while renewing its lease every third of the lease,
  and stops it with `LeaseLost` when another replica has taken the lease over (the
  workflow runner, whose runs outlast any fixed lease).
- `owner_id()`: who holds a lease (the assessor and the workflow runner).
- `LeaseTable`: the claim and release statements of a table with a lease column, built
  from the store's own constant table and column names (the gateway's queue, the
  assessment checkpoints, the workflows).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

Errors = type[BaseException] | tuple[type[BaseException], ...]


class LeaseLost(Exception):
    """This replica no longer holds the lease: another one took the work over."""


def owner_id() -> str:
    """Who holds a lease: host, process and a random part, so that runners in one process,
    and a restarted process, never pass for each other."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


# -- the loop ---------------------------------------------------------------------------------


class ClaimLoop:
    """One replica's loop over a lease/claim queue (see the module's docstring).

    `claim_round()` claims and handles a batch; it returns True when the batch was full (more may
    be due: the next round starts at once). Between rounds the loop waits `poll_seconds`,
    or what `next_poll()` says (e.g. until the next row is due), or until `wake()`. After a
    round that raised it waits `backoff(failures in a row)` (default: `poll_seconds`).
    `unavailable` are the store's "cannot reach the database" errors: logged once when an
    outage starts ("<store> unavailable") and once when it ends ("<store> reachable
    again"). `release()` gives up this replica's leases when it stops; it returns how many.
    Log lines go to `log`, the service's logger.
    """

    def __init__(
        self,
        name: str,
        claim_round: Callable[[], Awaitable[bool]],
        *,
        log: logging.Logger,
        store: str,
        poll_seconds: float,
        unavailable: Errors = (),
        next_poll: Callable[[], Awaitable[float]] | None = None,
        backoff: Callable[[int], float] | None = None,
        release: Callable[[], Awaitable[int]] | None = None,
        start_idle: bool = False,
    ) -> None:
        self.name = name
        self._round = claim_round
        self._log = log
        self._store = store
        self._poll_seconds = poll_seconds
        self._unavailable = unavailable
        self._next_poll = next_poll
        self._backoff = backoff
        self._release = release
        # Redelivery waits a poll before its first round (nothing is due at start).
        self._start_idle = start_idle
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._work: dict[str, asyncio.Task[None]] = {}
        # While waiting: when it looks at the queue next (time.monotonic()).
        self._idle_until: float | None = None

    @property
    def running(self) -> Mapping[str, asyncio.Task[None]]:
        """The work `launch()`ed and not finished yet, by key."""
        return self._work

    def start(self) -> asyncio.Task[None]:
        """Start the loop (once); cancelling the task it returns abandons the work in
        flight as a crash would: the leases stay until they run out."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=self.name)
        return self._task

    def wake(self, due_in: float = 0.0) -> None:
        """Something is due in `due_in` seconds: look then rather than at the next poll.
        A loop that looks by then anyway is left alone (waking it for each would cost a
        query per call)."""
        if self._idle_until is not None and self._idle_until <= time.monotonic() + due_in:
            return
        self._wake.set()

    def launch(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the loop (a round that hands its rows over instead of waiting
        for them); `running` holds it until it ends, and its end wakes the loop (there is
        room for more)."""
        task = asyncio.create_task(work, name=f"{self.name} {key}")
        self._work[key] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._work.get(key) is task:
                del self._work[key]
            self._wake.set()

        task.add_done_callback(done)

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop claiming; let the work in flight finish within `grace_seconds` (then cancel
        it: what it did is taken up again from the stored state), and give up this
        replica's leases so that another replica takes the rows at once."""
        self._stopping.set()
        task, self._task = self._task, None
        deadline = time.monotonic() + grace_seconds
        if task is not None:
            await _finish(task, deadline)
        for work in list(self._work.values()):
            await _finish(work, deadline)
        if self._release is not None:
            await self._release_leases()

    async def _release_leases(self) -> None:
        assert self._release is not None
        try:
            released = await self._release()
        except self._unavailable as error:
            self._log.warning("leases not released; they expire", extra={"error": str(error)})
        else:
            if released:
                self._log.info("released leases", extra={"count": released})

    async def _run(self) -> None:
        failures = 0
        outage = False
        try:
            if self._start_idle:
                await self._wait(self._poll_seconds)
            while not self._stopping.is_set():
                self._wake.clear()  # before the round: a wake during it is not lost
                try:
                    more = await self._round()
                    wait = 0.0 if more else await self._idle_seconds()
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    failures += 1
                    if isinstance(error, self._unavailable):
                        if not outage:  # once per outage, not once per poll
                            self._log.warning(
                                "%s unavailable", self._store, extra={"error": str(error)}
                            )
                        outage = True
                    else:
                        self._log.exception("%s: round failed; trying again", self.name)
                    wait = self._backoff(failures) if self._backoff else self._poll_seconds
                else:
                    failures = 0
                    if outage:
                        self._log.info("%s reachable again", self._store)
                    outage = False
                if wait > 0:
                    await self._wait(wait)
        finally:
            if not self._stopping.is_set():
                # Cancelled, not stopped: abandon the work as a crash would.
                await _cancel(*self._work.values())

    async def _idle_seconds(self) -> float:
        if self._next_poll is None:
            return self._poll_seconds
        return min(self._poll_seconds, await self._next_poll())

    async def _wait(self, seconds: float) -> None:
        """Up to `seconds`, ended early by wake() or stop()."""
        self._idle_until = time.monotonic() + seconds
        stopping = asyncio.ensure_future(self._stopping.wait())
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({stopping, woken}, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            self._idle_until = None
            await _cancel(stopping, woken)


async def _finish(task: asyncio.Task[None], deadline: float) -> None:
    """Wait for `task` until `deadline` (time.monotonic()), then cancel it."""
    await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
    await _cancel(task)


async def _cancel(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    # Their errors were logged where they happened; a cancelled one has none to tell.
    await asyncio.gather(*tasks, return_exceptions=True)


# -- one held lease ---------------------------------------------------------------------------


async def hold(
    work: Awaitable[T],
    renew: Callable[[], Awaitable[bool]],
    lease_seconds: float,
    *,
    log: logging.Logger,
    unavailable: Errors = (),
    what: str = "work",
) -> T:
    """Run `work` while renewing its lease every third of `lease_seconds` (`renew()`
    returns False when this replica no longer holds it). A renewal the store cannot make
    now (`unavailable`) is logged and tried again at the next third; a lease taken over
    cancels `work` and raises LeaseLost: the replica that took it continues."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=lease_seconds / 3)
            if done:
                return task.result()
            try:
                held = await renew()
            except unavailable as error:
                log.warning("cannot renew a lease", extra={"error": str(error)})
                continue
            if not held:
                raise LeaseLost(f"{what}: the lease was taken over by another replica")
    finally:
        if not task.done():
            await _cancel(task)


# -- the statements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseTable:
    """Where a table keeps its leases, for the statements below. Every name is a constant
    of the store (never input): the statements are built once, at import."""

    # The table and its alias in the statements ("workflow.workflows", "w").
    table: str
    alias: str
    # The columns that name one row.
    key: Sequence[str]
    # When the lease runs out; NULL when no one holds it.
    expires: str = "lease_expires_at"
    # Who holds it; None for a table whose leases have no owner (they only run out).
    owner: str | None = "lease_owner"
    # clock_timestamp() so that a long transaction does not lease from its start.
    clock: str = "clock_timestamp()"

    def claim(
        self,
        *,
        due: str,
        order_by: str,
        limit: str,
        seconds: str,
        owner: str = "",
        also_set: str = "",
        join: tuple[str, str] | None = None,
        returning: str,
    ) -> str:
        """Lease up to `limit` rows that are `due` and that no one holds (no lease, or one
        that ran out), in `order_by` order, to `owner` for `seconds` (parameters, e.g.
        "$1"); SKIP LOCKED. `join` is (another table with its alias, how it joins) for
        `returning`, which may name `next.<owner column>`: who held the lease before."""
        a = self.alias
        picked = [*self.key, *([self.owner] if self.owner else [])]
        lease = [f"{self.expires} = {self.clock} + make_interval(secs => {seconds})"]
        if self.owner:
            lease.insert(0, f"{self.owner} = {owner}")
        sets = ",\n    ".join([*lease, *([also_set] if also_set else [])])
        sources = "next" + (f", {join[0]}" if join else "")
        match = [f"{a}.{column} = next.{column}" for column in self.key]
        if join:
            match.append(join[1])
        return f"""
WITH next AS (
    SELECT {", ".join(f"{a}.{column}" for column in picked)} FROM {self.table} {a}
    WHERE {due}
      AND ({a}.{self.expires} IS NULL OR {a}.{self.expires} < {self.clock})
    ORDER BY {order_by}
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED)
UPDATE {self.table} {a}
SET {sets}
FROM {sources}
WHERE {" AND ".join(match)}
RETURNING {returning}
"""

    @property
    def release_all(self) -> str:
        """Give up every lease the owner $1 holds; one row returned per lease."""
        if self.owner is None:
            raise TypeError(f"{self.table} has no lease owners")
        return (
            f"UPDATE {self.table} SET {self.owner} = NULL, {self.expires} = NULL"
            f" WHERE {self.owner} = $1 RETURNING {self.key[0]}"
        )
