"""Signing in to the console: OIDC's authorization code flow with PKCE (RFC 7636, S256)
against the issuer people already use (KUBERNAUT_ACCESS_OIDC_*), as a public client whose
client id is the audience Kubernaut is registered with.

The session is the person's own ID token, in a cookie the browser's scripts cannot read
(HttpOnly; Secure over https; SameSite=Lax, so that the issuer's redirect back still
carries the sign-in state). The console calls the services with that token, and each
service checks it: the edge never speaks for a signed-in person on its own word. Forms
carry a CSRF token derived from the session (an HMAC with the console's secret), checked
on every POST.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import httpx

from kubernaut.runtime.access import AccessSettings, TokenVerifier, Unauthenticated

SESSION_COOKIE: Final = "kubernaut_session"
LOGIN_COOKIE: Final = "kubernaut_login"
# How long a sign-in may take at the issuer.
LOGIN_SECONDS: Final = 600
CALLBACK_PATH: Final = "/ui/callback"


class SignInFailed(Exception):
    """The issuer's answer does not hold (a bad state, a refused code, a bad token): the
    message says which, never the token."""


@dataclass(frozen=True)
class Person:
    """Who is signed in, from their verified ID token."""

    name: str
    groups: tuple[str, ...]
    token: str
    expires_at: float
    csrf: str


@dataclass(frozen=True)
class LoginState:
    state: str
    verifier: str
    nonce: str
    # Where to go once signed in (a /ui path).
    next_path: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def code_challenge(verifier: str) -> str:
    """PKCE's S256 challenge of `verifier`."""
    return _b64(hashlib.sha256(verifier.encode()).digest())


class Sessions:
    """The console's half of OIDC, and its cookies."""

    def __init__(
        self,
        access: AccessSettings,
        public_url: str,
        secret: bytes,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Any = time.time,
    ) -> None:
        self._access = access
        self._verifier = TokenVerifier(access)
        self.redirect_uri = public_url.rstrip("/") + CALLBACK_PATH
        self.secure = public_url.startswith("https://")
        self._secret = secret
        self._http = http or httpx.AsyncClient(timeout=10.0)
        self._clock = clock
        self._discovery: dict[str, Any] | None = None

    async def close(self) -> None:
        await self._http.aclose()

    def now(self) -> float:
        return float(self._clock())

    async def _endpoints(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self._access.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                answer = await self._http.get(url)
                answer.raise_for_status()
                self._discovery = answer.json()
            except (httpx.HTTPError, ValueError) as error:
                raise SignInFailed(f"the OIDC issuer cannot be reached: {error}") from error
        return self._discovery

    # -- signing in ----------------------------------------------------------------------

    async def start(self, next_path: str) -> tuple[str, str]:
        """(the issuer's authorization URL to send the browser to, the login cookie)."""
        endpoints = await self._endpoints()
        login = LoginState(
            state=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),
            nonce=secrets.token_urlsafe(24),
            next_path=next_path if next_path.startswith("/ui") else "/ui",
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._access.oidc_audience,
                "redirect_uri": self.redirect_uri,
                "scope": "openid email groups",
                "state": login.state,
                "nonce": login.nonce,
                "code_challenge": code_challenge(login.verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoints['authorization_endpoint']}?{query}", self.seal(
            {
                "state": login.state,
                "verifier": login.verifier,
                "nonce": login.nonce,
                "next": login.next_path,
                "exp": self._clock() + LOGIN_SECONDS,
            }
        )

    async def finish(
        self, params: Mapping[str, str], login_cookie: str | None
    ) -> tuple[Person, str]:
        """The person the issuer's redirect names, and the path to go on to. Checks the
        state against the login cookie, exchanges the code with the PKCE verifier, and
        verifies the ID token (signature, issuer, audience, expiry, nonce)."""
        if "error" in params:
            raise SignInFailed(
                f"the issuer refused: {params['error']} {params.get('error_description', '')}"
            )
        login = self.open(login_cookie or "")
        if login is None or not hmac.compare_digest(
            str(login.get("state", "")), params.get("state", "")
        ):
            raise SignInFailed("the sign-in expired or did not start here; sign in again")
        endpoints = await self._endpoints()
        try:
            answer = await self._http.post(
                endpoints["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": params.get("code", ""),
                    "redirect_uri": self.redirect_uri,
                    "client_id": self._access.oidc_audience,
                    "code_verifier": str(login["verifier"]),
                },
            )
        except httpx.HTTPError as error:
            raise SignInFailed(f"the OIDC issuer cannot be reached: {error}") from error
        if answer.status_code != 200:
            raise SignInFailed(f"the issuer refused the code: {answer.text[:200]}")
        token = str(answer.json().get("id_token", ""))
        claims = await self._claims(token)
        if not hmac.compare_digest(str(claims.get("nonce", "")), str(login["nonce"])):
            raise SignInFailed("the ID token is not the one this sign-in asked for (nonce)")
        return self._person(token, claims), str(login["next"])

    async def person(self, token: str) -> Person:
        """The person of a session token; SignInFailed when it does not hold (expired)."""
        return self._person(token, await self._claims(token))

    async def _claims(self, token: str) -> dict[str, Any]:
        try:
            return await self._verifier.claims(token)
        except Unauthenticated as error:
            raise SignInFailed(str(error)) from error

    def _person(self, token: str, claims: Mapping[str, Any]) -> Person:
        name = claims.get(self._access.oidc_username_claim) or claims["sub"]
        groups = claims.get(self._access.oidc_groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        return Person(
            name=str(name),
            groups=tuple(str(g) for g in groups),
            token=token,
            expires_at=float(claims["exp"]),
            csrf=self.csrf_of(token),
        )

    # -- cookies and CSRF ----------------------------------------------------------------

    def csrf_of(self, token: str) -> str:
        return _b64(hmac.new(self._secret, b"csrf:" + token.encode(), hashlib.sha256).digest())

    def csrf_holds(self, person: Person, presented: str) -> bool:
        return hmac.compare_digest(person.csrf, presented)

    def cookie_options(self, max_age: int) -> dict[str, Any]:
        return {
            "max_age": max_age,
            "path": "/ui",
            "httponly": True,
            "secure": self.secure,
            "samesite": "lax",
        }

    def seal(self, value: dict[str, Any]) -> str:
        """`value` (with an `exp`) as a signed string only this console can have made."""
        body = _b64(json.dumps(value, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
        return f"{body}.{signature}"

    def open(self, sealed: str) -> dict[str, Any] | None:
        """What `seal` made, while it has not expired; else None."""
        body, _, signature = sealed.partition(".")
        expected = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
        if not body or not hmac.compare_digest(expected, signature):
            return None
        try:
            value = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(value, dict) or float(value.get("exp", 0)) < self._clock():
            return None
        return value
