"""Approvals from chat, what the notification service (which asks) and the HTTP edge
(which takes the answer) agree on: Slack's buttons and the check of Slack's signature, and
signed approve/reject links for the channels that cannot carry buttons (email, Teams, SMS,
tickets, webhooks).

Slack signs every interaction request with the app's signing secret (v0 HMAC-SHA256 of
"v0:{timestamp}:{body}"); the edge refuses a bad signature or a timestamp more than five
minutes away. A request replayed within those minutes passes the check, so deciding is
idempotent (below).

A link is the edge's URL with a JWT (HS256, PyJWT) in its path. The token names the
workflow, the decision and the channel the link was sent to (`link:<channel>`, the subject
that role bindings give the approver role); it expires. Both services read the same
secret from a file (a mounted Secret).

A link is single-use because the workflow keeps one decision per approver: a second
click of the same link repeats a recorded decision and changes nothing (the edge says the
link was used), and once the workflow is decided no link moves it.

PyJWT is imported where a link is made or checked: processes without links never load it.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

__all__ = [
    "LINKS_PATH",
    "MIN_SECRET_BYTES",
    "SLACK_APPROVE_ACTION_ID",
    "SLACK_REJECT_ACTION_ID",
    "Decision",
    "LinkClaims",
    "LinkRefused",
    "LinkSigner",
    "LinkVerifier",
    "read_link_secret",
    "verify_slack_request",
]

# Where the edge serves the links: <edge URL>/api/v1/approvals/links/<token>.
LINKS_PATH: Final = "/api/v1/approvals/links/"
_AUDIENCE: Final = "kubernaut-approval-link"
_ISSUER: Final = "kubernaut-notification"
_ALGORITHM: Final = "HS256"
# RFC 7518 3.2: an HS256 key at least as long as the hash.
MIN_SECRET_BYTES: Final = 32
# A link's channel name, as `link:<channel>` in role bindings.
SUBJECT_KIND: Final = "link"
# The buttons of a Slack approval request (their value is the workflow's id).
SLACK_APPROVE_ACTION_ID: Final = "kubernaut_approve"
SLACK_REJECT_ACTION_ID: Final = "kubernaut_reject"


def verify_slack_request(
    signing_secret: str, headers: Mapping[str, str], body: bytes, now: float
) -> bool:
    """Whether `body` with `headers` (X-Slack-Request-Timestamp, X-Slack-Signature) was
    signed by Slack with `signing_secret` within 5 minutes of `now` (Unix seconds). A body
    replayed under another timestamp fails the HMAC; the same request replayed within the
    window passes, so the caller must also make each interaction idempotent."""
    from slack_sdk.signature import Clock, SignatureVerifier

    class _At(Clock):
        def now(self) -> float:
            return now

    try:
        return SignatureVerifier(signing_secret, clock=_At()).is_valid_request(body, headers)
    except ValueError:
        # A timestamp that is not a number, or a body that is not UTF-8.
        return False


class Decision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class LinkRefused(Exception):
    """The link is not one of ours, was altered, or expired; the message says which
    (never the token)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class LinkClaims:
    workflow_id: str
    incident_id: str
    decision: Decision
    # `link:<channel>`: who the workflow records as the approver.
    subject: str
    expires_at: float


def read_link_secret(path: Path) -> bytes:
    """The links' secret from `path`; ValueError naming the file (never its content) when
    it is missing or too short to sign with."""
    try:
        secret = path.read_bytes().strip()
    except OSError as error:
        raise ValueError(f"approval link secret: cannot read {path}: {error.strerror}") from error
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"approval link secret: {path} holds {len(secret)} bytes; at least"
            f" {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32`)"
        )
    return secret


class LinkSigner:
    """Makes the links of one approval request, per channel."""

    def __init__(self, secret: bytes, base_url: str, ttl_seconds: float) -> None:
        self._secret = secret
        self._base = base_url.rstrip("/") + LINKS_PATH
        self._ttl = ttl_seconds

    def link(
        self,
        workflow_id: str,
        incident_id: str,
        decision: Decision,
        channel: str,
        *,
        now: float | None = None,
    ) -> str:
        import jwt  # here: PyJWT and cryptography only in processes that sign

        issued = time.time() if now is None else now
        token = jwt.encode(
            {
                "iss": _ISSUER,
                "aud": _AUDIENCE,
                "sub": f"{SUBJECT_KIND}:{channel}",
                "wf": workflow_id,
                "inc": incident_id,
                "dec": decision.value,
                "iat": int(issued),
                "exp": int(issued + self._ttl),
                # Two links made in the same second still differ.
                "jti": uuid.uuid4().hex,
            },
            self._secret,
            algorithm=_ALGORITHM,
        )
        return self._base + quote(token, safe=".-_")

    def links(self, workflow_id: str, incident_id: str, channel: str) -> tuple[str, str]:
        """(approve URL, reject URL) for `channel`."""
        return (
            self.link(workflow_id, incident_id, Decision.APPROVE, channel),
            self.link(workflow_id, incident_id, Decision.REJECT, channel),
        )


class LinkVerifier:
    """Checks a link's token: our signature, our audience, not expired."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def verify(self, token: str, *, now: float | None = None) -> LinkClaims:
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                audience=_AUDIENCE,
                issuer=_ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
                # PyJWT compares exp with its own clock; `now` (tests) is applied below.
                leeway=0 if now is None else 10**9,
            )
        except jwt.ExpiredSignatureError as error:
            raise LinkRefused("this link has expired", expired=True) from error
        except jwt.PyJWTError as error:
            raise LinkRefused("this is not a valid Kubernaut approval link") from error
        if now is not None and now >= claims["exp"]:
            raise LinkRefused("this link has expired", expired=True)
        try:
            subject = str(claims["sub"])
            if not subject.startswith(SUBJECT_KIND + ":"):
                raise ValueError(subject)
            return LinkClaims(
                workflow_id=str(uuid.UUID(str(claims["wf"]))),
                incident_id=str(claims["inc"]),
                decision=Decision(claims["dec"]),
                subject=subject,
                expires_at=float(claims["exp"]),
            )
        except (KeyError, ValueError) as error:
            raise LinkRefused("this is not a valid Kubernaut approval link") from error
