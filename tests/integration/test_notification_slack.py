"""The Slack channel (slack.py) through the real slack_sdk client against a loopback
server speaking Slack's Web API (tests/fixtures/slack_loopback.py): one thread per
incident, the parent kept up to date, approval buttons, Slack's error answers."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubernaut.services.notification.vendors.base import EventKind, SendResult
from kubernaut.services.notification.vendors.slack import (
    MAX_HEADER_TEXT,
    MAX_SECTION_TEXT,
    SlackChannel,
    SlackConfig,
    build,
)
from tests.fixtures.incident_notices import (
    INCIDENT_ID,
    RUNBOOK,
    WORKFLOW_ID,
    incident_event,
    make_notice,
)
from tests.fixtures.slack_loopback import (
    BOT_TOKEN,
    SlackLoopback,
    block_errors,
    ratelimited,
    server_error,
    slack_error,
)

pytestmark = pytest.mark.integration

TOKEN_URL = "tok_0123456789abcdef0123456789abcdef"
HEADERS = {
    EventKind.OPENED: (
        ":rotating_light: New incident: KubePodCrashLooping on Deployment shop/checkout"
    ),
    EventKind.ACTION_PLANNED: (
        ":hammer_and_wrench: Fix planned: restart_deployment for KubePodCrashLooping on "
        "Deployment shop/checkout"
    ),
    EventKind.APPROVAL_NEEDED: (
        ":raised_hand: Approval needed: restart_deployment for KubePodCrashLooping on "
        "Deployment shop/checkout"
    ),
    EventKind.REMEDIATED: ":white_check_mark: Remediated: KubePodCrashLooping on Deployment "
    "shop/checkout",
    EventKind.FAILED: ":x: Fix failed: KubePodCrashLooping on Deployment shop/checkout needs "
    "a person",
    EventKind.ROLLED_BACK: ":leftwards_arrow_with_hook: Fix failed, undone: "
    "KubePodCrashLooping on Deployment shop/checkout still broken",
    EventKind.REFUSED: ":no_entry: Not acted on (refused): KubePodCrashLooping on Deployment "
    "shop/checkout",
    EventKind.ESCALATED: ":sos: Escalated to people: KubePodCrashLooping on Deployment "
    "shop/checkout",
    EventKind.STORM: ":thunder_cloud_and_rain: Storm: KubePodCrashLooping on many resources",
    EventKind.NOT_ACTED_ON: ":eyes: Not acted on: KubePodCrashLooping on Deployment shop/checkout",
    EventKind.RESOLVED: ":white_check_mark: Resolved: KubePodCrashLooping on Deployment "
    "shop/checkout",
}

# The whole message of an approval_needed event as the incident's first (parent) message.
APPROVAL_SUMMARY = (
    "Kubernaut wants to run *restart_deployment* on *Deployment shop/checkout* for "
    "*KubePodCrashLooping* and is waiting for an operator's approval. Nothing has been "
    "changed yet; undecided, it expires without acting.\n"
    "\n"
    "*Alert:* KubePodCrashLooping (firing, severity critical)\n"
    "*Summary:* Pod is crash looping.\n"
    "*On:* Deployment shop/checkout in cluster prod-eu\n"
    "*Started:* 2025-03-14 09:26:53 UTC\n"
    "*Labels:* namespace=shop, pod=checkout-7f9c-x2, severity=critical"
)
APPROVAL_BLOCKS: list[dict[str, Any]] = [
    {
        "type": "header",
        "text": {"type": "plain_text", "text": HEADERS[EventKind.APPROVAL_NEEDED], "emoji": True},
    },
    {"type": "section", "text": {"type": "mrkdwn", "text": APPROVAL_SUMMARY, "verbatim": True}},
    {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": "*Description:*\n>Pod shop/checkout-7f9c-x2 restarted 5 times in 10 minutes.",
            "verbatim": True,
        },
    },
    {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": "*What Kubernaut wants to do*\n"
            "*Action:* restart_deployment\n"
            "• dry-run: ok: the API server accepted the change (dryRun=All)\n"
            "• apply: rollout restarted (generation 4)\n"
            "• verify: ok: 3/3 pods ready after 21.0s\n"
            "*Verdict so far:* effective: 0 restarts in the 2 minutes after",
            "verbatim": True,
        },
    },
    {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "text": {"type": "plain_text", "text": "Approve", "emoji": True},
                "action_id": "kubernaut_approve",
                "value": WORKFLOW_ID,
                "style": "primary",
            },
            {
                "type": "button",
                "text": {"type": "plain_text", "text": "Reject", "emoji": True},
                "action_id": "kubernaut_reject",
                "value": WORKFLOW_ID,
                "style": "danger",
            },
        ],
    },
    {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": f"*Runbook:* <{RUNBOOK}|{RUNBOOK}>\n"
            "*Source:* hxxp://prometheus:9090/graph?g0[.]expr=up (not a link: host not on "
            "KUBERNAUT_NOTIFICATION_LINK_HOSTS)\n"
            f"*Decide in a browser:* <https://kubernaut.example/approve/{TOKEN_URL}|Approve> · "
            f"<https://kubernaut.example/reject/{TOKEN_URL}|Reject> (signed, single-use links)",
            "verbatim": True,
        },
    },
    {"type": "divider"},
    {
        "type": "context",
        "elements": [
            {
                "type": "mrkdwn",
                "text": f"Incident `{INCIDENT_ID}` · 2025-03-14 09:31:02 UTC · "
                f"`kubernaut incidents show {INCIDENT_ID}`\n"
                "This message shows the incident's latest state; its thread has every update.",
                "verbatim": True,
            }
        ],
    },
]
APPROVAL_TEXT = (
    f"{HEADERS[EventKind.APPROVAL_NEEDED]}\n"
    f"Approve: <https://kubernaut.example/approve/{TOKEN_URL}> · "
    f"Reject: <https://kubernaut.example/reject/{TOKEN_URL}>"
)


@pytest.fixture
def slack() -> Iterator[SlackLoopback]:
    with SlackLoopback() as server:
        yield server


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "slack-bot-token"
    path.write_text(BOT_TOKEN + "\n")
    return path


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture(autouse=True)
def _all_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Everything slack_sdk and the channel log, to show that no token is in it.
    caplog.set_level(logging.DEBUG)


def channel_for(
    server: SlackLoopback,
    token_file: Path,
    http: httpx.AsyncClient,
    channel: str = "#incidents",
    api_url: str = "",
) -> SlackChannel:
    config = SlackConfig(
        type="slack",
        api_url=api_url or server.api_url,
        bot_token_file=str(token_file),
        channel=channel,
    )
    return build("oncall-slack", config, http)


@pytest.fixture
def channel(slack: SlackLoopback, token_file: Path, http: httpx.AsyncClient) -> SlackChannel:
    return channel_for(slack, token_file, http)


def header_of(blocks: list[dict[str, Any]]) -> str:
    assert blocks[0]["type"] == "header"
    return str(blocks[0]["text"]["text"])


def assert_no_token(result: SendResult, caplog: pytest.LogCaptureFixture) -> None:
    assert BOT_TOKEN not in result.error
    assert BOT_TOKEN not in caplog.text
    # Not even a recognisable part of it.
    assert BOT_TOKEN.split("-")[-1] not in caplog.text


async def test_first_event_is_posted_as_the_exact_block_kit_message(
    slack: SlackLoopback, channel: SlackChannel, caplog: pytest.LogCaptureFixture
) -> None:
    result = await channel.send(make_notice(EventKind.APPROVAL_NEEDED), {})

    assert result.delivered, result.error
    [request] = slack.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert request.headers["content-type"].startswith("application/json")
    assert request.json == {
        "channel": "#incidents",
        "text": APPROVAL_TEXT,
        "blocks": APPROVAL_BLOCKS,
        "unfurl_links": False,
        "unfurl_media": False,
    }
    # The parent is kept by the channel's ID (chat.update takes no names) and its ts.
    [parent] = slack.top_level()
    assert dict(result.thread) == {"ts": parent.ts, "channel": "C0INCIDENTS"}
    assert channel.destinations() == ("#incidents",)
    assert_no_token(result, caplog)


async def test_an_incident_is_one_thread_and_its_parent_shows_the_latest_state(
    slack: SlackLoopback, channel: SlackChannel
) -> None:
    kinds = [
        EventKind.OPENED,
        EventKind.ACTION_PLANNED,
        EventKind.APPROVAL_NEEDED,
        EventKind.REMEDIATED,
        EventKind.RESOLVED,
    ]
    thread: dict[str, str] = {}
    for number, kind in enumerate(kinds):
        result = await channel.send(make_notice(kind), thread)
        assert result.delivered, result.error
        if thread:
            assert dict(result.thread) == thread  # the same thread, every time
        thread = {**thread, **result.thread}
        [parent] = slack.top_level()
        # The parent says where the incident is now, and was rewritten once per reply.
        assert header_of(parent.blocks) == HEADERS[kind]
        assert parent.edits == number

    [parent] = slack.top_level()
    replies = slack.thread(parent)
    assert [header_of(reply.blocks) for reply in replies] == [HEADERS[k] for k in kinds[1:]]
    for reply in replies:
        assert reply.thread_ts == parent.ts
    for call in slack.calls("chat.postMessage")[1:]:
        assert call["thread_ts"] == parent.ts
        assert call["channel"] == "C0INCIDENTS"
    updates = slack.calls("chat.update")
    assert [(u["channel"], u["ts"]) for u in updates] == [("C0INCIDENTS", parent.ts)] * 4
    # Only the approval asks for a decision; a reply does not claim to be the latest state.
    approval = replies[1]
    assert [b["type"] for b in approval.blocks].count("actions") == 1
    assert "latest state" not in str(approval.blocks)
    assert "Approve: <https://kubernaut.example/approve/" in approval.text
    # The incident ended: the parent shows it resolved, with no buttons left on it.
    assert "is resolved: the alert stopped firing" in str(parent.blocks)
    assert all(block["type"] != "actions" for block in parent.blocks)


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda k: k.value)
async def test_every_kind_renders_and_slack_accepts_it(
    slack: SlackLoopback, channel: SlackChannel, kind: EventKind
) -> None:
    result = await channel.send(make_notice(kind), {})

    assert result.delivered, result.error
    [message] = slack.top_level()
    assert block_errors(message.blocks) == []
    assert header_of(message.blocks) == HEADERS[kind]
    assert message.text.startswith(HEADERS[kind])
    has_buttons = any(block["type"] == "actions" for block in message.blocks)
    assert has_buttons == (kind is EventKind.APPROVAL_NEEDED)


async def test_ratelimited_is_retried_after_what_slack_says(
    slack: SlackLoopback, channel: SlackChannel, caplog: pytest.LogCaptureFixture
) -> None:
    slack.script(ratelimited(retry_after=42))

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert result == SendResult(
        False, "slack chat.postMessage: ratelimited", permanent=False, retry_after=42.0
    )
    assert slack.top_level() == []
    assert_no_token(result, caplog)


@pytest.mark.parametrize(
    "answer",
    [server_error(500), server_error(503), slack_error("fatal_error")],
    ids=["500", "503", "fatal_error"],
)
async def test_slack_outages_are_retried(
    slack: SlackLoopback, channel: SlackChannel, answer: Any
) -> None:
    slack.script(answer)

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered
    assert not result.permanent
    assert result.retry_after is None
    assert result.error.startswith("slack chat.postMessage: ")


async def test_a_reply_failing_keeps_the_thread_for_the_next_attempt(
    slack: SlackLoopback, channel: SlackChannel
) -> None:
    first = await channel.send(make_notice(EventKind.OPENED), {})
    slack.script(server_error(503))

    failed = await channel.send(make_notice(EventKind.FAILED), first.thread)
    again = await channel.send(make_notice(EventKind.FAILED), first.thread)

    assert not failed.delivered and not failed.permanent
    assert again.delivered and again.thread == first.thread
    [parent] = slack.top_level()
    assert [header_of(r.blocks) for r in slack.thread(parent)] == [HEADERS[EventKind.FAILED]]
    assert parent.edits == 1


@pytest.mark.parametrize(
    ("channel_name", "script", "token", "code"),
    [
        ("#incidents", None, "xoxb-9999999999-9999999999-SomeoneElsesToken", "invalid_auth"),
        ("#incidents", "token_revoked", None, "token_revoked"),
        ("#incidents", "account_inactive", None, "account_inactive"),
        ("#no-such-channel", None, None, "channel_not_found"),
        ("#private-ops", None, None, "not_in_channel"),
        ("C0ARCHIVED1", None, None, "is_archived"),
    ],
)
async def test_configuration_errors_are_permanent_and_name_no_secret(
    slack: SlackLoopback,
    tmp_path: Path,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    channel_name: str,
    script: str | None,
    token: str | None,
    code: str,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token or BOT_TOKEN)
    channel = channel_for(slack, token_file, http, channel=channel_name)
    if script:
        slack.script(slack_error(script))

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered
    assert result.permanent
    assert result.retry_after is None
    assert result.error.startswith(f"slack chat.postMessage: {code} (")
    assert_no_token(result, caplog)
    if token:
        assert token not in result.error and token not in caplog.text


async def test_a_wrong_api_url_is_permanent(
    slack: SlackLoopback, token_file: Path, http: httpx.AsyncClient
) -> None:
    channel = channel_for(slack, token_file, http, api_url=slack.url + "/not-the-api/")

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert result == SendResult(False, "slack chat.postMessage: unknown_method", permanent=True)


async def test_no_answer_is_retried(token_file: Path, http: httpx.AsyncClient) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = SlackConfig(
        type="slack",
        api_url=f"http://127.0.0.1:{port}/api/",
        bot_token_file=str(token_file),
        channel="#incidents",
    )

    result = await build("oncall-slack", config, http).send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and not result.permanent
    assert result.error.startswith("slack chat.postMessage: no answer (")


async def test_a_deleted_parent_starts_a_new_thread(
    slack: SlackLoopback, channel: SlackChannel
) -> None:
    gone = {"ts": "1700000000.000001", "channel": "C0INCIDENTS"}

    result = await channel.send(make_notice(EventKind.FAILED), gone)

    assert result.delivered, result.error
    [parent] = slack.top_level()
    assert dict(result.thread) == {"ts": parent.ts, "channel": "C0INCIDENTS"}
    assert [c.get("thread_ts") for c in slack.calls("chat.postMessage")] == [gone["ts"], None]


async def test_a_failed_parent_update_does_not_post_the_reply_again(
    slack: SlackLoopback, channel: SlackChannel, caplog: pytest.LogCaptureFixture
) -> None:
    first = await channel.send(make_notice(EventKind.OPENED), {})
    # A thread kept with the channel's name: replies work, chat.update refuses names.
    by_name = {"ts": first.thread["ts"], "channel": "#incidents"}

    result = await channel.send(make_notice(EventKind.REMEDIATED), by_name)

    assert result.delivered, result.error
    [parent] = slack.top_level()
    assert len(slack.thread(parent)) == 1
    assert parent.edits == 0
    assert "chat.update: channel_not_found" in caplog.text
    assert_no_token(result, caplog)


async def test_long_text_is_cut_to_slacks_limits(
    slack: SlackLoopback, channel: SlackChannel
) -> None:
    event = incident_event(
        name="Alert" + "N" * 400,
        annotations={
            "summary": "<!channel> & " * 1000,
            "description": "a very long line\n" * 1000,
            "runbook_url": RUNBOOK,
        },
        stages=[f"verify: attempt {n}: not ready yet, " + "x" * 80 for n in range(100)],
    )

    result = await channel.send(make_notice(EventKind.APPROVAL_NEEDED, event=event), {})

    assert result.delivered, result.error
    [message] = slack.top_level()
    assert block_errors(message.blocks) == []
    header = header_of(message.blocks)
    assert len(header) == MAX_HEADER_TEXT and header.endswith("…")
    sections = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
    assert all(len(text) <= MAX_SECTION_TEXT for text in sections)
    # The summary, the description and the stages were each cut, with a marker.
    assert sum(text.endswith("…") for text in sections) == 3
    # The alert's text stays text: no mention, and the cut left no half escape.
    assert "<!channel>" not in str(message.blocks)
    half_escapes = ("&", "&a", "&am", "&amp", "&l", "&lt")
    assert not any(text.removesuffix("…").endswith(half_escapes) for text in sections)
    # The buttons survive however long the rest is.
    assert any(block["type"] == "actions" for block in message.blocks)
    assert len(message.text) <= 3000


async def test_the_loopback_checks_requests_as_slack_does(
    slack: SlackLoopback, channel: SlackChannel, http: httpx.AsyncClient
) -> None:
    first = await channel.send(make_notice(EventKind.OPENED), {})
    post, update = slack.api_url + "chat.postMessage", slack.api_url + "chat.update"
    auth = {"Authorization": f"Bearer {BOT_TOKEN}"}
    message = {"channel": "C0INCIDENTS", "text": "hello"}

    async def error(url: str, body: dict[str, Any], headers: dict[str, str] = auth) -> str:
        response = await http.post(url, json=body, headers=headers)
        assert response.status_code == 200
        answer = response.json()
        assert answer["ok"] is False
        return str(answer["error"])

    assert await error(post, message, headers={}) == "not_authed"
    assert await error(post, message, headers={"Authorization": "Bearer xoxb-other"}) == (
        "invalid_auth"
    )
    assert await error(post, {"channel": "C0INCIDENTS"}) == "no_text"
    assert await error(post, {**message, "thread_ts": "yesterday"}) == "invalid_thread_ts"
    assert await error(post, {**message, "thread_ts": "1.000001"}) == "thread_not_found"
    assert await error(update, {**message, "ts": "1.000001"}) == "message_not_found"
    # chat.update takes the channel's ID only.
    assert await error(update, {**message, "channel": "#incidents", "ts": first.thread["ts"]}) == (
        "channel_not_found"
    )
    reply = await http.post(post, json={**message, "thread_ts": first.thread["ts"]}, headers=auth)
    assert reply.json()["ok"] is True
    assert reply.json()["message"]["thread_ts"] == first.thread["ts"]
