"""What the shared runtime stopped paying for on every call (bench/rpc_overhead.py) keeps
answering as before: request ids, callers' identities, the metrics' children, quantities."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import grpc
import pytest

from kubernaut.runtime.identity import Peer, peer_of
from kubernaut.runtime.interceptors import KubernautServerInterceptor, new_request_id
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.quantity import parse_quantity
from kubernaut.runtime.settings import RuntimeSettings, Transport


def test_request_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
    assert len(set(ids)) == len(ids)


class _Context:
    def __init__(self, spiffe_id: str | None) -> None:
        self.spiffe_id = spiffe_id

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"peer_spiffe_id": [self.spiffe_id.encode()]} if self.spiffe_id else {}

    def invocation_metadata(self) -> tuple[()]:
        return ()


SETTINGS = RuntimeSettings(transport=Transport.MTLS)
OURS = "spiffe://cluster.local/ns/kubernaut/sa/gateway"


@pytest.mark.parametrize(
    ("spiffe_id", "account"),
    [
        (OURS, "gateway"),
        ("spiffe://other.domain/ns/kubernaut/sa/gateway", None),
        ("spiffe://cluster.local/ns/elsewhere/sa/gateway", None),
        ("spiffe://cluster.local/ns/kubernaut/sa/gateway/extra", None),
        ("spiffe://cluster.local/ns/kubernaut/sa/", None),
    ],
)
def test_a_caller_is_parsed_once_and_answered_alike_every_time(
    spiffe_id: str, account: str | None
) -> None:
    context: Any = _Context(spiffe_id)
    first, again = peer_of(context, SETTINGS), peer_of(context, SETTINGS)
    assert first == again == Peer(spiffe_id, account)


def test_the_cache_keys_on_the_trust_domain_and_namespace_too() -> None:
    context: Any = _Context(OURS)
    assert peer_of(context, SETTINGS).account == "gateway"
    elsewhere = RuntimeSettings(transport=Transport.MTLS, namespace="other")
    assert peer_of(context, elsewhere).account is None


def test_a_caller_without_a_certificate_is_anonymous() -> None:
    context: Any = _Context(None)
    assert peer_of(context, SETTINGS) == Peer(None, None)
    assert peer_of(context, SETTINGS).label == "anonymous"


def test_the_metric_children_are_those_of_their_labels() -> None:
    interceptor = KubernautServerInterceptor(ServiceName.EXECUTOR, SETTINGS)
    handled = interceptor._handled("svc", "Method", grpc.StatusCode.NOT_FOUND)
    assert handled is interceptor._handled("svc", "Method", grpc.StatusCode.NOT_FOUND)
    before = handled._value.get()
    handled.inc()
    from kubernaut.runtime.telemetry import RPC_HANDLED

    assert RPC_HANDLED.labels("svc", "Method", "NOT_FOUND")._value.get() == before + 1


@pytest.mark.parametrize(
    ("text", "value"),
    [("10Gi", Decimal(10 * 2**30)), ("1500m", Decimal("1.5")), ("2", Decimal(2))],
)
def test_quantities_parse_as_the_kubernetes_package_parses_them(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_a_bad_quantity_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_quantity("ten gigs")
