"""A generic webhook: each event POSTed as JSON to a configured URL, signed.

The signature is HMAC-SHA256, keyed with a shared secret (from a file), over
"<timestamp>.<raw body>", sent as `X-Kubernaut-Signature: t=<unix seconds>,v1=<hex>`; the
event's idempotency key is in `X-Kubernaut-Event` and in the body's "id" (receivers
de-duplicate by it: a retry carries the same id and a fresh signature). `verify_webhook` is
the receiver's side, for integrators to copy or import.

Answers: 2xx delivered; 429 retried after its Retry-After; other 4xx (410 Gone: the
receiver is gone) and redirects are permanent; 5xx and no answer are retried.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

import httpx
from pydantic import Field, field_validator

from kubernaut.services.notification.rendering import (
    TEMPLATES_DIR,
    EventView,
    template_environment,
)
from kubernaut.services.notification.vendors.base import (
    ChannelConfig,
    Notice,
    SendResult,
    cut,
    https_url,
    read_secret,
    result_of,
    unreachable,
)

__all__ = [
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "WebhookChannel",
    "WebhookConfig",
    "WebhookVerificationError",
    "build",
    "payload_of",
    "sign",
    "verify_webhook",
]

VENDOR: Final = "webhook"
SIGNATURE_HEADER: Final = "X-Kubernaut-Signature"
EVENT_HEADER: Final = "X-Kubernaut-Event"
# How far a signature's timestamp may be from the receiver's clock, in seconds.
DEFAULT_TOLERANCE: Final = 300
# Shorter secrets are guessable offline from one signed request.
MIN_SECRET_LENGTH: Final = 16
# The human-readable text has no vendor limit; this keeps a runaway stage list bounded.
MAX_TEXT: Final = 16_000

# One part of the signature header: the timestamp (bounded: int() of a huge number is slow)
# or one HMAC-SHA256 in hex.
_SIGNATURE_PART: Final = re.compile(r"t=(?P<t>[0-9]{1,12})|v1=(?P<v1>[0-9a-f]{64})")


class WebhookConfig(ChannelConfig):
    """A signed webhook in the routing file. The signing secret is read from a file."""

    type: Literal["webhook"]
    # Where events are POSTed (https; plain http only to a loopback host).
    url: str
    # A file holding the shared signing secret (a mounted Secret).
    secret_file: str = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return https_url(value, "url")


class WebhookVerificationError(ValueError):
    """A request that is not a genuine, fresh Kubernaut webhook (the reason says why)."""


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The X-Kubernaut-Signature value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def _digest(secret: str | bytes, body: bytes, timestamp: int) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_webhook(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """The event a webhook request carries, once it is shown genuine: signed with `secret`
    over this exact body, its timestamp within `tolerance` seconds of `now`, and its
    X-Kubernaut-Event equal to the signed id (receivers de-duplicate by it). Several v1
    values are accepted (any may match), so a sender can sign with an old and a new secret
    while it is rotated. Raises WebhookVerificationError otherwise."""
    by_name = {name.lower(): value for name, value in headers.items()}
    header = by_name.get(SIGNATURE_HEADER.lower())
    if not header:
        raise WebhookVerificationError(f"no {SIGNATURE_HEADER} header")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        match = _SIGNATURE_PART.fullmatch(part.strip())
        if match is None:
            raise WebhookVerificationError(f"malformed {SIGNATURE_HEADER} header")
        if match["t"] is not None:
            timestamps.append(match["t"])
        else:
            signatures.append(match["v1"])
    if len(timestamps) != 1 or not signatures:
        raise WebhookVerificationError(
            f"malformed {SIGNATURE_HEADER} header: it needs one t= and a v1="
        )
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"signed at {timestamp}, more than {tolerance:g}s from now: stale or replayed"
        )
    expected = _digest(secret, body, timestamp)
    # compare_digest for every candidate, so the time taken says nothing about a match.
    if not any([hmac.compare_digest(expected, candidate) for candidate in signatures]):
        raise WebhookVerificationError("signature does not match the body")
    try:
        event = json.loads(body)
    except ValueError as error:
        raise WebhookVerificationError("the signed body is not JSON") from error
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise WebhookVerificationError('the signed body has no "id"')
    if by_name.get(EVENT_HEADER.lower()) != event["id"]:
        raise WebhookVerificationError(f"{EVENT_HEADER} is not the signed event's id")
    return event


def _iso(shown: str) -> str | None:
    """rendering's "2025-03-14 09:26:53 UTC" as RFC 3339 ("2025-03-14T09:26:53Z")."""
    if not shown:
        return None
    at = dt.datetime.strptime(shown, "%Y-%m-%d %H:%M:%S UTC")
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _links(notice: Notice) -> dict[str, str]:
    """The URLs a receiver may follow: the alert's runbook and source only when the link
    policy allows them (else they are in `text`, defanged), the approval links."""
    alert = notice.view.alert
    links = {
        "runbook": alert.runbook.text if alert.runbook and alert.runbook.is_link else "",
        "source": alert.source.text if alert.source and alert.source.is_link else "",
        "approve": notice.approve_url,
        "reject": notice.reject_url,
    }
    return {name: url for name, url in links.items() if url}


