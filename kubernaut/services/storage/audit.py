"""The audit trail in PostgreSQL (schema `audit`, migration 0009): appending to the hash
chain as the insert-only writer role, and listing it. The hashing itself is
kubernaut.runtime.audit's, shared with `kubernaut audit verify`."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import struct
import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from kubernaut.storage.v1 import storage_pb2

from kubernaut.runtime.audit import GENESIS_HASH, entry_hash

# The role the migration makes: INSERT and SELECT on audit.entries, nothing else.
WRITER_ROLE: Final = "kubernaut_audit_writer"
# The advisory lock that serializes appends, so that the chain stays one line.
APPEND_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"kubernaut-audit-append").digest()[:8], "big", signed=True
)

_COLUMNS: Final = (
    "seq, entry_id, at, principal, service, method, incident_id, target, request_digest,"
    " outcome_code, outcome_message, prev_hash, hash"
)
_INSERT: Final = (
    f"INSERT INTO audit.entries ({_COLUMNS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
)
_BY_ENTRY_ID: Final = f"SELECT {_COLUMNS} FROM audit.entries WHERE entry_id = $1"
_HEAD: Final = "SELECT seq, hash FROM audit.entries ORDER BY seq DESC LIMIT 1"
# The fields an append names, compared when an entry_id comes again.
_CONTENT: Final = (
    "at",
    "principal",
    "service",
    "method",
    "incident_id",
    "target",
    "request_digest",
    "outcome_code",
    "outcome_message",
)

# Page token: version, the last entry's seq and a digest of the filter and order.
_TOKEN: Final = struct.Struct(">Bq8s")
_TOKEN_VERSION: Final = 1


class AuditConflict(Exception):
    """The entry_id is appended already, with other content."""


class InvalidAuditQuery(ValueError):
    """A filter or page token the listing cannot use; `field` names the request field."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class AuditQuery:
    """ListAuditEntries' filter: empty strings and None mean any."""

    principal: str = ""
    incident_id: str = ""
    method: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    newest_first: bool = False

    def key(self) -> str:
        return "\x1f".join(
            [
                self.principal,
                self.incident_id,
                self.method,
                self.since.isoformat() if self.since else "",
                self.until.isoformat() if self.until else "",
                "newest" if self.newest_first else "oldest",
            ]
        )


def _micros(stamp: Any) -> dt.datetime:
    """A Timestamp as the UTC datetime PostgreSQL keeps (microseconds, the rest dropped)."""
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=stamp.seconds, microseconds=stamp.nanos // 1000
    )


def _entry_of(row: asyncpg.Record) -> storage_pb2.AuditEntry:
    entry = storage_pb2.AuditEntry(
        seq=row["seq"],
        entry_id=str(row["entry_id"]),
        principal=row["principal"],
        service=row["service"],
        method=row["method"],
        incident_id=row["incident_id"],
        target=row["target"],
        request_digest=row["request_digest"],
        outcome_code=row["outcome_code"],
        outcome_message=row["outcome_message"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
    entry.at.FromDatetime(row["at"])
    return entry


def _content(entry: storage_pb2.AuditEntry) -> tuple[Any, ...]:
    return tuple(_micros(entry.at) if name == "at" else getattr(entry, name) for name in _CONTENT)


async def append_entry(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    request: storage_pb2.AppendAuditEntryRequest,
) -> tuple[storage_pb2.AuditEntry, bool]:
    """Append the entry at the chain's head, as the writer role: (the entry as stored,
    True); for an entry_id appended before with the same content, (the stored entry,
    False); AuditConflict when its content differs."""
    entry_id = uuid.UUID(request.entry_id)
    entry = storage_pb2.AuditEntry(
        entry_id=str(entry_id),
        principal=request.principal,
        service=request.service,
        method=request.method,
        incident_id=request.incident_id,
        target=request.target,
        request_digest=request.request_digest,
        outcome_code=request.outcome_code,
        outcome_message=request.outcome_message,
    )
    # Kept to the microsecond, as PostgreSQL keeps it, so that the hash is over what is
    # stored.
    at = _micros(request.at)
    entry.at.FromDatetime(at)
    async with conn.transaction():
        # Everything below runs with the writer's rights only: INSERT and SELECT.
        await conn.execute(f"SET LOCAL ROLE {WRITER_ROLE}")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_KEY)
        stored = await conn.fetchrow(_BY_ENTRY_ID, entry_id)
        if stored is not None:
            before = _entry_of(stored)
            if _content(before) != _content(entry):
                raise AuditConflict(
                    f"entry_id {entry_id} is appended already (seq {before.seq}) with other content"
                )
            return before, False
        head = await conn.fetchrow(_HEAD)
        entry.seq = 1 if head is None else head["seq"] + 1
        entry.prev_hash = GENESIS_HASH if head is None else head["hash"]
        entry.hash = entry_hash(entry)
        await conn.execute(
            _INSERT,
            entry.seq,
            entry_id,
            at,
            entry.principal,
            entry.service,
            entry.method,
            entry.incident_id,
            entry.target,
            entry.request_digest,
            entry.outcome_code,
            entry.outcome_message,
            entry.prev_hash,
            entry.hash,
        )
    return entry, True


async def list_entries(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    query: AuditQuery,
    limit: int,
    page_token: str,
) -> tuple[list[storage_pb2.AuditEntry], str]:
    """Up to `limit` entries matching `query`, in seq order (descending when newest_first),
    after the entry `page_token` names; and the next page's token, empty on the last."""
    if query.since is not None and query.until is not None and query.until <= query.since:
        raise InvalidAuditQuery("until must be after since", "until")
    conditions: list[str] = []
    args: list[Any] = []
    for column in ("principal", "incident_id", "method"):
        if value := getattr(query, column):
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if query.since is not None:
        args.append(query.since)
        conditions.append(f"at >= ${len(args)}")
    if query.until is not None:
        args.append(query.until)
        conditions.append(f"at < ${len(args)}")
    if page_token:
        args.append(_decode_token(page_token, query.key()))
        conditions.append(f"seq {'<' if query.newest_first else '>'} ${len(args)}")
    args.append(limit + 1)  # one more tells whether another page follows
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    order = "DESC" if query.newest_first else "ASC"
    # Only this module's column names and placeholders are in the SQL text.
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM audit.entries {where} ORDER BY seq {order} LIMIT ${len(args)}",
        *args,
    )
    entries = [_entry_of(row) for row in rows[:limit]]
    token = _encode_token(entries[-1].seq, query.key()) if len(rows) > limit else ""
    return entries, token


def _digest(filter_key: str) -> bytes:
    return hashlib.sha256(filter_key.encode()).digest()[:8]


def _encode_token(seq: int, filter_key: str) -> str:
    raw = _TOKEN.pack(_TOKEN_VERSION, seq, _digest(filter_key))
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_token(token: str, filter_key: str) -> int:
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        version, seq, digest = _TOKEN.unpack(raw)
    except (UnicodeEncodeError, binascii.Error, struct.error) as exc:
        raise InvalidAuditQuery("malformed page token", "page_token") from exc
    if version != _TOKEN_VERSION:
        raise InvalidAuditQuery("malformed page token", "page_token")
    if digest != _digest(filter_key):
        raise InvalidAuditQuery(
            "page token was issued for a different filter or order", "page_token"
        )
    seq_value: int = seq
    return seq_value
