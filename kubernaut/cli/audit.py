"""`kubernaut audit list|verify`: the tamper-evident audit trail, read over gRPC from
storage. `verify` fetches the whole chain and recomputes every hash itself, with the
function storage hashed with (kubernaut.runtime.audit.entry_hash): a row changed, removed
or slipped in behind storage's back is named by its seq."""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import AsyncIterator

import grpc
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.cli.tables import print_table, when_text
from kubernaut.runtime.audit import ChainVerifier
from kubernaut.runtime.clients import Clients

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Messages are short already; the table keeps them readable on a terminal.
_MESSAGE_CHARS = 80
# verify reads the chain in the largest pages storage gives.
_VERIFY_PAGE = 1000


class BadTime(ValueError):
    pass


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 time (UTC unless it says otherwise; a date means its midnight) or a
    duration ago: 90s, 15m, 2h, 7d."""
    now = now or dt.datetime.now(dt.UTC)
    if match := _AGO.match(text.strip()):
        return now - dt.timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise BadTime(
            f"{text!r} is neither an ISO 8601 time (2025-03-01T12:00:00Z) nor a duration"
            " ago (15m, 2h, 7d)"
        ) from error
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _short(text: str) -> str:
    # One line a row, and nothing a terminal would act on.
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


async def list_entries(
    clients: Clients,
    *,
    principal: str = "",
    incident_id: str = "",
    method: str = "",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
) -> int:
    """The newest `limit` entries that match, oldest of them first."""
    request = storage_pb2.ListAuditEntriesRequest(
        principal=principal,
        incident_id=incident_id,
        method=method,
        newest_first=True,
        page_size=limit,
    )
    if since is not None:
        request.since.FromDatetime(since)
    if until is not None:
        request.until.FromDatetime(until)
    try:
        reply = await clients.stub(StorageServiceStub).ListAuditEntries(request)
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut audit list: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if not reply.entries:
        print("No audit entries match.")
        return 0
    rows = [["SEQ", "AT (UTC)", "PRINCIPAL", "CALL", "INCIDENT", "TARGET", "OUTCOME"]]
    for entry in reversed(reply.entries):
        outcome = entry.outcome_code
        if entry.outcome_message:
            outcome += f": {entry.outcome_message}"
        rows.append(
            [
                str(entry.seq),
                when_text(entry.at),
                _short(entry.principal),
                f"{entry.service} {_short(entry.method)}",
                entry.incident_id or "-",
                _short(entry.target) or "-",
                _short(outcome),
            ]
        )
    print_table(rows)
    if reply.next_page_token:
        print(f"(the newest {len(reply.entries)}; --limit shows more)")
    return 0


async def whole_chain(clients: Clients) -> AsyncIterator[storage_pb2.AuditEntry]:
    """Every entry, in chain order, a page at a time."""
    stub = clients.stub(StorageServiceStub)
    token = ""
    while True:
        reply = await stub.ListAuditEntries(
            storage_pb2.ListAuditEntriesRequest(page_size=_VERIFY_PAGE, page_token=token)
        )
        for entry in reply.entries:
            yield entry
        token = reply.next_page_token
        if not token:
            return


async def verify(clients: Clients) -> int:
    """0 and "N entries, chain intact" when every link holds; 1 and the first broken link."""
    verifier = ChainVerifier()
    try:
        async for entry in whole_chain(clients):
            if verifier.feed(entry) is not None:
                break
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut audit verify: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if verifier.broken is not None:
        print(
            f"chain broken at seq {verifier.broken.seq}: {verifier.broken.problem}"
            f" ({verifier.count} entries before it hold)"
        )
        return 1
    print(f"{verifier.count} entries, chain intact")
    if verifier.count:
        # Noted somewhere else, the head also shows a chain rewritten from some entry on.
        print(f"head: seq {verifier.count} hash {verifier.head_hash}")
    return 0
