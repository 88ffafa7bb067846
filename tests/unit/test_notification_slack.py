"""The Slack channel's config model, its Block Kit rendering, and the check of Slack's
request signatures (for the approve/reject buttons' interaction requests)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from kubernaut.runtime.chat_approvals import verify_slack_request
from kubernaut.services.notification.routing import RoutingError, build_channel
from kubernaut.services.notification.vendors.base import EventKind
from kubernaut.services.notification.vendors.slack import (
    DEFAULT_API_URL,
    SlackChannel,
    SlackConfig,
    SlackRenderer,
    build,
    cut_mrkdwn,
    escape_mrkdwn,
)
from tests.fixtures.incident_notices import RUNBOOK, incident_event, make_notice
from tests.fixtures.slack_loopback import BOT_TOKEN, block_errors

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_765_000_000.0
BODY = b"payload=%7B%22type%22%3A%22block_actions%22%7D"


def config(**values: Any) -> SlackConfig:
    return SlackConfig.model_validate(
        {
            "type": "slack",
            "bot_token_file": "/var/run/secrets/slack/bot-token",
            "channel": "#incidents",
        }
        | values
    )


def test_config_defaults_to_slacks_api() -> None:
    assert config().api_url == DEFAULT_API_URL == "https://slack.com/api/"
    assert config(api_url="http://127.0.0.1:8080/api").api_url == "http://127.0.0.1:8080/api/"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"bot_token": BOT_TOKEN}, "bot_token"),
        ({"webhook_url": "https://hooks.slack.com/services/T0/B0/secret"}, "webhook_url"),
        ({"bot_token_file": BOT_TOKEN}, "bot_token_file"),
        ({"channel": "two words"}, "channel"),
        ({"api_url": "http://slack.example/api/"}, "api_url"),
        ({"type": "teams"}, "type"),
    ],
)
def test_config_refuses_unknown_keys_inline_secrets_and_bad_values(
    values: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        config(**values)

    assert field in str(raised.value)
    # The error never echoes what was given (it could be a token).
    assert BOT_TOKEN not in str(raised.value)
    assert "secret" not in str(raised.value).replace("Secret", "")


def test_config_refuses_a_missing_token() -> None:
    with pytest.raises(ValidationError, match="bot_token_file"):
        SlackConfig.model_validate({"type": "slack", "channel": "#incidents"})


def test_build_reads_the_token_file_and_refuses_what_is_no_bot_token(tmp_path: Path) -> None:
    http = httpx.AsyncClient()
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=f"bot_token_file: cannot read {missing}"):
        build("s", config(bot_token_file=str(missing)), http)

    user_token = tmp_path / "user-token"
    user_token.write_text("xoxp-1111-2222-personalSecretValue")
    with pytest.raises(ValueError, match="does not hold a Slack bot token") as raised:
        build("s", config(bot_token_file=str(user_token)), http)
    assert "personalSecretValue" not in str(raised.value)

    good = tmp_path / "bot-token"
    good.write_text(f"  {BOT_TOKEN}\n")
    channel = build("oncall", config(bot_token_file=str(good)), http)
    assert (channel.name, channel.kind, channel.destinations()) == (
        "oncall",
        "slack",
        ("#incidents",),
    )


def test_a_routing_file_entry_makes_a_slack_channel(tmp_path: Path) -> None:
    token = tmp_path / "bot-token"
    token.write_text(BOT_TOKEN)
    http = httpx.AsyncClient()
    entry = {"type": "slack", "bot_token_file": str(token), "channel": "C0INCIDENTS"}

    channel = build_channel("ops", entry, http)

    assert isinstance(channel, SlackChannel)
    assert channel.destinations() == ("C0INCIDENTS",)
    with pytest.raises(RoutingError, match=r"channels\.ops: .*bot_token") as raised:
        build_channel("ops", {**entry, "bot_token": BOT_TOKEN}, http)
    assert BOT_TOKEN not in str(raised.value)


# Rendering


@pytest.fixture(scope="module")
def renderer() -> SlackRenderer:
    return SlackRenderer()


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda k: k.value)
@pytest.mark.parametrize("parent", [True, False], ids=["parent", "reply"])
def test_every_kind_renders_valid_blocks(
    renderer: SlackRenderer, kind: EventKind, parent: bool
) -> None:
    message = renderer.render(make_notice(kind), parent=parent)

    assert block_errors(list(message.blocks)) == []
    assert message.blocks[0]["type"] == "header"
    assert message.text.startswith(message.blocks[0]["text"]["text"])
    shown = str(message.blocks)
    assert "KubePodCrashLooping" in shown and "Deployment shop/checkout" in shown
    assert "kubernaut incidents show 3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b" in shown
    assert ("latest state" in shown) == parent


def test_headers_differ_for_every_kind(renderer: SlackRenderer) -> None:
    headers = {
        renderer.render(make_notice(kind), parent=True).blocks[0]["text"]["text"]
        for kind in EventKind
    }
    assert len(headers) == len(EventKind)


def test_alert_data_cannot_mention_or_link(renderer: SlackRenderer) -> None:
    event = incident_event(
        name="<!channel> Disk",
        annotations={
            "summary": "see <https://evil.example|your bank> & <@U123>",
            "description": "line one\n*Approved by:* the boss",
            "runbook_url": "https://evil.example/runbook",
        },
    )

    message = renderer.render(make_notice(EventKind.FAILED, event=event), parent=True)
    # The header is plain_text, which Slack never parses for mentions or links.
    header, *rest = message.blocks
    assert header["text"]["type"] == "plain_text"
    shown = str(rest) + message.text

    assert "<!channel>" not in shown and "<@U123>" not in shown
    assert "&lt;!channel&gt; Disk" in shown
    assert "see &lt;hxxps://evil[.]example|your bank&gt; &amp; &lt;@U123&gt;" in shown
    # A description line cannot pose as a line of ours: it stays in the quote.
    assert ">line one\\n>*Approved by:* the boss" in shown
    # Not on the link allow-list: shown defanged, never as <url|...>.
    assert "hxxps://evil[.]example/runbook (not a link" in shown
    # No automatic links in any text object of ours.
    for block in message.blocks:
        for text in [block.get("text"), *block.get("elements", [])]:
            if isinstance(text, dict) and text.get("type") == "mrkdwn":
                assert text["verbatim"] is True


def test_an_allowed_runbook_is_a_link(renderer: SlackRenderer) -> None:
    message = renderer.render(make_notice(EventKind.OPENED), parent=True)
    assert f"*Runbook:* <{RUNBOOK}|{RUNBOOK}>" in str(message.blocks)


def test_link_targets_are_not_escaped_but_cannot_break_out(renderer: SlackRenderer) -> None:
    runbook = "https://runbooks.example/run?alert=KubePodCrashLooping&ns=shop"
    annotations = {"summary": "s", "runbook_url": runbook}
    event = incident_event(annotations=annotations)
    shown = str(renderer.render(make_notice(EventKind.OPENED, event=event), parent=True).blocks)
    # "&amp;" in a link's target would reach the browser as is.
    assert f"<{runbook}|{runbook.replace('&', '&amp;')}>" in shown

    sneaky = "https://runbooks.example/x&gt;&lt;!channel"
    event = incident_event(annotations={"summary": "s", "runbook_url": sneaky})
    shown = str(renderer.render(make_notice(EventKind.OPENED, event=event), parent=True).blocks)
    assert "<https://runbooks.example/x&amp;gt;&amp;lt;!channel|" in shown


def test_escape_and_cut_mrkdwn() -> None:
    assert escape_mrkdwn("a<b>&c") == "a&lt;b&gt;&amp;c"
    assert cut_mrkdwn("short", 10) == "short"
    # Never half an escape or half a link at the cut.
    assert cut_mrkdwn("abc &amp; def", 8) == "abc …"
    assert cut_mrkdwn("see <https://x.example/a|runbook> now", 20) == "see …"
    assert cut_mrkdwn("x" * 20, 10) == "x" * 9 + "…"


# Slack's request signatures


def signed(body: bytes, timestamp: str, secret: str = SIGNING_SECRET) -> dict[str, str]:
    """Headers as Slack sends them: v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}")."""
    base = b"v0:" + timestamp.encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={digest}"}


