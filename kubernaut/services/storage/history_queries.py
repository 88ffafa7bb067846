"""The history intelligence reads, in PostgreSQL: incidents by status, alert name, subject
and time (ListIncidents with its filters), and the embeddings of incidents' descriptions
(ListIncidentEmbeddings), both newest first and a page at a time. The store calls these
with a connection of its pool and maps incident rows itself (`store._row_to_incident`)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from kubernaut.storage.v1 import storage_pb2

from kubernaut.services.storage import page_tokens
from kubernaut.services.storage.rows import resource_ref

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


class InvalidHistoryQuery(ValueError):
    """A filter or page token the listing cannot use; `field` names the request field."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class IncidentQuery:
    """ListIncidents' filter: empty strings and None mean any."""

    # An IncidentStatus value name (INCIDENT_STATUS_OPEN); "" means any status.
    status: str = ""
    alert_name: str = ""
    # (cluster, namespace, kind, name), all compared; None means any subject.
    subject: tuple[str, str, str, str] | None = None
    # Only incidents opened strictly after this time.
    opened_after: dt.datetime | None = None

    @classmethod
    def of(cls, request: storage_pb2.ListIncidentsRequest) -> IncidentQuery:
        """The filter a ListIncidents request asks for (its status unchecked: the store
        checks it)."""
        subject = None
        if request.HasField("subject"):
            ref = request.subject
            subject = (ref.cluster, ref.namespace, ref.kind, ref.name)
        status = ""
        if request.status != storage_pb2.INCIDENT_STATUS_UNSPECIFIED:
            try:
                status = storage_pb2.IncidentStatus.Name(request.status)
            except ValueError as exc:
                raise InvalidHistoryQuery(
                    f"unknown incident status {request.status}", "status"
                ) from exc
        return cls(
            status=status,
            alert_name=request.alert_name,
            subject=subject,
            opened_after=timestamp_or_none(request, "opened_after"),
        )

    @property
    def filters_beyond_status(self) -> bool:
        """Whether it filters on more than the status (the listing ListIncidents had
        before these filters answers the rest, with its own page tokens)."""
        return bool(self.alert_name) or self.subject is not None or self.opened_after is not None

    def key(self) -> str:
        return "\x1f".join(
            [
                "incidents-matching",
                self.status,
                self.alert_name,
                "\x1e".join(self.subject) if self.subject is not None else "\x00",
                self.opened_after.isoformat() if self.opened_after else "",
            ]
        )


def timestamp_or_none(message: Any, field: str) -> dt.datetime | None:
    """A Timestamp field as a UTC datetime (to the microsecond); None when unset."""
    if not message.HasField(field):
        return None
    try:
        value: dt.datetime = getattr(message, field).ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidHistoryQuery(f"{field} is out of range: {exc}", field) from exc
    return value


async def incident_rows(
    conn: Connection, columns: str, query: IncidentQuery, limit: int, page_token: str
) -> tuple[list[asyncpg.Record], str]:
    """Up to `limit` incident rows (`columns` of table incidents, which must include
    opened_at and incident_id) matching `query`, newest first (opened_at, then
    incident_id, descending), after the row `page_token` names; and the next page's
    token, empty on the last page."""
    conditions: list[str] = []
    args: list[Any] = []
    if query.status:
        args.append(query.status)
        conditions.append(f"status = ${len(args)}")
    if query.alert_name:
        args.append(query.alert_name)
        conditions.append(f"alert_name = ${len(args)}")
    if query.subject is not None:
        # Every part compared, the empty ones too ("" is the default cluster, a Node has
        # no namespace), as ListActionRecords compares its target.
        for column, value in zip(
            ("subject_cluster", "subject_namespace", "subject_kind", "subject_name"),
            query.subject,
            strict=True,
        ):
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if query.opened_after is not None:
        args.append(query.opened_after)
        conditions.append(f"opened_at > ${len(args)}")
    rows, token = await _page(conn, columns, conditions, args, query.key(), limit, page_token)
    return rows, token


@dataclass(frozen=True)
class EmbeddingQuery:
    """ListIncidentEmbeddings' filter: empty strings and None mean any."""

    embedding_model: str = ""
    opened_after: dt.datetime | None = None

    def key(self) -> str:
        return "\x1f".join(
            [
                "incident-embeddings",
                self.embedding_model,
                self.opened_after.isoformat() if self.opened_after else "",
            ]
        )


# The vector as real[] (pgvector's cast), which asyncpg decodes to a list of floats.
_EMBEDDING_COLUMNS: Final = (
    "incident_id, opened_at, embedding_model, embedding::real[] AS vector, alert_name,"
    " subject_cluster, subject_namespace, subject_kind, subject_name, status"
)


async def embedding_page(
    conn: Connection, query: EmbeddingQuery, limit: int, page_token: str
) -> tuple[list[storage_pb2.IncidentEmbedding], str]:
    """Up to `limit` embeddings of incidents matching `query` (incidents without one are
    left out), newest first, after the one `page_token` names; and the next page's token,
    empty on the last page."""
    conditions = ["embedding IS NOT NULL"]
    args: list[Any] = []
    if query.embedding_model:
        args.append(query.embedding_model)
        conditions.append(f"embedding_model = ${len(args)}")
    if query.opened_after is not None:
        args.append(query.opened_after)
        conditions.append(f"opened_at > ${len(args)}")
    rows, token = await _page(
        conn, _EMBEDDING_COLUMNS, conditions, args, query.key(), limit, page_token
    )
    return [_embedding_of(row) for row in rows], token


def _embedding_of(row: asyncpg.Record) -> storage_pb2.IncidentEmbedding:
    embedding = storage_pb2.IncidentEmbedding(
        incident_id=str(row["incident_id"]),
        embedding_model=row["embedding_model"],
        vector=list(row["vector"]),
        alert_name=row["alert_name"],
        subject=resource_ref(row, "subject"),
        status=storage_pb2.IncidentStatus.Value(row["status"]),
    )
    embedding.opened_at.FromDatetime(row["opened_at"])
    return embedding


async def _page(
    conn: Connection,
    columns: str,
    conditions: list[str],
    args: list[Any],
    filter_key: str,
    limit: int,
    page_token: str,
) -> tuple[list[asyncpg.Record], str]:
    """Up to `limit` rows of incidents (`columns`) where all `conditions` hold, newest
    first, after the row `page_token` names; and the next page's token."""
    args = list(args)
    conditions = list(conditions)
    if page_token:
        after_time, after_id = _decode_token(page_token, filter_key)
        args += [after_time, after_id]
        conditions.append(f"(opened_at, incident_id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)  # one more tells whether another page follows
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    # Only this module's column names and placeholders are in the SQL text; values travel
    # as parameters. The order is the index incidents_by_time's.
    rows = await conn.fetch(
        f"SELECT {columns} FROM incidents {where}"
        f" ORDER BY opened_at DESC, incident_id DESC LIMIT ${len(args)}",
        *args,
    )
    page: list[asyncpg.Record] = rows[:limit]
    token = ""
    if len(rows) > limit:
        last = page[-1]
        token = _encode_token(last["opened_at"], last["incident_id"], filter_key)
    return page, token


def _encode_token(at: dt.datetime, row_id: uuid.UUID, filter_key: str) -> str:
    return page_tokens.encode(at, row_id, filter_key)


def _decode_token(token: str, filter_key: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        return page_tokens.decode(token, filter_key)
    except ValueError as exc:
        raise InvalidHistoryQuery(str(exc), "page_token") from exc
