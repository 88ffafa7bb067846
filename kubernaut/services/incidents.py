"""What every service that reads an incident agrees on about its life."""

from __future__ import annotations

from typing import Final

from kubernaut.storage.v1 import storage_pb2

# An incident in one of these is closed: it has closed_at, the next alert with its
# fingerprint opens a new incident, and it is never analysed again.
FINAL_STATUSES: Final = frozenset(
    {
        storage_pb2.INCIDENT_STATUS_NO_ACTION,
        storage_pb2.INCIDENT_STATUS_REMEDIATED,
        storage_pb2.INCIDENT_STATUS_FAILED,
        storage_pb2.INCIDENT_STATUS_RESOLVED,
    }
)
