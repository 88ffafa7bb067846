"""Microsoft Teams through a Workflows ("When a Teams webhook request is received") or
incoming-webhook URL: one Adaptive Card (version 1.4) per event.

The URL is the credential (its `sig` signs the request), so it is read from a file, never
shown by ListChannels, never put in an error, and redacted from httpx's request log.
A webhook cannot reply to or update an earlier message: every event is a new card, and
nothing is kept in `thread`.

Teams reads a card's texts as Markdown; everything that comes from the alert or the
workflow has its Markdown characters escaped, so it shows as it is and makes no links.
Links are card actions: approve/reject (signed by Kubernaut) and the runbook and source
when their host may be a link.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import httpx
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import Field, field_validator

from kubernaut.services.notification.rendering import plain_text, template_environment
from kubernaut.services.notification.vendors.base import (
    ChannelConfig,
    EventKind,
    Notice,
    SendResult,
    cut,
    https_url,
    read_secret,
    result_of,
    secret_file_path,
    unreachable,
)

__all__ = ["TeamsChannel", "TeamsConfig", "build", "card_of", "markdown_text", "message_of"]

VENDOR: Final = "teams"
TEMPLATES_DIR: Final = Path(__file__).parent.parent / "templates" / "teams"
CARD_CONTENT_TYPE: Final = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA: Final = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION: Final = "1.4"
# Teams refuses a message over about 28 KB; what we send stays under this many bytes (of
# the JSON as sent, non-ASCII escaped, so the count cannot grow in another encoding).
MAX_MESSAGE_BYTES: Final = 27_000
# First cuts, before the whole card is fitted.
MAX_TITLE: Final = 300
MAX_PARAGRAPH: Final = 3000
MAX_FACT: Final = 1000
MAX_STAGES: Final = 100
# Below this a text is not cut further while fitting (a card of only markers helps nobody).
MIN_FITTED: Final = 40

_TITLE_COLORS: Final = {
    EventKind.APPROVAL_NEEDED: "Warning",
    EventKind.ACTION_PLANNED: "Warning",
    EventKind.REMEDIATED: "Good",
    EventKind.RESOLVED: "Good",
    EventKind.FAILED: "Attention",
    EventKind.ROLLED_BACK: "Attention",
    EventKind.ESCALATED: "Attention",
    EventKind.STORM: "Attention",
    EventKind.REFUSED: "Attention",
    EventKind.NOT_ACTED_ON: "Attention",
}

# What Adaptive Cards' Markdown acts on: emphasis (* _), links ([text](url): with the
# brackets escaped no link can form) and the backslash itself; list markers only at the
# start of a line.
_MARKDOWN: Final = re.compile(r"([\\*_\[\]])")
_LIST_MARKER: Final = re.compile(r"(?m)^(\s*)([-+]|\d+\.)(?=\s)")


def _unlisted(match: re.Match[str]) -> str:
    """A list marker escaped: "\\-", "\\+", "1\\."."""
    indent, marker = match.groups()
    return indent + (marker[:-1] + "\\." if marker.endswith(".") else "\\" + marker)


def markdown_text(value: object) -> str:
    """`value` as text Teams shows as it is: plain_text, Markdown characters escaped, and
    each line break doubled (Markdown joins single ones)."""
    text = _MARKDOWN.sub(r"\\\1", plain_text(value))
    text = _LIST_MARKER.sub(_unlisted, text)
    return text.replace("\n", "\n\n")


def _environment() -> ImmutableSandboxedEnvironment:
    env = template_environment(TEMPLATES_DIR)
    # Every value a template prints is data: plain_text, then Markdown-escaped.
    env.finalize = markdown_text
    return env


_env = _environment()
_title = _env.get_template("title.txt")
_headline = _env.get_template("headline.txt")


class TeamsConfig(ChannelConfig):
    """A Microsoft Teams channel in the routing file."""

    type: Literal["teams"]
    webhook_url_file: str = Field(
        description="A file (a mounted Secret) holding the workflow's or webhook's URL."
    )
    channel: str = Field(
        default="", description="Where the workflow posts (team and channel), for ListChannels."
    )

    @field_validator("webhook_url_file")
    @classmethod
    def _file(cls, value: str) -> str:
        return secret_file_path(value, "URL")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def _heading(text: str) -> dict[str, Any]:
    return _text(text, weight="Bolder", spacing="Medium")


def _facts(notice: Notice) -> list[dict[str, str]]:
    view = notice.view
    alert = view.alert
    facts = [
        ("Alert", f"{alert.name} ({alert.status})"),
        ("Severity", alert.severity or "unknown"),
        ("Summary", alert.summary),
        ("Target", view.target.ref),
        ("Cluster", view.target.cluster),
        ("Action", view.action),
        ("Verdict", view.verdict),
        ("Started at", alert.starts_at),
        ("Incident", view.incident_id),
        ("When", view.occurred_at),
    ]
    # Shown as text (defanged) when its host may not be a link; else it is an action.
    for what, url in (("Runbook", alert.runbook), ("Source", alert.source)):
        if url is not None and not url.is_link:
            facts.append((what, f"{url.text} (not a link: {url.why_not})"))
    return [
        {"title": title, "value": cut(markdown_text(value), MAX_FACT)}
        for title, value in facts
        if value
    ]


def _actions(notice: Notice) -> list[dict[str, Any]]:
    alert = notice.view.alert
    actions: list[dict[str, Any]] = []
    if notice.approve_url:
        actions.append(_open("Approve", notice.approve_url, style="positive"))
    if notice.reject_url:
        actions.append(_open("Reject", notice.reject_url, style="destructive"))
    if alert.runbook is not None and alert.runbook.is_link:
        actions.append(_open("Runbook", alert.runbook.text))
    if alert.source is not None and alert.source.is_link:
        actions.append(_open("Source", alert.source.text))
    return actions


def _open(title: str, url: str, **style: str) -> dict[str, Any]:
    return {"type": "Action.OpenUrl", "title": title, "url": url, **style}


def card_of(notice: Notice) -> dict[str, Any]:
    """The Adaptive Card for `notice`, each text cut to its first limit."""
    view = notice.view
    variables = {**view.variables(), "kind": notice.kind.value}
    body: list[dict[str, Any]] = [
        _text(
            cut(_one_line(_title.render(variables)), MAX_TITLE),
            size="Medium",
            weight="Bolder",
            color=_TITLE_COLORS.get(notice.kind, "Default"),
        ),
        _text(cut(_one_line(_headline.render(variables)), MAX_PARAGRAPH)),
        {"type": "FactSet", "facts": _facts(notice)},
    ]
    if view.alert.description:
        body += [
            _heading("Description"),
            _text(cut(markdown_text(view.alert.description), MAX_PARAGRAPH)),
        ]
    stages = "\n".join(f"• {stage}" for stage in view.stages[:MAX_STAGES])
    body += [
        _heading("What was done"),
        _text(cut(markdown_text(stages), MAX_PARAGRAPH) if stages else "Nothing yet."),
    ]
    if view.alert.labels:
        labels = "\n".join(f"{key}={value}" for key, value in view.alert.labels)
        body += [
            _heading("Labels"),
            _text(cut(markdown_text(labels), MAX_PARAGRAPH), isSubtle=True),
        ]
    if notice.inspect_command:
        body += [
            _heading("Inspect"),
            _text(cut(markdown_text(notice.inspect_command), MAX_PARAGRAPH), fontType="Monospace"),
        ]
    card: dict[str, Any] = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
        "msteams": {"width": "Full"},
    }
    actions = _actions(notice)
    if actions:
        card["actions"] = actions
    return card


def _encoded(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def _texts(card: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Where the card's texts are: (TextBlock, "text") and (fact, "value") pairs."""
    body = card["body"]
    texts = [(block, "text") for block in body if block["type"] == "TextBlock"]
    facts = [block["facts"] for block in body if block["type"] == "FactSet"]
    return texts + [(fact, "value") for group in facts for fact in group]


