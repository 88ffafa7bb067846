"""How the CLI prints: aligned tables, a resource, a time, and the readiness of a running
system. Shared by its commands (incidents, workflows, alerts, up, demo), which the CLI
imports; nothing here imports a command."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp

from kubernaut.runtime.names import ServiceName

if TYPE_CHECKING:
    from kubernaut.devstack.system import System

EDGE = "gateway-http"


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def when_text(stamp: Timestamp) -> str:
    """The time in UTC to the second, or '-' when unset."""
    if not stamp.ByteSize():
        return "-"
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def print_readiness(system: System) -> bool:
    rows = [["SERVICE", "ADDRESS", "HEALTH", "LOG"]]
    for service in ServiceName:
        rows.append(
            [
                service.value,
                system.settings.address_of(service),
                system.statuses.get(service, "?"),
                str(system.fleet.log_dir / f"{service.value}.log"),
            ]
        )
    rows.append([EDGE, system.edge_url, "-", str(system.fleet.log_dir / f"{EDGE}.log")])
    print_table(rows)
    exited = system.fleet.exited()
    if exited:
        print(f"exited early: {exited}; see the logs above", file=sys.stderr)
    return system.ready
