"""A channel to one Kubernaut service, opened as Kubernaut's own services open theirs:

- mTLS with the caller's files (the CA bundle that signed the services' certificates, the
  caller's certificate and key), or plaintext (`tls=None`) where a service mesh's sidecar
  upgrades the connection to mutual TLS;
- retries of UNAVAILABLE for idempotent methods only (`option idempotency_level =
  NO_SIDE_EFFECTS` or `IDEMPOTENT` in the protos), through the gRPC service config;
- a default deadline for unary calls that set none (a call's own `timeout=` wins, longer or
  shorter); server-streaming calls (WatchWorkflow) get none: they last as long as what they
  follow.

    tls = MTLS.in_dir(certs_dir, "operator")
    async with aio_channel("localhost:9085", StorageServiceStub, tls=tls) as channel:
        storage = StorageServiceStub(channel)
        listed = await storage.ListIncidents(storage_pb2.ListIncidentsRequest())
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions

DEFAULT_TIMEOUT_SECONDS = 10.0

RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

# A service: its generated stub class (e.g. GatewayServiceStub) or its descriptor.
Service: TypeAlias = ServiceDescriptor | type[Any]


@dataclass(frozen=True)
class MTLS:
    """The caller's PEM files: the CA bundle, its certificate (chain) and its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, certs_dir: str | Path, name: str) -> MTLS:
        """`name`'s files as `kubernaut certs init` writes them: ca.crt, NAME.crt, NAME.key."""
        directory = Path(certs_dir)
        return cls(directory / "ca.crt", directory / f"{name}.crt", directory / f"{name}.key")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca).read_bytes(),
            private_key=Path(self.key).read_bytes(),
            certificate_chain=Path(self.cert).read_bytes(),
        )


def service_descriptor(service: Service) -> ServiceDescriptor:
    if isinstance(service, ServiceDescriptor):
        return service
    # A stub class `XServiceStub` of module `..._pb2_grpc`: the service X of `..._pb2`.
    module, name = service.__module__, service.__name__
    if not (module.endswith("_pb2_grpc") and name.endswith("Stub")):
        raise TypeError(f"{service!r} is neither a generated stub class nor a ServiceDescriptor")
    messages = importlib.import_module(module.removesuffix("_grpc"))
    descriptor: ServiceDescriptor = messages.DESCRIPTOR.services_by_name[name.removesuffix("Stub")]
    return descriptor


def is_idempotent(method: MethodDescriptor) -> bool:
    """Whether a repeat of the call can do no harm, as its proto says."""
    level = method.GetOptions().idempotency_level
    return level in (MethodOptions.NO_SIDE_EFFECTS, MethodOptions.IDEMPOTENT)


def service_config(service: Service) -> dict[str, Any]:
    """Retries only where a repeat cannot do harm. No deadline here: gRPC takes the shorter
    of a service config's timeout and the call's own deadline, so one here would cut short
    the calls that ask for longer (ExecuteAction waits minutes for its verification); the
    default deadline is set per call instead (DefaultDeadline)."""
    descriptor = service_descriptor(service)
    configs: list[dict[str, Any]] = [{"name": [{"service": descriptor.full_name}]}]
    for method in descriptor.methods:
        if is_idempotent(method):
            configs.append(
                {
                    "name": [{"service": descriptor.full_name, "method": method.name}],
                    "retryPolicy": RETRY_POLICY,
                }
            )
    return {"methodConfig": configs}


def channel_options(service: Service) -> list[tuple[str, Any]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config(service))),
    ]


class DefaultDeadline(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Gives a unary call that sets no deadline this one (grpc.aio)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=self.seconds)
        return await continuation(details, request)


class SyncDefaultDeadline(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """DefaultDeadline for synchronous channels."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=self.seconds)
        return continuation(details, request)


def _credentials(tls: MTLS | grpc.ChannelCredentials) -> grpc.ChannelCredentials:
    return tls.credentials() if isinstance(tls, MTLS) else tls


def aio_channel(
    target: str,
    service: Service,
    *,
    tls: MTLS | grpc.ChannelCredentials | None,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    interceptors: Sequence[Any] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to `service` at `target` (host:port). `tls`: the caller's files
    or credentials, None for plaintext under a mesh. `timeout`: the default deadline of unary
    calls in seconds (None: none). `interceptors` run after the default deadline is set."""
    chain = [*([DefaultDeadline(timeout)] if timeout is not None else []), *interceptors]
    all_options = [*channel_options(service), *options]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=chain)
    return grpc.aio.secure_channel(
        target, _credentials(tls), options=all_options, interceptors=chain
    )


def channel(
    target: str,
    service: Service,
    *,
    tls: MTLS | grpc.ChannelCredentials | None,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """aio_channel's synchronous twin."""
    all_options = [*channel_options(service), *options]
    if tls is None:
        inner = grpc.insecure_channel(target, options=all_options)
    else:
        inner = grpc.secure_channel(target, _credentials(tls), options=all_options)
    return inner if timeout is None else grpc.intercept_channel(inner, SyncDefaultDeadline(timeout))