def message_of(notice: Notice) -> bytes:
    """The request body: the card in a message, its longest text halved until the whole is
    under MAX_MESSAGE_BYTES."""
    card = card_of(notice)
    message = {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}],
    }
    encoded = _encoded(message)
    while len(encoded) > MAX_MESSAGE_BYTES:
        holder, key = max(_texts(card), key=lambda where: len(where[0][where[1]]))
        longest = len(holder[key])
        if longest <= MIN_FITTED:
            break  # nothing left worth cutting; Teams will say it is too large
        holder[key] = cut(holder[key], max(MIN_FITTED, longest // 2))
        encoded = _encoded(message)
    return encoded


class _RedactUrls(logging.Filter):
    """Rewrites httpx's request log lines ("HTTP Request: POST <url> ...") so that no
    webhook URL (a credential) reaches a log."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            redacted = message
            for secret in self.secrets:
                redacted = redacted.replace(secret, "[teams webhook URL]")
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


_redact = _RedactUrls()


class TeamsChannel:
    """One Teams workflow / incoming webhook."""

    kind = VENDOR

    def __init__(self, name: str, config: TeamsConfig, url: str, http: httpx.AsyncClient) -> None:
        self._name = name
        self._config = config
        self._url = url
        self._secrets = [url, *httpx.URL(url).params.get_list("sig")]
        self._http = http

    @property
    def name(self) -> str:
        return self._name

    def destinations(self) -> tuple[str, ...]:
        return (self._config.channel or "Microsoft Teams (webhook)",)

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        try:
            response = await self._http.post(
                self._url,
                content=message_of(notice),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as error:
            return unreachable(VENDOR, error)
        result = result_of(response, VENDOR)
        shown = result.error
        for secret in self._secrets:
            shown = shown.replace(secret, "[webhook URL]")
        return dataclasses.replace(result, error=shown)


def build(name: str, config: TeamsConfig, http: httpx.AsyncClient) -> TeamsChannel:
    url = https_url(read_secret(config.webhook_url_file, "webhook_url_file"), "webhook_url_file")
    _redact.secrets.add(url)
    logging.getLogger("httpx").addFilter(_redact)
    return TeamsChannel(name, config, url, http)
