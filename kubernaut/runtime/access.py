"""People's access: who a caller is (an OIDC ID token, a personal client certificate, a
service's certificate) and whether that principal may make a call.

Services are ruled by the call table (edges.py); people by their roles, which the same
table maps to methods (edges.role_needed). Roles are given in configuration to a token's
groups, a token's user name, or a certificate's person name.

Tokens are checked with PyJWT against the issuer's JWKS: signature, issuer, audience,
expiry. The key set is fetched on first use and again when a token names a key it does
not hold (the issuer rotated its keys) or when it is older than `jwks_refresh_seconds`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubernaut.runtime import edges
from kubernaut.runtime.edges import Role
from kubernaut.runtime.identity import Peer
from kubernaut.runtime.names import EDGE_ACCOUNT, OPERATOR_ACCOUNT, ServiceName
from kubernaut.runtime.principals import ANONYMOUS, Principal, PrincipalKind

if TYPE_CHECKING:
    import jwt

# PyJWT (and the cryptography it loads, some 8 MiB of RSS) is imported where a token is
# checked: services of an install without an issuer never load it.

log = logging.getLogger("kubernaut.access")

AUTHORIZATION_HEADER: Final = "authorization"
# The person the HTTP edge acts for (who clicked in Slack, or a signed link's channel).
ON_BEHALF_OF_HEADER: Final = "kubernaut-on-behalf-of"
SUBJECT_KINDS: Final = ("group", "user", "cert", "slack", "link")
# The subjects the edge may act for: ones it authenticated itself (a Slack signature, a
# signed link). Never a token's or a certificate's: those people call for themselves.
EDGE_SUBJECT_KINDS: Final = ("slack", "link")
# A key set is fetched again for an unknown key id at most this often: a flood of tokens
# naming made-up keys must not turn into a flood of requests to the issuer.
_MIN_REFETCH_SECONDS: Final = 10.0

__all__ = ["Access", "AccessSettings", "Denied", "Role", "TokenVerifier", "Unauthenticated"]


class AccessSettings(BaseSettings):
    """Who may call: OIDC tokens and their issuer, role bindings, the dev stack's shared
    operator identity. KUBERNAUT_ACCESS_*."""

    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_ACCESS_", frozen=True, extra="ignore")

    # The OIDC issuer whose ID tokens people present (`authorization: Bearer <token>`
    # metadata), e.g. https://dex.example.com. Empty: tokens are refused.
    oidc_issuer: str = ""
    # The audience a token must be for (its `aud`): the client id Kubernaut is registered
    # with at the issuer. Required with an issuer.
    oidc_audience: str = ""
    # The issuer's key set; empty: the `jwks_uri` of its discovery document
    # (<issuer>/.well-known/openid-configuration).
    oidc_jwks_url: str = ""
    # The claim that names the person, and the claim that lists their groups.
    oidc_username_claim: str = "email"
    oidc_groups_claim: str = "groups"
    # The signature algorithms accepted (never "none", never HMAC: the key set is public).
    oidc_algorithms: tuple[str, ...] = ("RS256", "ES256")
    # How long a fetched key set is used before it is fetched again.
    jwks_refresh_seconds: float = Field(default=300.0, gt=0)
    # Roles given to subjects, as JSON: {"operator": ["group:sre", "user:bob@example.com"],
    # "approver": ["cert:alice", "slack:U0123ABCD"]}. Subjects: `group:<token group>`,
    # `user:<token user name>`, `cert:<person name of a personal certificate>`,
    # `slack:<Slack user ID>` (who clicked a button), `link:<notification channel>` (a
    # signed link sent to that channel: whoever reads the channel). Roles: viewer (reads),
    # approver (DecideApproval), operator (ExecuteAction, RollbackAction, CreateWorkflow),
    # admin (everything); each includes the ones before it.
    role_bindings: dict[Role, tuple[str, ...]] = Field(default_factory=dict)
    # Accept the shared `operator` certificate as an administrator: the local dev stack's
    # convenience, never for a shared install (it cannot tell people apart).
    shared_operator: bool = False

    @field_validator("role_bindings")
    @classmethod
    def _subjects_have_a_kind(
        cls, bindings: dict[Role, tuple[str, ...]]
    ) -> dict[Role, tuple[str, ...]]:
        for role, subjects in bindings.items():
            for subject in subjects:
                kind, _, name = subject.partition(":")
                if kind not in SUBJECT_KINDS or not name:
                    raise ValueError(
                        f"role {role.value}: subject {subject!r} must be group:<name>,"
                        " user:<name>, cert:<name>, slack:<user ID> or link:<channel>"
                    )
        return bindings


class Unauthenticated(Exception):
    """A credential was presented and is not valid (UNAUTHENTICATED)."""


class Denied(Exception):
    """The principal is known and may not make this call (PERMISSION_DENIED)."""


class TokenVerifier:
    """Checks OIDC ID tokens against the issuer's current key set."""

    def __init__(self, settings: AccessSettings, clock: Any = time.monotonic) -> None:
        if not settings.oidc_audience:
            raise ValueError("KUBERNAUT_ACCESS_OIDC_AUDIENCE is required with an OIDC issuer")
        if any(a.upper().startswith("HS") or a.lower() == "none" for a in settings.oidc_algorithms):
            raise ValueError("KUBERNAUT_ACCESS_OIDC_ALGORITHMS: only public-key algorithms")
        self.settings = settings
        self._clock = clock
        self._keys: jwt.PyJWKSet | None = None
        self._fetched_at = float("-inf")
        self._unknown_refetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _jwks_url(self, http: Any) -> str:
        if self.settings.oidc_jwks_url:
            return self.settings.oidc_jwks_url
        discovery = self.settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
        answer = await http.get(discovery)
        answer.raise_for_status()
        url: str = answer.json()["jwks_uri"]
        return url

    async def _refresh(self, *, unknown_kid: bool) -> jwt.PyJWKSet:
        """The key set, fetched again when it is older than jwks_refresh_seconds, or for a
        key id it lacks (at most every _MIN_REFETCH_SECONDS: a flood of tokens naming
        made-up keys must not become a flood of requests to the issuer)."""
        async with self._lock:
            now = self._clock()
            if self._keys is not None:
                if unknown_kid and now - self._unknown_refetched_at < _MIN_REFETCH_SECONDS:
                    return self._keys
                if not unknown_kid and now - self._fetched_at < self.settings.jwks_refresh_seconds:
                    return self._keys
            if unknown_kid:
                self._unknown_refetched_at = now
            import httpx
            import jwt

            try:
                async with httpx.AsyncClient(timeout=5.0) as http:
                    answer = await http.get(await self._jwks_url(http))
                    answer.raise_for_status()
                    self._keys = jwt.PyJWKSet.from_dict(answer.json())
            except (httpx.HTTPError, ValueError, KeyError, jwt.PyJWKSetError) as error:
                if self._keys is None:
                    raise Unauthenticated(
                        f"the OIDC issuer's keys cannot be read: {error}"
                    ) from error
                log.warning(
                    "JWKS refresh failed; keeping the keys held", extra={"error": str(error)}
                )
            self._fetched_at = now
            return self._keys

    async def _key_for(self, kid: str | None) -> Any:
        keys = self._keys
        if keys is None or self._clock() - self._fetched_at >= self.settings.jwks_refresh_seconds:
            keys = await self._refresh(unknown_kid=False)
        key = _find_key(keys, kid)
        if key is None:
            keys = await self._refresh(unknown_kid=True)
            key = _find_key(keys, kid)
        if key is None:
            raise Unauthenticated(f"the token's key {kid!r} is not in the issuer's key set")
        return key.key

    async def claims(self, token: str) -> dict[str, Any]:
        """The token's claims, once signature, issuer, audience and expiry hold."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as error:
            raise Unauthenticated(f"malformed token: {error}") from error
        key = await self._key_for(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self.settings.oidc_algorithms),
                audience=self.settings.oidc_audience,
                issuer=self.settings.oidc_issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(f"token refused: {error}") from error
        return claims


def _find_key(keys: jwt.PyJWKSet, kid: str | None) -> jwt.PyJWK | None:
    for key in keys.keys:
        if kid is None or key.key_id == kid:
            return key
    return None


class Access:
    """Turns a call's credentials into a Principal, and decides whether it may call."""

    def __init__(self, settings: AccessSettings) -> None:
        self.settings = settings
        self.verifier = TokenVerifier(settings) if settings.oidc_issuer else None
        # subject -> roles, inverted once.
        given: dict[str, set[Role]] = {}
        for role, subjects in settings.role_bindings.items():
            for subject in subjects:
                given.setdefault(subject, set()).add(role)
        self._roles_of = {subject: frozenset(roles) for subject, roles in given.items()}

    def roles(self, subjects: list[str]) -> frozenset[Role]:
        found: set[Role] = set()
        for subject in subjects:
            found |= self._roles_of.get(subject, frozenset())
        return frozenset(found)

    async def principal(self, peer: Peer, metadata: Mapping[str, str]) -> Principal:
        """Who calls. A bearer token, when one is presented, names the person; else the
        transport's identity does: a service, a person's certificate, the shared operator,
        the HTTP edge. Raises Unauthenticated for a token that does not hold."""
        token = _bearer(metadata.get(AUTHORIZATION_HEADER, ""))
        if token is not None and (peer.account is None or peer.account == OPERATOR_ACCOUNT):
            return await self._person_of_token(token)
        if token is not None and peer.account == EDGE_ACCOUNT:
            # The console: a signed-in person's own token, which this service checks; the
            # edge only carries it.
            person = await self._person_of_token(token)
            return dataclasses.replace(person, via=EDGE_ACCOUNT)
        if peer.account == EDGE_ACCOUNT and (subject := metadata.get(ON_BEHALF_OF_HEADER)):
            return self._person_of_edge(subject)
        if peer.person is not None:
            return Principal(PrincipalKind.PERSON, peer.person, self.roles([f"cert:{peer.person}"]))
        if peer.account is None:
            return ANONYMOUS
        return _account_principal(peer.account)

    async def _person_of_token(self, token: str) -> Principal:
        if self.verifier is None:
            raise Unauthenticated(
                "a bearer token was presented, but no OIDC issuer is configured"
                " (KUBERNAUT_ACCESS_OIDC_ISSUER)"
            )
        claims = await self.verifier.claims(token)
        name = claims.get(self.settings.oidc_username_claim) or claims["sub"]
        groups = claims.get(self.settings.oidc_groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        subjects = [f"user:{name}", *(f"group:{g}" for g in groups if isinstance(g, str))]
        return Principal(PrincipalKind.PERSON, str(name), self.roles(subjects))

    def _person_of_edge(self, subject: str) -> Principal:
        kind, _, name = subject.partition(":")
        if kind not in EDGE_SUBJECT_KINDS or not name or len(subject) > 200:
            raise Unauthenticated(
                "the edge acts only for a Slack user (slack:<ID>) or a signed link's channel"
                " (link:<channel>)"
            )
        return Principal(
            PrincipalKind.PERSON, subject, self.roles([subject]), via=EDGE_ACCOUNT, vouched=True
        )

    def check(self, principal: Principal, callee: ServiceName, method: str) -> None:
        """Raise Denied unless `principal` may call callee's method, saying why."""
        kind = principal.kind
        if principal.vouched and (callee, method) not in edges.EDGE_FOR_PEOPLE:
            raise Denied(
                f"{principal.label}, through {principal.via}, may not call"
                f" {callee.value}.{method}: the edge acts for people only to decide approvals"
            )
        if principal.via and (callee, method) not in edges.CONSOLE_CALLS:
            raise Denied(
                f"{principal.label}, through the console, may not call"
                f" {callee.value}.{method}: not a call the console makes"
            )
        if kind is PrincipalKind.EDGE and (callee, method) not in edges.EDGE_ALLOWED:
            raise Denied(
                f"{principal.label} may call {callee.value}.{method} only for a person"
                f" (their token, or {ON_BEHALF_OF_HEADER} metadata)"
            )
        if kind is PrincipalKind.PERSON:
            needed = edges.role_needed(callee, method)
            if needed is None:
                raise Denied(
                    f"{principal.label} may not call {callee.value}.{method}: only"
                    " Kubernaut's own services do"
                )
            if not edges.role_allows(principal.roles, needed):
                held = ", ".join(sorted(principal.roles)) or "none"
                raise Denied(
                    f"{principal.label} may not call {callee.value}.{method}: it needs the"
                    f" {needed.value} role (held: {held})"
                )
            return
        if kind is PrincipalKind.OPERATOR and not self.settings.shared_operator:
            raise Denied(
                "the shared operator identity is for the local dev stack only"
                " (KUBERNAUT_ACCESS_SHARED_OPERATOR); present your own token or certificate"
            )
        if kind is PrincipalKind.ANONYMOUS or not edges.is_allowed(principal.name, callee, method):
            raise Denied(
                f"{principal.label} may not call {callee.value}.{method}"
                " (not in Kubernaut's call table)"
            )


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@functools.lru_cache(maxsize=64)
def _account_principal(account: str) -> Principal:
    if account == OPERATOR_ACCOUNT:
        return Principal(PrincipalKind.OPERATOR, account)
    if account == EDGE_ACCOUNT:
        return Principal(PrincipalKind.EDGE, account)
    return Principal(PrincipalKind.SERVICE, account)
