"""The shared runtime's plain logic: identities, the call table, start order, retries."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from kubernaut.ai_analysis.v1 import ai_analysis_pb2
from kubernaut.api.client import (
    DefaultDeadline,
    SyncDefaultDeadline,
    service_config,
    service_descriptor,
)
from kubernaut.gateway.v1 import gateway_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.runtime import edges
from kubernaut.runtime.identity import account_of, parse_xfcc
from kubernaut.runtime.interceptors import incident_id_of
from kubernaut.runtime.names import EDGE_ACCOUNT, OPERATOR_ACCOUNT, ServiceName
from kubernaut.runtime.registry import protocol, service_of_path
from kubernaut.runtime.server import _bounded
from kubernaut.runtime.settings import RuntimeSettings

SETTINGS = RuntimeSettings(trust_domain="cluster.local", namespace="kubernaut")


def test_xfcc_from_an_istio_sidecar_names_the_client() -> None:
    header = (
        'By=spiffe://cluster.local/ns/kubernaut/sa/storage;Hash=4f3a;Subject="";'
        "URI=spiffe://cluster.local/ns/kubernaut/sa/executor"
    )
    (element,) = parse_xfcc(header)
    assert element["URI"] == "spiffe://cluster.local/ns/kubernaut/sa/executor"
    assert element["By"].endswith("/sa/storage")


def test_xfcc_keeps_quoted_commas_and_semicolons_inside_one_element() -> None:
    header = (
        'Subject="CN=a,O=b;c";URI=spiffe://cluster.local/ns/x/sa/one,'
        "URI=spiffe://cluster.local/ns/kubernaut/sa/gateway"
    )
    elements = parse_xfcc(header)
    assert [e["URI"] for e in elements] == [
        "spiffe://cluster.local/ns/x/sa/one",
        "spiffe://cluster.local/ns/kubernaut/sa/gateway",
    ]
    assert elements[0]["Subject"] == "CN=a,O=b;c"


@pytest.mark.parametrize(
    ("spiffe_id", "account"),
    [
        ("spiffe://cluster.local/ns/kubernaut/sa/executor", "executor"),
        ("spiffe://other.domain/ns/kubernaut/sa/executor", None),
        ("spiffe://cluster.local/ns/default/sa/executor", None),
        ("spiffe://cluster.local/ns/kubernaut/sa/", None),
        ("spiffe://cluster.local/ns/kubernaut/sa/executor/extra", None),
    ],
)
def test_only_identities_of_our_trust_domain_and_namespace_have_an_account(
    spiffe_id: str, account: str | None
) -> None:
    assert account_of(spiffe_id, SETTINGS) == account


def test_the_call_table_names_only_methods_that_exist() -> None:
    edges.check_table()
    for edge in edges.EDGES:
        assert edge.reason
        assert edge.caller != edge.callee


def test_operators_may_not_write_the_audit_trail_and_the_edge_submits_and_relays() -> None:
    assert edges.is_allowed(OPERATOR_ACCOUNT, ServiceName.STORAGE, "ListActionRecords")
    assert not edges.is_allowed(OPERATOR_ACCOUNT, ServiceName.STORAGE, "RecordAction")
    assert not edges.is_allowed(OPERATOR_ACCOUNT, ServiceName.STORAGE, "RecordDroppedAlert")
    assert edges.is_allowed(OPERATOR_ACCOUNT, ServiceName.STORAGE, "ListDroppedAlerts")
    assert edges.is_allowed(ServiceName.EXECUTOR.account, ServiceName.STORAGE, "RecordAction")
    assert edges.is_allowed(EDGE_ACCOUNT, ServiceName.GATEWAY, "SubmitAlerts")
    allowed_for_edge = [
        (callee, method)
        for callee in ServiceName
        for method in protocol(callee).method_names
        if edges.is_allowed(EDGE_ACCOUNT, callee, method)
    ]
    # Alerts; and for people only (test_access): approvals, and the console's reads.
    assert set(allowed_for_edge) == {
        (ServiceName.GATEWAY, "SubmitAlerts"),
        (ServiceName.WORKFLOW, "DecideApproval"),
        (ServiceName.WORKFLOW, "GetWorkflow"),
        (ServiceName.STORAGE, "GetIncident"),
        (ServiceName.STORAGE, "ListIncidents"),
        (ServiceName.STORAGE, "ListAuditEntries"),
        (ServiceName.STORAGE, "ListActionRecords"),
        (ServiceName.EFFECTIVENESS, "GetActionEffectiveness"),
    }


def test_only_idempotent_methods_are_retried() -> None:
    config = service_config(protocol(ServiceName.STORAGE).descriptor)
    retried = {
        entry["name"][0]["method"] for entry in config["methodConfig"] if "retryPolicy" in entry
    }
    # OpenIncident and CountIncidentAlerts are not: a repeat would count alerts twice.
    assert retried == {
        "GetStoreStatus",
        "RecordAction",
        "ListActionRecords",
        "RecordDroppedAlert",
        "ListDroppedAlerts",
        "RecordAnalysis",
        "UpdateIncident",
        "ResolveIncident",
        "GetIncident",
        "ListIncidents",
        "ListIncidentEmbeddings",
        "RecordAssessment",
        "SearchSimilarIncidents",
        "AppendAuditEntry",
        "ListAuditEntries",
    }
    gateway = service_config(protocol(ServiceName.GATEWAY).descriptor)["methodConfig"]
    assert all("retryPolicy" not in entry for entry in gateway)
    # No deadline in the service config: gRPC would cut every longer call to it.
    assert all("timeout" not in entry for entry in config["methodConfig"] + gateway)


async def test_the_default_deadline_applies_only_to_calls_that_set_none() -> None:
    seen: list[float | None] = []

    async def continuation(details: grpc.aio.ClientCallDetails, request: object) -> None:
        seen.append(details.timeout)

    interceptor = DefaultDeadline(10.0)
    sync_interceptor = SyncDefaultDeadline(10.0)
    for timeout in (None, 300.0, 2.0):
        details = grpc.aio.ClientCallDetails("/x.S/M", timeout, None, None, None)
        await interceptor.intercept_unary_unary(continuation, details, b"")
        sync_interceptor.intercept_unary_unary(
            lambda details, _: seen.append(details.timeout), details, b""
        )
    # A long call (ExecuteAction) keeps its own deadline, longer than the default.
    assert seen == [10.0, 10.0, 300.0, 300.0, 2.0, 2.0]


def test_a_stub_class_names_its_service() -> None:
    assert service_descriptor(StorageServiceStub) is protocol(ServiceName.STORAGE).descriptor
    with pytest.raises(TypeError):
        service_descriptor(storage_pb2.Incident)


def test_paths_map_back_to_services() -> None:
    assert service_of_path("/kubernaut.executor.v1.ExecutorService/ListActions") == (
        ServiceName.EXECUTOR,
        "ListActions",
    )
    assert service_of_path("/grpc.health.v1.Health/Check") is None


def test_ports_follow_the_base() -> None:
    settings = RuntimeSettings(port_base=20000)
    assert settings.grpc_port_of(ServiceName.NOTIFICATION) == 20009
    assert settings.metrics_port_of(ServiceName.GATEWAY) == 20100
    assert settings.address_of(ServiceName.STORAGE) == "localhost:20005"
    assert ServiceName.parse("alert-processor") is ServiceName.ALERT_PROCESSOR


def test_the_incident_a_request_is_about_is_read_for_the_logs() -> None:
    assert incident_id_of(workflow_pb2.CreateWorkflowRequest(incident_id="i-1")) == "i-1"
    analysed = ai_analysis_pb2.AnalyzeIncidentRequest(
        incident=storage_pb2.Incident(incident_id="i-2")
    )
    assert incident_id_of(analysed) == "i-2"
    assert incident_id_of(ai_analysis_pb2.AnalyzeIncidentRequest()) == ""
    assert incident_id_of(gateway_pb2.SubmitAlertsRequest()) == ""


async def test_a_clean_up_that_ignores_cancellation_cannot_hold_shutdown() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # swallows the cancellation, as some client libraries do

    task = asyncio.ensure_future(stubborn())
    # asyncio.wait_for(task, 0.2) would wait here until `release` is set.
    await asyncio.wait_for(_bounded(task, 0.2, "stubborn"), timeout=10)
    assert not task.done()
    release.set()
    await task


async def test_a_failing_clean_up_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def failing() -> None:
        raise RuntimeError("boom")

    await _bounded(asyncio.ensure_future(failing()), 1, "failing")
    assert "clean-up failed" in caplog.text
