"""One call's work on one action: what every stage reads (the stored row, the request, the
target, the settings, the cluster) and how it reports (`stage`, `refuse`, `fail`) and saves.

It decides nothing itself: the stages (kubernaut.services.executor.scope, .access, .apply, .record)
and the operations (kubernaut.services.executor.operations, which see it as their RunContext) do;
kubernaut.services.executor.engine runs them in order.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn

from kubernaut.common.v1 import alert_pb2

from kubernaut.runtime.clusters import ClusterRegistry
from kubernaut.runtime.kube import ClusterNotConfigured
from kubernaut.services.executor import catalogue, guards
from kubernaut.services.executor.changes import Change
from kubernaut.services.executor.cluster import Cluster
from kubernaut.services.executor.operations import (
    FAILED,
    REFUSED,
    Operation,
    Outcome,
    operation_for,
    undo_operation_for,
)
from kubernaut.services.executor.settings import ExecutorSettings
from kubernaut.services.executor.store import ActionRow, ActionSession, ActionState

# An action's lines keep the logger name they had before the run was split out of the
# engine: log queries select on it.
action_log: Final = logging.getLogger("kubernaut.services.executor.engine")

# A test seam: awaited with the stored row right after the state of a stage was saved:
# "snapshot" (planned), "apply" (applied), "verify" (failed verification: restoring).
Checkpoint = Callable[[str, ActionRow], Awaitable[None]]


class Finished(Exception):
    """A stage decided the outcome (refused, failed, dry-run only)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def where(ref: alert_pb2.ResourceRef) -> str:
    name = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    return f"{ref.kind} {name}"


async def open_cluster(clusters: ClusterRegistry, name: str) -> Cluster:
    """The executor's client of cluster `name` (resolved); ClusterNotConfigured when its
    configuration cannot be loaded."""
    connection = clusters.connection(name)
    try:
        api = await connection.api()
    except ClusterNotConfigured:
        raise
    except Exception as error:  # a kubeconfig that cannot be loaded
        raise ClusterNotConfigured(
            f"the configuration of cluster {name} cannot be loaded: {error}"
        ) from error
    return Cluster(api, timeout=connection.settings.request_timeout_seconds)


class Run:
    """One call's work on one action."""

    def __init__(
        self,
        session: ActionSession,
        row: ActionRow,
        cluster_name: str,
        *,
        clusters: ClusterRegistry,
        settings: ExecutorSettings,
        checkpoint: Checkpoint | None = None,
        undo_of: ActionRow | None = None,
        reason: str = "",
    ) -> None:
        self.clusters = clusters
        self.settings = settings
        self.checkpoint = checkpoint
        self.session = session
        self.row = row
        self.request = row.request
        self.ref = row.request.target
        self.cluster_name = cluster_name
        self.action = catalogue.action_name(row.request.action)
        # A rollback (RollbackAction): the action it undoes, and why.
        self.undo_of = undo_of
        self.reason = reason
        self.operation: Operation = (
            operation_for(self.action) if undo_of is None else undo_operation_for(undo_of)
        )
        # The guards' name for what runs: a rollback cools down apart from its action.
        self.guarded_action = self.action if undo_of is None else f"undo:{self.action}"
        self.target_key = guards.TargetKey(
            cluster_name, self.ref.kind, self.ref.namespace, self.ref.name
        )
        self._cluster: Cluster | None = None
        # Set once the guards admitted the action: its target is released at the end.
        self.admitted = False
        # What a read-only action gathered (collect_diagnostics), for the record.
        self.details = ""
        # The target as last read (the record's after).
        self.current: dict[str, Any] | None = None
        # The target as first read by this call (the before, until a snapshot).
        self.seen: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "action_id": self.row.action_id,
            "incident_id": self.request.incident_id,
            "action": self.action,
            "target": where(self.ref),
            "cluster": self.cluster_name,
        }

    def stage(self, line: str) -> None:
        self.row.stages.append(line)
        self.row.stage_times.append(now())  # for GetActionProgress
        action_log.info(line, extra=self.fields())

    def refuse(self, line: str, message: str) -> NoReturn:
        self.stage(line)
        raise Finished(REFUSED, message)

    def fail(self, line: str, message: str) -> NoReturn:
        self.stage(line)
        raise Finished(FAILED, message)

    def what(self) -> str:
        in_cluster = f" in cluster {self.cluster_name}" if self.ref.cluster else ""
        action = self.action
        if self.undo_of is not None:
            why = f" ({self.reason})" if self.reason else ""
            action = f"rollback of {action} {self.undo_of.action_id}{why}"
        return f"{action} on {where(self.ref)}{in_cluster}"

    async def save(self, state: ActionState | None = None) -> None:
        if state is not None:
            self.row.state = state
        await self.session.save(self.row)

    async def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = await open_cluster(self.clusters, self.cluster_name)
        return self._cluster

    async def read(self) -> dict[str, Any]:
        ref = self.ref
        obj = await (await self.cluster()).get(ref.kind, ref.namespace, ref.name)
        self.current = obj
        return obj

    async def reached(self, name: str) -> None:
        """The test seam (Checkpoint), if one is set."""
        if self.checkpoint is not None:
            await self.checkpoint(name, self.row)

    @property
    def change(self) -> Change:
        assert self.row.change is not None
        return self.row.change

    @property
    def snapshot(self) -> dict[str, Any]:
        assert self.row.snapshot is not None
        return self.row.snapshot
