"""Email as a routed channel: the SMTP server is the service's (KUBERNAUT_NOTIFICATION_SMTP_*),
the recipients are the channel's own."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from typing import Literal

import httpx
from pydantic import field_validator

from kubernaut.services.notification.channels import EmailChannel
from kubernaut.services.notification.settings import NotificationSettings
from kubernaut.services.notification.vendors.base import ChannelConfig, Notice, SendResult


class EmailConfig(ChannelConfig):
    type: Literal["email"]
    to: tuple[str, ...]

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one recipient")
        for address in value:
            if "@" not in email.utils.parseaddr(address)[1]:
                raise ValueError(f"not an email address: {address!r}")
        return value


class EmailVendorChannel:
    """An EmailChannel behind the vendor interface: the event's plain-text rendering."""

    kind = "email"

    def __init__(self, channel: EmailChannel) -> None:
        self._channel = channel

    @property
    def email(self) -> EmailChannel:
        """The plain email channel (SendNotification sends free text on it)."""
        return self._channel

    @property
    def name(self) -> str:
        return self._channel.name

    def destinations(self) -> tuple[str, ...]:
        return self._channel.recipients

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        outcome = await self._channel.deliver(
            notice.message.subject, with_decision_links(notice), notice.incident_id
        )
        return SendResult(outcome.delivered, outcome.error)


def with_decision_links(notice: Notice) -> str:
    """The body, and an approval request's signed links after it (made per channel when
    sent, so not part of the one rendering every channel shares)."""
    body = notice.message.body
    if not (notice.approve_url and notice.reject_url):
        return body
    return (
        f"{body}\nDecide in a browser (signed links; each decides once, then expires):\n"
        f"  Approve: {notice.approve_url}\n  Reject:  {notice.reject_url}\n"
    )


def build(
    name: str,
    config: EmailConfig,
    http: httpx.AsyncClient,
    smtp: NotificationSettings | None = None,
) -> EmailVendorChannel:
    """`smtp`: the service's SMTP settings, read once at start (the routing loader passes
    them)."""
    settings = smtp or NotificationSettings()
    return EmailVendorChannel(EmailChannel(settings, name=name, recipients=config.to))
