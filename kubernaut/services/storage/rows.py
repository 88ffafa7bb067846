"""Pieces of storage's rows as messages, shared by the store's queries."""

from __future__ import annotations

from typing import Any

from kubernaut.common.v1 import alert_pb2


def resource_ref(row: Any, prefix: str) -> alert_pb2.ResourceRef:
    """The object named by a row's `<prefix>_cluster`, `_namespace`, `_kind` and `_name`
    columns (a subject's, a target's)."""
    return alert_pb2.ResourceRef(
        cluster=row[f"{prefix}_cluster"],
        namespace=row[f"{prefix}_namespace"],
        kind=row[f"{prefix}_kind"],
        name=row[f"{prefix}_name"],
    )
