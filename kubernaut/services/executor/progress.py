"""GetActionProgress without gRPC: an action's stored row as the progress answer."""

from __future__ import annotations

import datetime as dt

from kubernaut.executor.v1 import executor_pb2

from kubernaut.services.executor.settings import ExecutorSettings
from kubernaut.services.executor.store import ActionRow, ActionState

__all__ = ["progress_of", "verify_timeout"]


def verify_timeout(request: executor_pb2.ExecuteActionRequest, settings: ExecutorSettings) -> float:
    """Seconds the action's verification may take: drain_node's own timeout where it sets
    one (its verification waits for the evictions), else the request's (a runbook step's),
    else the setting."""
    if request.action.HasField("drain_node") and request.action.drain_node.timeout_seconds:
        return float(request.action.drain_node.timeout_seconds)
    return float(request.verify_timeout_seconds) or settings.verify_timeout_seconds


def _stamp(message: object, at: dt.datetime | None) -> None:
    if at is not None:
        message.FromDatetime(at)  # type: ignore[attr-defined]


def progress_of(
    row: ActionRow, settings: ExecutorSettings, *, running: bool
) -> executor_pb2.GetActionProgressResponse:
    """The progress answer for a stored action; `running`: a call works on it now."""
    response = executor_pb2.GetActionProgressResponse(
        action_id=row.action_id,
        state=executor_pb2.ActionState.Value(f"ACTION_STATE_{row.state.name}"),
        running=running,
    )
    for line, at in zip(row.stages, row.stage_times, strict=False):
        stage = response.stages.add(line=line)
        _stamp(stage.at, at)
    for line in row.stages[len(row.stage_times) :]:
        response.stages.add(line=line)
    _stamp(response.started_at, row.started_at)
    _stamp(response.applied_at, row.applied_at)
    _stamp(response.verify_started_at, row.verify_started_at)
    _stamp(response.updated_at, row.updated_at)
    response.verify_timeout.FromTimedelta(
        dt.timedelta(seconds=verify_timeout(row.request, settings))
    )
    if row.state in (ActionState.FINISHED, ActionState.RECORDED) and row.record is not None:
        response.outcome = row.record.outcome
    return response
