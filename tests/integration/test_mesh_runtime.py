"""The ten services under mTLS: health, reflection, handshake refusals, the call table,
validation errors. All in this process, each service on its own port."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kubernaut.common.v1 import alert_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.gateway.v1 import gateway_pb2
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub

from kubernaut.runtime import edges
from kubernaut.runtime.names import EDGE_ACCOUNT, OPERATOR_ACCOUNT, ServiceName
from kubernaut.runtime.registry import protocol
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration


def _credentials(certs: Path, account: str | None) -> grpc.ChannelCredentials:
    ca = (certs / "ca.crt").read_bytes()
    if account is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=(certs / f"{account}.key").read_bytes(),
        certificate_chain=(certs / f"{account}.crt").read_bytes(),
    )


@pytest.mark.parametrize("service", list(ServiceName), ids=str)
async def test_each_service_is_serving_and_reflects_its_api(
    stack: InProcessStack, service: ServiceName
) -> None:
    channel = stack.clients().channel(service)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", protocol(service).full_name):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    listed = [s.name async for r in responses for s in r.list_services_response.service]
    assert protocol(service).full_name in listed
    assert "grpc.health.v1.Health" in listed


async def _check(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_client_without_a_certificate_is_refused_at_the_handshake(
    stack: InProcessStack, pki: Path
) -> None:
    address = stack.addresses[ServiceName.EXECUTOR]
    async with grpc.aio.secure_channel(address, _credentials(pki, None)) as channel:
        assert await _check(channel) is grpc.StatusCode.UNAVAILABLE
    # The same channel setup with a certificate works, so the refusal is the missing cert.
    async with grpc.aio.secure_channel(address, _credentials(pki, OPERATOR_ACCOUNT)) as channel:
        assert await _check(channel) is grpc.StatusCode.OK


async def test_a_client_signed_by_another_ca_is_refused_at_the_handshake(
    stack: InProcessStack, pki: Path, rogue_pki: Path
) -> None:
    address = stack.addresses[ServiceName.EXECUTOR]
    # Trusts our CA (so the server's certificate verifies) but presents a rogue cert.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(rogue_pki / "operator.key").read_bytes(),
        certificate_chain=(rogue_pki / "operator.crt").read_bytes(),
    )
    async with grpc.aio.secure_channel(address, credentials) as channel:
        assert await _check(channel) is grpc.StatusCode.UNAVAILABLE


async def _code_of_call(
    stack: InProcessStack, account: str, callee: ServiceName, method: str
) -> grpc.StatusCode:
    proto = protocol(callee)
    clients = stack.clients(account)
    try:
        stub = clients.stub(proto.stub_class)
        descriptor = proto.descriptor.methods_by_name[method]
        request_class = _request_class(descriptor.input_type.full_name)
        call = getattr(stub, method)(request_class(), timeout=10)
        if descriptor.server_streaming:
            await call.read()  # the status comes with the first message, or instead of it
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    finally:
        await clients.close()
    return grpc.StatusCode.OK


def _request_class(full_name: str) -> type:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(descriptor)


CALLERS = [s.account for s in ServiceName]


@pytest.mark.parametrize("callee", list(ServiceName), ids=str)
@pytest.mark.parametrize("caller", CALLERS)
async def test_the_call_table_decides_every_pair_of_services(
    stack: InProcessStack, caller: str, callee: ServiceName
) -> None:
    """For all 90 ordered pairs of distinct services (and the 10 self-calls), every
    method: PERMISSION_DENIED exactly when the call table does not allow the call."""
    for method in protocol(callee).method_names:
        code = await _code_of_call(stack, caller, callee, method)
        if edges.is_allowed(caller, callee, method):
            assert code is not grpc.StatusCode.PERMISSION_DENIED, (caller, callee, method)
        else:
            assert code is grpc.StatusCode.PERMISSION_DENIED, (caller, callee, method, code)


async def test_the_table_has_the_spec_edges_and_denies_most_pairs() -> None:
    pairs = {(e.caller, e.callee) for e in edges.EDGES}
    spec_rows = {
        (ServiceName.GATEWAY, ServiceName.ALERT_PROCESSOR),
        (ServiceName.ALERT_PROCESSOR, ServiceName.AI_ANALYSIS),
        (ServiceName.WORKFLOW, ServiceName.EXECUTOR),
        (ServiceName.EXECUTOR, ServiceName.STORAGE),
    }
    assert spec_rows <= pairs
    distinct = {(a, b) for a in ServiceName for b in ServiceName if a != b}
    assert len(distinct) == 90
    # Least privilege: under a quarter of the pairs have an edge for the services' work
    # (20 since the gateway counts duplicates on incidents and the alert processor tells
    # people of storms). The audit trail adds edges to storage that append and nothing else.
    audit_only = {(e.caller, e.callee) for e in edges.EDGES if e.methods == {"AppendAuditEntry"}}
    assert {callee for _, callee in audit_only} == {ServiceName.STORAGE}
    working = {(e.caller, e.callee) for e in edges.EDGES if e.methods != {"AppendAuditEntry"}}
    assert len(working & distinct) < len(distinct) // 4


async def test_operators_and_the_edge_have_their_own_rules(stack: InProcessStack) -> None:
    assert (
        await _code_of_call(stack, OPERATOR_ACCOUNT, ServiceName.EXECUTOR, "ListActions")
        is grpc.StatusCode.OK
    )
    assert (
        await _code_of_call(stack, OPERATOR_ACCOUNT, ServiceName.STORAGE, "RecordAction")
        is grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await _code_of_call(stack, EDGE_ACCOUNT, ServiceName.EXECUTOR, "ListActions")
        is grpc.StatusCode.PERMISSION_DENIED
    )
    # Empty batch: allowed through authorization, refused by validation.
    assert (
        await _code_of_call(stack, EDGE_ACCOUNT, ServiceName.GATEWAY, "SubmitAlerts")
        is grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_a_malformed_request_gets_invalid_argument_naming_the_field(
    stack: InProcessStack,
) -> None:
    clients = stack.clients()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.stub(ExecutorServiceStub).DescribeAction(
            executor_pb2.DescribeActionRequest(name="Restart Everything")
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in field_violations(caught.value)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.stub(GatewayServiceStub).SubmitAlerts(
            gateway_pb2.SubmitAlertsRequest(
                alerts=[alert_pb2.Alert(name="", status=alert_pb2.ALERT_STATUS_FIRING)]
            )
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert "alerts[0].name" in violations
    assert "alerts[0].starts_at" in violations
    await clients.close()


async def test_an_unknown_action_is_not_found(stack: InProcessStack) -> None:
    clients = stack.clients()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.stub(ExecutorServiceStub).DescribeAction(
            executor_pb2.DescribeActionRequest(name="delete_namespace")
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    await clients.close()
