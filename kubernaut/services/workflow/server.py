"""workflow: plans workflows from recommendations, persists them and runs their steps."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.effectiveness.v1.effectiveness_pb2_grpc import EffectivenessServiceStub
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.notification.v1 import notification_pb2
from kubernaut.notification.v1.notification_pb2_grpc import NotificationServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2, workflow_pb2_grpc

from kubernaut.runtime.database import unavailable_as_status
from kubernaut.runtime.interceptors import RETRYABLE, abort_invalid
from kubernaut.runtime.principals import current_principal
from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.runtime.settings import DatabaseSettings
from kubernaut.services.workflow.downstream import (
    DownstreamError,
    FailedPrecondition,
    Notified,
    Unavailable,
)
from kubernaut.services.workflow.engine import WorkflowEngine
from kubernaut.services.workflow.graph import graph_actions
from kubernaut.services.workflow.planning import (
    RISK_NAMES,
    Approval,
    TargetHistory,
    guard_for,
    plan,
    plan_runbook,
    policy_decision,
)
from kubernaut.services.workflow.policy import ApprovalPolicy, PolicyFacts, build_facts
from kubernaut.services.workflow.runbooks import (
    ChosenRunbook,
    RunbookCatalogue,
    default_runbook_dir,
    load_runbooks,
)
from kubernaut.services.workflow.settings import PlanningSettings, RunnerSettings, WatchSettings
from kubernaut.services.workflow.store import (
    Decision,
    NotWaitingApproval,
    SelfApproval,
    StoreUnavailable,
    WorkflowDatabase,
)
from kubernaut.services.workflow.watch import WorkflowGone, watch

log = logging.getLogger(__name__)

_DECISIONS = {
    workflow_pb2.APPROVAL_DECISION_APPROVE: Decision.APPROVE,
    workflow_pb2.APPROVAL_DECISION_REJECT: Decision.REJECT,
}


@contextlib.asynccontextmanager
async def _translated(operation: str) -> AsyncIterator[None]:
    """gRPC errors of a downstream call as the engine's errors."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        detail = f"{error.code().name}: {error.details()}"
        if error.code() in RETRYABLE:
            raise Unavailable(operation, detail) from error
        if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
            raise FailedPrecondition(operation, detail) from error
        raise DownstreamError(operation, detail) from error


class GrpcDownstream:
    """The engine's Downstream through the generated stubs (the clients retry UNAVAILABLE a
    few times themselves; the engine keeps retrying after that)."""

    def __init__(
        self,
        executor: ExecutorServiceStub,
        storage: StorageServiceStub,
        effectiveness: EffectivenessServiceStub,
        notification: NotificationServiceStub,
    ) -> None:
        self.executor = executor
        self.storage = storage
        self.effectiveness = effectiveness
        self.notification = notification

    async def execute_action(
        self, request: executor_pb2.ExecuteActionRequest, timeout: float
    ) -> executor_pb2.ExecuteActionResponse:
        async with _translated("ExecuteAction"):
            # Verification takes minutes; the default call deadline would cut it short.
            response: executor_pb2.ExecuteActionResponse = await self.executor.ExecuteAction(
                request, timeout=timeout
            )
        return response

    async def get_action_progress(
        self, request: executor_pb2.GetActionProgressRequest
    ) -> executor_pb2.GetActionProgressResponse:
        async with _translated("GetActionProgress"):
            response: executor_pb2.GetActionProgressResponse = (
                await self.executor.GetActionProgress(request)
            )
        return response

    async def rollback_action(
        self, request: executor_pb2.RollbackActionRequest, timeout: float
    ) -> executor_pb2.RollbackActionResponse:
        async with _translated("RollbackAction"):
            response: executor_pb2.RollbackActionResponse = await self.executor.RollbackAction(
                request, timeout=timeout
            )
        return response

    async def run_check(
        self, request: executor_pb2.RunCheckRequest, timeout: float
    ) -> executor_pb2.RunCheckResponse:
        async with _translated("RunCheck"):
            # A check waits up to its own timeout; the default call deadline is shorter.
            response: executor_pb2.RunCheckResponse = await self.executor.RunCheck(
                request, timeout=timeout
            )
        return response

    async def update_incident(self, request: storage_pb2.UpdateIncidentRequest) -> None:
        async with _translated("UpdateIncident"):
            await self.storage.UpdateIncident(request)

    async def schedule_assessment(
        self, request: effectiveness_pb2.ScheduleAssessmentRequest
    ) -> None:
        async with _translated("ScheduleAssessment"):
            await self.effectiveness.ScheduleAssessment(request)

    async def notify_incident_event(
        self, request: notification_pb2.NotifyIncidentEventRequest
    ) -> Notified:
        async with _translated("NotifyIncidentEvent"):
            response: notification_pb2.NotifyIncidentEventResponse = (
                await self.notification.NotifyIncidentEvent(request)
            )
        return Notified.of(response)


