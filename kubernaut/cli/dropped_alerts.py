"""`kubernaut alerts list`: the alerts that did not become incidents, and why, read over
gRPC from storage with the operator's identity. Every other accepted alert is on an
incident (`kubernaut incidents list`)."""

from __future__ import annotations

import sys

import grpc
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.cli.tables import print_table, when_text
from kubernaut.runtime.clients import Clients
from kubernaut.services.alerts import subject_text

# Reasons are long sentences; the table keeps them readable on a terminal.
_REASON_CHARS = 120


def _why(dropped: storage_pb2.DroppedAlert) -> str:
    code = storage_pb2.AlertDropReason.Name(dropped.reason_code)
    return code.removeprefix("ALERT_DROP_REASON_").lower()


async def list_dropped_alerts(clients: Clients, limit: int) -> int:
    try:
        reply = await clients.stub(StorageServiceStub).ListDroppedAlerts(
            storage_pb2.ListDroppedAlertsRequest(page_size=limit)
        )
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut alerts: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if not reply.alerts:
        print("No dropped alerts: every alert Kubernaut was handed is on an incident.")
        return 0
    rows = [["DROPPED (UTC)", "ALERT", "WHY", "SUBJECT", "REASON"]]
    for dropped in reply.alerts:
        reason = dropped.reason
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 1] + "…"
        rows.append(
            [
                when_text(dropped.dropped_at),
                dropped.alert.name,
                _why(dropped),
                subject_text(dropped.subject) if dropped.HasField("subject") else "-",
                reason,
            ]
        )
    print_table(rows)
    return 0
