"""What the gateway's servicer and forwarder need of the intake's shared state, whichever
backend keeps it: `Intake` (take a batch; claim, forward, retry and give up queued alerts;
count duplicates; housekeeping) and `IntakeSource` (connects lazily, says whether it is
ready). `intake.py` picks the backend from the settings. The decisions themselves are in
`decisions.py`, the settings in `settings.py`.

Two backends: `postgres_intake.py` (the gateway's schema; the default and the reference)
and `redis_intake.py` (Lua scripts, when `KUBERNAUT_GATEWAY_REDIS_URL` is set).

Do both earn their keep? Redis stays, for now, on these grounds:
- it is a documented setting that deployments may use (README, docs/settings.md);
  dropping it is a behaviour change for whoever set it, not something a refactor may
  decide (the spec names Redis only as storage's cache, so it does not require this);
- it keeps the gateway's busiest writes (one per alert, and storms in bursts) off the
  PostgreSQL that every other service shares, for a deployment that gives the gateway no
  database of its own (`KUBERNAUT_GATEWAY_DATABASE_URL`).
Against it, and the reason to measure before the next feature lands here: Kubernaut needs
PostgreSQL anyway, so Redis saves no component; to be durable it must fsync every write
(`appendfsync always`), which takes away most of its speed; no benchmark here shows it
faster (bench/ measures only PostgreSQL); and it is a second ~1,000 lines of the same state
machine, kept equal by the differential test alone. If `bench.edge_throughput` against
Redis shows no gain, remove it.

What the two share as data, not as copies: the settings object (hold, storm threshold and
window, retention, leases and batch sizes reach the SQL as parameters and the Lua as script
arguments; neither repeats them), the freshness judgement, a batch's decision order, storm
ids, every answer's wording (`decisions.py`), `MAX_ERROR_CHARS` and this protocol. What each
still writes for itself, because it is how its store works: the life/duplicate/storm/
resolution state machine (SQL statements and `gateway.take_firing` in PostgreSQL; the take
script in Lua), the per-fingerprint queue order and claiming, the counting lease and the
retention sweep. `test_redis_answers_as_postgresql_on_a_random_workload` keeps those equal."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final, Protocol

from kubernaut.common.v1 import alert_pb2
from opentelemetry import propagate

from kubernaut.services.gateway.decisions import Outcome

# How much of a forwarding error a queued row keeps, in either backend.
MAX_ERROR_CHARS: Final = 4096


class IntakeUnavailable(Exception):
    """The gateway's database cannot be reached; nothing of the batch was taken."""


@dataclass(frozen=True, slots=True)
class QueuedAlert:
    row_id: int
    fingerprint: str
    kind: str  # "firing" or "resolved"
    alert: alert_pb2.Alert
    storm_id: str
    incident_id: str
    attempts: int
    # The W3C traceparent of the request that queued it ("" when none).
    trace_context: str = ""


def current_trace_context() -> str:
    """The caller's W3C traceparent, kept with a queued alert so that forwarding it later
    continues the trace of the request that brought it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


class Intake(Protocol):
    """What the gateway's servicer and forwarder need of the shared intake state; the
    PostgreSQL IntakeStore is the reference, and every backend answers as it does."""

    async def take(
        self, alerts: Sequence[alert_pb2.Alert], trace_context: str = ""
    ) -> list[Outcome]: ...
    async def claim(self, limit: int, lease_seconds: float) -> list[QueuedAlert]: ...
    async def forwarded(self, queued: QueuedAlert, incident_id: str) -> None: ...
    async def retry_later(self, queued: QueuedAlert, error: str, delay_seconds: float) -> None: ...
    async def give_up(self, queued: QueuedAlert, error: str) -> None: ...
    async def resolution_target(self, queued: QueuedAlert) -> tuple[str, int]: ...
    async def next_due_in(self) -> float | None: ...
    async def uncounted(self, limit: int) -> list[tuple[str, str, int]]: ...
    def counting_lease(self) -> AbstractAsyncContextManager[bool]: ...
    async def counted(
        self, incident_id: str, counts: Sequence[tuple[str, int]], incident_closed: bool
    ) -> None: ...
    async def forget_finished(self) -> int: ...
    async def queue_depth(self) -> tuple[int, float]: ...


class IntakeSource(Protocol):
    """Where the intake lives, connected lazily: the gateway starts NOT_SERVING while it
    cannot be reached. `store()` raises IntakeUnavailable then."""

    async def store(self) -> Intake: ...
    async def ready(self) -> bool: ...
    async def close(self) -> None: ...
