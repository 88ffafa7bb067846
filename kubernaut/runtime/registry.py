"""Maps each service name to its generated code: descriptor, stub and servicer adder."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from kubernaut.runtime.names import ServiceName


@dataclass(frozen=True)
class ServiceProtocol:
    """The generated code of one service."""

    name: ServiceName
    descriptor: ServiceDescriptor
    grpc_module: ModuleType

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name

    @property
    def methods(self) -> tuple[MethodDescriptor, ...]:
        return tuple(self.descriptor.methods)

    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(method.name for method in self.descriptor.methods)

    def path(self, method: str) -> str:
        """The HTTP/2 path of a method, as interceptors see it."""
        return f"/{self.full_name}/{method}"

    @property
    def stub_class(self) -> type[Any]:
        stub: type[Any] = getattr(self.grpc_module, f"{self.descriptor.name}Stub")
        return stub

    @property
    def add_servicer(self) -> Callable[[Any, Any], None]:
        adder: Callable[[Any, Any], None] = getattr(
            self.grpc_module, f"add_{self.descriptor.name}Servicer_to_server"
        )
        return adder


@functools.cache
def protocol(name: ServiceName) -> ServiceProtocol:
    pb2 = importlib.import_module(f"kubernaut.{name.value}.v1.{name.value}_pb2")
    grpc_module = importlib.import_module(f"kubernaut.{name.value}.v1.{name.value}_pb2_grpc")
    (descriptor,) = pb2.DESCRIPTOR.services_by_name.values()
    return ServiceProtocol(name=name, descriptor=descriptor, grpc_module=grpc_module)


def service_of_stub(stub_class: Any) -> ServiceName:
    """Which service a generated stub class belongs to."""
    for name in ServiceName:
        if protocol(name).stub_class is stub_class:
            return name
    raise ValueError(f"{stub_class!r} is not a Kubernaut service stub")


def service_of_path(path: str) -> tuple[ServiceName, str] | None:
    """`/kubernaut.x.v1.XService/Method` to (service, method); None for other services."""
    full_service, _, method = path.lstrip("/").partition("/")
    name = _by_full_name().get(full_service)
    return None if name is None else (name, method)


@functools.cache
def _by_full_name() -> dict[str, ServiceName]:
    return {protocol(name).full_name: name for name in ServiceName}