def test_a_request_signed_by_slack_is_verified() -> None:
    headers = signed(BODY, str(int(NOW) - 10))
    assert verify_slack_request(SIGNING_SECRET, headers, BODY, NOW)
    # Header names in any case, as a server may hand them over.
    lowered = {name.lower(): value for name, value in headers.items()}
    assert verify_slack_request(SIGNING_SECRET, lowered, BODY, NOW)


def test_a_forged_request_is_refused() -> None:
    timestamp = str(int(NOW))
    assert not verify_slack_request(
        SIGNING_SECRET, signed(BODY, timestamp, secret="not-the-secret"), BODY, NOW
    )
    tampered = BODY.replace(b"block_actions", b"view_submission")
    assert not verify_slack_request(SIGNING_SECRET, signed(BODY, timestamp), tampered, NOW)
    assert not verify_slack_request(SIGNING_SECRET, {}, BODY, NOW)


def test_a_stale_request_is_refused() -> None:
    at = str(int(NOW) - 301)
    assert not verify_slack_request(SIGNING_SECRET, signed(BODY, at), BODY, NOW)
    # Within five minutes either way is fine (clocks differ).
    assert verify_slack_request(SIGNING_SECRET, signed(BODY, str(int(NOW) - 300)), BODY, NOW)
    assert verify_slack_request(SIGNING_SECRET, signed(BODY, str(int(NOW) + 299)), BODY, NOW)


