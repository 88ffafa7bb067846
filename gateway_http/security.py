"""Who may post alerts to the edge, and how much: bearer tokens (two at once, for rotation),
an optional HMAC-SHA256 signature of the body, and a cap on the body's size.

Tokens and secrets are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SIGNATURE_PREFIX = "sha256="


class Unauthorized(Exception):
    """The request is not from a known sender; the message says which check failed."""


@dataclass(frozen=True)
class Authenticator:
    """Checks a request's Authorization header and, when a secret is set, its signature."""

    tokens: tuple[bytes, ...]
    hmac_secret: bytes | None = None
    signature_header: str = "X-Kubernaut-Signature"

    @classmethod
    def of(
        cls, tokens: Sequence[str], hmac_secret: str | None = None, signature_header: str = ""
    ) -> Authenticator:
        return cls(
            tuple(token.encode() for token in tokens),
            hmac_secret.encode() if hmac_secret else None,
            signature_header or cls.signature_header,
        )

    def check(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise Unauthorized unless the request carries a valid token (and signature)."""
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        offered = presented.strip().encode()
        # Every configured token is compared, so the time taken says nothing about which
        # one (if any) nearly matched.
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(offered, token)
        if not matched:
            raise Unauthorized("the bearer token is not valid")
        if self.hmac_secret is not None:
            self._check_signature(headers.get(self.signature_header.lower(), ""), body)

    def _check_signature(self, signature: str, body: bytes) -> None:
        if not signature.startswith(SIGNATURE_PREFIX):
            raise Unauthorized(
                f"the {self.signature_header} header must be {SIGNATURE_PREFIX}<hex HMAC-SHA256 "
                "of the body>"
            )
        expected = hmac.new(self.hmac_secret or b"", body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature[len(SIGNATURE_PREFIX) :].lower(), expected):
            raise Unauthorized(f"the {self.signature_header} signature does not match the body")


def sign(secret: str, body: bytes) -> str:
    """The signature header value for `body` (what a sender computes)."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 with a JSON reason, judged
    by Content-Length when given and by the bytes actually read otherwise (a chunked body
    cannot slip past)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = refusal_response(413, f"the request body is larger than {self.max_bytes} bytes")
        await refusal(scope, receive, send)


class SenderCheck:
    """ASGI middleware in front of the webhook routes: authentication first, so that a
    stranger learns nothing about what would be accepted, then the content type; only then
    does the application see (and parse) the body, replayed as it was read."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator | None,
        paths: frozenset[str],
        on_refusal: Callable[[int, str], None] = lambda status, why: None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.paths = paths
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if self.authenticator is not None:
            try:
                self.authenticator.check(headers, body)
            except Unauthorized as error:
                self.on_refusal(401, str(error))
                challenge = {"WWW-Authenticate": 'Bearer realm="kubernaut"'}
                await refusal_response(401, str(error), challenge)(scope, receive, send)
                return
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            why = f"the body must be application/json, not {content_type[:64]!r}"
            self.on_refusal(415, why)
            await refusal_response(415, why)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def refusal_response(
    status: int, reason: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A refusal whose JSON body names the reason, as every refusal of the edge is."""
    return JSONResponse({"error": reason}, status_code=status, headers=headers)
