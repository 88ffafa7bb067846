"""Who an RPC is for: the authenticated principal, set by the server interceptor for the
whole call (servicers, the audit trail and the logs read it from here)."""

from __future__ import annotations

import enum
from contextvars import ContextVar
from dataclasses import dataclass


class PrincipalKind(enum.StrEnum):
    # One of Kubernaut's own services, by its ServiceAccount.
    SERVICE = "service"
    # A person: an OIDC token's subject, or a personal client certificate.
    PERSON = "person"
    # The shared `operator` identity of the local dev stack.
    OPERATOR = "operator"
    # The HTTP edge (gateway-http).
    EDGE = "edge"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    # A person's name (token username claim, or certificate name); a service's account.
    name: str
    # A person's roles, from the role bindings (services have none: the call table rules them).
    roles: frozenset[str] = frozenset()
    # The account that relayed a person's call (the HTTP edge: the console, a Slack click,
    # a signed link); empty when the principal called for itself.
    via: str = ""
    # The relay vouched for who the person is (a Slack signature, a signed link it
    # checked), rather than carrying a credential this service checked (a console token).
    vouched: bool = False

    @property
    def label(self) -> str:
        """`kind:name`, as workflows record approvers and the logs write it."""
        return f"{self.kind.value}:{self.name}"

    @property
    def audit_label(self) -> str:
        """The label, and who relayed the call when someone did: the audit trail keeps
        both."""
        return f"{self.label} via {self.via}" if self.via else self.label


ANONYMOUS = Principal(PrincipalKind.ANONYMOUS, "anonymous")

principal_var: ContextVar[Principal] = ContextVar("kubernaut_principal", default=ANONYMOUS)


def current_principal() -> Principal:
    """The principal of the RPC being handled (ANONYMOUS outside one)."""
    return principal_var.get()
