"""workflow: plans workflows from recommendations, persists them and runs their steps."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator

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
from kubernaut.services.workflow.engine import (
    DownstreamError,
    FailedPrecondition,
    Notified,
    Unavailable,
    WorkflowEngine,
)
from kubernaut.services.workflow.planning import TargetHistory, guard_for, plan
from kubernaut.services.workflow.settings import PlanningSettings, RunnerSettings
from kubernaut.services.workflow.store import (
    Decision,
    NotWaitingApproval,
    SelfApproval,
    StoreUnavailable,
    WorkflowDatabase,
)

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
    ) -> None:
        self.executor = executor
        self.storage = storage
        self.engine = engine
        self.settings = settings

    async def _plan(
        self, recommendation: remediation_pb2.Recommendation, context: Context
    ) -> workflow_pb2.WorkflowPlan:
        # Validation guarantees one action is set.
        action = recommendation.action.WhichOneof("params") or ""
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
        history = await self._target_history(recommendation.target)
        guard = guard_for(recommendation, history, dt.datetime.now(dt.UTC), self.settings)
        if guard is not None:
            log.warning(
                "plan held for a person by the guard",
                extra={"action": action, "why": guard.reason},
            )
        return plan(recommendation, described.action, self.settings, guard)

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
        return workflow_pb2.PlanWorkflowResponse(
            plan=await self._plan(request.recommendation, context)
        )

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
            planned = await self._plan(request.recommendation, context)
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
            PlanningSettings(),
        ),
        readiness=[("postgresql", database.ready)],
        on_stop=[stop],
    )