class WorkflowServicer(workflow_pb2_grpc.WorkflowServiceServicer):
    def __init__(
        self,
        executor: ExecutorServiceStub,
        storage: StorageServiceStub,
        engine: WorkflowEngine,
        settings: PlanningSettings,
        watch_settings: WatchSettings | None = None,
        *,
        runbooks: RunbookCatalogue,
        policy: ApprovalPolicy | None,
    ) -> None:
        self.executor = executor
        self.storage = storage
        self.engine = engine
        self.settings = settings
        self.watch_settings = watch_settings or WatchSettings()
        self.runbooks = runbooks
        self.policy = policy

    async def _plan(
        self,
        recommendation: remediation_pb2.Recommendation,
        context: Context,
        alert: alert_pb2.Alert | None = None,
        incident_id: str = "",
    ) -> workflow_pb2.WorkflowPlan:
        """The plan for a recommendation: a runbook's graph when a template answers the
        alert and the recommended action, else the action alone; approval as the guard,
        the analysis and the approval policy decide (the policy's decision recorded)."""
        # Validation guarantees one action is set.
        action = recommendation.action.WhichOneof("params") or ""
        target, unread = await self._target(recommendation.target)
        chosen = None
        if alert is not None and self.runbooks.answers(alert.name, action):
            chosen = self.runbooks.choose(alert, recommendation, _workload(target))
        names = {action, *(graph_actions(chosen.nodes) if chosen is not None else ())}
        definitions = {name: await self._describe(name, context) for name in sorted(names)}
        history = await self._target_history(recommendation.target)
        guard = guard_for(recommendation, history, dt.datetime.now(dt.UTC), self.settings)
        unknown = remediation_pb2.RISK_LEVEL_UNSPECIFIED
        risk = max((d.risk for d in definitions.values()), default=unknown)
        facts = self._policy_facts(
            recommendation, alert, incident_id, chosen, sorted(names), risk, target
        )
        if guard is None and unread and self.policy is not None:
            # Fail closed: a policy that weighs the namespace cannot decide without it.
            guard = Approval(True, f"the target could not be described ({unread})")
        if guard is not None:
            log.warning(
                "plan held for a person by the guard",
                extra={"action": action, "why": guard.reason},
            )
        decision = policy_decision(self.policy, facts, recommendation, risk, self.settings)
        log.info(
            "approval policy decided",
            extra={
                "action": action,
                "rule": decision.rule,
                "outcome": workflow_pb2.PolicyOutcome.Name(decision.outcome),
                "runbook": chosen.ref.name if chosen is not None else "",
            },
        )
        if chosen is None:
            return plan(recommendation, definitions[action], self.settings, guard, decision)
        return plan_runbook(
            recommendation,
            chosen.ref,
            chosen.nodes,
            chosen.max_parallel,
            definitions,
            self.settings,
            guard,
            decision,
        )

    async def _target(
        self, target: alert_pb2.ResourceRef
    ) -> tuple[executor_pb2.DescribeTargetResponse | None, str]:
        """What the executor sees of the target (its namespace's labels, a workload's
        replicas), or None and why it could not be read."""
        try:
            described: executor_pb2.DescribeTargetResponse = await self.executor.DescribeTarget(
                executor_pb2.DescribeTargetRequest(target=target)
            )
        except grpc.aio.AioRpcError as error:
            why = f"{error.code().name}: {error.details()}"[:256]
            log.warning("the target could not be described", extra={"error": why})
            return None, why
        return described, ""

    async def _describe(self, action: str, context: Context) -> executor_pb2.ActionDefinition:
        """The executor's catalogue entry; FAILED_PRECONDITION when it does not offer it."""
        try:
            described = await self.executor.DescribeAction(
                executor_pb2.DescribeActionRequest(name=action)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the executor does not offer {action!r}: {error.details()}",
                )
            raise
        definition: executor_pb2.ActionDefinition = described.action
        return definition

    def _policy_facts(
        self,
        recommendation: remediation_pb2.Recommendation,
        alert: alert_pb2.Alert | None,
        incident_id: str,
        chosen: ChosenRunbook | None,
        actions: Sequence[str],
        risk: remediation_pb2.RiskLevel.ValueType,
        described: executor_pb2.DescribeTargetResponse | None,
    ) -> PolicyFacts:
        """What the approval policy decides on."""
        target = recommendation.target
        labels = dict(described.namespace_labels) if described is not None else {}
        alert = alert or alert_pb2.Alert()
        return build_facts(
            action=recommendation.action.WhichOneof("params") or "",
            actions=actions,
            risk=RISK_NAMES.get(risk, "unknown"),
            steps=len(chosen.nodes) if chosen is not None else 1,
            runbook=chosen.ref.name if chosen is not None else "",
            target_kind=target.kind,
            target_namespace=target.namespace,
            target_name=target.name,
            incident_id=incident_id,
            alert=alert.name,
            severity=alert.labels.get("severity", ""),
            incident_labels=dict(alert.labels),
            fingerprint=alert.source_fingerprint,
            namespace_labels=labels,
            confidence=recommendation.confidence,
            source=recommendation.source or "unknown",
            approval_required=recommendation.approval_required,
            timezone=self.policy.timezone if self.policy is not None else dt.UTC,
        )

    async def _target_history(self, target: alert_pb2.ResourceRef) -> TargetHistory:
        """The target's action records, newest first (one page: the guard looks at the
        recent past), or why they could not be read."""
        try:
            listed = await self.storage.ListActionRecords(
                storage_pb2.ListActionRecordsRequest(target=target, page_size=100)
            )
        except grpc.aio.AioRpcError as error:
            return TargetHistory(unreadable=f"{error.code().name}: {error.details()}"[:256])
        return TargetHistory(records=list(listed.records))

    async def PlanWorkflow(
        self, request: workflow_pb2.PlanWorkflowRequest, context: Context
    ) -> workflow_pb2.PlanWorkflowResponse:
        alert = request.alert if request.HasField("alert") else None
        return workflow_pb2.PlanWorkflowResponse(
            plan=await self._plan(request.recommendation, context, alert)
        )

    async def ListRunbooks(
        self, request: workflow_pb2.ListRunbooksRequest, context: Context
    ) -> workflow_pb2.ListRunbooksResponse:
        return workflow_pb2.ListRunbooksResponse(runbooks=self.runbooks.list())

    async def CreateWorkflow(
        self, request: workflow_pb2.CreateWorkflowRequest, context: Context
    ) -> workflow_pb2.CreateWorkflowResponse:
        if request.alert.status == alert_pb2.ALERT_STATUS_RESOLVED:
            await abort_invalid(context, "alert.status", "a resolved alert never starts a workflow")
        async with unavailable_as_status(context, StoreUnavailable):
            # A repeat (a retry of the caller, another alert of the incident) gets the
            # workflow there is, even while the executor is unreachable.
            existing = await self.engine.get_by_incident(request.incident_id)
        if existing is None:
            planned = await self._plan(
                request.recommendation, context, request.alert, request.incident_id
            )
            async with unavailable_as_status(context, StoreUnavailable):
                existing, created = await self.engine.create(
                    request.incident_id,
                    request.alert,
                    request.recommendation,
                    planned,
                    requested_by=current_principal().label,
                )
        else:
            created = False
        return workflow_pb2.CreateWorkflowResponse(workflow=existing.to_proto(), created=created)

    async def GetWorkflow(
        self, request: workflow_pb2.GetWorkflowRequest, context: Context
    ) -> workflow_pb2.GetWorkflowResponse:
        async with unavailable_as_status(context, StoreUnavailable):
            if request.HasField("incident_id"):
                workflow = await self.engine.get_by_incident(request.incident_id)
            else:
                workflow = await self.engine.get(request.workflow_id)
        if workflow is None:
            key = request.WhichOneof("key")
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no workflow for {key} {getattr(request, key or '')}"
            )
            raise AssertionError("unreachable")  # abort raises
        return workflow_pb2.GetWorkflowResponse(workflow=workflow.to_proto())

    async def WatchWorkflow(
        self, request: workflow_pb2.WatchWorkflowRequest, context: Context
    ) -> AsyncIterator[workflow_pb2.WatchWorkflowResponse]:
        key = request.WhichOneof("key") or ""
        # An incident's workflow is looked up once; then it is read by its own id.
        workflow_id = request.workflow_id if key == "workflow_id" else None

        async def load() -> workflow_pb2.Workflow | None:
            nonlocal workflow_id
            if workflow_id is None:
                found = await self.engine.get_by_incident(request.incident_id)
                workflow_id = None if found is None else found.workflow_id
            else:
                found = await self.engine.get(workflow_id)
            return None if found is None else found.to_proto()

        try:
            async with unavailable_as_status(context, StoreUnavailable):
                async for response in watch(load, self.watch_settings.watch_poll_seconds):
                    yield response
        except WorkflowGone as error:
            what = f"workflow {workflow_id}" if error.seen else f"no workflow for {key}"
            detail = "is gone" if error.seen else getattr(request, key)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{what} {detail}")

    async def DecideApproval(
        self, request: workflow_pb2.DecideApprovalRequest, context: Context
    ) -> workflow_pb2.DecideApprovalResponse:
        # The approver is who authenticated, never a name typed in.
        principal = current_principal()
        claimed = request.approver.strip()
        if claimed and claimed not in (principal.name, principal.label):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"you are authenticated as {principal.name}; approver {claimed!r} differs"
                " (the workflow records who authenticated)",
            )
        try:
            async with unavailable_as_status(context, StoreUnavailable):
                decided = await self.engine.decide(
                    request.workflow_id,
                    _DECISIONS[request.decision],  # validation allows only these
                    principal.label,
                    request.reason.strip(),
                )
        except SelfApproval as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
            raise AssertionError("unreachable") from error  # abort raises
        except NotWaitingApproval as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise AssertionError("unreachable") from error  # abort raises
        if decided is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no workflow for workflow_id {request.workflow_id}"
            )
            raise AssertionError("unreachable")  # abort raises
        workflow, new = decided
        return workflow_pb2.DecideApprovalResponse(workflow=workflow.to_proto(), decided=new)


