"""The workflow service's durable state in PostgreSQL, schema `workflow`: workflows, their
steps and the runners' leases. No other service reads or writes this schema."""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.runtime import leases
from kubernaut.runtime.database import LazyDatabase, PooledStore, proto_from_json, proto_to_json
from kubernaut.runtime.leases import LeaseTable

log = logging.getLogger(__name__)

SCHEMA: Final = "workflow"
MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")


class State(enum.StrEnum):
    """WorkflowState without its prefix, as stored."""

    RUNNING = "RUNNING"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    REFUSED = "REFUSED"

    def to_proto(self) -> workflow_pb2.WorkflowState.ValueType:
        return workflow_pb2.WorkflowState.Value(f"WORKFLOW_STATE_{self.value}")


class StepStatus(enum.StrEnum):
    """StepState without its prefix, as stored."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"

    @property
    def finished(self) -> bool:
        return self in (StepStatus.DONE, StepStatus.FAILED, StepStatus.SKIPPED)

    def to_proto(self) -> workflow_pb2.StepState.ValueType:
        return workflow_pb2.StepState.Value(f"STEP_STATE_{self.value}")


def kind_name(kind: workflow_pb2.StepKind.ValueType) -> str:
    """APPLY for STEP_KIND_APPLY."""
    return workflow_pb2.StepKind.Name(kind).removeprefix("STEP_KIND_")


def outcome_name(outcome: storage_pb2.ActionOutcome.ValueType) -> str:
    """SUCCEEDED for ACTION_OUTCOME_SUCCEEDED."""
    return storage_pb2.ActionOutcome.Name(outcome).removeprefix("ACTION_OUTCOME_")


class WorkflowStoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(WorkflowStoreError):
    """The database cannot be reached; safe to retry."""


class LeaseLost(WorkflowStoreError, leases.LeaseLost):
    """This runner no longer holds the workflow's lease: another runner took it over."""


class NotWaitingApproval(WorkflowStoreError):
    """An approval decision on a workflow that does not wait for one."""


class SelfApproval(WorkflowStoreError):
    """The one who requested a workflow may not decide on it."""


class SharedApprover(SelfApproval):
    """A signed link sent to a channel cannot tell its readers apart, so it never approves
    a workflow that needs several different people."""


# How a signed link's channel is recorded as an approver (access: `link:<channel>`).
_LINK_APPROVER_PREFIX = "person:link:"


class Decision(enum.Enum):
    """A person's decision on a workflow that waits for approval: what its approval step
    becomes (DONE lets the workflow act; FAILED makes it refuse without acting)."""

    APPROVE = StepStatus.DONE
    REJECT = StepStatus.FAILED

    @property
    def verb(self) -> str:
        return "approved" if self is Decision.APPROVE else "rejected"

    def to_proto(self) -> workflow_pb2.ApprovalDecision.ValueType:
        return workflow_pb2.ApprovalDecision.Value(f"APPROVAL_DECISION_{self.name}")


def display_name(principal_label: str) -> str:
    """`alice@example.com` for `person:alice@example.com` (and `operator` for the shared
    operator): how messages name people. Services keep their kind (`service:workflow`)."""
    kind, _, name = principal_label.partition(":")
    return name if kind in ("person", "operator") and name else principal_label


@dataclass(frozen=True)
class ApprovalEntry:
    """One person's decision on a workflow."""

    approver: str
    decision: Decision
    reason: str
    decided_at: dt.datetime

    def to_proto(self) -> workflow_pb2.ApprovalRecord:
        record = workflow_pb2.ApprovalRecord(
            approver=self.approver, decision=self.decision.to_proto(), reason=self.reason
        )
        record.decided_at.FromDatetime(self.decided_at)
        return record


@dataclass(frozen=True)
class Step:
    index: int
    kind: workflow_pb2.StepKind.ValueType
    state: StepStatus
    attempts: int
    message: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    # Graph steps (ACTION, CHECK, COMPENSATE): the plan node, the executor's id of the
    # current attempt, how it ended (an ActionOutcome name, PASSED or NOT_PASSED) and when
    # the next attempt may start.
    node: str = ""
    action_id: str = ""
    outcome: str = ""
    not_before: dt.datetime | None = None

    def to_proto(self) -> workflow_pb2.StepRun:
        run = workflow_pb2.StepRun(
            kind=self.kind,
            state=self.state.to_proto(),
            message=self.message,
            attempts=self.attempts,
            node=self.node,
            action_id=self.action_id,
        )
        if self.started_at is not None:
            run.started_at.FromDatetime(self.started_at)
        if self.finished_at is not None:
            run.finished_at.FromDatetime(self.finished_at)
        return run


