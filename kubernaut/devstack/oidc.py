"""A local OIDC issuer on loopback: the discovery document and a JWKS over HTTP, ID tokens
signed with real RSA keys, and the device authorization grant (RFC 8628) that
`kubernaut login` uses. It stands in for the identity provider a shared install uses
(Dex, Keycloak, Okta, Entra ID) in tests and on the dev stack: Kubernaut checks its tokens
exactly as it checks theirs (PyJWT, the published key set, issuer, audience, expiry).

Keys rotate as a provider rotates them: `rotate()` starts signing with a new key and
publishes both; `retire()` drops the old one from the key set.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from kubernaut.runtime.certs import write_private


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


@dataclass
class LocalIssuer:
    """Start with `start()` (a free loopback port), stop with `stop()`."""

    audience: str = "kubernaut"
    host: str = "127.0.0.1"
    _keys: list[_SigningKey] = field(default_factory=lambda: [_new_key()])
    _server: ThreadingHTTPServer | None = None
    # How many times the key set was fetched (tests of refresh read it).
    jwks_fetches: int = 0
    # Device logins: device_code -> [user_code, the approved person (email, groups) or None].
    _devices: dict[str, list[Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
            "device_authorization_endpoint": f"{self.url}/device",
            "token_endpoint": f"{self.url}/token",
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["id_token"],
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
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                if self.path == "/device":
                    self._answer(200, issuer.start_device_login())
                elif self.path == "/token":
                    self._answer(*issuer.device_token(form))
                else:
                    self.send_error(404)

            def do_GET(self) -> None:
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

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
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
