"""Slack: Block Kit messages through the Web API (slack_sdk's AsyncWebClient).

One thread per incident in one channel. The incident's first event is posted with
chat.postMessage and its `ts` (and the channel's ID, which chat.update needs) is kept;
every later event is a reply in that thread (`thread_ts`), and the parent message is then
rewritten with chat.update so the channel itself shows where the incident is.
approval_needed carries two buttons (action_id kubernaut_approve / kubernaut_reject, value
the workflow's id) for the edge's interaction route (kubernaut.runtime.chat_approvals), and
the signed approve/reject links as text.

Slack answers HTTP 200 {"ok": false, "error": "..."} for most errors: a configuration
error (invalid_auth, channel_not_found, not_in_channel, invalid_blocks ...) is permanent;
`ratelimited` comes as HTTP 429 with Retry-After; 5xx, fatal_error and internal_error are
worth another attempt.

Alert data is shown in mrkdwn with &, < and > escaped (so it cannot mention @channel or
make a link) and `verbatim` set (so Slack does not turn host names in it into links).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
import httpx
from pydantic import Field, field_validator
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.web.async_client import AsyncWebClient

from kubernaut.runtime.chat_approvals import SLACK_APPROVE_ACTION_ID, SLACK_REJECT_ACTION_ID
from kubernaut.services.notification.rendering import (
    TEMPLATES_DIR,
    plain_text,
    template_environment,
)
from kubernaut.services.notification.vendors.base import (
    ChannelConfig,
    EventKind,
    Notice,
    SendResult,
    cut,
    https_url,
    read_secret,
    retry_after_value,
)

__all__ = [
    "APPROVE_ACTION_ID",
    "DEFAULT_API_URL",
    "REJECT_ACTION_ID",
    "SlackChannel",
    "SlackConfig",
    "SlackMessage",
    "SlackRenderer",
    "build",
    "escape_mrkdwn",
]

VENDOR: Final = "slack"
DEFAULT_API_URL: Final = "https://slack.com/api/"
TEMPLATES: Final = TEMPLATES_DIR / VENDOR

# Block Kit's limits (docs.slack.dev/reference/block-kit): a message has at most 50 blocks,
# a section's text at most 3000 characters, a header's 150.
MAX_BLOCKS: Final = 50
MAX_SECTION_TEXT: Final = 3000
MAX_HEADER_TEXT: Final = 150
# The top-level `text` is only the notification's text when there are blocks; Slack's own
# limit (40,000) is far above what a notification shows.
MAX_FALLBACK_TEXT: Final = 3000
# Slack also refuses a message whose blocks hold too much text in all (msg_blocks_too_long,
# at about 12,000 characters): the description gets less than a full section.
MAX_DESCRIPTION_TEXT: Final = 1500

APPROVE_ACTION_ID: Final = SLACK_APPROVE_ACTION_ID
REJECT_ACTION_ID: Final = SLACK_REJECT_ACTION_ID

# What the channel keeps for the incident: the parent message.
THREAD_TS: Final = "ts"
THREAD_CHANNEL: Final = "channel"

# Slack's `error` codes worth another attempt; any other is the configuration's fault.
_TRANSIENT_ERRORS: Final = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "fatal_error",
        "internal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)
# What to do about a permanent error, for the operator who reads it.
_HINTS: Final = {
    "not_authed": "no bot token was sent",
    "invalid_auth": "the bot token in bot_token_file is not valid",
    "token_revoked": "the bot token in bot_token_file was revoked",
    "token_expired": "the bot token in bot_token_file expired",
    "account_inactive": "the bot token belongs to a deleted app or workspace",
    "missing_scope": "the Slack app needs the chat:write scope",
    "channel_not_found": "check `channel` (chat.update needs the channel's ID)",
    "not_in_channel": "invite the app to the channel",
    "is_archived": "the channel is archived",
    "invalid_blocks": "Slack refused the message's blocks",
    "msg_too_long": "the message is too long",
}
# The bot token's prefix: a user token (xoxp-) would post as a person.
_BOT_TOKEN_PREFIX: Final = "xoxb-"
_TOKEN_PREFIXES: Final = ("xoxb-", "xoxp-", "xoxa-", "xoxe", "xoxs-", "xapp-")
# A channel ID (C..., G... for old private channels) or a name, with or without "#".
_CHANNEL: Final = re.compile(r"[CG][A-Z0-9]{6,}|#?[^\s#,<>|]{1,80}")

logger = logging.getLogger(__name__)


class SlackConfig(ChannelConfig):
    """A Slack channel in the routing file. The bot token is read from a file."""

    type: Literal["slack"]
    # The Web API's base URL; tests point it at loopback.
    api_url: str = DEFAULT_API_URL
    # A file holding the app's bot token, xoxb-... (a mounted Secret).
    bot_token_file: str = Field(min_length=1)
    # Where the incident threads go: a channel ID ("C0123ABCDEF", preferred: it survives a
    # rename) or name ("#incidents"). The app must be a member of it.
    channel: str

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return https_url(value, "api_url") + "/"

    @field_validator("bot_token_file")
    @classmethod
    def _token_file(cls, value: str) -> str:
        if value.strip().startswith(_TOKEN_PREFIXES):
            raise ValueError(
                "bot_token_file: this is a token, not a path: put the token in a file "
                "(a mounted Secret) and give its path"
            )
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if _CHANNEL.fullmatch(value) is None:
            raise ValueError(
                f"channel: not a Slack channel ID (C0123ABCDEF) or name (#incidents): {value!r}"
            )
        return value


# Rendering


def escape_mrkdwn(text: str) -> str:
    """`text` as mrkdwn shows it literally: &, < and > escaped, the three characters
    Slack reads as links, mentions and entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Mrkdwn(str):
    """Text that is mrkdwn already (a link's URL checked by _link_url): printed as is."""

    __slots__ = ()


