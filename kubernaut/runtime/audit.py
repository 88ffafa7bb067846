"""The tamper-evident audit trail: which calls are audited, how an entry is hashed into the
chain, how a chain is verified, and the recorder every service's server interceptor uses.

Storage keeps the trail (schema `audit`, appended through an insert-only role); every other
service appends through storage's AppendAuditEntry, and storage through its own store. The
hash of an entry covers every other field of it and the hash of the entry before, so an
edited, removed or inserted entry breaks the chain at that entry; `kubernaut audit verify`
recomputes it with the same function storage used (`entry_hash`).

Recording never fails the audited call: an entry storage does not take at once is retried
in the background, in order, with backoff, from a bounded queue; failures are counted
(`kubernaut_audit_append_failures_total`) and logged at ERROR with the entry, so that an
entry that cannot be kept (the queue full, the process stopping) is at least in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.interceptors import incident_id_of
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.principals import Principal, PrincipalKind, current_principal

log = logging.getLogger("kubernaut.audit")

GENESIS_HASH: Final = "0" * 64
# What AppendAuditEntry takes at most (storage.proto); outcome_message is a status line,
# not a document.
MAX_PRINCIPAL: Final = 320
MAX_INCIDENT_ID: Final = 64
MAX_TARGET: Final = 512
MAX_OUTCOME_MESSAGE: Final = 1024
# The method of a notification delivered on a channel of this kind ("deliver/email").
DELIVERY_METHOD_PREFIX: Final = "deliver/"

APPEND_FAILURES: Final = Counter(
    "kubernaut_audit_append_failures_total",
    "Audit entries storage did not take on an attempt (each attempt counts).",
)
ENTRIES_LOST: Final = Counter(
    "kubernaut_audit_entries_lost_total",
    "Audit entries never appended (the retry queue was full, or the process stopped first); "
    "each is in the log at ERROR.",
)
PENDING: Final = Gauge(
    "kubernaut_audit_entries_pending", "Audit entries waiting to be appended again."
)


class AuditSettings(BaseSettings):
    """How audit entries reach storage. KUBERNAUT_AUDIT_*."""

    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_AUDIT_", frozen=True, extra="ignore")

    # How long an audited call waits for its entry to be appended before it hands the entry
    # to the background retry and answers.
    append_timeout_seconds: float = Field(default=2.0, gt=0)
    # Entries waiting for storage at most; one more is lost (logged at ERROR, counted).
    queue_size: int = Field(default=10000, ge=1)
    # The background retry's first delay after a failed append; it doubles with each
    # failure, up to KUBERNAUT_AUDIT_RETRY_MAX_SECONDS.
    retry_initial_seconds: float = Field(default=0.5, gt=0)
    # The longest delay between two attempts of the background retry.
    retry_max_seconds: float = Field(default=30.0, gt=0)
    # At shutdown, how long the background retry may still try to append what waits
    # (then each entry left is logged whole at ERROR): a stopping service must not hang
    # on a storage that is down.
    shutdown_seconds: float = Field(default=3.0, ge=0)


# -- what is audited ----------------------------------------------------------------------


def resource_text(cluster: str, namespace: str, kind: str, name: str) -> str:
    """'cluster/namespace/Kind/name' (empty parts kept: '/shop/Deployment/web')."""
    return f"{cluster}/{namespace}/{kind}/{name}"


def _target_resource(request: Any) -> str:
    ref = request.target
    return resource_text(ref.cluster, ref.namespace, ref.kind, ref.name)


def _recommended_resource(request: Any) -> str:
    ref = request.recommendation.target
    return resource_text(ref.cluster, ref.namespace, ref.kind, ref.name)


def _action_outcome(response: Any) -> str:
    name = storage_pb2.ActionOutcome.Name(response.record.outcome)
    return name.removeprefix("ACTION_OUTCOME_").lower()


def _workflow_state(response: Any) -> str:
    state = workflow_pb2.WorkflowState.Name(response.workflow.state)
    return (
        f"workflow {response.workflow.workflow_id} {state.removeprefix('WORKFLOW_STATE_').lower()}"
    )


def _decided(response: Any) -> str:
    decided = "decided" if response.decided else "decided before (a repeat)"
    return f"{decided}; {_workflow_state(response)}"


def _created(response: Any) -> str:
    created = "created" if response.created else "existed already"
    return f"{created}; {_workflow_state(response)}"


@dataclass(frozen=True)
class AuditedCall:
    # What the call acts on, from its request.
    target: Callable[[Any], str]
    # What an OK call did, in a few words, from its response.
    summary: Callable[[Any], str]
    # The incident, from an OK call's response, for a request that names none.
    incident: Callable[[Any], str] | None = None


# The audited calls: actions, rollbacks, approvals and workflows. No RPC changes runtime
# behaviour today (settings are read once at start; pausing, quiet periods and silences
# are settings, not RPCs): one that does belongs here. Notifications are audited where they
# are delivered (`AuditTrail.record_delivery`, method DELIVERY_METHOD_PREFIX + channel
# kind), not per RPC: NotifyIncidentEvent may deliver later, in the background.
AUDITED: Final[dict[tuple[ServiceName, str], AuditedCall]] = {
    (ServiceName.EXECUTOR, "ExecuteAction"): AuditedCall(_target_resource, _action_outcome),
    (ServiceName.EXECUTOR, "RollbackAction"): AuditedCall(
        lambda request: f"action/{request.action_id}", _action_outcome
    ),
    (ServiceName.WORKFLOW, "DecideApproval"): AuditedCall(
        lambda request: f"workflow/{request.workflow_id}",
        _decided,
        lambda response: str(response.workflow.incident_id),
    ),
    (ServiceName.WORKFLOW, "CreateWorkflow"): AuditedCall(_recommended_resource, _created),
}


# -- the chain ----------------------------------------------------------------------------


def request_digest(message: Message) -> str:
    """sha256 (hex) of a message's deterministic serialization."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def timestamp_text(entry: storage_pb2.AuditEntry) -> str:
    """The entry's time as the canonical encoding writes it: UTC, to the microsecond."""
    at = dt.datetime(1970, 1, 1) + dt.timedelta(
        seconds=entry.at.seconds, microseconds=entry.at.nanos // 1000
    )
    return at.isoformat(timespec="microseconds") + "Z"


