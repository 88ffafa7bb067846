"""What every vendor channel implements, and what it gets.

A channel gets one `Notice` (an incident event, rendered) and what it kept for the
incident before (`thread`: the Slack message ts, the Jira issue key, the ServiceNow
sys_id ...), and answers a `SendResult`. It never raises for a vendor's answer: it
reports, saying whether another attempt could succeed (`permanent` for a 4xx caused by
the configuration, `retry_after` for a 429's Retry-After).

Credentials are read from files (mounted Secrets) when the channel is made, never from
the routing file itself and never logged or put in an error message.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from kubernaut.services.notification.rendering import EventView, RenderedMessage


class EventKind(enum.StrEnum):
    """What happened, as routes match it and channels word it."""

    OPENED = "opened"
    ACTION_PLANNED = "action_planned"
    APPROVAL_NEEDED = "approval_needed"
    REMEDIATED = "remediated"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REFUSED = "refused"
    ESCALATED = "escalated"
    STORM = "storm"
    NOT_ACTED_ON = "not_acted_on"
    RESOLVED = "resolved"

    @property
    def ends_incident(self) -> bool:
        """After this event the incident needs nobody: pages resolve, tickets close."""
        return self in (EventKind.REMEDIATED, EventKind.RESOLVED)


@dataclass(frozen=True)
class Notice:
    """One incident event, as every channel gets it."""

    # The event's idempotency key: the same for every retry of the same event.
    key: str
    kind: EventKind
    # Structured: what fired, on what, what was done, the verdict (see rendering.py).
    view: EventView
    # The plain-text rendering (the email template): subject line and body.
    message: RenderedMessage
    # Signed, single-use links that approve or reject the workflow (approval_needed only).
    approve_url: str = ""
    reject_url: str = ""
    # How to look at it from a terminal.
    inspect_command: str = ""

    @property
    def incident_id(self) -> str:
        return self.view.incident_id

    def variables(self) -> dict[str, Any]:
        """What a vendor's templates get: the view's variables, `kind` (an EventKind value),
        approve_url, reject_url and inspect_command."""
        return self.view.variables() | {
            "kind": self.kind.value,
            "approve_url": self.approve_url,
            "reject_url": self.reject_url,
            "inspect_command": self.inspect_command,
        }


@dataclass(frozen=True)
class SendResult:
    delivered: bool
    # Why not (never a credential); empty when delivered.
    error: str = ""
    # The vendor refused the configuration (a 4xx other than 429): no retry will help.
    permanent: bool = False
    # The vendor asked to wait this many seconds (429 Retry-After) before trying again.
    retry_after: float | None = None
    # What to keep for the incident on this channel (merged into `thread` next time).
    thread: Mapping[str, str] = field(default_factory=dict)


class VendorChannel(Protocol):
    """One configured channel of a vendor. `send` reports, never raises."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def destinations(self) -> tuple[str, ...]:
        """Where it sends, for ListChannels (never a credential)."""
        ...

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult: ...


class ChannelConfig(BaseModel):
    """The base of every vendor's config model: unknown keys are errors."""

    # A credential pasted inline (under an unknown key, or instead of a file path) must not
    # be echoed back in the validation error.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def secret_file_path(value: str, holds: str) -> str:
    """A config field naming a credential's file: an absolute path. A relative one is most
    likely the credential itself, pasted inline: refused without echoing it."""
    if not Path(value).is_absolute():
        raise ValueError(
            f"must be the absolute path of a file holding the {holds}, not the {holds}"
        )
    return value


def read_secret(path: str, what: str) -> str:
    """A credential from a file (a mounted Secret), stripped; a clear error naming the
    file (never its content) when it is missing or empty."""
    try:
        value = Path(path).read_text().strip()
    except OSError as error:
        raise ValueError(f"{what}: cannot read {path}: {error.strerror}") from error
    if not value:
        raise ValueError(f"{what}: {path} is empty")
    return value


def retry_after_seconds(response: httpx.Response) -> float | None:
    """A 429's Retry-After in seconds (delta-seconds form; an HTTP date counts as 60)."""
    return retry_after_value(response.headers.get("retry-after", ""))


def retry_after_value(value: str | None) -> float | None:
    """A Retry-After header's value in seconds, for clients other than httpx (as
    retry_after_seconds)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return 60.0
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def result_of(response: httpx.Response, vendor: str, **thread: str) -> SendResult:
    """The SendResult an HTTP answer means: 2xx delivered; 429 and 5xx to retry (with
    Retry-After); any other 4xx permanent (the configuration is wrong). The error names the
    status and the vendor's short reason, never the request."""
    status = response.status_code
    if 200 <= status < 300:
        return SendResult(True, thread=thread)
    reason = response.text[:200].replace("\n", " ")
    error = f"{vendor} answered {status}: {reason}"
    if status == 429:
        return SendResult(False, error, retry_after=retry_after_seconds(response))
    if 400 <= status < 500:
        return SendResult(False, error, permanent=True)
    return SendResult(False, error)


def unreachable(vendor: str, error: httpx.HTTPError) -> SendResult:
    """The SendResult of a request that got no answer (connection refused, time-out, TLS
    failure): worth another attempt. It names only the error's type, because its text can
    hold the URL and a URL can hold a credential (a webhook's token)."""
    return SendResult(False, f"{vendor}: no answer ({type(error).__name__})")


def https_url(value: str, what: str) -> str:
    """`value` without trailing slashes if it is an https URL with a host (plain http only to
    a loopback host: tests, a local relay); else a ValueError naming `what`, never the URL
    (a webhook URL is a credential)."""
    try:
        url = httpx.URL(value.strip())
    except httpx.InvalidURL:
        raise ValueError(f"{what}: not a URL") from None
    loopback = url.host in ("localhost", "127.0.0.1", "::1")
    if not url.host or not (url.scheme == "https" or (url.scheme == "http" and loopback)):
        raise ValueError(f"{what}: not an https URL (plain http only to a loopback host)")
    return str(url).rstrip("/")


def cut(text: str, limit: int, marker: str = "…") -> str:
    """`text` cut to at most `limit` characters, with a marker where it was cut."""
    return text if len(text) <= limit else text[: max(0, limit - len(marker))] + marker
