"""PagerDuty through the Events API v2 (POST <url>/v2/enqueue).

One PagerDuty alert per incident: every event but the incident's end is a "trigger" with
the incident id as dedup_key (a repeat trigger with the same key updates the open alert),
and the end (remediated, resolved) is a "resolve" with the same key, sent once, and only
for a page this channel triggered. Kubernaut never sends
"acknowledge": that is for the person who took the page.

The integration (routing) key is read from a file; it travels only in the request body
and is never logged or put in an error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import httpx
from pydantic import Field, field_validator

from kubernaut.services.notification.rendering import EventView, template_environment
from kubernaut.services.notification.vendors.base import (
    ChannelConfig,
    Notice,
    SendResult,
    cut,
    https_url,
    read_secret,
    result_of,
    secret_file_path,
    unreachable,
)

__all__ = ["PagerDutyChannel", "PagerDutyConfig", "build", "event_of", "summary_of"]

VENDOR: Final = "pagerduty"
# What the channel keeps of the incident's page besides its dedup_key: whether it is open.
PAGE: Final = "page"
TRIGGERED: Final = "triggered"
RESOLVED: Final = "resolved"
TEMPLATES_DIR: Final = Path(__file__).parent.parent / "templates" / "pagerduty"
# The documented limits: payload.summary 1024 characters, dedup_key 255.
MAX_SUMMARY: Final = 1024
MAX_DEDUP_KEY: Final = 255
# What one custom_details text may take (the whole event must stay under 512 KB).
MAX_DETAIL: Final = 4000
MAX_STAGES: Final = 100
# PagerDuty sends no Retry-After with a 429; its rate-limit guide suggests retrying about
# 30 seconds apart.
RATE_LIMITED_RETRY_AFTER: Final = 30.0
SEVERITIES: Final = ("critical", "error", "warning", "info")
# AlertManager's usual severity labels that are not PagerDuty's words.
_SEVERITY_ALIASES: Final = {"warn": "warning", "none": "info", "page": "critical"}
DEFAULT_SEVERITY: Final = "error"


class PagerDutyConfig(ChannelConfig):
    """A PagerDuty channel in the routing file."""

    type: Literal["pagerduty"]
    url: str = Field(
        default="https://events.pagerduty.com",
        description="The Events API base URL (https://events.eu.pagerduty.com for EU accounts).",
    )
    routing_key_file: str = Field(
        description="A file (a mounted Secret) holding the Events API v2 integration key."
    )
    service: str = Field(
        default="",
        description="The PagerDuty service the key routes to, as ListChannels shows it.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return https_url(value, "url")

    @field_validator("routing_key_file")
    @classmethod
    def _file(cls, value: str) -> str:
        return secret_file_path(value, "key")


def severity_of(label: str) -> str:
    """PagerDuty's severity for an alert's severity label; "error" when it has none we know."""
    value = label.strip().lower()
    value = _SEVERITY_ALIASES.get(value, value)
    return value if value in SEVERITIES else DEFAULT_SEVERITY


_summary_template = template_environment(TEMPLATES_DIR).get_template("summary.txt")


def summary_of(notice: Notice) -> str:
    """payload.summary: one line saying what happened and what Kubernaut did or wants."""
    text = _summary_template.render(notice.view.variables(), kind=notice.kind.value)
    return cut(" ".join(text.split()), MAX_SUMMARY)


def _timestamp(view: EventView) -> str:
    """The event's time as ISO 8601 ('' when unknown): the view shows it as text."""
    try:
        at = dt.datetime.strptime(view.occurred_at, "%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return ""  # optional: PagerDuty then uses the time it received the event
    return at.replace(tzinfo=dt.UTC).isoformat()


def _links(notice: Notice) -> list[dict[str, str]]:
    """Runbook and source when they may be links (their host is allowed); the signed
    approve/reject links when the workflow waits for a decision."""
    alert = notice.view.alert
    links = []
    if alert.runbook is not None and alert.runbook.is_link:
        links.append({"href": alert.runbook.text, "text": "Runbook"})
    if alert.source is not None and alert.source.is_link:
        links.append({"href": alert.source.text, "text": "Source (the alert's generator)"})
    if notice.approve_url:
        links.append({"href": notice.approve_url, "text": "Approve in Kubernaut"})
    if notice.reject_url:
        links.append({"href": notice.reject_url, "text": "Reject in Kubernaut"})
    return links


def _custom_details(notice: Notice) -> dict[str, Any]:
    view = notice.view
    alert = view.alert
    details: dict[str, Any] = {
        "incident": view.incident_id,
        "event": notice.kind.value,
        "alert": alert.name,
        "alert status": alert.status,
        "alert summary": cut(alert.summary, MAX_DETAIL),
        "alert description": cut(alert.description, MAX_DETAIL),
        "target": view.target.ref,
        "cluster": view.target.cluster,
        "action": view.action,
        "stages": [cut(stage, MAX_DETAIL) for stage in view.stages[:MAX_STAGES]],
        "verdict": view.verdict,
        "what changed": view.changed,
        "inspect": notice.inspect_command,
        "labels": {key: cut(value, MAX_DETAIL) for key, value in alert.labels},
    }
    # A URL that may not be a link is still worth reading, defanged.
    for what, url in (("runbook", alert.runbook), ("alert source", alert.source)):
        if url is not None:
            details[what] = url.text
    return {key: value for key, value in details.items() if value not in ("", [], {})}


def event_of(notice: Notice, routing_key: str, dedup_key: str) -> dict[str, Any]:
    """The Events API v2 body for `notice`."""
    if notice.kind.ends_incident:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}
    view = notice.view
    payload: dict[str, Any] = {
        "summary": summary_of(notice),
        "source": view.target.cluster or "kubernaut",
        "severity": severity_of(view.alert.severity),
        "component": view.target.ref,
        "group": view.target.namespace,
        "class": view.alert.name,
        "timestamp": _timestamp(view),
        "custom_details": _custom_details(notice),
    }
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        # Optional fields go only when they say something.
        "payload": {key: value for key, value in payload.items() if value},
        "client": "Kubernaut",
    }
    links = _links(notice)
    if links:
        event["links"] = links
    return event


