"""The notification service's settings: its channels (KUBERNAUT_NOTIFICATION_*), its
outbox's database and the outbox's redelivery (KUBERNAUT_NOTIFICATION_REDELIVERY_*)."""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubernaut.runtime.chat_approvals import LinkSigner, read_link_secret
from kubernaut.runtime.settings import OptionalDatabaseUrl, database_url_field
from kubernaut.services.notification.links import check_host_pattern


@dataclass(frozen=True, slots=True)
class RedeliveryPolicy:
    """Which undelivered messages are attempted again, and when."""

    # Pending longer than this means the attempt was cut short (it holds its row's lock
    # while it delivers, for at most the lock timeout).
    stale_pending_seconds: float
    first_backoff_seconds: float
    max_backoff_seconds: float
    max_attempts: int
    max_age_seconds: float


class NotificationSettings(BaseSettings):
    """Channel configuration, read from `KUBERNAUT_NOTIFICATION_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="KUBERNAUT_NOTIFICATION_",
        frozen=True,
        # Other KUBERNAUT_NOTIFICATION_* variables (ports, TLS) belong to the service.
        extra="ignore",
    )

    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "kubernaut@localhost"
    # NoDecode: the variable is a plain comma-separated list, not JSON.
    email_to: Annotated[tuple[str, ...], NoDecode] = ()
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # Hosts whose URLs in an alert (runbook_url, generator URL, URLs in the text) are shown
    # as links: "host" exactly, "*.domain" its subdomains. Comma-separated; empty: none,
    # because an alert's annotations are written by whoever can send alerts.
    link_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # The routing file (YAML: channels and the routing tree; README: Notifications), e.g. a
    # mounted ConfigMap. Empty: every incident event goes to KUBERNAUT_NOTIFICATION_EMAIL_TO.
    routes_file: Path | None = None
    # How long one call to a vendor's API (Slack, PagerDuty ...) may take.
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    # Signed approve/reject links in approval requests (every channel but Slack's buttons):
    # the secret they are signed with (a file, the same as the edge's
    # KUBERNAUT_HTTP_APPROVAL_LINK_SECRET_FILE; at least 32 bytes) and the edge's public URL
    # (https://kubernaut.example.com). Both or neither; neither: no links.
    approval_link_secret_file: Path | None = None
    approval_link_base_url: str = ""
    # How long a link works. An approval nobody gives expires on its own
    # (KUBERNAUT_WORKFLOW_APPROVAL_TIMEOUT_SECONDS) whatever this says.
    approval_link_ttl_seconds: float = Field(default=12 * 3600.0, gt=0)

    @field_validator("email_to", "link_hosts", mode="before")
    @classmethod
    def _split_recipients(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, Iterable):
            # Blanks are dropped so "a@x, ,b@x," and an empty variable both work.
            return tuple(s for item in value if (s := str(item).strip()))
        return value

    @model_validator(mode="after")
    def _links_pair(self) -> NotificationSettings:
        if (self.approval_link_secret_file is None) != (not self.approval_link_base_url):
            raise ValueError(
                "KUBERNAUT_NOTIFICATION_APPROVAL_LINK_SECRET_FILE and"
                " KUBERNAUT_NOTIFICATION_APPROVAL_LINK_BASE_URL go together"
            )
        if self.approval_link_base_url:
            url = urlsplit(self.approval_link_base_url)
            if url.scheme not in ("https", "http") or not url.hostname:
                raise ValueError(
                    "KUBERNAUT_NOTIFICATION_APPROVAL_LINK_BASE_URL: not an http(s) URL:"
                    f" {self.approval_link_base_url!r}"
                )
        return self

    def link_signer(self) -> LinkSigner | None:
        """The signer of approval links, its secret read now (ValueError naming the file);
        None without links."""
        if self.approval_link_secret_file is None:
            return None
        return LinkSigner(
            read_link_secret(self.approval_link_secret_file),
            self.approval_link_base_url,
            self.approval_link_ttl_seconds,
        )

    @field_validator("link_hosts")
    @classmethod
    def _check_link_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_host_pattern(host) for host in value)

    @field_validator("email_to")
    @classmethod
    def _check_recipients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if "@" not in email.utils.parseaddr(address)[1]:
                raise ValueError(f"not an email address: {address!r}")
        return value


class OutboxSettings(BaseSettings):
    """Where the outbox lives: `KUBERNAUT_NOTIFICATION_DATABASE_URL`, else the shared
    `KUBERNAUT_DATABASE_URL` (the service uses only its own schema there). Unset means no
    outbox: NotifyIncidentEvent answers FAILED_PRECONDITION."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    database_url: OptionalDatabaseUrl = database_url_field("NOTIFICATION", default=None)


class RedeliverySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KUBERNAUT_NOTIFICATION_REDELIVERY_", frozen=True, extra="ignore"
    )

    # How often the outbox is swept; 0 turns redelivery off.
    interval_seconds: float = Field(default=30.0, ge=0)
    first_backoff_seconds: float = Field(default=60.0, ge=0)
    max_backoff_seconds: float = Field(default=1800.0, ge=0)
    max_attempts: int = Field(default=12, ge=1)
    max_age_seconds: float = Field(default=24 * 3600.0, gt=0)
    # Messages attempted per sweep, one after the other.
    batch: int = Field(default=50, ge=1)
    # A message pending this long was left by an attempt cut short. Longer than the
    # outbox's lock timeout, which bounds an attempt in progress.
    stale_pending_seconds: float = Field(default=300.0, gt=0)

    def policy(self) -> RedeliveryPolicy:
        return RedeliveryPolicy(
            stale_pending_seconds=self.stale_pending_seconds,
            first_backoff_seconds=self.first_backoff_seconds,
            max_backoff_seconds=self.max_backoff_seconds,
            max_attempts=self.max_attempts,
            max_age_seconds=self.max_age_seconds,
        )