# What would end a link's URL early, or be decoded in it into one of those characters.
_NOT_IN_LINK: Final = re.compile(r"[\s<>|]|&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")


def _mrkdwn_value(value: object) -> str:
    # Every {{ value }} in a .mrkdwn template: safe text first, then literal in mrkdwn.
    if isinstance(value, _Mrkdwn):
        return value
    return escape_mrkdwn(plain_text(value))


def _link_url(value: object) -> str:
    """A URL for the target of a link (<url|label>), unescaped: Slack does not decode
    entities there, so "&amp;" would break a query string. One that could end the link
    early is escaped like any text (the link is then broken, never hijacked)."""
    url = plain_text(value)
    return _Mrkdwn(escape_mrkdwn(url) if _NOT_IN_LINK.search(url) else url)


def _one_line(value: object) -> str:
    return " ".join(plain_text(value).split())


def _lines(value: object) -> list[str]:
    return plain_text(value).split("\n")


def cut_mrkdwn(text: str, limit: int) -> str:
    """`text` (mrkdwn) in at most `limit` characters, never ending inside an escape
    (&amp;) or one of our links (<url|label>)."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    amp = head.rfind("&")
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    # Every "<" in the text is one of ours (the data's are escaped).
    bracket = head.rfind("<")
    if bracket != -1 and ">" not in head[bracket:]:
        head = head[:bracket]
    return head + "…"


def _tidy(text: str) -> str:
    # Optional template lines leave blank runs; one blank line is a paragraph break.
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@dataclass(frozen=True)
class SlackMessage:
    """What chat.postMessage / chat.update get: the notification text and the blocks."""

    text: str
    blocks: tuple[dict[str, Any], ...]


class SlackRenderer:
    """Block Kit messages from the templates in `directory`: header.txt (plain text) and
    message.mrkdwn, whose named blocks are the message's sections. Templates are parsed
    when the renderer is made, so a broken one fails at start."""

    SECTIONS: Final = ("summary", "description", "done", "links", "context", "fallback")

    def __init__(self, directory: Path = TEMPLATES) -> None:
        self._header = template_environment(directory).get_template("header.txt")
        mrkdwn = template_environment(directory)
        mrkdwn.finalize = _mrkdwn_value
        mrkdwn.filters["one_line"] = _one_line
        mrkdwn.filters["lines"] = _lines
        mrkdwn.filters["link_url"] = _link_url
        self._body = mrkdwn.get_template("message.mrkdwn")
        missing = [name for name in self.SECTIONS if name not in self._body.blocks]
        if missing:
            raise ValueError(f"{directory / 'message.mrkdwn'}: no block {', '.join(missing)}")

    def render(self, notice: Notice, *, parent: bool) -> SlackMessage:
        """`notice` as a message; `parent`: as the thread's parent, which shows the
        incident's latest state."""
        variables: dict[str, Any] = {
            **notice.view.variables(),
            "kind": notice.kind.value,
            "approve_url": notice.approve_url,
            "reject_url": notice.reject_url,
            "inspect_command": notice.inspect_command,
            "parent": parent,
        }
        header = cut(_one_line(self._header.render(variables)), MAX_HEADER_TEXT)
        variables["headline"] = header
        text = {
            name: _tidy("".join(self._body.blocks[name](self._body.new_context(variables))))
            for name in self.SECTIONS
        }
        blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text=header, emoji=True))]
        blocks.append(_section(text["summary"], MAX_SECTION_TEXT))
        if text["description"]:
            blocks.append(_section(text["description"], MAX_DESCRIPTION_TEXT))
        blocks.append(_section(text["done"], MAX_SECTION_TEXT))
        if notice.kind is EventKind.APPROVAL_NEEDED and notice.view.workflow_id:
            blocks.append(_decision_buttons(notice.view.workflow_id))
        if text["links"]:
            blocks.append(_section(text["links"], MAX_SECTION_TEXT))
        blocks.append(DividerBlock())
        blocks.append(
            ContextBlock(elements=[_mrkdwn(cut_mrkdwn(text["context"], MAX_SECTION_TEXT))])
        )
        # to_dict() checks each block against Block Kit's limits.
        return SlackMessage(
            text=cut_mrkdwn(text["fallback"], MAX_FALLBACK_TEXT),
            blocks=tuple(block.to_dict() for block in blocks[:MAX_BLOCKS]),
        )