def _answered(response: httpx.Response, dedup_key: str) -> SendResult:
    if response.is_success:  # 202 "Event processed"
        try:
            answered = response.json().get("dedup_key") or dedup_key
        except (ValueError, AttributeError):
            answered = dedup_key
        return SendResult(True, thread={"dedup_key": str(answered)})
    result = result_of(response, VENDOR)
    if response.status_code == 400:
        # {"status": "invalid event", "message": ..., "errors": [...]}: say what was wrong.
        try:
            body = response.json()
            reason = f"{body.get('message', '')} {json.dumps(body.get('errors', []))}"
        except (ValueError, AttributeError):
            reason = response.text[:200]
        result = dataclasses.replace(result, error=f"{VENDOR} answered 400: {reason[:500]}")
    if response.status_code == 429 and result.retry_after is None:
        result = dataclasses.replace(result, retry_after=RATE_LIMITED_RETRY_AFTER)
    return result


class PagerDutyChannel:
    """One Events API v2 integration."""

    kind = VENDOR

    def __init__(
        self, name: str, config: PagerDutyConfig, routing_key: str, http: httpx.AsyncClient
    ) -> None:
        self._name = name
        self._config = config
        self._routing_key = routing_key
        self._endpoint = f"{config.url}/v2/enqueue"
        self._http = http

    @property
    def name(self) -> str:
        return self._name

    def destinations(self) -> tuple[str, ...]:
        return (
            self._config.service or f"PagerDuty Events API v2 ({httpx.URL(self._config.url).host})",
        )

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        dedup_key = thread.get("dedup_key") or notice.incident_id[:MAX_DEDUP_KEY]
        if notice.kind.ends_incident and thread.get(PAGE) != TRIGGERED:
            # Nothing of this incident is open at PagerDuty (never paged, or resolved
            # already: remediated, then the alert's own resolution): nothing to resolve.
            return SendResult(True, thread=dict(thread))
        event = event_of(notice, self._routing_key, dedup_key)
        try:
            response = await self._http.post(self._endpoint, json=event)
        except httpx.HTTPError as error:
            return unreachable(VENDOR, error)
        result = _answered(response, dedup_key)
        if result.delivered:
            page = RESOLVED if notice.kind.ends_incident else TRIGGERED
            result = dataclasses.replace(result, thread={**result.thread, PAGE: page})
        # The key is in the request only, but an error text is never trusted with it.
        return dataclasses.replace(
            result, error=result.error.replace(self._routing_key, "[routing key]")
        )


def build(name: str, config: PagerDutyConfig, http: httpx.AsyncClient) -> PagerDutyChannel:
    routing_key = read_secret(config.routing_key_file, "routing_key_file")
    if len(routing_key) != 32 or not routing_key.isalnum():
        # The documented shape: 32 characters. Say so without the key.
        raise ValueError(
            f"routing_key_file: {config.routing_key_file} does not hold an Events API v2 "
            "integration key (32 letters and digits)"
        )
    return PagerDutyChannel(name, config, routing_key, http)