@dataclass(frozen=True)
class Workflow:
    """One workflow as stored, with its steps in plan order."""

    workflow_id: str
    incident_id: str
    alert: alert_pb2.Alert
    recommendation: remediation_pb2.Recommendation
    plan: workflow_pb2.WorkflowPlan
    state: State
    action_id: str
    message: str
    # What the executor answered, once it answered.
    outcome: storage_pb2.ActionOutcome.ValueType | None
    outcome_message: str
    stages: list[str]
    acted_at: dt.datetime | None
    # The final state, once decided.
    result: State | None
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    steps: tuple[Step, ...] = ()
    # Who asked for it (a principal label), and each person's decision.
    requested_by: str = ""
    approvals: tuple[ApprovalEntry, ...] = ()

    def to_proto(self) -> workflow_pb2.Workflow:
        workflow = workflow_pb2.Workflow(
            workflow_id=self.workflow_id,
            incident_id=self.incident_id,
            plan=self.plan,
            state=self.state.to_proto(),
            steps=[step.to_proto() for step in self.steps],
            action_id=self.action_id,
            message=self.message,
            alert=self.alert,
            recommendation=self.recommendation,
            requested_by=self.requested_by,
            approvals=[approval.to_proto() for approval in self.approvals],
        )
        workflow.created_at.FromDatetime(self.created_at)
        workflow.updated_at.FromDatetime(self.updated_at)
        return workflow


@dataclass(frozen=True)
class StepChange:
    """A new state for one step. RUNNING starts a new attempt (attempts + 1, started_at now),
    unless `new_attempt` is False and the step is running already (then only its message,
    and a `started_at` given, change). DONE, FAILED and SKIPPED set finished_at; a step
    that goes from PENDING straight to DONE or FAILED counts one attempt and gets a
    started_at. `started_at`/`finished_at`, when given, are when it really happened (the
    executor's times) instead of now."""

    index: int
    state: StepStatus
    message: str = ""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    new_attempt: bool = True
    # Graph steps; None leaves the column as it is.
    action_id: str | None = None
    outcome: str | None = None
    # When the next attempt may start (a retry's backoff); set with RUNNING.
    not_before: dt.datetime | None = None


@dataclass(frozen=True)
class WorkflowChange:
    """Changes to a workflow's own columns; None leaves a column as it is."""

    state: State | None = None
    message: str | None = None
    result: State | None = None
    outcome: storage_pb2.ActionOutcome.ValueType | None = None
    outcome_message: str | None = None
    stages: Sequence[str] | None = None
    acted_at: dt.datetime | None = None
    # Give up the lease (the workflow is finished, waits, or this runner stops).
    release: bool = False


@dataclass(frozen=True)
class Claim:
    workflow_id: str
    incident_id: str
    # Who held the lease before, when it was taken over from a runner that stopped renewing.
    previous_owner: str | None = field(default=None)
    # W3C trace context (traceparent, tracestate) of the request that created the workflow.
    trace_context: dict[str, str] = field(default_factory=dict)


_WORKFLOW_COLUMNS: Final = (
    "workflow_id, incident_id, alert, recommendation, plan, state, action_id, message,"
    " outcome, outcome_message, stages, acted_at, result, lease_owner, lease_expires_at,"
    " created_at, updated_at, requested_by"
)

_LEASES: Final = LeaseTable("workflow.workflows", "w", key=("workflow_id",))
# The oldest RUNNING workflow no live runner holds, with who held it before.
_CLAIM: Final = _LEASES.claim(
    due="w.state = 'RUNNING'",
    order_by="w.created_at",
    limit="1",
    owner="$1",
    seconds="$2",
    returning="w.workflow_id, w.incident_id, w.trace_context, next.lease_owner AS previous_owner",
)


