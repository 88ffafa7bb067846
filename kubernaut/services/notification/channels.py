"""Notification channels: configuration, the email channel and the notifier.

Plain logic with no gRPC in it, so the servicer only maps messages and errors
and the tests can drive delivery against a real SMTP server.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from kubernaut.services.notification.settings import NotificationSettings

__all__ = [
    "EMAIL_CHANNEL_NAME",
    "INCIDENT_HEADER",
    "Channel",
    "ChannelInfo",
    "ChannelKind",
    "DeliveryOutcome",
    "DeliveryRecorder",
    "EmailChannel",
    "NoChannelConfigured",
    "NotificationError",
    "Notifier",
    "RetryPolicy",
    "UnknownChannel",
    "incident_thread_root",
]

log = logging.getLogger(__name__)

EMAIL_CHANNEL_NAME = "email"
INCIDENT_HEADER = "X-Kubernaut-Incident"


class ChannelKind(enum.StrEnum):
    """Mirrors the proto's ChannelKind without importing generated code here."""

    EMAIL = "email"


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    name: str
    kind: ChannelKind
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    channel: str
    delivered: bool
    # Empty when delivered cleanly; the proto uses "" for "not set".
    error: str = ""


class NotificationError(Exception):
    """Base for the errors `Notifier.send` raises before sending anything."""