def canonical_encoding(entry: storage_pb2.AuditEntry) -> bytes:
    """What an entry's hash is computed over: every field but `hash` as one JSON object,
    keys sorted, no whitespace, non-ASCII escaped (storage.proto's AuditEntry.hash)."""
    fields = {
        "seq": entry.seq,
        "entry_id": entry.entry_id,
        "at": timestamp_text(entry),
        "principal": entry.principal,
        "service": entry.service,
        "method": entry.method,
        "incident_id": entry.incident_id,
        "target": entry.target,
        "request_digest": entry.request_digest,
        "outcome_code": entry.outcome_code,
        "outcome_message": entry.outcome_message,
        "prev_hash": entry.prev_hash,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: storage_pb2.AuditEntry) -> str:
    """sha256 (hex) of the entry's canonical encoding: what storage stores as its hash."""
    return hashlib.sha256(canonical_encoding(entry)).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    """The first entry at which a chain does not hold, and what does not match."""

    seq: int
    problem: str


class ChainVerifier:
    """Checks a chain fed to it in seq order, from seq 1: each entry's seq follows the one
    before, its prev_hash is that entry's hash (64 zeros for the first), and its hash is
    what its fields hash to. Stops at the first break."""

    def __init__(self) -> None:
        self.count = 0
        self.head_hash = GENESIS_HASH
        self.broken: ChainBreak | None = None

    def feed(self, entry: storage_pb2.AuditEntry) -> ChainBreak | None:
        if self.broken is not None:
            return self.broken
        expected_seq = self.count + 1
        computed = entry_hash(entry)
        if entry.seq != expected_seq:
            problem = (
                f"expected seq {expected_seq} next, found seq {entry.seq}"
                if entry.seq > expected_seq
                else f"seq {entry.seq} repeats or goes back (expected {expected_seq})"
            )
            self.broken = ChainBreak(expected_seq, problem + ": an entry is missing or moved")
        elif entry.prev_hash != self.head_hash:
            before = (
                "the genesis hash (64 zeros)"
                if expected_seq == 1
                else f"seq {expected_seq - 1}'s hash"
            )
            self.broken = ChainBreak(
                entry.seq,
                f"prev_hash {entry.prev_hash[:16]}… is not {before} {self.head_hash[:16]}…",
            )
        elif entry.hash != computed:
            self.broken = ChainBreak(
                entry.seq,
                f"stored hash {entry.hash[:16]}… is not the hash of its fields {computed[:16]}…"
                " (a field was changed after it was appended)",
            )
        else:
            self.count += 1
            self.head_hash = entry.hash
        return self.broken


