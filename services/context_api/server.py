"""context_api: the context other services need to decide."""

from __future__ import annotations

from typing import Any

import grpc
from kubernaut.context_api.v1 import context_api_pb2, context_api_pb2_grpc

from services.context_api import knowledge
from services.runtime.server import ServiceContext, ServiceSpec


class ContextAPIServicer(context_api_pb2_grpc.ContextAPIServiceServicer):
    async def GetAlertKnowledge(
        self, request: context_api_pb2.GetAlertKnowledgeRequest, context: Any
    ) -> context_api_pb2.GetAlertKnowledgeResponse:
        try:
            entry = knowledge.get_alert_knowledge(request.alert_name)
        except knowledge.UnknownAlert as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            raise
        return context_api_pb2.GetAlertKnowledgeResponse(knowledge=entry)


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(ContextAPIServicer())
