"""Every servicer method names its context's type.

grpc ships no type stubs here, so mypy sees `grpc.aio.ServicerContext` as Any and cannot
tell `context: Context` from `context: Any`; this test can.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from kubernaut.runtime.database import unavailable_as_status
from kubernaut.runtime.identity import peer_of
from kubernaut.runtime.interceptors import abort_invalid
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import Context


def _servicer_methods(name: ServiceName) -> list[tuple[str, Callable[..., Any]]]:
    """The RPC methods a service's servicer implements: those its generated base declares."""
    module = importlib.import_module(f"kubernaut.services.{name.value}.server")
    methods = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != module.__name__:
            continue
        for base in cls.__mro__[1:]:
            if base.__module__.endswith("_pb2_grpc") and base.__name__.endswith("Servicer"):
                rpcs = [n for n, v in vars(base).items() if callable(v) and n[0].isupper()]
                methods += [(f"{cls.__name__}.{n}", vars(cls)[n]) for n in rpcs if n in vars(cls)]
    return methods


def test_context_is_the_grpc_servicer_context() -> None:
    assert Context == grpc.aio.ServicerContext[Any, Any]


@pytest.mark.parametrize("name", list(ServiceName), ids=str)
def test_every_rpc_method_types_its_context(name: ServiceName) -> None:
    methods = _servicer_methods(name)
    assert methods, f"{name} has no servicer methods"
    for label, method in methods:
        assert typing.get_type_hints(method).get("context") == Context, label


@pytest.mark.parametrize(
    "helper",
    [abort_invalid, peer_of, unavailable_as_status],
    ids=lambda helper: helper.__name__,
)
def test_runtime_helpers_type_the_context(helper: Callable[..., Any]) -> None:
    assert typing.get_type_hints(helper).get("context") == Context
