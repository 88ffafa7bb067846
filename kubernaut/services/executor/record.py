"""The record stage: the ActionRecord an action ends with, and storing it.

`finish_record` builds the record once from the run (outcome, message, the target before
and after, the verified workload state as storage's quiet-period baseline) and saves it with
the row, so a retry stores the same record; `store_record` sends it through
storage.RecordAction (StorageRecorder in the service).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Final, Protocol

import grpc
from kubernaut.common.v1 import remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.workload_state import STATE_KINDS, workload_state
from kubernaut.services.executor.changes import Change, label_selector
from kubernaut.services.executor.cluster import ApiError, ClusterUnavailable
from kubernaut.services.executor.operations import SUCCEEDED, Outcome, snapshot_content
from kubernaut.services.executor.run import Run, action_log, now
from kubernaut.services.executor.store import ActionState

_MAX_MESSAGE: Final = 4096
_MAX_SPEC: Final = 1048576


class StorageUnavailable(Exception):
    """storage.RecordAction could not be reached; the action is finished and a retry of
    ExecuteAction with the same action_id records it."""


class RecordRejected(Exception):
    """storage refused the record (not a transient failure)."""


class Recorder(Protocol):
    async def __call__(self, record: storage_pb2.ActionRecord) -> None: ...


class StorageRecorder:
    """Records through storage.RecordAction, retrying UNAVAILABLE with backoff (the client
    retries each attempt a few times itself). RecordAction is idempotent for the same
    record, which is why the record is built once and stored before the first attempt."""

    _TRANSIENT: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

    def __init__(
        self, storage: StorageServiceStub, *, attempts: int = 5, backoff_seconds: float = 0.5
    ) -> None:
        self.storage = storage
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds

    async def __call__(self, record: storage_pb2.ActionRecord) -> None:
        request = storage_pb2.RecordActionRequest(record=record)
        for attempt in range(1, self.attempts + 1):
            try:
                await self.storage.RecordAction(request)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in self._TRANSIENT:
                    raise RecordRejected(
                        f"storage refused the record: {error.code().name}: {error.details()}"
                    ) from error
                if attempt == self.attempts:
                    raise StorageUnavailable(
                        f"storage did not take the record after {attempt} attempts: "
                        f"{error.code().name}: {error.details()}"
                    ) from error
                action_log.warning(
                    "RecordAction failed; retrying",
                    extra={
                        "action_id": record.action_id,
                        "attempt": attempt,
                        "code": error.code().name,
                    },
                )
            await asyncio.sleep(self.backoff_seconds * 2 ** (attempt - 1))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record_view(obj: Mapping[str, Any] | None, change: Change | None) -> str:
    """What the record shows of an object: its spec when the change is all in the spec,
    else the object without status and server-kept metadata. Compact JSON, sorted keys."""
    if obj is None:
        return ""
    edits = change.edits if change is not None else ()
    if "spec" in obj and all(e.path.startswith("/spec") for e in edits):
        view: Any = obj.get("spec") or {}
    else:
        meta = obj.get("metadata") or {}
        view = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
        view["metadata"] = {
            k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta
        }
    return json.dumps(view, sort_keys=True, separators=(",", ":"))


async def finish_record(run: Run, outcome: Outcome, message: str) -> None:
    row = run.row
    change = row.change
    if row.snapshot is not None:
        # Older snapshots (Deployments only) keep the spec, which was the record's view.
        before = str(row.snapshot.get("view") or record_view(snapshot_content(row.snapshot), None))
    else:
        before = record_view(run.seen, change)
    after = record_view(run.current, change) if run.current is not None else before
    if run.details:
        after = run.details
    if len(before) > _MAX_SPEC or len(after) > _MAX_SPEC:
        message += " (specs left out of the record: over 1 MiB)"
        before = after = ""
    record = storage_pb2.ActionRecord(
        action_id=row.action_id,
        incident_id=run.request.incident_id,
        alert_name=run.request.alert_name,
        action=run.action,
        target=run.ref,
        outcome=outcome,
        # The workflow's guard tells a repeat of the same action with the same
        # parameters from another by these.
        params=run.request.action,
        spec_before_json=before,
        spec_after_json=after,
        message=_clip(message, _MAX_MESSAGE),
    )
    record.started_at.FromDatetime(row.started_at)
    record.finished_at.FromDatetime(now())
    if outcome == SUCCEEDED and run.operation.changes_cluster and run.undo_of is None:
        observed = await _verified_state(run)
        if observed is not None:
            record.observed_after.CopyFrom(observed)
    row.record = record
    action_log.info(
        "action finished",
        extra={
            **run.fields(),
            "outcome": storage_pb2.ActionOutcome.Name(outcome),
            "summary": record.message,
        },
    )
    await run.save(ActionState.FINISHED)


async def _verified_state(run: Run) -> remediation_pb2.WorkloadState | None:
    """The workload and its pods as verified: storage's baseline for telling a new failure
    from the old one in the quiet period. None when the target is not a workload, or
    cannot be read now (the record is not held up for it; without a baseline storage
    counts later alerts on the incident, as before)."""
    ref = run.ref
    if ref.kind not in STATE_KINDS:
        return None
    try:
        cluster = await run.cluster()
        workload = await cluster.get(ref.kind, ref.namespace, ref.name)
        selector = label_selector((workload.get("spec") or {}).get("selector"))
        pods = await cluster.pods(ref.namespace, selector) if selector else []
    except (ApiError, ClusterUnavailable) as error:
        action_log.warning(
            "cannot read the verified workload's state; recorded without it",
            extra={**run.fields(), "error": str(error)},
        )
        return None
    return workload_state(workload, pods)


async def store_record(run: Run, recorder: Recorder) -> storage_pb2.ActionRecord:
    """Send the finished record through `recorder`; the row is then RECORDED."""
    row = run.row
    assert row.record is not None
    await recorder(row.record)
    run.stage(
        "record: stored through storage.RecordAction (outcome "
        f"{storage_pb2.ActionOutcome.Name(row.record.outcome).removeprefix('ACTION_OUTCOME_')})"
    )
    await run.save(ActionState.RECORDED)
    return row.record
