"""The Teams channel against a loopback server speaking a Teams Workflows webhook
(tests/fixtures/teams_loopback.py): the exact Adaptive Card, data shown as text, the card
kept under Teams' size limit, and what each answer means for a retry. The webhook URL is
the credential: it never shows in an error, a log or ListChannels."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from kubernaut.services.notification.vendors import teams
from kubernaut.services.notification.vendors.base import EventKind
from tests.fixtures.incident_notices import INCIDENT_ID, RUNBOOK, incident_event, make_notice
from tests.fixtures.teams_loopback import (
    CARD_CONTENT_TYPE,
    MAX_BYTES,
    SIGNATURE,
    TeamsLoopback,
    server_error,
    throttled,
)

pytestmark = pytest.mark.integration

APPROVE = "https://kubernaut.example/approve/tok_0123456789abcdef0123456789abcdef"
REJECT = "https://kubernaut.example/reject/tok_0123456789abcdef0123456789abcdef"


@pytest.fixture
def server() -> Iterator[TeamsLoopback]:
    with TeamsLoopback() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def channel_for(url: str, tmp_path: Path, http: httpx.AsyncClient) -> teams.TeamsChannel:
    path = tmp_path / "webhook-url"
    path.write_text(url + "\n")
    config = teams.TeamsConfig.model_validate(
        {"type": "teams", "webhook_url_file": str(path), "channel": "Platform / #incidents"}
    )
    return teams.build("ops-teams", config, http)


@pytest.fixture
def channel(server: TeamsLoopback, tmp_path: Path, http: httpx.AsyncClient) -> teams.TeamsChannel:
    return channel_for(server.webhook_url, tmp_path, http)


def heading(text: str) -> dict[str, object]:
    return {
        "type": "TextBlock",
        "text": text,
        "wrap": True,
        "weight": "Bolder",
        "spacing": "Medium",
    }


async def test_approval_needed_is_this_exact_card(
    server: TeamsLoopback, channel: teams.TeamsChannel
) -> None:
    result = await channel.send(make_notice(EventKind.APPROVAL_NEEDED), {})

    assert result.delivered and not result.error and result.thread == {}
    [request] = server.requests
    assert request.headers["content-type"] == "application/json"
    message = request.json
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == CARD_CONTENT_TYPE and attachment["contentUrl"] is None
    assert attachment["content"] == {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": "Approval needed: KubePodCrashLooping on Deployment shop/checkout",
                "wrap": True,
                "size": "Medium",
                "weight": "Bolder",
                "color": "Warning",
            },
            {
                "type": "TextBlock",
                "text": (
                    "Kubernaut wants to run **restart\\_deployment** on Deployment shop/checkout"
                    " for KubePodCrashLooping and is waiting for an operator's approval."
                    " **Nothing has been changed yet.** Undecided, the request expires without"
                    " acting. Whoever asked for it may not approve it."
                ),
                "wrap": True,
            },
            {
                "type": "FactSet",
                "facts": [
                    {"title": "Alert", "value": "KubePodCrashLooping (firing)"},
                    {"title": "Severity", "value": "critical"},
                    {"title": "Summary", "value": "Pod is crash looping."},
                    {"title": "Target", "value": "Deployment shop/checkout"},
                    {"title": "Cluster", "value": "prod-eu"},
                    {"title": "Action", "value": "restart\\_deployment"},
                    {"title": "Verdict", "value": "effective: 0 restarts in the 2 minutes after"},
                    {"title": "Started at", "value": "2025-03-14 09:26:53 UTC"},
                    {"title": "Incident", "value": INCIDENT_ID},
                    {"title": "When", "value": "2025-03-14 09:31:02 UTC"},
                    {
                        "title": "Source",
                        "value": (
                            "hxxp://prometheus:9090/graph?g0\\[.\\]expr=up (not a link: host not"
                            " on KUBERNAUT\\_NOTIFICATION\\_LINK\\_HOSTS)"
                        ),
                    },
                ],
            },
            heading("Description"),
            {
                "type": "TextBlock",
                "text": "Pod shop/checkout-7f9c-x2 restarted 5 times in 10 minutes.",
                "wrap": True,
            },
            heading("What was done"),
            {
                "type": "TextBlock",
                "text": (
                    "• dry-run: ok: the API server accepted the change (dryRun=All)\n\n"
                    "• apply: rollout restarted (generation 4)\n\n"
                    "• verify: ok: 3/3 pods ready after 21.0s"
                ),
                "wrap": True,
            },
            heading("Labels"),
            {
                "type": "TextBlock",
                "text": "namespace=shop\n\npod=checkout-7f9c-x2\n\nseverity=critical",
                "wrap": True,
                "isSubtle": True,
            },
            heading("Inspect"),
            {
                "type": "TextBlock",
                "text": f"kubernaut incidents show {INCIDENT_ID}",
                "wrap": True,
                "fontType": "Monospace",
            },
        ],
        "msteams": {"width": "Full"},
        "actions": [
            {"type": "Action.OpenUrl", "title": "Approve", "url": APPROVE, "style": "positive"},
            {"type": "Action.OpenUrl", "title": "Reject", "url": REJECT, "style": "destructive"},
            {"type": "Action.OpenUrl", "title": "Runbook", "url": RUNBOOK},
        ],
    }


@pytest.mark.parametrize("kind", list(EventKind))
async def test_every_kind_is_a_card_teams_accepts(
    server: TeamsLoopback, channel: teams.TeamsChannel, kind: EventKind
) -> None:
    result = await channel.send(make_notice(kind), {})

    assert result.delivered, result.error
    assert result.thread == {}  # a webhook cannot reply to or update a message
    card = server.cards[-1]
    title = card["body"][0]
    assert "KubePodCrashLooping" in title["text"]
    assert title["color"] == {
        EventKind.OPENED: "Default",
        EventKind.APPROVAL_NEEDED: "Warning",
        EventKind.ACTION_PLANNED: "Warning",
        EventKind.REMEDIATED: "Good",
        EventKind.RESOLVED: "Good",
    }.get(kind, "Attention")
    titles = [action["title"] for action in card["actions"]]
    expected = (
        ["Approve", "Reject", "Runbook"] if kind is EventKind.APPROVAL_NEEDED else ["Runbook"]
    )
    assert titles == expected


async def test_alert_text_shows_as_text_and_makes_no_link(
    server: TeamsLoopback, channel: teams.TeamsChannel
) -> None:
    event = incident_event(
        annotations={
            "summary": "**URGENT** [approve here](https://evil.example/steal) _now_",
            "description": "- step one\n1. step two",
        }
    )
    result = await channel.send(make_notice(EventKind.OPENED, event=event), {})

    assert result.delivered, result.error
    card = server.cards[-1]
    facts = {fact["title"]: fact["value"] for fact in card["body"][2]["facts"]}
    # Markdown escaped, and the URL (host not allowed) defanged by the view.
    assert facts["Summary"] == (
        "\\*\\*URGENT\\*\\* \\[approve here\\](hxxps://evil\\[.\\]example/steal) \\_now\\_"
    )
    assert card["body"][4]["text"] == "\\- step one\n\n1\\. step two"
    # Links are actions only, and only to allowed hosts: none for the alert's URL (and this
    # alert has no runbook).
    assert "actions" not in card


async def test_a_huge_event_is_cut_to_fit_under_28_kb(
    server: TeamsLoopback, channel: teams.TeamsChannel
) -> None:
    # Non-ASCII text is sent escaped (6 bytes a character): the first cuts are not enough.
    event = incident_event(
        annotations={"summary": "s" * 20_000, "description": "ä" * 200_000},
        stages=[f"verify: attempt {n}: " + "é" * 900 for n in range(200)],
    )
    result = await channel.send(make_notice(EventKind.FAILED, event=event), {})

    assert result.delivered, result.error
    assert len(server.requests[-1].raw) <= teams.MAX_MESSAGE_BYTES < MAX_BYTES
    card = server.cards[-1]
    description = card["body"][4]["text"]
    assert description.startswith("äää") and description.endswith("…")
    assert len(description) < teams.MAX_PARAGRAPH  # cut again to fit the whole card
    # What matters most still says what it is.
    assert card["body"][0]["text"].startswith("Fix failed: KubePodCrashLooping")
    assert INCIDENT_ID in json.dumps(card)


async def test_429_is_retried_after_what_teams_asked(
    server: TeamsLoopback, channel: teams.TeamsChannel
) -> None:
    server.script(throttled(retry_after=17))
    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and not result.permanent and result.retry_after == 17
    assert server.cards == []


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retried_not_permanent(
    server: TeamsLoopback, channel: teams.TeamsChannel, status: int
) -> None:
    server.script(server_error(status))
    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and not result.permanent and result.retry_after is None
    assert str(status) in result.error
    assert (await channel.send(make_notice(EventKind.OPENED), {})).delivered


async def test_a_wrong_signature_is_permanent_and_the_url_never_shows(
    server: TeamsLoopback,
    tmp_path: Path,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "WrongSig-thisIsTheSecretPart-0123456789"
    url = server.webhook_url.replace(SIGNATURE, wrong)
    channel = channel_for(url, tmp_path, http)
    caplog.set_level(logging.DEBUG)

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and result.permanent
    assert "teams answered 401" in result.error
    assert "DirectApiInvalidAuthorizationSignature" in result.error
    assert wrong not in result.error and wrong not in caplog.text
    # httpx did log the request, with the URL redacted.
    assert "HTTP Request: POST [teams webhook URL]" in caplog.text
    assert channel.destinations() == ("Platform / #incidents",)


async def test_a_deleted_workflow_is_permanent(
    server: TeamsLoopback, channel: teams.TeamsChannel
) -> None:
    server.delete()
    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and result.permanent
    assert "404" in result.error and "WorkflowNotFound" in result.error
    assert SIGNATURE not in result.error


async def test_no_answer_is_retried_and_names_no_url(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    with TeamsLoopback() as stopped:
        url = stopped.webhook_url
    channel = channel_for(url, tmp_path, http)
    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and not result.permanent
    assert result.error == "teams: no answer (ConnectError)"


def message(*body: dict[str, object], **card: object) -> dict[str, object]:
    content = {"type": "AdaptiveCard", "version": "1.4", "body": list(body), **card}
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "content": content}],
    }


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"type": "message", "attachments": []}, "attachments must be a non-empty array"),
        (message({"type": "TextBlock", "text": ""}), "a TextBlock needs a text"),
        (message({"type": "Paragraph", "text": "x"}), "unknown element type 'Paragraph'"),
        (message({"type": "FactSet", "facts": [{"title": "a", "value": 1}]}), "facts must be"),
        (message(actions=[{"type": "Action.OpenUrl", "title": "x"}]), "needs an http(s) url"),
        (message(version="2.0"), "version must be one of"),
    ],
)
async def test_the_loopback_refuses_what_teams_refuses(
    server: TeamsLoopback, http: httpx.AsyncClient, bad: dict[str, object], error: str
) -> None:
    """So a channel test passing means the card is one Teams takes."""
    good = message({"type": "TextBlock", "text": "hello"})
    assert (await http.post(server.webhook_url, json=good)).status_code == 202
    response = await http.post(server.webhook_url, json=bad)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "TriggerInputSchemaMismatch"
    assert error in response.json()["error"]["message"]