def _mrkdwn(text: str) -> MarkdownTextObject:
    # verbatim: no automatic links for host names and channel names in the data.
    return MarkdownTextObject(text=text, verbatim=True)


def _section(text: str, limit: int) -> SectionBlock:
    return SectionBlock(text=_mrkdwn(cut_mrkdwn(text, limit)))


def _decision_buttons(workflow_id: str) -> ActionsBlock:
    return ActionsBlock(
        elements=[
            ButtonElement(
                text="Approve", action_id=APPROVE_ACTION_ID, value=workflow_id, style="primary"
            ),
            ButtonElement(
                text="Reject", action_id=REJECT_ACTION_ID, value=workflow_id, style="danger"
            ),
        ]
    )


# Sending


@dataclass(frozen=True)
class _Answer:
    """One Web API call's outcome: the SendResult it means, Slack's error code, its data."""

    result: SendResult
    code: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


def _refused(method: str, error: SlackApiError) -> _Answer:
    """What a Slack error answer means. The error names the method and Slack's code, never
    the request (whose headers hold the token)."""
    response = error.response
    # An AsyncSlackResponse, or aiohttp's response when the body was not JSON.
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    status = status if isinstance(status, int) else 0
    data = getattr(response, "data", None)
    code = str(data.get("error", ""))[:100] if isinstance(data, dict) else ""
    headers = getattr(response, "headers", None) or {}
    message = f"{VENDOR} {method}: " + (code or f"HTTP {status}")
    if status == 429 or code in ("ratelimited", "rate_limited"):
        retry_after = retry_after_value(headers.get("retry-after"))
        return _Answer(SendResult(False, message, retry_after=retry_after), code)
    if status >= 500 or code in _TRANSIENT_ERRORS:
        return _Answer(SendResult(False, message), code)
    if code in _HINTS:
        message += f" ({_HINTS[code]})"
    return _Answer(SendResult(False, message, permanent=True), code)