class WorkflowStore(PooledStore):
    """Workflows in PostgreSQL through a connection pool. Use `WorkflowStore.connect()`."""

    unavailable = StoreUnavailable
    schema = SCHEMA
    migrations_dir = MIGRATIONS_DIR

    # -- workflows ----------------------------------------------------------------------------

    async def create(
        self,
        incident_id: str,
        alert: alert_pb2.Alert,
        recommendation: remediation_pb2.Recommendation,
        plan: workflow_pb2.WorkflowPlan,
        trace_context: dict[str, str] | None = None,
        requested_by: str = "",
    ) -> tuple[Workflow, bool]:
        """Store a new RUNNING workflow with PENDING steps for the incident and a fresh
        action_id; when the incident has a workflow already, return that one and False.
        `requested_by`: the principal who asked for it (who may not approve it)."""
        async with self._connection() as conn, conn.transaction():
            workflow_id = await conn.fetchval(
                "INSERT INTO workflow.workflows"
                " (workflow_id, incident_id, alert, recommendation, plan, state, action_id,"
                "  trace_context, requested_by)"
                " VALUES ($1, $2, $3::jsonb, $4::jsonb, $5::jsonb, 'RUNNING', $6, $7::jsonb, $8)"
                " ON CONFLICT (incident_id) DO NOTHING RETURNING workflow_id",
                uuid.uuid4(),
                uuid.UUID(incident_id),
                proto_to_json(alert),
                proto_to_json(recommendation),
                proto_to_json(plan),
                uuid.uuid4(),
                json.dumps(trace_context or {}),
                requested_by,
            )
            created = workflow_id is not None
            if created:
                await conn.executemany(
                    "INSERT INTO workflow.steps (workflow_id, index, kind, node)"
                    " VALUES ($1, $2, $3, $4)",
                    [(workflow_id, i, kind_name(s.kind), s.node) for i, s in enumerate(plan.steps)],
                )
            else:
                workflow_id = await conn.fetchval(
                    "SELECT workflow_id FROM workflow.workflows WHERE incident_id = $1",
                    uuid.UUID(incident_id),
                )
            workflow = await self._load(conn, workflow_id)
        assert workflow is not None  # inserted or conflicting, in this transaction
        return workflow, created

    async def get(self, workflow_id: str) -> Workflow | None:
        """The workflow, or None when there is none with this id (or it is not a UUID)."""
        try:
            key = uuid.UUID(workflow_id)
        except ValueError:
            return None
        async with self._connection() as conn:
            return await self._load(conn, key)

    async def get_by_incident(self, incident_id: str) -> Workflow | None:
        async with self._connection() as conn:
            key = await conn.fetchval(
                "SELECT workflow_id FROM workflow.workflows WHERE incident_id = $1",
                uuid.UUID(incident_id),
            )
            return None if key is None else await self._load(conn, key)

    async def _load(
        self, conn: asyncpg.pool.PoolConnectionProxy, workflow_id: uuid.UUID
    ) -> Workflow | None:
        row = await conn.fetchrow(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflow.workflows WHERE workflow_id = $1",
            workflow_id,
        )
        if row is None:
            return None
        steps = await conn.fetch(
            "SELECT index, kind, state, attempts, message, started_at, finished_at,"
            " node, action_id, outcome, not_before"
            " FROM workflow.steps WHERE workflow_id = $1 ORDER BY index",
            workflow_id,
        )
        approvals = await conn.fetch(
            "SELECT approver, decision, reason, decided_at FROM workflow.approvals"
            " WHERE workflow_id = $1 ORDER BY decided_at, approver",
            workflow_id,
        )
        return _workflow(row, steps, approvals)

    async def decide(
        self, workflow_id: str, decision: Decision, approver: str, reason: str
    ) -> tuple[Workflow, bool] | None:
        """Record `approver`'s (a principal label's) `decision` on a workflow that waits
        for approval. A rejection, or the last of the approvals the plan requires (that
        many different people), finishes the approval step (FAILED or DONE) and turns the
        workflow RUNNING again for a runner to claim; an approval short of that is kept and
        the workflow goes on waiting. Returns (the workflow, True); (the workflow, False)
        when this person recorded this decision before; None for an unknown workflow.
        Raises SelfApproval when `approver` requested the workflow; NotWaitingApproval
        when it does not wait (it never needed approval, or it was decided) or this person
        decided otherwise before."""
        key = uuid.UUID(workflow_id)
        async with self._connection() as conn, conn.transaction():
            # Locked: two people deciding at once are taken one after the other.
            locked = await conn.fetchval(
                "SELECT state FROM workflow.workflows WHERE workflow_id = $1 FOR UPDATE", key
            )
            if locked is None:
                return None
            workflow = await self._load(conn, key)
            assert workflow is not None  # locked above
            if workflow.requested_by and approver == workflow.requested_by:
                raise SelfApproval(
                    f"{display_name(approver)} requested workflow {workflow_id} and may not"
                    " decide on it: another person must"
                )
            before = next((a for a in workflow.approvals if a.approver == approver), None)
            if before is not None:
                if before.decision is decision:
                    return workflow, False
                raise NotWaitingApproval(
                    f"{display_name(approver)} {before.decision.verb} workflow {workflow_id}"
                    " before; a decision stands"
                )
            has_step = any(s.kind == workflow_pb2.STEP_KIND_APPROVAL for s in workflow.steps)
            if workflow.state != State.WAITING_APPROVAL:
                raise NotWaitingApproval(_not_waiting(workflow, has_step))
            required = max(1, workflow.plan.approvals_required)
            if (
                decision is Decision.APPROVE
                and required > 1
                and approver.startswith(_LINK_APPROVER_PREFIX)
            ):
                raise SharedApprover(
                    f"workflow {workflow_id} needs {required} different people to approve; a"
                    " link sent to a channel cannot tell people apart: approve as yourself"
                    " (Slack, the CLI or a token)"
                )
            await conn.execute(
                "INSERT INTO workflow.approvals (workflow_id, approver, decision, reason)"
                " VALUES ($1, $2, $3, $4)",
                key,
                approver,
                decision.name,
                reason,
            )
            approvers = [
                display_name(a.approver)
                for a in workflow.approvals
                if a.decision is Decision.APPROVE
            ]
            approvers.append(display_name(approver))
            why = f": {reason}" if reason else ""
            if decision is Decision.REJECT:
                finished = await _record_decision(
                    conn, [key], decision, f"rejected by {display_name(approver)}{why}"
                )
            elif len(approvers) >= required:
                finished = await _record_decision(
                    conn, [key], decision, f"approved by {', '.join(approvers)}{why}"
                )
            else:
                # Short of the approvals required: the step says who approved and keeps
                # waiting. updated_at stays: the approval timeout counts from the wait.
                waiting = (
                    f"approved by {', '.join(approvers)} ({len(approvers)} of {required});"
                    " waiting for another approver"
                )
                updated = await conn.fetch(
                    "WITH steps AS ("
                    "  UPDATE workflow.steps SET message = $2"
                    "  WHERE workflow_id = $1 AND kind = 'APPROVAL' AND state = 'RUNNING'"
                    "  RETURNING workflow_id)"
                    " UPDATE workflow.workflows w SET message = $2 FROM steps"
                    " WHERE w.workflow_id = steps.workflow_id RETURNING w.workflow_id",
                    key,
                    waiting,
                )
                finished = [row["workflow_id"] for row in updated]
            if not finished:
                # The runner sets WAITING_APPROVAL only with the approval step running.
                raise WorkflowStoreError(
                    f"workflow {workflow_id} waits for approval without a running approval step"
                )
            workflow = await self._load(conn, key)
        assert workflow is not None
        return workflow, True

    async def expire_approvals(self, timeout_seconds: float, message: str) -> list[str]:
        """Reject, with `message`, every workflow that has waited for approval longer than
        `timeout_seconds`: as DecideApproval's REJECT does, it turns RUNNING for a runner to
        end it without acting. Returns their ids. SKIP LOCKED: a person deciding one right
        now goes first."""
        async with self._connection() as conn, conn.transaction():
            expired = await conn.fetch(
                "SELECT workflow_id FROM workflow.workflows"
                " WHERE state = 'WAITING_APPROVAL'"
                "   AND updated_at < now() - make_interval(secs => $1)"
                " FOR UPDATE SKIP LOCKED",
                timeout_seconds,
            )
            ids = [row["workflow_id"] for row in expired]
            decided = await _record_decision(conn, ids, Decision.REJECT, message) if ids else []
        return [str(workflow_id) for workflow_id in decided]

    # -- leases -------------------------------------------------------------------------------

    async def claim(self, owner: str, lease_seconds: float) -> Claim | None:
        """Take the lease of the oldest RUNNING workflow that no live runner holds (no lease,
        or one that expired), or return None. SKIP LOCKED: concurrent claimers never get the
        same workflow and never wait on each other."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_CLAIM, owner, lease_seconds)
        if row is None:
            return None
        return Claim(
            str(row["workflow_id"]),
            str(row["incident_id"]),
            row["previous_owner"],
            json.loads(row["trace_context"]),
        )

    async def renew(self, workflow_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; False when `owner` does not hold it any more."""
        async with self._connection() as conn:
            renewed = await conn.fetchval(
                "UPDATE workflow.workflows"
                " SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)"
                " WHERE workflow_id = $1 AND lease_owner = $2 RETURNING true",
                uuid.UUID(workflow_id),
                owner,
                lease_seconds,
            )
        return bool(renewed)

    async def release(self, workflow_id: str, owner: str) -> None:
        """Give up the lease of one workflow, if `owner` holds it."""
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE workflow.workflows SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE workflow_id = $1 AND lease_owner = $2",
                uuid.UUID(workflow_id),
                owner,
            )

    async def release_all(self, owner: str) -> int:
        """Give up every lease `owner` holds (a runner stopping); returns how many."""
        async with self._connection() as conn:
            released = await conn.fetch(_LEASES.release_all, owner)
        return len(released)

    # -- progress -----------------------------------------------------------------------------

    async def save(
        self,
        workflow_id: str,
        owner: str,
        steps: Sequence[StepChange] = (),
        change: WorkflowChange | None = None,
    ) -> None:
        """Apply step and workflow changes in one transaction, only while `owner` holds the
        lease (LeaseLost otherwise): a runner that lost its lease can never overwrite the
        progress of the runner that took over."""
        key = uuid.UUID(workflow_id)
        change = change or WorkflowChange()
        async with self._connection() as conn, conn.transaction():
            held = await conn.fetchval(
                "SELECT true FROM workflow.workflows"
                " WHERE workflow_id = $1 AND lease_owner = $2 FOR UPDATE",
                key,
                owner,
            )
            if not held:
                raise LeaseLost(f"workflow {workflow_id}: the lease is no longer held by {owner}")
            for step in steps:
                if step.state is StepStatus.RUNNING:
                    # Every expression sees the row as it was (`state` is the old state).
                    await conn.execute(
                        "UPDATE workflow.steps SET state = 'RUNNING', message = $3,"
                        " attempts = attempts + CASE WHEN $4 OR state <> 'RUNNING'"
                        "  THEN 1 ELSE 0 END,"
                        " started_at = CASE WHEN $4 OR state <> 'RUNNING'"
                        "  THEN COALESCE($5, now()) ELSE COALESCE($5, started_at) END,"
                        " finished_at = NULL,"
                        " action_id = COALESCE($6::uuid, action_id),"
                        " outcome = COALESCE($7, outcome),"
                        " not_before = $8"
                        " WHERE workflow_id = $1 AND index = $2",
                        key,
                        step.index,
                        step.message,
                        step.new_attempt,
                        step.started_at,
                        step.action_id,
                        step.outcome,
                        step.not_before,
                    )
                else:
                    ran = step.state in (StepStatus.DONE, StepStatus.FAILED)
                    await conn.execute(
                        "UPDATE workflow.steps SET state = $3, message = $4,"
                        " attempts = attempts + CASE WHEN $6 AND state = 'PENDING'"
                        "  THEN 1 ELSE 0 END,"
                        " started_at = CASE WHEN $6"
                        "  THEN COALESCE($7, started_at, $8, now()) ELSE started_at END,"
                        " finished_at = CASE WHEN $5 THEN COALESCE($8, now()) END,"
                        " action_id = COALESCE($9::uuid, action_id),"
                        " outcome = COALESCE($10, outcome),"
                        " not_before = NULL"
                        " WHERE workflow_id = $1 AND index = $2",
                        key,
                        step.index,
                        step.state.value,
                        step.message,
                        step.state.finished,
                        ran,
                        step.started_at,
                        step.finished_at,
                        step.action_id,
                        step.outcome,
                    )
            await conn.execute(
                "UPDATE workflow.workflows SET"
                " state = COALESCE($2, state),"
                " message = COALESCE($3, message),"
                " result = COALESCE($4, result),"
                " outcome = COALESCE($5, outcome),"
                " stages = COALESCE($6::jsonb, stages),"
                " acted_at = COALESCE($7, acted_at),"
                " outcome_message = COALESCE($9, outcome_message),"
                " lease_owner = CASE WHEN $8 THEN NULL ELSE lease_owner END,"
                " lease_expires_at = CASE WHEN $8 THEN NULL ELSE lease_expires_at END,"
                " updated_at = now()"
                " WHERE workflow_id = $1",
                key,
                None if change.state is None else change.state.value,
                change.message,
                None if change.result is None else change.result.value,
                None if change.outcome is None else outcome_name(change.outcome),
                None if change.stages is None else json.dumps(list(change.stages)),
                change.acted_at,
                change.release,
                change.outcome_message,
            )