def payload_of(notice: Notice, subject: str, text: str) -> dict[str, Any]:
    """The JSON object a receiver gets for `notice`."""
    view: EventView = notice.view
    alert, target = view.alert, view.target
    return {
        "id": notice.key,
        "kind": notice.kind.value,
        "incident_id": view.incident_id,
        "occurred_at": _iso(view.occurred_at),
        "ends_incident": notice.kind.ends_incident,
        "alert": {
            "name": alert.name,
            "status": alert.status,
            "severity": alert.severity,
            "summary": alert.summary,
            "description": alert.description,
            "starts_at": _iso(alert.starts_at),
            "labels": dict(alert.labels),
        },
        "target": {
            "cluster": target.cluster,
            "namespace": target.namespace,
            "kind": target.kind,
            "name": target.name,
        },
        "action": view.action,
        # What the executor's stages say about the change (rendering.Changed).
        "changed": view.changed,
        "stages": list(view.stages),
        "verdict": view.verdict,
        "links": _links(notice),
        "inspect_command": notice.inspect_command,
        "subject": subject,
        "text": text,
    }


class WebhookChannel:
    """POSTs each event, signed, to one URL."""

    def __init__(
        self, name: str, config: WebhookConfig, secret: str, http: httpx.AsyncClient
    ) -> None:
        self._name = name
        self._url = config.url
        self._secret = secret
        self._http = http
        self._template = template_environment(TEMPLATES_DIR / VENDOR).get_template("event.txt")

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return VENDOR

    def destinations(self) -> tuple[str, ...]:
        # Only scheme, host and port: a receiver's user info, path or query may hold a token.
        url = httpx.URL(self._url)
        return (f"{url.scheme}://{url.netloc.decode()}/",)

    def render(self, notice: Notice) -> tuple[str, str]:
        """The one-line subject and the plain text of `notice`."""
        variables = {
            **notice.view.variables(),
            "kind": notice.kind.value,
            "approve_url": notice.approve_url,
            "reject_url": notice.reject_url,
            "inspect_command": notice.inspect_command,
        }
        context = self._template.new_context(variables)
        subject = " ".join("".join(self._template.blocks["subject"](context)).split())
        text = self._template.render(variables).strip("\n") + "\n"
        return subject, cut(text, MAX_TEXT)

    def body(self, notice: Notice) -> bytes:
        """The request body for `notice`: compact UTF-8 JSON, exactly the bytes signed."""
        payload = payload_of(notice, *self.render(notice))
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        body = self.body(notice)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
            EVENT_HEADER: notice.key,
        }
        try:
            # Whatever the client's default: following a redirect would send the signed
            # event to an address the configuration does not name.
            response = await self._http.post(
                self._url, content=body, headers=headers, follow_redirects=False
            )
        except httpx.HTTPError as error:
            return unreachable(VENDOR, error)
        if response.is_redirect:
            # Not followed: the receiver was moved, and the configuration must say where.
            return SendResult(
                False,
                f"{VENDOR} answered {response.status_code}: the receiver moved; "
                "set the channel's url to its new address",
                permanent=True,
            )
        return result_of(response, VENDOR)


def build(name: str, config: WebhookConfig, http: httpx.AsyncClient) -> WebhookChannel:
    """The channel `config` describes; ValueError when its secret file is missing, empty or
    holds a secret too short to resist guessing."""
    secret = read_secret(config.secret_file, f"{name}: secret_file")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{name}: secret_file: the secret in {config.secret_file} is shorter than "
            f"{MIN_SECRET_LENGTH} characters"
        )
    return WebhookChannel(name, config, secret, http)
