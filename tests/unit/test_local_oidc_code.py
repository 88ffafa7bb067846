"""The local OIDC issuer's authorization code grant with PKCE (what the web console uses in a
browser), against the running issuer on loopback: the sign-in page, its form's POST, the
redirect to the client's callback, the code exchange, and the ID token checked exactly as
Kubernaut checks people's tokens."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from html import unescape
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from kubernaut.devstack.oidc import AuthorizationError, LocalIssuer, s256_challenge
from kubernaut.runtime.access import AccessSettings, TokenVerifier

ALICE = "alice@example.com"


class Clock:
    """The time authorization codes expire by, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(clock: Clock) -> Iterator[LocalIssuer]:
    started = LocalIssuer(people={ALICE: ["sre-approvers"]}, clock=clock).start()
    yield started
    started.stop()


@pytest.fixture
def callback() -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    """A stand-in for the console's callback: its URL and the queries it received."""
    received: list[dict[str, list[str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(parse_qs(urlsplit(self.path).query))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/console/callback", received
    server.shutdown()
    server.server_close()


class _Forms(HTMLParser):
    """Each form's fields (inputs by name, buttons by id or text), as a browser would send them."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []
        self.ids: set[str] = set()
        self.buttons: list[str] = []
        self._in_button = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if "id" in found:
            self.ids.add(found["id"])
        if tag == "form":
            self.forms.append({})
        elif tag == "input" and "name" in found:
            self.forms[-1][found["name"]] = found.get("value", "")
        self._in_button = tag == "button"

    def handle_data(self, data: str) -> None:
        if self._in_button:
            self.buttons.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_button = False


def _forms(page: str) -> _Forms:
    parsed = _Forms()
    parsed.feed(page)
    return parsed


def _request(
    issuer: LocalIssuer, redirect_uri: str, challenge: str, /, **changes: str
) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": issuer.audience,
        "redirect_uri": redirect_uri,
        "state": "s-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "openid email groups",
        "nonce": "n-456",
    } | changes
    return {name: value for name, value in params.items() if value}


def _verifier_for(issuer: LocalIssuer) -> TokenVerifier:
    return TokenVerifier(AccessSettings(oidc_issuer=issuer.url, oidc_audience=issuer.audience))


def _verifier() -> str:
    return secrets.token_urlsafe(48)


def _code(redirect_url: str) -> str:
    return parse_qs(urlsplit(redirect_url).query)["code"][0]


def _code_grant(
    issuer: LocalIssuer, code: str, redirect_uri: str, verifier: str, **changes: str
) -> dict[str, str]:
    """The token request a client sends for `code` (RFC 6749 section 4.1.3, RFC 7636 4.5)."""
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": issuer.audience,
        "code_verifier": verifier,
    } | changes


async def test_a_person_signs_in_through_the_page_and_the_code_buys_an_id_token(
    issuer: LocalIssuer, callback: tuple[str, list[dict[str, list[str]]]]
) -> None:
    redirect_uri, received = callback
    verifier = _verifier()
    async with httpx.AsyncClient() as http:
        discovery = (await http.get(f"{issuer.url}/.well-known/openid-configuration")).json()
        assert discovery["authorization_endpoint"] == f"{issuer.url}/authorize"
        assert "authorization_code" in discovery["grant_types_supported"]
        assert discovery["response_types_supported"] == ["code"]
        assert discovery["code_challenge_methods_supported"] == ["S256"]

        page = await http.get(
            discovery["authorization_endpoint"],
            params=_request(issuer, redirect_uri, s256_challenge(verifier)),
        )
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        parsed = _forms(page.text)
        assert {"email", "groups", "sign-in"} <= parsed.ids
        assert "alice@example.com (sre-approvers)" in parsed.buttons

        # What the browser sends when the person fills in the first form and clicks sign-in.
        signed_in = await http.post(
            f"{issuer.url}/authorize",
            data=parsed.forms[0] | {"email": ALICE, "groups": "sre-approvers, platform"},
        )
        assert signed_in.status_code == 302
        assert signed_in.headers["location"].startswith(redirect_uri + "?")
        await http.get(signed_in.headers["location"])  # follow it to the client's callback
        assert received[0]["state"] == ["s-123"]
        code = received[0]["code"][0]
        token_url = discovery["token_endpoint"]

        answer = await http.post(token_url, data=_code_grant(issuer, code, redirect_uri, verifier))
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        body = answer.json()
        assert (body["token_type"], body["access_token"]) == ("Bearer", body["id_token"])
        assert body["expires_in"] > 0

        # A code is good once.
        again = await http.post(token_url, data=_code_grant(issuer, code, redirect_uri, verifier))
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_grant"
        assert "already used" in again.json()["error_description"]

    # Checked exactly as Kubernaut checks a person's token: signature, issuer, audience, expiry.
    claims = await _verifier_for(issuer).claims(body["id_token"])
    assert claims["email"] == ALICE
    assert claims["groups"] == ["sre-approvers", "platform"]
    assert claims["nonce"] == "n-456"


async def test_a_known_person_is_one_click_and_a_token_without_a_nonce_names_none(
    issuer: LocalIssuer,
) -> None:
    verifier = _verifier()
    async with httpx.AsyncClient() as http:
        params = _request(issuer, "http://127.0.0.1:1/cb", s256_challenge(verifier), nonce="")
        parsed = _forms((await http.get(f"{issuer.url}/authorize", params=params)).text)
        # The second form is alice's button: it carries her email and groups itself.
        assert parsed.forms[1]["email"] == ALICE
        signed_in = await http.post(f"{issuer.url}/authorize", data=parsed.forms[1])
        assert signed_in.status_code == 302
        code = _code(signed_in.headers["location"])
        grant = _code_grant(issuer, code, "http://127.0.0.1:1/cb", verifier)
        body = (await http.post(f"{issuer.url}/token", data=grant)).json()
    claims = await _verifier_for(issuer).claims(body["id_token"])
    assert (claims["email"], claims["groups"]) == (ALICE, ["sre-approvers"])
    assert "nonce" not in claims


def test_the_exchange_refuses_what_does_not_match_the_authorization(
    issuer: LocalIssuer, clock: Clock
) -> None:
    redirect_uri = "https://console.example.com/callback"
    verifier = _verifier()

    def code() -> str:
        return _code(
            issuer.authorize(
                ALICE, ["sre"], issuer.audience, redirect_uri, s256_challenge(verifier), "st"
            )
        )

    def refusal(
        code: str, redirect_uri: str = redirect_uri, verifier: str = verifier, **changes: str
    ) -> tuple[str, str]:
        grant = _code_grant(issuer, code, redirect_uri, verifier, **changes)
        answer = httpx.post(f"{issuer.url}/token", data=grant)
        assert answer.status_code == 400
        return answer.json()["error"], answer.json()["error_description"]

    assert refusal(code(), verifier=_verifier()) == (
        "invalid_grant",
        "code_verifier does not match the code_challenge",
    )
    assert refusal(code(), redirect_uri="https://evil.example.com/callback") == (
        "invalid_grant",
        "redirect_uri differs from the authorization request's",
    )
    assert refusal(code(), client_id="other") == (
        "invalid_grant",
        "the code was issued to another client_id",
    )
    assert refusal(code(), verifier="short") == (
        "invalid_request",
        "code_verifier must be 43 to 128 unreserved characters",
    )
    assert refusal(code(), code_verifier="") == ("invalid_request", "code_verifier is required")
    assert refusal("made-up") == ("invalid_grant", "the code is unknown or was already used")

    late = code()
    clock.now += 61
    assert refusal(late) == ("invalid_grant", "the code expired")

    # A code presented with a wrong verifier is spent: the right one cannot follow it.
    guessed = code()
    refusal(guessed, verifier=_verifier())
    assert refusal(guessed) == ("invalid_grant", "the code is unknown or was already used")

    # Within its minute, the same exchange works.
    fresh = code()
    clock.now += 59
    grant = _code_grant(issuer, fresh, redirect_uri, verifier)
    assert httpx.post(f"{issuer.url}/token", data=grant).status_code == 200

    unknown = httpx.post(f"{issuer.url}/token", data={"grant_type": "password"})
    assert (unknown.status_code, unknown.json()["error"]) == (400, "unsupported_grant_type")


def test_the_device_grant_keeps_working_beside_the_code_grant(issuer: LocalIssuer) -> None:
    with httpx.Client() as http:
        started = http.post(f"{issuer.url}/device").json()
        issuer.approve_device(started["user_code"], ALICE, ["sre"])
        answer = http.post(
            f"{issuer.url}/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": started["device_code"],
            },
        )
    assert answer.status_code == 200
    assert answer.json()["id_token"]


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"code_challenge_method": "plain"}, "code_challenge_method must be S256, not 'plain'"),
        ({"code_challenge_method": ""}, "code_challenge_method must be S256, not 'plain'"),
        ({"code_challenge": ""}, "code_challenge is required"),
        ({"code_challenge": "too-short"}, "code_challenge must be the unpadded base64url"),
        ({"response_type": "token"}, "response_type must be code"),
        ({"client_id": "someone-else"}, "client_id 'someone-else' is not a client"),
        ({"redirect_uri": "/callback"}, "redirect_uri must be an absolute http(s) URL"),
        ({"scope": "email"}, "scope must include openid"),
    ],
)
def test_a_bad_authorization_request_gets_a_400_page_saying_which(
    issuer: LocalIssuer, changes: dict[str, str], says: str
) -> None:
    params = _request(issuer, "http://127.0.0.1:1/cb", s256_challenge(_verifier()), **changes)
    page = httpx.get(f"{issuer.url}/authorize", params=params)
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert says in unescape(page.text)


def test_signing_in_rechecks_the_request_and_needs_an_email(issuer: LocalIssuer) -> None:
    fields = _request(issuer, "http://127.0.0.1:1/cb", s256_challenge(_verifier()))
    with httpx.Client() as http:
        # The form's hidden fields are the browser's to change: the POST checks them again.
        tampered = http.post(
            f"{issuer.url}/authorize",
            data=fields | {"code_challenge_method": "plain"} | {"email": ALICE},
        )
        assert tampered.status_code == 400
        assert "code_challenge_method must be S256" in tampered.text
        nobody = http.post(f"{issuer.url}/authorize", data=fields | {"email": " "})
        assert nobody.status_code == 400
        assert "email is required" in nobody.text

    with pytest.raises(AuthorizationError, match="must be S256, not 'plain'"):
        issuer.authorize(
            ALICE,
            [],
            issuer.audience,
            "http://127.0.0.1:1/cb",
            _verifier(),
            "st",
            code_challenge_method="plain",
        )
