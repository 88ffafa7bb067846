"""What intelligence reads from storage, over storage's gRPC API only, a page at a time
and bounded: each reader returns the newest records up to its limit and says whether more
were left unread."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.services.intelligence.insights import PERSON_METHODS

# Storage's largest page.
PAGE_SIZE: Final = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class Read(Generic[T]):
    # Newest first.
    items: list[T]
    # More matched than the limit: the oldest were left unread.
    truncated: bool


def timestamp(at: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


async def _pages(
    fetch: Callable[[str], Awaitable[tuple[Sequence[T], str]]],
) -> AsyncIterator[T]:
    token = ""
    while True:
        items, token = await fetch(token)
        for item in items:
            yield item
        if not token:
            return


async def _bounded(items: AsyncIterator[T], limit: int) -> Read[T]:
    read: list[T] = []
    async for item in items:
        if len(read) == limit:
            return Read(read, True)
        read.append(item)
    return Read(read, False)


async def incidents_since(
    storage: StorageServiceStub,
    opened_after: dt.datetime,
    limit: int,
    *,
    alert_name: str = "",
    subject: alert_pb2.ResourceRef | None = None,
) -> Read[storage_pb2.Incident]:
    """Incidents opened after `opened_after` (of one alert name and subject, when given),
    the newest `limit`."""

    async def fetch(token: str) -> tuple[Sequence[storage_pb2.Incident], str]:
        request = storage_pb2.ListIncidentsRequest(
            opened_after=timestamp(opened_after),
            alert_name=alert_name,
            page_size=min(PAGE_SIZE, limit + 1),
            page_token=token,
        )
        if subject is not None:
            request.subject.CopyFrom(subject)
        page = await storage.ListIncidents(request)
        return page.incidents, page.next_page_token

    return await _bounded(_pages(fetch), limit)


async def actions_since(
    storage: StorageServiceStub, started_after: dt.datetime, limit: int, alert_name: str = ""
) -> Read[storage_pb2.ActionRecord]:
    """Action records started after `started_after` (of one alert name, when given), the
    newest `limit`. Storage lists them newest first, so reading stops at the first older
    one."""

    async def fetch(token: str) -> tuple[Sequence[storage_pb2.ActionRecord], str]:
        page = await storage.ListActionRecords(
            storage_pb2.ListActionRecordsRequest(
                alert_name=alert_name, page_size=min(PAGE_SIZE, limit + 1), page_token=token
            )
        )
        fresh = [r for r in page.records if r.started_at.ToDatetime(dt.UTC) > started_after]
        # An older record ends the listing: everything after it is older still.
        return fresh, page.next_page_token if len(fresh) == len(page.records) else ""

    return await _bounded(_pages(fetch), limit)


async def embeddings_since(
    storage: StorageServiceStub, opened_after: dt.datetime, limit: int
) -> Read[storage_pb2.IncidentEmbedding]:
    """The embeddings of incidents opened after `opened_after`, the newest `limit`."""

    async def fetch(token: str) -> tuple[Sequence[storage_pb2.IncidentEmbedding], str]:
        page = await storage.ListIncidentEmbeddings(
            storage_pb2.ListIncidentEmbeddingsRequest(
                opened_after=timestamp(opened_after),
                page_size=min(PAGE_SIZE, limit + 1),
                page_token=token,
            )
        )
        return page.embeddings, page.next_page_token

    return await _bounded(_pages(fetch), limit)


async def people_entries_since(
    storage: StorageServiceStub, since: dt.datetime, limit: int
) -> Read[storage_pb2.AuditEntry]:
    """The audit entries since `since` of the calls by which people take part in a
    remediation (insights.PERSON_METHODS), at most `limit` of each method."""
    entries: list[storage_pb2.AuditEntry] = []
    truncated = False
    for method in PERSON_METHODS:

        async def fetch(
            token: str, method: str = method
        ) -> tuple[Sequence[storage_pb2.AuditEntry], str]:
            page = await storage.ListAuditEntries(
                storage_pb2.ListAuditEntriesRequest(
                    method=method,
                    since=timestamp(since),
                    newest_first=True,
                    page_size=min(PAGE_SIZE, limit + 1),
                    page_token=token,
                )
            )
            return page.entries, page.next_page_token

        read = await _bounded(_pages(fetch), limit)
        entries += read.items
        truncated = truncated or read.truncated
    return Read(entries, truncated)