async def build(ctx: ServiceContext) -> ServiceSpec:
    # The workflow service keeps its state in schema `workflow` of this database.
    database = WorkflowDatabase(DatabaseSettings().database_url)
    settings = RunnerSettings()
    downstream = GrpcDownstream(
        ctx.clients.stub(ExecutorServiceStub),
        ctx.clients.stub(StorageServiceStub),
        ctx.clients.stub(EffectivenessServiceStub),
        ctx.clients.stub(NotificationServiceStub),
    )
    planning = PlanningSettings()
    # Both are validated here, at start: a bad template or policy stops the service with
    # a message naming the file and the problem (a ValueError: `kubernaut serve` exits 2).
    runbooks = load_runbooks(
        Path(planning.runbook_dir) if planning.runbook_dir else default_runbook_dir()
    )
    policy = ApprovalPolicy.load(planning.policy_file) if planning.policy_file else None
    log.info(
        "runbooks and approval policy loaded",
        extra={
            "runbooks": ", ".join(f"{r.name} {r.version}" for r in runbooks.list()),
            "policy": policy.policy_id if policy is not None else "thresholds",
        },
    )
    engine = WorkflowEngine(database.store, downstream, settings)
    engine.start()

    async def stop() -> None:
        await engine.stop()
        await database.close()

    return ServiceSpec(
        WorkflowServicer(
            ctx.clients.stub(ExecutorServiceStub),
            ctx.clients.stub(StorageServiceStub),
            engine,
            planning,
            WatchSettings(),
            runbooks=runbooks,
            policy=policy,
        ),
        readiness=[("postgresql", database.ready)],
        on_stop=[stop],
    )


def _workload(described: executor_pb2.DescribeTargetResponse | None) -> dict[str, int]:
    """What runbook templates may use of the target as it is now: a Deployment's or a
    StatefulSet's replicas. Empty when it could not be read (a template that needs it then
    does not render, and another, or the action alone, is planned)."""
    if described is None or not described.exists or not described.replicas:
        return {}
    return {"replicas": described.replicas, "ready_replicas": described.ready_replicas}
