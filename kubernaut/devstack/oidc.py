"""A local OIDC issuer on loopback: the discovery document and a JWKS over HTTP, ID tokens
signed with real RSA keys, the device authorization grant (RFC 8628) that `kubernaut login`
uses, and the authorization code grant with PKCE (RFC 6749 section 4.1, RFC 7636 S256) that
the web console uses in a browser. It stands in for the identity provider a shared install
uses (Dex, Keycloak, Okta, Entra ID) in tests and on the dev stack: Kubernaut checks its tokens
exactly as it checks theirs (PyJWT, the published key set, issuer, audience, expiry).

Keys rotate as a provider rotates them: `rotate()` starts signing with a new key and
publishes both; `retire()` drops the old one from the key set.

Signing in asks for no password (it is the dev stack's issuer): the /authorize page asks who
you are (an email and groups) and offers the `people` it was given as one-click choices.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kubernaut.devstack.daemon import Daemon
from kubernaut.devstack.processes import LOOPBACK, port_open
from kubernaut.runtime.certs import write_private, write_private_key


@dataclass
class _SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key())
        )
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return jwk


def _new_key() -> _SigningKey:
    return _SigningKey(uuid.uuid4().hex[:16], rsa.generate_private_key(65537, 2048))


def kept_key(path: Path) -> _SigningKey:
    """The signing key in `path` (PEM), made there (0600) the first time: tokens and console
    sessions outlive a restart of the dev stack's issuer."""
    if not path.exists():
        write_private_key(path, _new_key().private)
    data = path.read_bytes()
    private = serialization.load_pem_private_key(data, password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key")
    # The key id follows from the key: the same key, the same kid after a restart.
    return _SigningKey(hashlib.sha256(data).hexdigest()[:16], private)


# RFC 6749 section 4.1.2 asks for short-lived codes (ten minutes at most).
_CODE_LIFETIME_SECONDS = 60
# RFC 7636 sections 4.1 and 4.2: a verifier is 43 to 128 unreserved characters; an S256
# challenge is the unpadded base64url of a SHA-256 digest, 43 characters.
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


def s256_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class AuthorizationError(ValueError):
    """An authorization request the issuer refuses; the message says which parameter."""


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked authorization request (RFC 6749 section 4.1.1, RFC 7636 section 4.3)."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    state: str
    nonce: str
    scope: str

    def form_fields(self) -> dict[str, str]:
        """The request as the sign-in form carries it to its POST."""
        return {"response_type": "code", "code_challenge_method": "S256", **asdict(self)}


@dataclass(frozen=True)
class _IssuedCode:
    request: AuthorizationRequest
    email: str
    groups: tuple[str, ...]
    expires_at: float


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit(parts._replace(query=query))


def _token_error(error: str, description: str) -> tuple[int, dict[str, Any]]:
    """An RFC 6749 section 5.2 error answer of the token endpoint."""
    return 400, {"error": error, "error_description": description}


def _html(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def error_page(message: str) -> str:
    return _html(
        "Sign-in refused", f'<h1>Sign-in refused</h1>\n<p id="error">{escape(message)}</p>'
    )


@dataclass
class LocalIssuer:
    """Start with `start()` (a free loopback port), stop with `stop()`."""

    audience: str = "kubernaut"
    host: str = "127.0.0.1"
    # 0: a free port at `start()`.
    port: int = 0
    # The people the sign-in page offers as choices: email -> groups.
    people: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The clock authorization codes expire by (tests move it).
    clock: Callable[[], float] = time.monotonic
    # Where the signing key is kept (made the first time); None: a new key in memory.
    key_file: Path | None = None
    _keys: list[_SigningKey] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    # How many times the key set was fetched (tests of refresh read it).
    jwks_fetches: int = 0
    # Device logins: device_code -> [user_code, the approved person (email, groups) or None].
    _devices: dict[str, list[Any]] = field(default_factory=dict)
    # Authorization codes not yet exchanged: code -> what it was issued for.
    _codes: dict[str, _IssuedCode] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self._keys:
            self._keys.append(kept_key(self.key_file) if self.key_file else _new_key())

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the issuer is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self._keys]}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/keys",
            "authorization_endpoint": f"{self.url}/authorize",
            "device_authorization_endpoint": f"{self.url}/device",
            "token_endpoint": f"{self.url}/token",
            "grant_types_supported": [
                "authorization_code",
                "urn:ietf:params:oauth:grant-type:device_code",
            ],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "email", "groups"],
            # A public client: PKCE instead of a client secret.
            "token_endpoint_auth_methods_supported": ["none"],
            "subject_types_supported": ["public"],
        }

    def token(
        self,
        email: str,
        *,
        groups: Sequence[str] = (),
        lifetime_seconds: float = 600,
        audience: str | None = None,
        issuer: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """An ID token for `email`, signed with the current key."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.url,
            "aud": audience or self.audience,
            "sub": uuid.uuid5(uuid.NAMESPACE_URL, email).hex,
            "email": email,
            "groups": list(groups),
            "iat": now,
            "exp": now + int(lifetime_seconds),
            **(extra or {}),
        }
        key = self._keys[-1]
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid})

    def write_token(self, path: Path, email: str, **kwargs: Any) -> Path:
        """A token for `email` in a file readable by its owner only (`--token-file`)."""
        write_private(path, f"{self.token(email, **kwargs)}\n".encode())
        return path

    def start_device_login(self) -> dict[str, Any]:
        """A device authorization (RFC 8628 section 3.2): the codes a person is shown."""
        device_code, user_code = secrets.token_urlsafe(24), secrets.token_hex(4).upper()
        with self._lock:
            self._devices[device_code] = [user_code, None]
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": f"{self.url}/activate",
            "verification_uri_complete": f"{self.url}/activate?user_code={user_code}",
            "expires_in": 600,
            "interval": 1,
        }

    def approve_device(self, user_code: str, email: str, groups: Sequence[str] = ()) -> None:
        """What the person does in the browser: sign in and confirm the code."""
        with self._lock:
            for pending in self._devices.values():
                if pending[0] == user_code:
                    pending[1] = (email, list(groups))
                    return
        raise KeyError(f"no device login with user code {user_code}")

    def pending_user_codes(self) -> list[str]:
        with self._lock:
            return [p[0] for p in self._devices.values() if p[1] is None]

    def device_token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer to a device-code poll (RFC 8628 section 3.5)."""
        grant = form.get("grant_type", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:device_code":
            return 400, {"error": "unsupported_grant_type"}
        with self._lock:
            pending = self._devices.get(form.get("device_code", [""])[0])
            if pending is None:
                return 400, {"error": "expired_token"}
            if pending[1] is None:
                return 400, {"error": "authorization_pending"}
            email, groups = pending[1]
            del self._devices[form["device_code"][0]]
        token = self.token(email, groups=groups)
        return 200, {"id_token": token, "token_type": "Bearer", "expires_in": 600}

    def authorization_request(self, params: Mapping[str, str]) -> AuthorizationRequest:
        """The authorization request in `params`, checked; AuthorizationError says what is wrong."""

        def given(name: str) -> str:
            if not (value := params.get(name, "")):
                raise AuthorizationError(f"{name} is required")
            return value

        if (response_type := given("response_type")) != "code":
            raise AuthorizationError(
                f"response_type must be code (the authorization code flow), not {response_type!r}"
            )
        if (client_id := given("client_id")) != self.audience:
            raise AuthorizationError(
                f"client_id {client_id!r} is not a client of this issuer ({self.audience!r} is)"
            )
        redirect_uri = given("redirect_uri")
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            raise AuthorizationError(
                "redirect_uri must be an absolute http(s) URL without a fragment"
            )
        if "openid" not in (scope := given("scope")).split():
            raise AuthorizationError("scope must include openid")
        if not (challenge := params.get("code_challenge", "")):
            raise AuthorizationError("code_challenge is required (PKCE, S256)")
        # RFC 7636 section 4.3: no method named means plain, which leaks the verifier.
        if (method := params.get("code_challenge_method") or "plain") != "S256":
            raise AuthorizationError(f"code_challenge_method must be S256, not {method!r}")
        if not _S256_CHALLENGE.fullmatch(challenge):
            raise AuthorizationError(
                "code_challenge must be the unpadded base64url SHA-256 of the verifier"
            )
        return AuthorizationRequest(
            client_id,
            redirect_uri,
            challenge,
            params.get("state", ""),
            params.get("nonce", ""),
            scope,
        )

    def sign_in_page(self, request: AuthorizationRequest) -> str:
        """The form a browser is shown: an email and groups, and the known people to pick."""
        carried = "".join(
            f'<input type="hidden" name="{name}" value="{escape(value)}">'
            for name, value in request.form_fields().items()
        )
        choices = ""
        for email, groups in self.people.items():
            label = f"{email} ({', '.join(groups)})" if groups else email
            choices += (
                f'<li><form method="post" action="/authorize">{carried}'
                f'<input type="hidden" name="email" value="{escape(email)}">'
                f'<input type="hidden" name="groups" value="{escape(",".join(groups))}">'
                f'<button type="submit" class="person">{escape(label)}</button></form></li>\n'
            )
        known = f'<h2>Known people</h2>\n<ul id="people">\n{choices}</ul>' if choices else ""
        return _html(
            "Sign in to Kubernaut",
            f"<h1>Sign in to Kubernaut</h1>\n"
            f"<p>The local dev-stack issuer asks no password: say who you are.</p>\n"
            f'<form method="post" action="/authorize">{carried}\n'
            f'<p><label for="email">Email</label> '
            f'<input id="email" name="email" type="email" required></p>\n'
            f'<p><label for="groups">Groups (comma-separated)</label> '
            f'<input id="groups" name="groups" type="text"></p>\n'
            f'<button id="sign-in" type="submit">Sign in</button>\n</form>\n{known}',
        )

    def sign_in(self, request: AuthorizationRequest, email: str, groups: Sequence[str]) -> str:
        """Issues a one-time code for `email` bound to `request`; the URL to redirect to."""
        if not (email := email.strip()):
            raise AuthorizationError("email is required")
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = _IssuedCode(
                request,
                email,
                tuple(group for group in (g.strip() for g in groups) if group),
                self.clock() + _CODE_LIFETIME_SECONDS,
            )
        return _with_query(
            request.redirect_uri,
            {"code": code} | ({"state": request.state} if request.state else {}),
        )

    def authorize(
        self,
        email: str,
        groups: Sequence[str],
        client_id: str,
        redirect_uri: str,
        code_challenge: str,
        state: str,
        nonce: str = "",
        *,
        code_challenge_method: str = "S256",
        scope: str = "openid email groups",
    ) -> str:
        """What signing in through the page does, without a browser: the redirect URL."""
        request = self.authorization_request(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "code_challenge": code_challenge,
                "code_challenge_method": code_challenge_method,
                "state": state,
                "nonce": nonce,
                "scope": scope,
            }
        )
        return self.sign_in(request, email, groups)

    def code_token(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer to an authorization code (RFC 6749 section 4.1.3,
        RFC 7636 section 4.6)."""
        for name in ("code", "redirect_uri", "client_id", "code_verifier"):
            if not form.get(name):
                return _token_error("invalid_request", f"{name} is required")
        verifier = form["code_verifier"]
        if not _VERIFIER.fullmatch(verifier):
            return _token_error(
                "invalid_request", "code_verifier must be 43 to 128 unreserved characters"
            )
        with self._lock:
            # Presented once, gone, even when the exchange fails (RFC 6749 section 10.5).
            issued = self._codes.pop(form["code"], None)
        if issued is None:
            return _token_error("invalid_grant", "the code is unknown or was already used")
        if self.clock() >= issued.expires_at:
            return _token_error("invalid_grant", "the code expired")
        request = issued.request
        if form["client_id"] != request.client_id:
            return _token_error("invalid_grant", "the code was issued to another client_id")
        if form["redirect_uri"] != request.redirect_uri:
            return _token_error(
                "invalid_grant", "redirect_uri differs from the authorization request's"
            )
        if not secrets.compare_digest(s256_challenge(verifier), request.code_challenge):
            return _token_error("invalid_grant", "code_verifier does not match the code_challenge")
        token = self.token(
            issued.email,
            groups=issued.groups,
            extra={"nonce": request.nonce} if request.nonce else None,
        )
        return 200, {
            "id_token": token,
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 600,
        }

    def token_endpoint(self, form: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """POST /token: the authorization code grant or the device grant, by grant_type."""
        grant = form.get("grant_type", [""])[0]
        if grant == "authorization_code":
            return self.code_token({name: values[0] for name, values in form.items()})
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self.device_token(dict(form))
        return _token_error(
            "unsupported_grant_type",
            f"grant_type {grant!r} is neither authorization_code nor the device code grant",
        )

    def rotate(self) -> str:
        """Sign with a new key from now on, publishing it beside the old; its kid."""
        self._keys.append(_new_key())
        return self._keys[-1].kid

    def retire(self) -> None:
        """Drop every key but the current one from the key set."""
        self._keys = self._keys[-1:]

    def start(self) -> LocalIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, content_type: str, data: bytes, location: str) -> None:
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", content_type)
                # Tokens, codes and sign-in pages are never cached (RFC 6749 section 5.1).
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, "application/json", json.dumps(body).encode(), "")

            def _page(self, status: int, page: str, location: str = "") -> None:
                self._send(status, "text/html; charset=utf-8", page.encode(), location)

            def _authorize(self, params: dict[str, str], *, signing_in: bool) -> None:
                try:
                    request = issuer.authorization_request(params)
                    if not signing_in:
                        self._page(200, issuer.sign_in_page(request))
                        return
                    groups = params.get("groups", "").split(",")
                    location = issuer.sign_in(request, params.get("email", ""), groups)
                except AuthorizationError as error:
                    self._page(400, error_page(str(error)))
                    return
                self._page(302, "", location)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                path = urlsplit(self.path).path
                if path == "/device":
                    self._answer(200, issuer.start_device_login())
                elif path == "/token":
                    self._answer(*issuer.token_endpoint(form))
                elif path == "/authorize":
                    fields = {name: values[0] for name, values in form.items()}
                    self._authorize(fields, signing_in=True)
                else:
                    self.send_error(404)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/authorize":
                    query = {name: values[0] for name, values in parse_qs(url.query).items()}
                    self._authorize(query, signing_in=False)
                    return
                if self.path == "/.well-known/openid-configuration":
                    body = issuer.discovery()
                elif self.path == "/keys":
                    issuer.jwks_fetches += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                self._answer(200, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def settings_env(self, role_bindings: dict[str, list[str]]) -> dict[str, str]:
        """The KUBERNAUT_ACCESS_* environment that trusts this issuer."""
        return {
            "KUBERNAUT_ACCESS_OIDC_ISSUER": self.url,
            "KUBERNAUT_ACCESS_OIDC_AUDIENCE": self.audience,
            "KUBERNAUT_ACCESS_ROLE_BINDINGS": json.dumps(role_bindings),
        }


# The dev stack's people (`kubernaut dev-stack up` starts an issuer offering them) and their
# roles: the console's sign-in page lists them, so that a demo needs no identity provider.
DEV_PEOPLE: Final[Mapping[str, Sequence[str]]] = {
    "oncall@example.com": ["kubernaut-approvers"],
    "operator@example.com": ["kubernaut-operators"],
    "viewer@example.com": ["kubernaut-viewers"],
}
DEV_ROLE_BINDINGS: Final[Mapping[str, list[str]]] = {
    "viewer": ["group:kubernaut-viewers"],
    "approver": ["group:kubernaut-approvers"],
    "operator": ["group:kubernaut-operators"],
}


def sign_in_hint() -> str:
    """Who to sign in to the dev stack's console as, for people reading the CLI's output."""
    people = ", ".join(
        f"{email} ({role})"
        for email, groups in DEV_PEOPLE.items()
        for role, subjects in DEV_ROLE_BINDINGS.items()
        if any(f"group:{group}" in subjects for group in groups)
    )
    return f"sign in as one of {people}"


class IssuerProcess(Daemon):
    """`main()` below as our child: the dev stack's issuer, which outlives the
    `kubernaut dev-stack up` that starts it (`down` stops it by the recorded pid)."""

    name = "oidc"

    def __init__(
        self,
        key_file: Path,
        log_file: Path,
        *,
        people: Mapping[str, Sequence[str]] = DEV_PEOPLE,
        port: int = 0,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(log_file, port, start_timeout)
        self.key_file = key_file
        self.people = people

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kubernaut.devstack.oidc",
            "--port",
            str(port),
            "--key-file",
            str(self.key_file),
            "--people",
            json.dumps(dict(self.people)),
        ]

    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        return port_open(port)

    def _not_ready_message(self, port: int) -> str:
        return f"the OIDC issuer did not listen on {LOOPBACK}:{port}; see {self.log_file}"


def main(argv: list[str] | None = None) -> int:
    """Run an issuer in the foreground until SIGTERM/SIGINT (the dev stack's)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="Kubernaut's local OIDC issuer")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-file", required=True, type=Path, help="the signing key (PEM)")
    parser.add_argument("--people", default="{}", help="JSON: email -> groups, offered to pick")
    parser.add_argument("--audience", default=LocalIssuer.audience)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    people = json.loads(args.people)
    issuer = LocalIssuer(args.audience, port=args.port, people=people, key_file=args.key_file)
    issuer.start()
    print(f"oidc issuer at {issuer.url} (audience {issuer.audience})", flush=True)
    stop.wait()
    issuer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