def test_a_body_replayed_under_another_timestamp_is_refused() -> None:
    old = signed(BODY, str(int(NOW) - 3600))
    replayed = {**old, "X-Slack-Request-Timestamp": str(int(NOW))}
    assert not verify_slack_request(SIGNING_SECRET, replayed, BODY, NOW)


def test_malformed_headers_are_refused_not_raised() -> None:
    headers = {**signed(BODY, "1765000000"), "X-Slack-Request-Timestamp": "yesterday"}
    assert not verify_slack_request(SIGNING_SECRET, headers, BODY, NOW)
    not_utf8 = b"\xff\xfe"
    assert not verify_slack_request(SIGNING_SECRET, signed(not_utf8, "1765000000"), not_utf8, NOW)


# The loopback's Block Kit checks (what makes the integration tests' "Slack accepted it" mean
# something).


def test_the_loopback_refuses_blocks_slack_refuses() -> None:
    def section(text: str) -> dict[str, Any]:
        return {"type": "section", "text": {"type": "mrkdwn", "text": text}}

    def button(action_id: str, text: str = "Go") -> dict[str, Any]:
        return {
            "type": "button",
            "text": {"type": "plain_text", "text": text},
            "action_id": action_id,
        }

    assert block_errors([section("x" * 3000), {"type": "divider"}]) == []
    assert block_errors([section("x" * 3001)]) == [
        "must be less than 3001 characters [json-pointer:/blocks/0/text/text]"
    ]
    assert block_errors([{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]) == [
        "must be one of the provided values: plain_text [json-pointer:/blocks/0/text/type]"
    ]
    assert block_errors([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}])
    assert block_errors([{"type": "actions", "elements": [button("a"), button("a")]}]) == [
        "duplicate action_id: a [json-pointer:/blocks/0/elements/1/action_id]"
    ]
    assert block_errors([{"type": "actions", "elements": [button("a", "x" * 76)]}])
    assert block_errors([section("")]) == [
        "must be more than 0 characters [json-pointer:/blocks/0/text/text]"
    ]
    assert block_errors([{"type": "image", "image_url": "https://x.example/a.png"}])
    assert block_errors([{**section("x"), "color": "red"}]) == [
        "invalid additional property: color [json-pointer:/blocks/0]"
    ]
    assert block_errors([{"type": "divider"}] * 51) == [
        "must provide no more than 50 items [json-pointer:/blocks]"
    ]
