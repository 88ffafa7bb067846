"""Typed clients: any service (or an operator) gets a ready stub for another service.

A channel per callee, with the transport's credentials, a default deadline, retries
for idempotent methods (from the protos' idempotency_level, through the gRPC service
config), the caller's request id and W3C trace context.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from kubernaut.runtime.certs import CertPaths
from kubernaut.runtime.identity import INSECURE_CALLER_HEADER
from kubernaut.runtime.logs import request_id_var
from kubernaut.runtime.names import OPERATOR_ACCOUNT, ServiceName
from kubernaut.runtime.registry import protocol, service_of_stub
from kubernaut.runtime.settings import RuntimeSettings, Transport

StubT = TypeVar("StubT")

RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config(service: ServiceName) -> dict[str, Any]:
    """Retries only where a repeat cannot do harm. No deadline here: gRPC takes the shorter
    of a service config's timeout and the call's own deadline, so one here would cut short
    the calls that ask for longer (ExecuteAction waits minutes for verification). The
    default deadline is set per call instead (`_CallMetadata`)."""
    proto = protocol(service)
    configs: list[dict[str, Any]] = [{"name": [{"service": proto.full_name}]}]
    for method in proto.method_names:
        if proto.is_idempotent(method):
            configs.append(
                {
                    "name": [{"service": proto.full_name, "method": method}],
                    "retryPolicy": RETRY_POLICY,
                }
            )
    return {"methodConfig": configs}


class _CallMetadata(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Carries the request id across hops; names the caller under transport insecure; gives
    a call that sets no deadline the default one."""

    def __init__(self, insecure_caller: str | None, timeout_seconds: float) -> None:
        self.insecure_caller = insecure_caller
        self.timeout_seconds = timeout_seconds

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=self.timeout_seconds)
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if (request_id := request_id_var.get()) and "x-request-id" not in metadata:
            metadata.add("x-request-id", request_id)
        if self.insecure_caller:
            metadata.add(INSECURE_CALLER_HEADER, self.insecure_caller)
        return await continuation(details._replace(metadata=metadata), request)


def channel_credentials(settings: RuntimeSettings, account: str) -> grpc.ChannelCredentials:
    paths = CertPaths(settings.resolved_certs_dir, account)
    return grpc.ssl_channel_credentials(
        root_certificates=paths.ca.read_bytes(),
        private_key=paths.key.read_bytes(),
        certificate_chain=paths.cert.read_bytes(),
    )


class Clients:
    """Stubs for calling Kubernaut services as `account` (a service's, or an operator's)."""

    def __init__(
        self,
        settings: RuntimeSettings,
        account: str = OPERATOR_ACCOUNT,
        *,
        addresses: dict[ServiceName, str] | None = None,
    ) -> None:
        self.settings = settings
        self.account = account
        self.addresses = dict(addresses or {})
        self._channels: dict[ServiceName, grpc.aio.Channel] = {}

    def address(self, service: ServiceName) -> str:
        return self.addresses.get(service) or self.settings.address_of(service)

    def channel(self, service: ServiceName) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = self._open(service)
        return self._channels[service]

    def stub(self, stub_class: Callable[[grpc.aio.Channel], StubT]) -> StubT:
        """A stub of the generated class, e.g. clients.stub(AlertProcessorServiceStub)."""
        return stub_class(self.channel(service_of_stub(stub_class)))

    def _open(self, service: ServiceName) -> grpc.aio.Channel:
        options = [
            ("grpc.enable_retries", 1),
            (
                "grpc.service_config",
                json.dumps(service_config(service)),
            ),
        ]
        insecure_caller = self.account if self.settings.transport is Transport.INSECURE else None
        interceptors = [
            *aio_client_interceptors(),  # type: ignore[no-untyped-call]
            _CallMetadata(insecure_caller, self.settings.call_timeout_seconds),
        ]
        target = self.address(service)
        if self.settings.transport is Transport.MTLS:
            return grpc.aio.secure_channel(
                target,
                channel_credentials(self.settings, self.account),
                options=options,
                interceptors=interceptors,
            )
        # Under a mesh the sidecar upgrades this plaintext connection to mutual TLS.
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