def verify_chain(entries: Iterable[storage_pb2.AuditEntry]) -> ChainVerifier:
    """A verifier fed `entries` (in seq order) until the first break."""
    verifier = ChainVerifier()
    for entry in entries:
        if verifier.feed(entry) is not None:
            break
    return verifier


# -- recording ----------------------------------------------------------------------------


class EntryRefused(Exception):
    """Storage refused the entry itself (malformed, its id taken, the caller not allowed):
    another attempt would be refused too."""


class AuditSink(Protocol):
    """Where entries go: storage over gRPC, or (in storage) its own store. Raises
    EntryRefused for an entry no retry would append; anything else is retried."""

    async def append(self, entry: storage_pb2.AppendAuditEntryRequest) -> None: ...


# Answers of AppendAuditEntry that another attempt would get again.
_REFUSALS: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class StorageAuditSink:
    """Appends through storage's AppendAuditEntry, as this service."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    async def append(self, entry: storage_pb2.AppendAuditEntryRequest) -> None:
        try:
            await self._clients.stub(StorageServiceStub).AppendAuditEntry(entry)
        except grpc.aio.AioRpcError as error:
            if error.code() in _REFUSALS:
                raise EntryRefused(_describe(error)) from error
            raise


def service_principal(service: ServiceName) -> Principal:
    return Principal(PrincipalKind.SERVICE, service.account)


def _fit(text: str, limit: int) -> str:
    """`text` as storage keeps it: no NUL (PostgreSQL refuses it), at most `limit`
    characters (the proto's limits), cut with an ellipsis."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# An email address in a delivery's error (an SMTP refusal names the recipients).
_ADDRESS: Final = re.compile(r"[^\s<>\"',;:]+@[^\s<>\"',;:]+")


def _entry_text(entry: storage_pb2.AppendAuditEntryRequest) -> str:
    return json_format.MessageToJson(entry, preserving_proto_field_name=True, indent=None)


class AuditTrail:
    """Records this service's audited calls (and deliveries) in storage; never fails them."""

    def __init__(
        self, service: ServiceName, sink: AuditSink, settings: AuditSettings | None = None
    ) -> None:
        self.service = service
        self.settings = settings or AuditSettings()
        self._sink = sink
        # Entries handed to the background retry and not appended yet, oldest first (the
        # one being retried at the head).
        self._backlog: deque[storage_pb2.AppendAuditEntryRequest] = deque()
        self._retrying: asyncio.Task[None] | None = None

    def write_to(self, sink: AuditSink) -> None:
        """Append through `sink` from now on (storage: its own store, not an RPC to itself)."""
        self._sink = sink

    @staticmethod
    def audits(service: ServiceName, method: str) -> bool:
        return (service, method) in AUDITED

    @property
    def pending(self) -> int:
        """Entries handed to the background retry and not appended yet."""
        return len(self._backlog)

    async def record(
        self,
        service: ServiceName,
        method: str,
        request: Message,
        code: grpc.StatusCode,
        message: str = "",
        response: Message | None = None,
    ) -> None:
        """Record an audited call that ended with `code` (and `message`, or for OK a summary
        of `response`), as the current principal. Never raises but CancelledError."""
        try:
            audited = AUDITED[(service, method)]
            incident_id = incident_id_of(request)
            if code is grpc.StatusCode.OK and response is None:
                # The handler never answered: its task was cancelled.
                code = grpc.StatusCode.CANCELLED
                message = (
                    message or "ended unanswered: the caller cancelled, or its deadline passed"
                )
            elif code is grpc.StatusCode.OK and response is not None:
                message = message or audited.summary(response)
                if not incident_id and audited.incident is not None:
                    incident_id = audited.incident(response)
            entry = self.entry(
                current_principal(),
                service,
                method,
                incident_id=incident_id,
                target=audited.target(request),
                digest=request_digest(request),
                code=code,
                message=message,
            )
        except Exception:  # a bug here must not fail the audited call
            log.exception("audit entry could not be made", extra={"method": method})
            ENTRIES_LOST.inc()
            return
        await self.append(entry)

    async def record_delivery(
        self,
        channel_kind: str,
        recipients: int,
        incident_id: str,
        content_digest: str,
        delivered: bool,
        error: str = "",
    ) -> None:
        """Record a notification this (notification) service delivered, or tried to: the
        channel's kind and how many recipients, never who they are."""
        noun = "recipient" if recipients == 1 else "recipients"
        entry = self.entry(
            service_principal(self.service),
            self.service,
            DELIVERY_METHOD_PREFIX + channel_kind,
            incident_id=incident_id,
            target=f"{channel_kind}/{recipients} {noun}",
            digest=content_digest,
            code=grpc.StatusCode.OK if delivered else grpc.StatusCode.UNAVAILABLE,
            message="delivered"
            if delivered
            else f"not delivered: {_ADDRESS.sub('[recipient]', error)}",
        )
        await self.append(entry)

    @staticmethod
    def entry(
        principal: Principal,
        service: ServiceName,
        method: str,
        *,
        incident_id: str,
        target: str,
        digest: str,
        code: grpc.StatusCode,
        message: str,
    ) -> storage_pb2.AppendAuditEntryRequest:
        entry = storage_pb2.AppendAuditEntryRequest(
            entry_id=str(uuid.uuid4()),
            principal=_fit(principal.audit_label, MAX_PRINCIPAL),
            service=service.value,
            method=method,
            incident_id=_fit(incident_id, MAX_INCIDENT_ID),
            target=_fit(target, MAX_TARGET),
            request_digest=digest,
            outcome_code=code.name,
            outcome_message=_fit(message, MAX_OUTCOME_MESSAGE),
        )
        entry.at.FromDatetime(dt.datetime.now(dt.UTC))
        return entry

    async def append(self, entry: storage_pb2.AppendAuditEntryRequest) -> None:
        """Append `entry` now, or hand it to the background retry when storage does not take
        it within the timeout (or others already wait: then at once, in their order)."""
        if self.pending:
            self._enqueue(entry)
            return
        try:
            async with asyncio.timeout(self.settings.append_timeout_seconds):
                await self._sink.append(entry)
        except asyncio.CancelledError:
            # The call was cancelled while its entry was on the way: keep it all the same.
            self._enqueue(entry)
            raise
        except EntryRefused as error:
            _lost(entry, f"storage refused it: {error}")
        except Exception as error:
            APPEND_FAILURES.inc()
            log.error(
                "audit entry not appended; retrying in the background",
                extra={"entry": _entry_text(entry), "error": _describe(error)},
            )
            self._enqueue(entry)

    def _enqueue(self, entry: storage_pb2.AppendAuditEntryRequest) -> None:
        if len(self._backlog) >= self.settings.queue_size:
            _lost(entry, f"the retry queue is full ({self.settings.queue_size})")
            return
        self._backlog.append(entry)
        PENDING.inc()
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._retry(), name="audit-retry")

    async def _retry(self) -> None:
        """Append the waiting entries in order, each until storage takes it; an entry stays
        at the head of the backlog until then."""
        delay = self.settings.retry_initial_seconds
        while self._backlog:
            entry = self._backlog[0]
            try:
                async with asyncio.timeout(self.settings.append_timeout_seconds):
                    await self._sink.append(entry)
            except EntryRefused as error:
                self._backlog.popleft()
                PENDING.dec()
                _lost(entry, f"storage refused it: {error}")
                continue
            except Exception as error:
                APPEND_FAILURES.inc()
                log.error(
                    "audit entry still not appended",
                    extra={
                        "entry_id": entry.entry_id,
                        "retry_in_seconds": delay,
                        "error": _describe(error),
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_seconds)
                continue
            self._backlog.popleft()
            PENDING.dec()
            delay = self.settings.retry_initial_seconds
            log.info("audit entry appended on a retry", extra={"entry_id": entry.entry_id})

    async def close(self, grace_seconds: float = 10.0) -> None:
        """Give the background retry up to `grace_seconds` to append what waits; what is
        left is lost, each entry logged at ERROR."""
        task = self._retrying
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), grace_seconds)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while self._backlog:
            entry = self._backlog.popleft()
            PENDING.dec()
            _lost(entry, "not appended before the service stopped")


def _lost(entry: storage_pb2.AppendAuditEntryRequest, why: str) -> None:
    """Count an entry that will never be appended, and put it in the log whole."""
    ENTRIES_LOST.inc()
    log.error("audit entry lost: %s", why, extra={"entry": _entry_text(entry)})


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__