async def _record_decision(
    conn: asyncpg.pool.PoolConnectionProxy,
    workflow_ids: Sequence[uuid.UUID],
    decision: Decision,
    message: str,
) -> list[uuid.UUID]:
    """Finish the running approval step of each workflow (locked by the caller) as
    `decision` says, with `message`, and turn the workflow RUNNING for a runner to claim;
    returns the ids it changed."""
    rows = await conn.fetch(
        "WITH steps AS ("
        "  UPDATE workflow.steps SET state = $3, message = $2, finished_at = now()"
        "  WHERE workflow_id = ANY($1::uuid[]) AND kind = 'APPROVAL' AND state = 'RUNNING'"
        "  RETURNING workflow_id)"
        " UPDATE workflow.workflows w SET state = 'RUNNING', message = $2, updated_at = now()"
        " FROM steps WHERE w.workflow_id = steps.workflow_id"
        " RETURNING w.workflow_id",
        list(workflow_ids),
        message,
        decision.value.value,
    )
    return [row["workflow_id"] for row in rows]


def _not_waiting(workflow: Workflow, has_approval_step: bool) -> str:
    state = workflow.state.value
    if not has_approval_step:
        return f"workflow {workflow.workflow_id} never needed approval (it is {state})"
    approval = next(s for s in workflow.steps if s.kind == workflow_pb2.STEP_KIND_APPROVAL)
    if approval.state.finished:
        return f"workflow {workflow.workflow_id} was decided already: {approval.message}"
    return f"workflow {workflow.workflow_id} does not wait for approval yet (it is {state})"


