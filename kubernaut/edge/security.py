"""Who may post alerts to the edge, and how much: bearer tokens (several at once, for
rotation; those of a tokens file are re-read when it changes), optionally Kubernetes
ServiceAccount tokens checked by TokenReview (kubernaut.edge.tokenreview), an optional
HMAC-SHA256 signature of the body, and a cap on the body's size.

Tokens and secrets are compared in constant time and never logged or echoed. Each accepted
request carries its sender's identity in `scope["state"]["sender"]` (`request.state.sender`):
`token#N` for the N-th static token, the username for a reviewed token, the client's
address for anonymous senders; never a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubernaut.runtime.rotation import DEFAULT_CHECK_SECONDS, InvalidFiles, WatchedFiles

SIGNATURE_PREFIX = "sha256="


class Unauthorized(Exception):
    """The request is not from a known sender; the message says which check failed."""


class ReviewUnavailable(Exception):
    """The token could not be checked now (its reviewer is unreachable or failing): the edge
    answers 503, so the sender retries. The message is for the logs, never for the sender."""


class TokenReview(Protocol):
    """Says whose a bearer token is: the sender's identity; Unauthorized for a token it does
    not accept, ReviewUnavailable when it cannot tell now."""

    async def review(self, token: str) -> str: ...


class WebhookTokenFile:
    """Webhook tokens in a file, one per line (a mounted Secret), read again when it
    changes (a stat() at most every check_seconds): a token added works from the next
    request on, a removed one stops working then. A file that changes while it is read, or
    that is not UTF-8, keeps the last tokens; so does an empty one after the start (a file
    being rewritten in place is empty for a moment), so removing every token of the file
    needs a restart."""

    def __init__(
        self,
        path: Path,
        *,
        check_seconds: float = DEFAULT_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._started = False
        self._watched = WatchedFiles(
            (path,),
            self._parse,
            what=f"webhook tokens file {path}",
            check_seconds=check_seconds,
            clock=clock,
        )
        self._started = True

    def _parse(self, paths: Sequence[Path]) -> tuple[bytes, ...]:
        # UnicodeDecodeError is a ValueError: the last tokens stay.
        lines = paths[0].read_bytes().decode("utf-8").splitlines()
        tokens = tuple(line.strip().encode() for line in lines if line.strip())
        if not tokens and self._started:
            raise InvalidFiles("the file is empty (taken for one being rewritten)")
        return tokens

    def tokens(self) -> tuple[bytes, ...]:
        watched = self._watched
        # Per request: a clock comparison.
        if watched.clock() >= watched.next_check:
            watched.refresh()
        return watched.current


@dataclass(frozen=True)
class Authenticator:
    """Checks a request's Authorization header and, when a secret is set, its signature.

    A bearer token that is none of `tokens` goes to `reviewer` when one is set. The
    signature, when a secret is set, is required from every sender, reviewed ones too: the
    secret is a second factor, and a token alone (which any pod of that ServiceAccount can
    read) is then not enough.
    """

    # Kept out of repr(), so that logging the authenticator never shows a secret.
    fixed_tokens: tuple[bytes, ...] = field(repr=False)
    hmac_secret: bytes | None = field(default=None, repr=False)
    signature_header: str = "X-Kubernaut-Signature"
    reviewer: TokenReview | None = None
    token_file: WebhookTokenFile | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        tokens: Sequence[str],
        hmac_secret: str | None = None,
        signature_header: str = "",
        *,
        reviewer: TokenReview | None = None,
        token_file: WebhookTokenFile | None = None,
    ) -> Authenticator:
        return cls(
            tuple(token.encode() for token in tokens),
            hmac_secret.encode() if hmac_secret else None,
            signature_header or cls.signature_header,
            reviewer,
            token_file,
        )

    @property
    def tokens(self) -> tuple[bytes, ...]:
        """The tokens accepted now: the fixed ones, then those of the file."""
        if self.token_file is None:
            return self.fixed_tokens
        return self.fixed_tokens + self.token_file.tokens()

    async def check(self, headers: Mapping[str, str], body: bytes) -> str:
        """The sender's identity; Unauthorized unless the request carries a valid token (and
        signature); ReviewUnavailable when the reviewer cannot tell now."""
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        token = presented.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        offered = token.encode()
        # Every configured token is compared, so the time taken says nothing about which
        # one (if any) nearly matched.
        matched = 0
        for number, candidate in enumerate(self.tokens, start=1):
            equal = hmac.compare_digest(offered, candidate)
            matched = number if equal and not matched else matched
        if matched:
            self._check_signature(headers, body)
            return f"token#{matched}"
        if self.reviewer is None:
            raise Unauthorized("the bearer token is not valid")
        # The signature first: it is checked here, while a review costs the API server a
        # call, so a sender without the secret never causes one.
        self._check_signature(headers, body)
        return await self.reviewer.review(token)

    def _check_signature(self, headers: Mapping[str, str], body: bytes) -> None:
        if self.hmac_secret is None:
            return
        signature = headers.get(self.signature_header.lower(), "")
        if not signature.startswith(SIGNATURE_PREFIX):
            raise Unauthorized(
                f"the {self.signature_header} header must be {SIGNATURE_PREFIX}<hex HMAC-SHA256 "
                "of the body>"
            )
        expected = hmac.new(self.hmac_secret, body, hashlib.sha256).hexdigest()
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
    does the application see (and parse) the body, replayed as it was read. A token that
    cannot be reviewed now is a 503 (retry). The sender's identity goes to
    `scope["state"]["sender"]`; without an authenticator it is the client's address."""

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
        body = await read_body(receive)
        if body is None:
            return  # the client went away
        if self.authenticator is None:
            client = scope.get("client")
            sender = client[0] if client else "anonymous"
        else:
            try:
                sender = await self.authenticator.check(headers, body)
            except Unauthorized as error:
                self.on_refusal(401, str(error))
                challenge = {"WWW-Authenticate": 'Bearer realm="kubernaut"'}
                await refusal_response(401, str(error), challenge)(scope, receive, send)
                return
            except ReviewUnavailable as error:
                # Nothing was accepted; a 5xx makes AlertManager send it again.
                self.on_refusal(503, str(error))
                refusal = refusal_response(503, "cannot verify the token now; retry")
                await refusal(scope, receive, send)
                return
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            why = f"the body must be application/json, not {content_type[:64]!r}"
            self.on_refusal(415, why)
            await refusal_response(415, why)(scope, receive, send)
            return
        # Starlette's request.state is this dict: later code can limit per sender.
        scope.setdefault("state", {})["sender"] = sender
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def read_body(receive: Receive) -> bytes | None:
    """A request's whole body; None when the client went away before sending it all."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def refusal_response(
    status: int, reason: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A refusal whose JSON body names the reason, as every refusal of the edge is."""
    return JSONResponse({"error": reason}, status_code=status, headers=headers)
