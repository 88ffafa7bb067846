"""workflow: plans (and, later, runs) workflows from recommendations."""

from __future__ import annotations

from typing import Any

import grpc
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.workflow.v1 import workflow_pb2, workflow_pb2_grpc

from services.runtime.server import ServiceContext, ServiceSpec
from services.workflow.planning import PlanningSettings, plan


class WorkflowServicer(workflow_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, executor: ExecutorServiceStub, settings: PlanningSettings) -> None:
        self.executor = executor
        self.settings = settings

    async def PlanWorkflow(
        self, request: workflow_pb2.PlanWorkflowRequest, context: Any
    ) -> workflow_pb2.PlanWorkflowResponse:
        # Validation guarantees one action is set.
        action = request.recommendation.action.WhichOneof("params") or ""
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
        return workflow_pb2.PlanWorkflowResponse(
            plan=plan(request.recommendation, described.action, self.settings)
        )


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(WorkflowServicer(ctx.clients.stub(ExecutorServiceStub), PlanningSettings()))
