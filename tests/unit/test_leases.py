"""The lease/claim helper of the runtime (kubernaut/runtime/leases.py), without a database:
the loop runs over an in-memory queue of our own, and every wait is on an event or a
counter, never a sleep followed by an assertion."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import pytest

from kubernaut.runtime.leases import ClaimLoop, LeaseLost, LeaseTable, hold, owner_id

# Long enough that a test which waited for a poll would hit its timeout instead.
FOREVER = 3600.0
LOGGER = "tests.leases"


class Unavailable(Exception):
    """The in-memory store's "cannot reach the database"."""


class Rounds:
    """A round for ClaimLoop that answers from a script (True: a full batch, False: not,
    an exception: raised) and counts itself; `reached(n)` waits for the n-th round."""

    def __init__(self, *script: bool | Exception, then: bool | Exception = False) -> None:
        self.script = list(script)
        self.then = then
        self.count = 0
        self._counted = asyncio.Condition()

    async def __call__(self) -> bool:
        answer = self.script.pop(0) if self.script else self.then
        async with self._counted:
            self.count += 1
            self._counted.notify_all()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def reached(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._counted:
            await self._counted.wait_for(lambda: self.count >= n)


def loop_of(
    round_: Callable[[], Awaitable[bool]], *, poll_seconds: float = FOREVER, **options: object
) -> ClaimLoop:
    return ClaimLoop(
        "test-loop",
        round_,
        log=logging.getLogger(LOGGER),
        store="test queue",
        poll_seconds=poll_seconds,
        unavailable=Unavailable,
        **options,  # type: ignore[arg-type]
    )


# -- the loop ---------------------------------------------------------------------------------


async def test_a_full_batch_goes_on_without_waiting() -> None:
    rounds = Rounds(True, True, True)  # then False: not full
    loop = loop_of(rounds)
    loop.start()
    try:
        await rounds.reached(4)  # three full batches and the one after them, no poll between
    finally:
        await loop.stop()
    assert rounds.count == 4


async def test_wake_ends_a_wait_at_once() -> None:
    rounds = Rounds()
    loop = loop_of(rounds)
    loop.start()
    try:
        await rounds.reached(1)
        loop.wake()
        await rounds.reached(2)
        loop.wake()
        await rounds.reached(3)
    finally:
        await loop.stop()


async def test_a_wake_for_later_than_the_next_look_is_left_alone() -> None:
    async def idle_soon() -> float:
        return 0.01  # e.g. the next row is due at once

    rounds = Rounds()
    loop = loop_of(rounds, next_poll=idle_soon)
    loop.start()
    try:
        # next_poll shortens the wait: rounds go on without any wake.
        await rounds.reached(3)
    finally:
        await loop.stop()

    idle = loop_of(Rounds())
    idle._idle_until = 0.0  # waiting, and looking again at once anyway
    idle.wake(due_in=FOREVER)
    assert not idle._wake.is_set()
    idle._idle_until = None  # in a round: the wake is kept for after it
    idle.wake(due_in=FOREVER)
    assert idle._wake.is_set()


async def test_an_outage_is_logged_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    down = Unavailable("connection refused")
    # Two outages of three failed rounds each, a good round after each.
    rounds = Rounds(down, down, down, True, down, down, down, True)
    loop = loop_of(rounds, backoff=lambda failures: 0.0)
    loop.start()
    try:
        await rounds.reached(9)
    finally:
        await loop.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert messages == [
        "test queue unavailable",
        "test queue reachable again",
        "test queue unavailable",
        "test queue reachable again",
    ]


async def test_an_unexpected_error_is_logged_and_the_loop_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    backoffs: list[int] = []

    def backoff(failures: int) -> float:
        backoffs.append(failures)
        return 0.0

    rounds = Rounds(RuntimeError("bug"), RuntimeError("bug"), True)
    loop = loop_of(rounds, backoff=backoff)
    loop.start()
    try:
        await rounds.reached(4)
    finally:
        await loop.stop()
    assert backoffs == [1, 2]  # failures in a row, counted for the backoff
    failed = [r for r in caplog.records if r.name == LOGGER]
    assert [r.getMessage() for r in failed] == ["test-loop: round failed; trying again"] * 2
    assert all(r.exc_info is not None for r in failed)


async def test_stop_waits_for_the_work_in_flight_then_releases_the_leases() -> None:
    happened: list[str] = []
    claimed = asyncio.Event()
    may_finish = asyncio.Event()

    async def round_() -> bool:
        claimed.set()
        await may_finish.wait()
        happened.append("work finished")
        return False

    async def release() -> int:
        happened.append("released")
        return 1

    loop = loop_of(round_, release=release)
    loop.start()
    await asyncio.wait_for(claimed.wait(), 5)
    stopping = asyncio.create_task(loop.stop(grace_seconds=FOREVER))
    # stop() waits: the work is let finish, the leases go only after it.
    await asyncio.sleep(0)
    assert happened == []
    may_finish.set()
    await asyncio.wait_for(stopping, 5)
    assert happened == ["work finished", "released"]


async def test_stop_cancels_work_that_outlasts_the_grace_and_still_releases() -> None:
    happened: list[str] = []
    started = asyncio.Event()

    async def endless(name: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            happened.append(f"{name} cancelled")
            raise

    async def round_() -> bool:
        loop.launch("a", endless("launched"))
        await endless("in the round")
        return False

    async def release() -> int:
        happened.append("released")
        return 2

    loop = loop_of(round_, release=release)
    loop.start()
    await asyncio.wait_for(started.wait(), 5)
    assert set(loop.running) == {"a"}
    await asyncio.wait_for(loop.stop(grace_seconds=0.05), 5)
    assert happened == ["in the round cancelled", "launched cancelled", "released"]
    assert not loop.running


async def test_a_release_the_store_cannot_make_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def release() -> int:
        raise Unavailable("connection refused")

    loop = loop_of(Rounds(), release=release)
    await loop.stop()
    [told] = [r for r in caplog.records if r.name == LOGGER]
    assert (told.levelno, told.getMessage()) == (
        logging.WARNING,
        "leases not released; they expire",
    )


async def test_a_cancelled_loop_abandons_its_work_as_a_crash_would() -> None:
    released: list[int] = []
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def round_() -> bool:
        if not loop.running:
            loop.launch("w", work())
        return False

    async def release() -> int:
        released.append(1)
        return 1

    loop = loop_of(round_, release=release)
    task = loop.start()
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    assert released == []  # leases stay until they run out


async def test_finished_work_wakes_the_loop() -> None:
    rounds_seen = Rounds()
    done = asyncio.Event()

    async def work() -> None:
        await done.wait()

    async def round_() -> bool:
        if rounds_seen.count == 0:
            loop.launch("w", work())
        return await rounds_seen()

    loop = loop_of(round_)
    loop.start()
    try:
        await rounds_seen.reached(1)
        done.set()  # room for more: the loop looks again at once, not after a poll
        await rounds_seen.reached(2)
    finally:
        await loop.stop()


async def test_a_loop_that_starts_idle_waits_a_poll_first() -> None:
    rounds = Rounds()
    loop = loop_of(rounds, start_idle=True)
    loop.start()
    try:
        await asyncio.sleep(0)
        assert rounds.count == 0
        loop.wake()
        await rounds.reached(1)
    finally:
        await loop.stop()


# -- one held lease ---------------------------------------------------------------------------


async def test_a_renewer_that_finds_its_lease_gone_stops_the_work_with_lease_lost() -> None:
    renewals = 0
    cancelled = asyncio.Event()

    async def renew() -> bool:
        nonlocal renewals
        renewals += 1
        return renewals < 3  # taken over at the third renewal

    async def work() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    log = logging.getLogger(LOGGER)
    with pytest.raises(LeaseLost, match="workflow w1"):
        await asyncio.wait_for(hold(work(), renew, 0.03, log=log, what="workflow w1"), 5)
    assert renewals == 3
    assert cancelled.is_set()


async def test_a_held_lease_is_renewed_through_an_outage_until_the_work_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    renewals = 0
    renewed_twice = asyncio.Event()

    async def renew() -> bool:
        nonlocal renewals
        renewals += 1
        if renewals == 1:
            raise Unavailable("connection refused")
        if renewals >= 3:
            renewed_twice.set()
        return True

    async def work() -> str:
        await renewed_twice.wait()
        return "done"

    log = logging.getLogger(LOGGER)
    result = await asyncio.wait_for(hold(work(), renew, 0.03, log=log, unavailable=Unavailable), 5)
    assert result == "done"
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == ["cannot renew a lease"]


async def test_the_work_s_own_error_passes_through_hold() -> None:
    async def renew() -> bool:
        return True

    async def work() -> None:
        raise ValueError("the work's own")

    with pytest.raises(ValueError, match="the work's own"):
        await hold(work(), renew, FOREVER, log=logging.getLogger(LOGGER))


# -- owners and statements --------------------------------------------------------------------


def test_owner_ids_name_the_host_and_process_and_never_repeat() -> None:
    first, second = owner_id(), owner_id()
    assert first != second
    host, pid, _ = first.split("/")
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))


