"""intelligence: patterns from history; for now, how each action fared per alert."""

from __future__ import annotations

from collections.abc import AsyncIterator

from kubernaut.intelligence.v1 import intelligence_pb2, intelligence_pb2_grpc
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.services.intelligence.stats import action_stats

PAGE_SIZE = 1000
# Bounds the history read per request; older records than this many are not counted.
MAX_RECORDS = 20_000


async def history(
    storage: StorageServiceStub, alert_name: str
) -> AsyncIterator[storage_pb2.ActionRecord]:
    token, seen = "", 0
    while True:
        page = await storage.ListActionRecords(
            storage_pb2.ListActionRecordsRequest(
                alert_name=alert_name, page_size=PAGE_SIZE, page_token=token
            )
        )
        for record in page.records:
            yield record
        seen += len(page.records)
        token = page.next_page_token
        if not token or seen >= MAX_RECORDS:
            return


class IntelligenceServicer(intelligence_pb2_grpc.IntelligenceServiceServicer):
    def __init__(self, storage: StorageServiceStub) -> None:
        self.storage = storage

    async def GetActionStats(
        self, request: intelligence_pb2.GetActionStatsRequest, context: Context
    ) -> intelligence_pb2.GetActionStatsResponse:
        records = [record async for record in history(self.storage, request.alert_name)]
        return intelligence_pb2.GetActionStatsResponse(
            alert_name=request.alert_name, stats=action_stats(records)
        )


async def build(ctx: ServiceContext) -> ServiceSpec:
    return ServiceSpec(IntelligenceServicer(ctx.clients.stub(StorageServiceStub)))