def _workflow(
    row: asyncpg.Record,
    steps: Sequence[asyncpg.Record],
    approvals: Sequence[asyncpg.Record] = (),
) -> Workflow:
    outcome = row["outcome"]
    result = row["result"]
    return Workflow(
        workflow_id=str(row["workflow_id"]),
        incident_id=str(row["incident_id"]),
        alert=proto_from_json(row["alert"], alert_pb2.Alert()),
        recommendation=proto_from_json(row["recommendation"], remediation_pb2.Recommendation()),
        plan=proto_from_json(row["plan"], workflow_pb2.WorkflowPlan()),
        state=State(row["state"]),
        action_id=str(row["action_id"]),
        message=row["message"],
        outcome=None
        if outcome is None
        else storage_pb2.ActionOutcome.Value(f"ACTION_OUTCOME_{outcome}"),
        outcome_message=row["outcome_message"],
        stages=[str(s) for s in json.loads(row["stages"])],
        acted_at=row["acted_at"],
        result=None if result is None else State(result),
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        steps=tuple(_step(s) for s in steps),
        requested_by=row["requested_by"],
        approvals=tuple(
            ApprovalEntry(a["approver"], Decision[a["decision"]], a["reason"], a["decided_at"])
            for a in approvals
        ),
    )


def _step(row: asyncpg.Record) -> Step:
    return Step(
        index=row["index"],
        kind=workflow_pb2.StepKind.Value(f"STEP_KIND_{row['kind']}"),
        state=StepStatus(row["state"]),
        attempts=row["attempts"],
        message=row["message"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        node=row["node"],
        action_id="" if row["action_id"] is None else str(row["action_id"]),
        outcome=row["outcome"],
        not_before=row["not_before"],
    )


class WorkflowDatabase(LazyDatabase[WorkflowStore]):
    """The workflow store, connected and migrated on first use (see LazyDatabase);
    `pool_options` go to `WorkflowStore.connect()`."""

    def __init__(self, dsn: str, **pool_options: Any) -> None:
        super().__init__(dsn, WorkflowStore, **pool_options)