def test_the_claim_takes_only_free_due_rows_and_skips_locked_ones() -> None:
    table = LeaseTable("s.jobs", "j", key=("id",))
    sql = table.claim(
        due="j.state = 'ready'",
        order_by="j.id",
        limit="$3",
        owner="$1",
        seconds="$2",
        returning="j.id, next.lease_owner AS previous_owner",
    )
    assert "WHERE j.state = 'ready'\n" in sql
    assert "AND (j.lease_expires_at IS NULL OR j.lease_expires_at < clock_timestamp())" in sql
    assert "FOR UPDATE SKIP LOCKED" in sql
    assert "SET lease_owner = $1,\n    lease_expires_at = clock_timestamp() + " in sql
    assert "SELECT j.id, j.lease_owner FROM s.jobs j" in sql  # the previous owner, for RETURNING
    assert table.release_all == (
        "UPDATE s.jobs SET lease_owner = NULL, lease_expires_at = NULL"
        " WHERE lease_owner = $1 RETURNING id"
    )
    ownerless = LeaseTable("s.queue", "q", key=("id",), owner=None, expires="claimed_until")
    assert "lease_owner" not in ownerless.claim(
        due="true", order_by="q.id", limit="$1", seconds="$2", returning="q.id"
    )
    with pytest.raises(TypeError):
        _ = ownerless.release_all
