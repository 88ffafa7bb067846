"""executor: the only service that changes clusters. For now, its action catalogue."""

from __future__ import annotations

from typing import Any

import grpc
from kubernaut.executor.v1 import executor_pb2, executor_pb2_grpc

from services.executor import catalogue
from services.runtime.server import ServiceContext, ServiceSpec


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    async def ListActions(
        self, request: executor_pb2.ListActionsRequest, context: Any
    ) -> executor_pb2.ListActionsResponse:
        return executor_pb2.ListActionsResponse(actions=catalogue.list_actions())

    async def DescribeAction(
        self, request: executor_pb2.DescribeActionRequest, context: Any
    ) -> executor_pb2.DescribeActionResponse:
        try:
            return executor_pb2.DescribeActionResponse(
                action=catalogue.describe_action(request.name)
            )
        except catalogue.UnknownAction as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            raise


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(ExecutorServicer())
