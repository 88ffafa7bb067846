"""The tamper-evident audit trail on real PostgreSQL and real services: concurrent appends
form one chain, the listing filters and pages, the writer role cannot change a row,
`kubernaut audit verify` passes on the stored chain and names the entry a superuser edited,
and audited calls through the running services are on the record as who made them."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncpg
import grpc
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.devstack.postgres import dsn_for_database
from kubernaut.runtime.audit import (
    GENESIS_HASH,
    AuditTrail,
    entry_hash,
    request_digest,
    service_principal,
    verify_chain,
)
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.edges import is_allowed
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import RunningService, start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.storage.audit import WRITER_ROLE, AuditQuery
from kubernaut.services.storage.store import (
    InvalidPageToken,
    InvalidRecord,
    RecordConflict,
    Store,
)
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.kubernaut import InProcessStack, subprocess_env
from tests.fixtures.waiting import eventually
from tests.fixtures.workflows import restart_workflow

pytestmark = pytest.mark.integration

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def _entry(
    principal: str = "service:executor",
    method: str = "ExecuteAction",
    incident_id: str = "",
    at: dt.datetime = T0,
    **fields: str,
) -> storage_pb2.AppendAuditEntryRequest:
    request = storage_pb2.AppendAuditEntryRequest(
        entry_id=str(uuid.uuid4()),
        principal=principal,
        service="executor",
        method=method,
        incident_id=incident_id,
        target="/shop/Deployment/web",
        request_digest=uuid.uuid4().hex * 2,
        outcome_code="OK",
        outcome_message="succeeded",
    )
    request.at.FromDatetime(at)
    for name, value in fields.items():
        setattr(request, name, value)
    return request


async def _whole_chain(store: Store) -> list[storage_pb2.AuditEntry]:
    entries, token = await store.list_audit_entries(AuditQuery(), page_size=1000, page_token="")
    assert token == ""
    return entries


async def test_concurrent_appends_form_one_unbroken_chain(database_dsn: str) -> None:
    # Five replicas of storage, each with its own pool, appending at once.
    stores = [await Store.connect(database_dsn) for _ in range(5)]
    try:
        await stores[0].migrate()
        requests = [_entry(principal=f"service:replica-{i % 5}") for i in range(60)]
        results = await asyncio.gather(
            *(stores[i % 5].append_audit_entry(r) for i, r in enumerate(requests))
        )
        assert all(created for _, created in results)
        chain = await _whole_chain(stores[0])
    finally:
        for store in stores:
            await store.close()
    assert [e.seq for e in chain] == list(range(1, 61))
    assert chain[0].prev_hash == GENESIS_HASH
    assert {e.entry_id for e in chain} == {r.entry_id for r in requests}
    verifier = verify_chain(chain)
    assert verifier.broken is None and verifier.count == 60
    # What each append answered is what is stored.
    stored = {e.entry_id: e for e in chain}
    for entry, _ in results:
        assert stored[entry.entry_id] == entry


async def test_an_append_is_idempotent_by_entry_id(store: Store) -> None:
    request = _entry()
    first, created = await store.append_audit_entry(request)
    again, created_again = await store.append_audit_entry(request)
    assert (created, created_again) == (True, False)
    assert again == first
    assert first.hash == entry_hash(first)
    changed = storage_pb2.AppendAuditEntryRequest()
    changed.CopyFrom(request)
    changed.outcome_code = "INTERNAL"
    with pytest.raises(RecordConflict, match="with other content"):
        await store.append_audit_entry(changed)
    with pytest.raises(InvalidRecord) as caught:
        await store.append_audit_entry(_entry(target="a\x00b"))
    assert caught.value.field == "target"
    assert len(await _whole_chain(store)) == 1


async def test_the_listing_filters_and_pages(store: Store) -> None:
    incident = str(uuid.uuid4())
    plan = [
        _entry("person:alice@example.com", "DecideApproval", incident, T0),
        _entry("service:workflow", "ExecuteAction", incident, T0 + dt.timedelta(minutes=1)),
        _entry("person:alice@example.com", "ExecuteAction", "", T0 + dt.timedelta(minutes=2)),
        _entry("service:notification", "deliver/email", incident, T0 + dt.timedelta(minutes=3)),
        _entry("person:bob@example.com", "RollbackAction", "", T0 + dt.timedelta(minutes=4)),
    ]
    for request in plan:
        await store.append_audit_entry(request)

    async def seqs(query: AuditQuery, page_size: int = 0) -> list[int]:
        found: list[int] = []
        token = ""
        while True:
            entries, token = await store.list_audit_entries(query, page_size, token)
            found += [e.seq for e in entries]
            if not token:
                return found

    assert await seqs(AuditQuery(principal="person:alice@example.com")) == [1, 3]
    assert await seqs(AuditQuery(incident_id=incident)) == [1, 2, 4]
    assert await seqs(AuditQuery(method="ExecuteAction")) == [2, 3]
    # [since, until): the entry at `until` is left out.
    window = AuditQuery(since=T0 + dt.timedelta(minutes=1), until=T0 + dt.timedelta(minutes=3))
    assert await seqs(window) == [2, 3]
    assert await seqs(AuditQuery(method="ExecuteAction", incident_id=incident)) == [2]
    # A page at a time, in either order.
    assert await seqs(AuditQuery(), page_size=2) == [1, 2, 3, 4, 5]
    assert await seqs(AuditQuery(newest_first=True), page_size=2) == [5, 4, 3, 2, 1]
    _, token = await store.list_audit_entries(AuditQuery(), 2, "")
    with pytest.raises(InvalidPageToken, match="different filter"):
        await store.list_audit_entries(AuditQuery(newest_first=True), 2, token)
    with pytest.raises(InvalidRecord) as caught:
        await store.list_audit_entries(AuditQuery(since=T0, until=T0), 0, "")
    assert caught.value.field == "until"


async def _superuser(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    return conn


async def test_the_writer_role_may_insert_and_read_but_never_change_a_row(
    store: Store, database_dsn: str
) -> None:
    await store.append_audit_entry(_entry())
    conn = await _superuser(database_dsn)
    try:
        for statement in (
            "UPDATE audit.entries SET principal = 'person:mallory@example.com' WHERE seq = 1",
            "DELETE FROM audit.entries WHERE seq = 1",
            "TRUNCATE audit.entries",
        ):
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {WRITER_ROLE}")
                with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
                    await conn.execute(statement)
            # PostgreSQL's own privilege check, not our trigger.
            assert "permission denied for table entries" in str(refused.value)
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {WRITER_ROLE}")
            assert await conn.fetchval("SELECT count(*) FROM audit.entries") == 1
            assert not await conn.fetchval(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", WRITER_ROLE
            )
        # Even a superuser is refused unless it turns the guard off on purpose.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("UPDATE audit.entries SET target = '' WHERE seq = 1")
    finally:
        await conn.close()


async def test_a_storage_login_that_is_no_superuser_appends_but_cannot_change_rows(
    postgres_dsn: str,
) -> None:
    """The production posture: storage's login owns its database, an administrator made
    the extension and granted it the writer role; it appends, and cannot UPDATE the rows
    of the table it owns."""
    login = f"kubernaut_storage_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    database = f"kubernaut_audit_{uuid.uuid4().hex[:12]}"
    admin = await _superuser(postgres_dsn)
    try:
        await admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {database} OWNER {login}")
        admin_dsn = dsn_for_database(postgres_dsn, database)
        in_database = await asyncpg.connect(admin_dsn)
        try:
            await in_database.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await in_database.close()
        await admin.execute(
            f"DO $$ BEGIN CREATE ROLE {WRITER_ROLE} NOLOGIN;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        await admin.execute(f"GRANT {WRITER_ROLE} TO {login}")
        parts = urlsplit(admin_dsn)
        login_dsn = parts._replace(
            netloc=f"{login}:{quote(password)}@{parts.hostname}:{parts.port}"
        ).geturl()
        store = await Store.connect(login_dsn)
        try:
            await store.migrate()
            for _ in range(3):
                await store.append_audit_entry(_entry())
            assert verify_chain(await _whole_chain(store)).count == 3
        finally:
            await store.close()
        own = await asyncpg.connect(login_dsn)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await own.execute("UPDATE audit.entries SET target = '' WHERE seq = 1")
        finally:
            await own.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {login}")
        await admin.close()


@pytest_asyncio.fixture
async def own_storage(
    runtime_settings: RuntimeSettings, database_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningService]:
    """A storage service of its own, on a database of its own: a chain this test may
    break."""
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", database_dsn)
    running = await start_service(ServiceName.STORAGE, runtime_settings, serve_metrics=False)
    try:
        yield running
    finally:
        await running.shutdown()


async def test_storage_appends_its_own_entries_to_its_store_not_in_an_rpc(
    own_storage: RunningService, runtime_settings: RuntimeSettings
) -> None:
    # The call table has no storage -> storage edge: an RPC to itself would be refused.
    assert not is_allowed(ServiceName.STORAGE.account, ServiceName.STORAGE, "AppendAuditEntry")
    entry = AuditTrail.entry(
        service_principal(ServiceName.STORAGE),
        ServiceName.STORAGE,
        "UpdateIncident",
        incident_id="i-1",
        target="incident/i-1",
        digest="ab" * 32,
        code=grpc.StatusCode.OK,
        message="",
    )
    await own_storage.audit.append(entry)
    assert own_storage.audit.pending == 0
    operator = Clients(runtime_settings, addresses={ServiceName.STORAGE: own_storage.address})
    try:
        listed = await operator.stub(StorageServiceStub).ListAuditEntries(
            storage_pb2.ListAuditEntriesRequest(principal="service:storage")
        )
    finally:
        await operator.close()
    (stored,) = listed.entries
    assert (stored.entry_id, stored.seq, stored.method) == (entry.entry_id, 1, "UpdateIncident")


async def _kubernaut(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    # Not subprocess.run: the storage service answers from this process' event loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubernaut.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_verify_passes_on_the_chain_and_names_the_entry_a_superuser_edited(
    own_storage: RunningService,
    runtime_settings: RuntimeSettings,
    database_dsn: str,
    tmp_path: Path,
) -> None:
    address = {ServiceName.STORAGE: own_storage.address}
    executor = Clients(runtime_settings, ServiceName.EXECUTOR.account, addresses=address)
    operator = Clients(runtime_settings, addresses=address)
    try:
        for i in range(4):
            reply = await executor.stub(StorageServiceStub).AppendAuditEntry(
                _entry(at=T0 + dt.timedelta(seconds=i))
            )
            assert reply.created and reply.entry.seq == i + 1
        # People and the operator read the trail; only services append to it.
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await operator.stub(StorageServiceStub).AppendAuditEntry(_entry())
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await executor.stub(StorageServiceStub).AppendAuditEntry(
                _entry(request_digest="not-a-digest", outcome_code="FINE")
            )
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert {"request_digest", "outcome_code"} <= set(field_violations(invalid.value))
        listed = await operator.stub(StorageServiceStub).ListAuditEntries(
            storage_pb2.ListAuditEntriesRequest()
        )
        assert [e.seq for e in listed.entries] == [1, 2, 3, 4]
    finally:
        await executor.close()
        await operator.close()

    assert runtime_settings.certs_dir is not None
    env = subprocess_env(
        tmp_path, runtime_settings.certs_dir, {ServiceName.STORAGE: own_storage.port}
    )
    code, out, err = await _kubernaut(env, "audit", "verify")
    assert code == 0, err
    assert out.splitlines()[0] == "4 entries, chain intact"

    code, out, err = await _kubernaut(env, "audit", "list", "--principal", "service:executor")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "SEQ",
        "AT",
        "(UTC)",
        "PRINCIPAL",
        "CALL",
        "INCIDENT",
        "TARGET",
        "OUTCOME",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert "2025-03-01 12:00:01  service:executor  executor ExecuteAction" in lines[2]

    # A superuser changes who did entry 2, turning the append-only guard off to do it.
    conn = await _superuser(database_dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "UPDATE audit.entries SET principal = 'person:mallory@example.com' WHERE seq = 2"
        )
    finally:
        await conn.close()
    code, out, err = await _kubernaut(env, "audit", "verify")
    assert code == 1, (out, err)
    assert out.startswith("chain broken at seq 2: stored hash "), out
    assert "is not the hash of its fields" in out


def _action_request(namespace: str) -> executor_pb2.ExecuteActionRequest:
    return executor_pb2.ExecuteActionRequest(
        action_id=str(uuid.uuid4()),
        incident_id=str(uuid.uuid4()),
        alert_name="KubePodCrashLooping",
        action=remediation_pb2.ActionParams(
            restart_deployment=remediation_pb2.RestartDeploymentParams()
        ),
        target=alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web"),
    )


async def _entries_of(stack: InProcessStack, incident_id: str) -> list[storage_pb2.AuditEntry]:
    clients = stack.clients()
    try:
        listed = await clients.stub(StorageServiceStub).ListAuditEntries(
            storage_pb2.ListAuditEntriesRequest(incident_id=incident_id)
        )
    finally:
        await clients.close()
    return list(listed.entries)


async def test_an_execute_action_through_the_executor_is_on_the_record(
    stack: InProcessStack,
) -> None:
    """The stack's executor has no cluster: it refuses, and the refusal is on the record as
    the workflow's call, with the request's digest."""
    request = _action_request("shop")
    workflow = stack.clients(ServiceName.WORKFLOW.account)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as answered:
            await workflow.stub(ExecutorServiceStub).ExecuteAction(request)
    finally:
        await workflow.close()
    # A refusal's status goes out as the servicer aborts; the entry follows at once.
    (entry,) = await eventually(
        lambda: _entries_of(stack, request.incident_id), "the entry", timeout=5
    )
    assert entry.principal == "service:workflow"
    assert (entry.service, entry.method) == ("executor", "ExecuteAction")
    assert entry.target == "/shop/Deployment/web"
    assert entry.request_digest == request_digest(request)
    assert entry.outcome_code == answered.value.code().name
    assert entry.outcome_message == answered.value.details()
    assert entry.hash == entry_hash(entry)


async def test_a_workflow_its_approval_and_the_emails_sent_are_on_the_record(
    stack: InProcessStack,
) -> None:
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping", status=alert_pb2.ALERT_STATUS_FIRING, labels={}
    )
    alert.starts_at.GetCurrentTime()
    target = alert_pb2.ResourceRef(namespace="audit", kind="Deployment", name="web")
    ai_analysis = stack.clients(ServiceName.AI_ANALYSIS.account)
    operator = stack.clients()
    try:
        incident_id, workflow = await restart_workflow(
            operator.stub(StorageServiceStub),
            ai_analysis.stub(WorkflowServiceStub),
            alert,
            target,
            confidence=0.2,  # below the approval threshold: it waits for a person
        )

        async def waiting() -> bool:
            got = await operator.stub(WorkflowServiceStub).GetWorkflow(
                workflow_pb2.GetWorkflowRequest(workflow_id=workflow.workflow_id)
            )
            state: int = got.workflow.state
            return state == workflow_pb2.WORKFLOW_STATE_WAITING_APPROVAL

        await eventually(waiting, "the workflow to wait for approval")
        decide = workflow_pb2.DecideApprovalRequest(
            workflow_id=workflow.workflow_id,
            decision=workflow_pb2.APPROVAL_DECISION_REJECT,
            approver="operator",
            reason="not now",
        )
        await operator.stub(WorkflowServiceStub).DecideApproval(decide)

        async def delivered() -> list[storage_pb2.AuditEntry]:
            entries = await _entries_of(stack, incident_id)
            # The plan, approval needed, then rejected: three emails.
            return entries if sum(e.method == "deliver/email" for e in entries) >= 3 else []

        entries = await eventually(delivered, "the emails on the audit trail")
    finally:
        await ai_analysis.close()
        await operator.close()
    by_method: dict[str, list[storage_pb2.AuditEntry]] = {}
    for entry in entries:
        by_method.setdefault(entry.method, []).append(entry)
    (created,) = by_method["CreateWorkflow"]
    assert created.principal == "service:ai-analysis"
    assert created.target == "/audit/Deployment/web"
    assert created.outcome_code == "OK"
    assert created.outcome_message.startswith("created; workflow ")
    (decided,) = by_method["DecideApproval"]
    assert decided.principal == "operator:operator"
    assert decided.target == f"workflow/{workflow.workflow_id}"
    assert decided.request_digest == request_digest(decide)
    assert decided.outcome_code == "OK"
    for email in by_method["deliver/email"]:
        assert email.principal == "service:notification"
        assert email.service == "notification"
        # How many recipients, never who.
        assert email.target == "email/1 recipient"
        assert "@" not in email.target + email.outcome_message
        assert (email.outcome_code, email.outcome_message) == ("OK", "delivered")
    # In chain order, each entry hashed as storage says.
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    assert all(e.hash == entry_hash(e) for e in entries)