class SlackChannel:
    """Posts each incident's events as one thread in the configured channel."""

    def __init__(self, name: str, config: SlackConfig, token: str, timeout: float) -> None:
        self._name = name
        self._config = config
        self._renderer = SlackRenderer()
        # One attempt per call: the outbox retries, honouring Retry-After.
        self._client = AsyncWebClient(
            token=token,
            base_url=config.api_url,
            timeout=max(1, math.ceil(timeout)),
            retry_handlers=[],
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return VENDOR

    def destinations(self) -> tuple[str, ...]:
        return (self._config.channel,)

    def render(self, notice: Notice, *, parent: bool) -> SlackMessage:
        return self._renderer.render(notice, parent=parent)

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        ts, channel = thread.get(THREAD_TS, ""), thread.get(THREAD_CHANNEL, "")
        if ts and channel:
            reply = await self._post(self.render(notice, parent=False), channel, thread_ts=ts)
            if reply.code != "thread_not_found":
                if reply.result.delivered:
                    await self._update_parent(notice, channel, ts)
                    return SendResult(True, thread={THREAD_TS: ts, THREAD_CHANNEL: channel})
                return reply.result
            # The parent was deleted: this event starts a new thread.
            logger.info("slack %s: incident %s's thread is gone", self._name, notice.incident_id)
        first = await self._post(self.render(notice, parent=True), self._config.channel)
        if not first.result.delivered:
            return first.result
        kept = {THREAD_TS: str(first.data["ts"]), THREAD_CHANNEL: str(first.data["channel"])}
        return SendResult(True, thread=kept)

    async def _post(self, message: SlackMessage, channel: str, thread_ts: str = "") -> _Answer:
        method = "chat.postMessage"
        arguments: dict[str, Any] = {"thread_ts": thread_ts} if thread_ts else {}
        try:
            response = await self._client.chat_postMessage(
                channel=channel,
                text=message.text,
                blocks=list(message.blocks),
                # A link in an alert is not ours to preview.
                unfurl_links=False,
                unfurl_media=False,
                **arguments,
            )
        except SlackApiError as error:
            return _refused(method, error)
        except (aiohttp.ClientError, TimeoutError) as error:
            return _Answer(
                SendResult(False, f"{VENDOR} {method}: no answer ({type(error).__name__})")
            )
        return _Answer(
            SendResult(True), data=dict(response.data) if isinstance(response.data, dict) else {}
        )

    async def _update_parent(self, notice: Notice, channel: str, ts: str) -> None:
        """The thread's parent rewritten to show `notice`, the latest state. The reply is
        delivered already, so a failure here is logged, not retried (that would post the
        reply again)."""
        message = self.render(notice, parent=True)
        try:
            await self._client.chat_update(
                channel=channel, ts=ts, text=message.text, blocks=list(message.blocks)
            )
        except SlackApiError as error:
            failure = _refused("chat.update", error).result.error
            logger.warning("slack %s: incident %s: %s", self._name, notice.incident_id, failure)
        except (aiohttp.ClientError, TimeoutError) as error:
            logger.warning(
                "slack %s: incident %s: chat.update: no answer (%s)",
                self._name,
                notice.incident_id,
                type(error).__name__,
            )


def build(name: str, config: SlackConfig, http: httpx.AsyncClient) -> SlackChannel:
    """The channel `config` describes, its bot token read now. Slack is called through
    slack_sdk (aiohttp), not `http`, whose read time-out it takes."""
    token = read_secret(config.bot_token_file, "bot_token_file")
    if not token.startswith(_BOT_TOKEN_PREFIX):
        raise ValueError(
            f"bot_token_file: {config.bot_token_file} does not hold a Slack bot token "
            f"({_BOT_TOKEN_PREFIX}...)"
        )
    return SlackChannel(name, config, token, http.timeout.read or 30.0)
