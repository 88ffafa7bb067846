"""The audit trail's hash chain (the canonical encoding, the verifier) and its recorder's
promise: the audited call never fails and never waits longer than one append, and what
storage does not take at once is appended later, in order."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid

import grpc
import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2
from prometheus_client import REGISTRY

from kubernaut.runtime.audit import (
    AUDITED,
    GENESIS_HASH,
    AuditSettings,
    AuditTrail,
    EntryRefused,
    canonical_encoding,
    entry_hash,
    request_digest,
    verify_chain,
)
from kubernaut.runtime.edges import is_allowed
from kubernaut.runtime.interceptors import violations_of
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.principals import Principal, PrincipalKind, principal_var


def _entry(seq: int = 1, prev_hash: str = GENESIS_HASH, **fields: str) -> storage_pb2.AuditEntry:
    entry = storage_pb2.AuditEntry(
        seq=seq,
        entry_id="6f1c2b9e-8d7a-4e5f-9a0b-1c2d3e4f5a6b",
        principal="person:alice@example.com",
        service="executor",
        method="ExecuteAction",
        incident_id="0b7e1c52-8f0a-4d8e-9f55-3c1a2b3c4d5e",
        target="/shop/Deployment/web",
        request_digest="ab" * 32,
        outcome_code="OK",
        outcome_message="succeeded",
        prev_hash=prev_hash,
    )
    entry.at.FromJsonString("2025-03-01T12:34:56.123456Z")
    for name, value in fields.items():
        setattr(entry, name, value)
    return entry


def test_the_canonical_encoding_is_the_documented_json() -> None:
    expected = (
        '{"at":"2025-03-01T12:34:56.123456Z",'
        '"entry_id":"6f1c2b9e-8d7a-4e5f-9a0b-1c2d3e4f5a6b",'
        '"incident_id":"0b7e1c52-8f0a-4d8e-9f55-3c1a2b3c4d5e",'
        '"method":"ExecuteAction",'
        '"outcome_code":"OK",'
        '"outcome_message":"succeeded",'
        f'"prev_hash":"{GENESIS_HASH}",'
        '"principal":"person:alice@example.com",'
        f'"request_digest":"{"ab" * 32}",'
        '"seq":1,'
        '"service":"executor",'
        '"target":"/shop/Deployment/web"}'
    ).encode()
    entry = _entry()
    assert canonical_encoding(entry) == expected
    assert entry_hash(entry) == hashlib.sha256(expected).hexdigest()
    # The stored hash itself is not part of what is hashed.
    entry.hash = "f" * 64
    assert canonical_encoding(entry) == expected


def test_every_field_is_in_the_hash() -> None:
    base = entry_hash(_entry())
    changed = {
        "entry_id": str(uuid.uuid4()),
        "principal": "person:mallory@example.com",
        "service": "workflow",
        "method": "RollbackAction",
        "incident_id": "",
        "target": "/shop/Deployment/api",
        "request_digest": "cd" * 32,
        "outcome_code": "INTERNAL",
        "outcome_message": "succeeded.",
        "prev_hash": "1" * 64,
    }
    for name, value in changed.items():
        entry = _entry()
        setattr(entry, name, value)
        assert entry_hash(entry) != base, name
    assert entry_hash(_entry(seq=2)) != base
    later = _entry()
    later.at.nanos += 1000
    assert entry_hash(later) != base
    # Below the microsecond PostgreSQL keeps, nothing changes: the hash is of what is stored.
    finer = _entry()
    finer.at.nanos += 999
    assert entry_hash(finer) == base


def test_non_ascii_is_escaped_so_every_client_encodes_the_same_bytes() -> None:
    encoded = canonical_encoding(_entry(principal="person:zoë@example.com"))
    assert b'"principal":"person:zo\\u00eb@example.com"' in encoded
    assert encoded.isascii()


def _chain(length: int) -> list[storage_pb2.AuditEntry]:
    chain: list[storage_pb2.AuditEntry] = []
    prev = GENESIS_HASH
    for seq in range(1, length + 1):
        entry = _entry(seq, prev, entry_id=str(uuid.uuid4()))
        entry.hash = entry_hash(entry)
        prev = entry.hash
        chain.append(entry)
    return chain


def test_an_intact_chain_verifies() -> None:
    chain = _chain(5)
    verifier = verify_chain(chain)
    assert verifier.broken is None
    assert verifier.count == 5
    assert verifier.head_hash == chain[-1].hash
    assert verify_chain([]).count == 0


def test_an_edited_entry_breaks_the_chain_at_that_entry() -> None:
    chain = _chain(4)
    chain[1].principal = "person:mallory@example.com"
    verifier = verify_chain(chain)
    assert verifier.broken is not None
    assert verifier.broken.seq == 2
    assert "not the hash of its fields" in verifier.broken.problem
    assert verifier.count == 1


def test_an_edit_with_its_hash_recomputed_breaks_the_next_link() -> None:
    chain = _chain(4)
    chain[1].principal = "person:mallory@example.com"
    chain[1].hash = entry_hash(chain[1])
    broken = verify_chain(chain).broken
    assert broken is not None
    assert broken.seq == 3
    assert "is not seq 2's hash" in broken.problem


def test_a_removed_or_reordered_entry_breaks_the_chain() -> None:
    chain = _chain(4)
    removed = verify_chain([chain[0], *chain[2:]]).broken
    assert removed is not None
    assert (removed.seq, "expected seq 2 next, found seq 3") == (
        2,
        removed.problem.split(":")[0],
    )
    repeated = verify_chain([chain[0], chain[1], chain[1]]).broken
    assert repeated is not None and repeated.seq == 3
    # A chain must start at seq 1 from the genesis hash.
    assert verify_chain(chain[1:]).broken is not None
    first = _entry(1, "1" * 64)
    first.hash = entry_hash(first)
    not_genesis = verify_chain([first]).broken
    assert not_genesis is not None and "genesis" in not_genesis.problem


def test_the_table_names_what_each_audited_call_acts_on() -> None:
    request = executor_pb2.ExecuteActionRequest(
        action_id=str(uuid.uuid4()),
        incident_id="i-1",
        alert_name="KubePodCrashLooping",
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(
            cluster="eu-1", namespace="shop", kind="Deployment", name="web"
        ),
    )
    audited = AUDITED[(ServiceName.EXECUTOR, "ExecuteAction")]
    assert audited.target(request) == "eu-1/shop/Deployment/web"
    rollback = executor_pb2.RollbackActionRequest(action_id="a-1", rollback_id="r-1")
    assert AUDITED[(ServiceName.EXECUTOR, "RollbackAction")].target(rollback) == "action/a-1"
    assert AuditTrail.audits(ServiceName.WORKFLOW, "DecideApproval")
    assert not AuditTrail.audits(ServiceName.WORKFLOW, "GetWorkflow")
    assert not AuditTrail.audits(ServiceName.STORAGE, "AppendAuditEntry")


class FlakyStorage:
    """An AuditSink that refuses the first `failures` appends, then keeps what it gets."""

    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        self.failures = failures
        self.delay = delay
        self.kept: list[storage_pb2.AppendAuditEntryRequest] = []

    async def append(self, entry: storage_pb2.AppendAuditEntryRequest) -> None:
        await asyncio.sleep(self.delay)
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("storage is down")
        self.kept.append(entry)


SETTINGS = AuditSettings(
    append_timeout_seconds=0.2, retry_initial_seconds=0.01, retry_max_seconds=0.05, queue_size=3
)


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _action_request() -> executor_pb2.ExecuteActionRequest:
    return executor_pb2.ExecuteActionRequest(
        action_id=str(uuid.uuid4()),
        incident_id=str(uuid.uuid4()),
        alert_name="KubePodCrashLooping",
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web"),
    )


async def test_record_takes_the_principal_incident_target_and_digest_of_the_call() -> None:
    storage = FlakyStorage()
    trail = AuditTrail(ServiceName.EXECUTOR, storage, SETTINGS)
    request = _action_request()
    response = executor_pb2.ExecuteActionResponse(
        record=storage_pb2.ActionRecord(outcome=storage_pb2.ACTION_OUTCOME_ROLLED_BACK)
    )
    token = principal_var.set(Principal(PrincipalKind.PERSON, "alice@example.com"))
    try:
        await trail.record(
            ServiceName.EXECUTOR, "ExecuteAction", request, grpc.StatusCode.OK, "", response
        )
    finally:
        principal_var.reset(token)
    (entry,) = storage.kept
    assert entry.principal == "person:alice@example.com"
    assert (entry.service, entry.method) == ("executor", "ExecuteAction")
    assert entry.incident_id == request.incident_id
    assert entry.target == "/shop/Deployment/web"
    assert entry.request_digest == request_digest(request)
    assert (
        entry.request_digest
        == hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    )
    assert (entry.outcome_code, entry.outcome_message) == ("OK", "rolled_back")


async def test_a_call_that_ended_unanswered_is_recorded_as_cancelled() -> None:
    storage = FlakyStorage()
    trail = AuditTrail(ServiceName.EXECUTOR, storage, SETTINGS)
    # What the interceptor has when the caller's deadline cancelled the handler.
    await trail.record(ServiceName.EXECUTOR, "ExecuteAction", _action_request(), grpc.StatusCode.OK)
    (entry,) = storage.kept
    assert entry.outcome_code == "CANCELLED"
    assert "deadline" in entry.outcome_message


async def test_storage_down_neither_fails_nor_holds_the_call_and_nothing_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = FlakyStorage(failures=4)
    trail = AuditTrail(ServiceName.EXECUTOR, storage, SETTINGS)
    failures_before = _metric("kubernaut_audit_append_failures_total")
    requests = [_action_request() for _ in range(3)]
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="kubernaut.audit"):
        for request in requests:
            started = loop.time()
            await trail.record(
                ServiceName.EXECUTOR, "ExecuteAction", request, grpc.StatusCode.UNAVAILABLE, "x"
            )
            # One append attempt at most: the first waits for storage's refusal, the others
            # queue behind it at once.
            assert loop.time() - started < SETTINGS.append_timeout_seconds
        assert trail.pending >= 1
        for _ in range(200):
            if len(storage.kept) == 3:
                break
            await asyncio.sleep(0.01)
    assert [e.request_digest for e in storage.kept] == [request_digest(r) for r in requests]
    assert trail.pending == 0
    assert _metric("kubernaut_audit_append_failures_total") - failures_before == 4
    # The first failure logs the whole entry, so the log holds it whatever happens next.
    first = caplog.records[0]
    assert first.levelno == logging.ERROR
    assert request_digest(requests[0]) in first.entry  # type: ignore[attr-defined]
    await trail.close(1)


async def test_a_slow_storage_costs_the_call_the_timeout_and_no_more() -> None:
    storage = FlakyStorage(delay=5)
    trail = AuditTrail(ServiceName.EXECUTOR, storage, SETTINGS)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await trail.record(ServiceName.EXECUTOR, "ExecuteAction", _action_request(), grpc.StatusCode.OK)
    assert loop.time() - started < SETTINGS.append_timeout_seconds + 0.1
    assert trail.pending == 1
    storage.delay = 0
    for _ in range(200):
        if storage.kept:
            break
        await asyncio.sleep(0.01)
    assert len(storage.kept) == 1 and trail.pending == 0
    await trail.close(1)


async def test_a_full_queue_loses_an_entry_loudly(caplog: pytest.LogCaptureFixture) -> None:
    storage = FlakyStorage(failures=10**6)
    trail = AuditTrail(ServiceName.EXECUTOR, storage, SETTINGS)
    lost_before = _metric("kubernaut_audit_entries_lost_total")
    requests = [_action_request() for _ in range(SETTINGS.queue_size + 2)]
    with caplog.at_level(logging.ERROR, logger="kubernaut.audit"):
        for request in requests:
            await trail.record(ServiceName.EXECUTOR, "ExecuteAction", request, grpc.StatusCode.OK)
        # The queue holds queue_size (one of them being retried); the rest are lost, each
        # logged with the entry.
        full = [r for r in caplog.records if "retry queue is full" in r.getMessage()]
        await trail.close(0.05)
    assert len(full) == 2
    assert request_digest(requests[-1]) in full[-1].entry  # type: ignore[attr-defined]
    stopped = [r for r in caplog.records if "before the service stopped" in r.getMessage()]
    assert len(stopped) == SETTINGS.queue_size
    assert _metric("kubernaut_audit_entries_lost_total") - lost_before == SETTINGS.queue_size + 2
    assert trail.pending == 0


class RefusingStorage(FlakyStorage):
    """Refuses entries of one principal outright, as storage does a malformed entry."""

    async def append(self, entry: storage_pb2.AppendAuditEntryRequest) -> None:
        if entry.principal == "person:mallory@example.com":
            raise EntryRefused("INVALID_ARGUMENT: no")
        await super().append(entry)


async def test_an_entry_storage_refuses_is_not_retried_and_holds_up_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = RefusingStorage(failures=1)
    trail = AuditTrail(ServiceName.EXECUTOR, storage, SETTINGS)
    first, refused, last = _action_request(), _action_request(), _action_request()
    with caplog.at_level(logging.ERROR, logger="kubernaut.audit"):
        await trail.record(ServiceName.EXECUTOR, "ExecuteAction", first, grpc.StatusCode.OK)
        token = principal_var.set(Principal(PrincipalKind.PERSON, "mallory@example.com"))
        try:
            # Queued behind the first (storage failed it): refused on its retry.
            await trail.record(ServiceName.EXECUTOR, "ExecuteAction", refused, grpc.StatusCode.OK)
        finally:
            principal_var.reset(token)
        await trail.record(ServiceName.EXECUTOR, "ExecuteAction", last, grpc.StatusCode.OK)
        for _ in range(200):
            if not trail.pending:
                break
            await asyncio.sleep(0.01)
    assert [e.request_digest for e in storage.kept] == [request_digest(first), request_digest(last)]
    (lost,) = [r for r in caplog.records if "storage refused it" in r.getMessage()]
    assert request_digest(refused) in lost.entry  # type: ignore[attr-defined]
    await trail.close(1)


async def test_a_delivery_is_recorded_as_the_notification_service_never_naming_recipients() -> None:
    storage = FlakyStorage()
    trail = AuditTrail(ServiceName.NOTIFICATION, storage, SETTINGS)
    await trail.record_delivery("email", 1, "i-1", "ab" * 32, delivered=True)
    await trail.record_delivery(
        "email",
        2,
        "i-1",
        "cd" * 32,
        delivered=False,
        error="all recipients refused: sre@example.com: 550 no such user; <ops@example.org>: 550",
    )
    sent, failed = storage.kept
    assert sent.principal == "service:notification"
    assert (sent.service, sent.method, sent.target) == (
        "notification",
        "deliver/email",
        "email/1 recipient",
    )
    assert (sent.outcome_code, sent.outcome_message) == ("OK", "delivered")
    assert failed.target == "email/2 recipients"
    assert failed.outcome_code == "UNAVAILABLE"
    assert failed.outcome_message == (
        "not delivered: all recipients refused: [recipient]: 550 no such user; <[recipient]>: 550"
    )


def test_entries_fit_what_storage_takes() -> None:
    entry = AuditTrail.entry(
        Principal(PrincipalKind.PERSON, "x" * 400),
        ServiceName.EXECUTOR,
        "ExecuteAction",
        incident_id="i-1",
        target="t\x00" * 600,
        digest="ab" * 32,
        code=grpc.StatusCode.INTERNAL,
        message="m" * 2000,
    )
    assert violations_of(entry) == []
    assert len(entry.principal) == 320 and entry.principal.endswith("…")
    assert "\x00" not in entry.target


def test_every_auditing_service_may_append_to_the_trail() -> None:
    auditing = {service for service, _ in AUDITED} | {ServiceName.NOTIFICATION}
    for service in auditing - {ServiceName.STORAGE}:  # storage appends to its own store
        assert is_allowed(service.account, ServiceName.STORAGE, "AppendAuditEntry"), service
    assert not is_allowed("operator", ServiceName.STORAGE, "AppendAuditEntry")
    assert is_allowed("operator", ServiceName.STORAGE, "ListAuditEntries")