class UnknownChannel(NotificationError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown notification channel: {name!r}")
        self.name = name


class NoChannelConfigured(NotificationError):
    def __init__(self) -> None:
        super().__init__("no notification channel is configured")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and exponential backoff for transient delivery errors."""

    attempts: int = 3
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError("backoff must not be negative")

    def backoff(self, failed_attempts: int) -> float:
        """Delay before the next attempt, after `failed_attempts` (>= 1) failures."""
        delay = self.initial_backoff_seconds * 2 ** (failed_attempts - 1)
        return float(min(delay, self.max_backoff_seconds))


class Channel(Protocol):
    """What the notifier needs of a channel. `deliver` must report, never raise."""

    @property
    def name(self) -> str: ...

    def info(self) -> ChannelInfo: ...

    async def deliver(self, subject: str, body: str, incident_id: str) -> DeliveryOutcome: ...


_LINE_BREAKS = re.compile(r"[\r\n]+\s*")


def _one_line(text: str) -> str:
    # Header values must not contain CR/LF (the email package refuses them, and
    # they would allow header injection); alert titles sometimes carry newlines.
    return _LINE_BREAKS.sub(" ", text).strip()


def _response_code(exc: BaseException) -> int | None:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        # Every recipient was refused; retrying helps if any refusal was temporary.
        codes = [r.code for r in exc.recipients]
        return min((c for c in codes if 400 <= c < 500), default=max(codes, default=None))
    return None


def _is_transient(exc: BaseException) -> bool:
    code = _response_code(exc)
    if code is not None:
        # RFC 5321: 4yz is "try again later", 5yz is permanent.
        return 400 <= code < 500
    # Refused or dropped connections and timeouts: the server may be restarting.
    # SMTPNotSupported, auth without server support, bad input: permanent.
    return isinstance(
        exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | TimeoutError
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "all recipients refused: " + "; ".join(
            f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    return str(exc) or type(exc).__name__


_MESSAGE_ID_SAFE = re.compile(r"[A-Za-z0-9-]{1,64}")


def incident_thread_root(incident_id: str, domain: str) -> str:
    """The Message-ID every email about `incident_id` refers to (In-Reply-To, References):
    the same for the incident on every send; an id that is not safe in a Message-ID is
    hashed."""
    local = (
        incident_id
        if _MESSAGE_ID_SAFE.fullmatch(incident_id)
        else hashlib.sha256(incident_id.encode()).hexdigest()[:32]
    )
    return f"<incident-{local}@{domain}>"


class EmailChannel:
    """Sends each notification as one plain-text email to a fixed list of recipients."""

    kind = ChannelKind.EMAIL

    def __init__(
        self,
        settings: NotificationSettings,
        *,
        name: str = EMAIL_CHANNEL_NAME,
        recipients: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._settings = settings
        self._name = name
        self._recipients = tuple(settings.email_to if recipients is None else recipients)
        if not self._recipients:
            raise ValueError(f"email channel {name!r} has no recipients")
        self._retry = retry or RetryPolicy()
        self._sender = email.utils.parseaddr(settings.smtp_from)[1] or settings.smtp_from
        # Message-ID domain from our own address: make_msgid would otherwise call
        # socket.getfqdn(), which can block on DNS.
        self._msgid_domain = self._sender.rpartition("@")[2] or "localhost"
        self._server = f"{settings.smtp_host}:{settings.smtp_port}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def recipients(self) -> tuple[str, ...]:
        return self._recipients

    def info(self) -> ChannelInfo:
        return ChannelInfo(name=self._name, kind=self.kind, destinations=self._recipients)

    def build_message(self, subject: str, body: str, incident_id: str) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = _one_line(subject)
        message["From"] = self._settings.smtp_from
        message["To"] = ", ".join(self._recipients)
        message["Date"] = email.utils.formatdate(usegmt=True)
        message["Message-ID"] = email.utils.make_msgid(domain=self._msgid_domain)
        incident = _one_line(incident_id)
        if incident:
            message[INCIDENT_HEADER] = incident
            # Every email about one incident replies to the same (never sent) root message,
            # so that mail clients show an incident's emails as one thread.
            root = incident_thread_root(incident, self._msgid_domain)
            message["In-Reply-To"] = root
            message["References"] = root
        message.set_content(body)
        return message

    async def deliver(self, subject: str, body: str, incident_id: str) -> DeliveryOutcome:
        try:
            message = self.build_message(subject, body, incident_id)
        except Exception as exc:  # a malformed header value: report it, do not crash
            return self._failed(f"could not build the message: {exc}", incident_id)

        attempt = 0
        while True:
            attempt += 1
            try:
                refused = await self._send_once(message)
            except Exception as exc:  # reported in the outcome, by contract never raised
                transient = _is_transient(exc)
                if transient and attempt < self._retry.attempts:
                    delay = self._retry.backoff(attempt)
                    log.info(
                        "email channel %s: attempt %d to %s failed (%s); retrying in %.2fs",
                        self._name,
                        attempt,
                        self._server,
                        _describe(exc),
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                kind = "" if transient else "permanent error, not retried; "
                return self._failed(
                    f"SMTP {self._server}: {_describe(exc)} "
                    f"({kind}{attempt} attempt{'s' if attempt > 1 else ''})",
                    incident_id,
                )
            if refused:
                # Some recipients accepted it: report delivered (a retry would send
                # duplicates to them) but say who was refused.
                detail = "; ".join(
                    f"{addr}: {resp.code} {resp.message}" for addr, resp in sorted(refused.items())
                )
                error = f"SMTP {self._server}: some recipients refused: {detail}"
                log.warning("email channel %s: %s", self._name, error)
                return DeliveryOutcome(channel=self._name, delivered=True, error=error)
            log.info(
                "email channel %s: delivered to %d recipient(s) via %s (incident %s)",
                self._name,
                len(self._recipients),
                self._server,
                incident_id or "-",
            )
            return DeliveryOutcome(channel=self._name, delivered=True)

    async def _send_once(self, message: EmailMessage) -> dict[str, aiosmtplib.SMTPResponse]:
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        refused, _ = await aiosmtplib.send(
            message,
            sender=self._sender,
            recipients=list(self._recipients),
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            timeout=settings.smtp_timeout_seconds,
            # Explicit: aiosmtplib's default (None) upgrades whenever the server offers it.
            start_tls=settings.smtp_starttls,
        )
        return refused

    def _failed(self, error: str, incident_id: str) -> DeliveryOutcome:
        log.warning(
            "email channel %s: not delivered (incident %s): %s",
            self._name,
            incident_id or "-",
            error,
        )
        return DeliveryOutcome(channel=self._name, delivered=False, error=error)


class DeliveryRecorder(Protocol):
    """Puts each delivery on the audit trail (kubernaut.runtime.audit.AuditTrail)."""

    async def record_delivery(
        self,
        channel_kind: str,
        recipients: int,
        incident_id: str,
        content_digest: str,
        delivered: bool,
        error: str = "",
    ) -> None: ...


def content_digest(subject: str, body: str) -> str:
    """sha256 (hex) of what was sent, subject and body: on the audit trail instead of the
    text itself."""
    return hashlib.sha256(f"{subject}\n\n{body}".encode()).hexdigest()


class Notifier:
    """Holds the configured channels and sends one notification on some or all of them."""

    def __init__(
        self, channels: Sequence[Channel], recorder: DeliveryRecorder | None = None
    ) -> None:
        # Each delivery (made or failed) goes on the audit trail; None records nothing.
        self._recorder = recorder
        self._channels: dict[str, Channel] = {}
        for channel in channels:
            if channel.name in self._channels:
                raise ValueError(f"duplicate channel name: {channel.name!r}")
            self._channels[channel.name] = channel

    @classmethod
    def from_settings(
        cls,
        settings: NotificationSettings,
        *,
        retry: RetryPolicy | None = None,
        recorder: DeliveryRecorder | None = None,
        also: Sequence[Channel] = (),
    ) -> Notifier:
        """The channels the settings configure, and `also` (the routing file's email
        channels) under names not taken already."""
        channels: list[Channel] = []
        if settings.email_to:
            channels.append(EmailChannel(settings, retry=retry))
        for channel in also:
            if channel.name not in {c.name for c in channels}:
                channels.append(channel)
        return cls(channels, recorder)

    def channels(self) -> list[ChannelInfo]:
        return [channel.info() for channel in self._channels.values()]

    async def send(
        self, subject: str, body: str, channel_names: Sequence[str], incident_id: str = ""
    ) -> list[DeliveryOutcome]:
        """Deliver on the named channels, or all when none is named; one outcome each.

        Raises NoChannelConfigured or UnknownChannel before anything is sent;
        delivery failures are reported in the outcomes instead.
        """
        if not self._channels:
            raise NoChannelConfigured()
        # Validate every name first so a typo never leaves a half-sent notification.
        for name in channel_names:
            if name not in self._channels:
                raise UnknownChannel(name)
        names = list(dict.fromkeys(channel_names)) or list(self._channels)
        targets = [self._channels[name] for name in names]
        return list(
            await asyncio.gather(
                *(self._deliver(channel, subject, body, incident_id) for channel in targets)
            )
        )

    async def _deliver(
        self, channel: Channel, subject: str, body: str, incident_id: str
    ) -> DeliveryOutcome:
        try:
            outcome = await channel.deliver(subject, body, incident_id)
        except Exception as exc:  # a channel broke its contract; keep the others going
            log.exception("channel %s raised while delivering", channel.name)
            outcome = DeliveryOutcome(
                channel=channel.name, delivered=False, error=f"internal error: {exc}"
            )
        if self._recorder is not None:
            info = channel.info()
            await self._recorder.record_delivery(
                info.kind.value,
                len(info.destinations),
                incident_id,
                content_digest(subject, body),
                outcome.delivered,
                outcome.error,
            )
        return outcome
