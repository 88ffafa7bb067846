"""Who is calling: the caller's SPIFFE identity, by transport."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from kubernaut.runtime.certs import person_spiffe_id
from kubernaut.runtime.settings import RuntimeSettings, Transport

XFCC_HEADER = "x-forwarded-client-cert"
# Transport `insecure` only: the caller names itself. Nothing checks it.
INSECURE_CALLER_HEADER = "x-kubernaut-caller"


@dataclass(frozen=True)
class Peer:
    """The caller of one RPC. `account` is set only for identities of our own namespace
    and trust domain; anything else is unknown to the call table. `person` is set for a
    personal certificate: SPIFFE ID spiffe://<trust domain>/person/<name>."""

    spiffe_id: str | None
    account: str | None
    person: str | None = None

    @property
    def label(self) -> str:
        if self.person:
            return f"person:{self.person}"
        return self.account or self.spiffe_id or "anonymous"


def account_of(spiffe_id: str, settings: RuntimeSettings) -> str | None:
    return _account(spiffe_id, settings.trust_domain, settings.namespace)


def _account(spiffe_id: str, trust_domain: str, namespace: str) -> str | None:
    prefix = f"spiffe://{trust_domain}/ns/{namespace}/sa/"
    if not spiffe_id.startswith(prefix):
        return None
    account = spiffe_id.removeprefix(prefix)
    return account if account and "/" not in account else None


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_xfcc(header: str) -> list[dict[str, str]]:
    """Parse Envoy's x-forwarded-client-cert into its elements (one per proxy hop)."""
    elements = []
    for element in _split_outside_quotes(header, ","):
        pairs: dict[str, str] = {}
        for pair in _split_outside_quotes(element.strip(), ";"):
            key, sep, value = pair.partition("=")
            if sep:
                pairs[key.strip()] = value.strip().strip('"')
        elements.append(pairs)
    return elements


def _metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def peer_of(context: grpc.aio.ServicerContext[Any, Any], settings: RuntimeSettings) -> Peer:
    """Read the caller's identity from a grpc.aio ServicerContext."""
    spiffe_id: str | None = None
    if settings.transport is Transport.MTLS:
        values = context.auth_context().get("peer_spiffe_id") or []
        spiffe_id = values[0].decode() if values else None
    elif settings.transport is Transport.MESH:
        # The sidecar sanitises and sets the header; the element it appended (the last)
        # describes the client certificate it verified.
        header = _metadata_value(context.invocation_metadata(), XFCC_HEADER)
        if header:
            spiffe_id = parse_xfcc(header)[-1].get("URI") or None
    else:
        account = _metadata_value(context.invocation_metadata(), INSECURE_CALLER_HEADER)
        if account:
            spiffe_id = f"spiffe://{settings.trust_domain}/ns/{settings.namespace}/sa/{account}"
    if not spiffe_id:
        return _ANONYMOUS
    return _peer(spiffe_id, settings.trust_domain, settings.namespace)


_ANONYMOUS = Peer(None, None)


@functools.lru_cache(maxsize=256)
def _peer(spiffe_id: str, trust_domain: str, namespace: str) -> Peer:
    """The few identities that call a service, parsed once each rather than on every
    call (bounded: a flood of unknown identities only evicts)."""
    person_prefix = person_spiffe_id(trust_domain, "")
    if spiffe_id.startswith(person_prefix):
        person = spiffe_id.removeprefix(person_prefix)
        if person and "/" not in person:
            return Peer(spiffe_id, None, person)
    return Peer(spiffe_id, _account(spiffe_id, trust_domain, namespace))


def warn_if_insecure(settings: RuntimeSettings) -> None:
    if settings.transport is Transport.INSECURE:
        warnings.warn(
            "KUBERNAUT_TRANSPORT=insecure: no transport security and callers name "
            "themselves; use only for local experiments",
            stacklevel=2,
        )
