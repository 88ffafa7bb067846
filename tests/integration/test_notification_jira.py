"""The Jira channel against a loopback site that speaks the REST API v2: the issue the first
event creates, the comments of later events, the transition at the incident's end, and
what each of Jira's answers means."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubernaut.services.notification.vendors import jira
from kubernaut.services.notification.vendors.base import EventKind, SendResult
from tests.fixtures.incident_notices import incident_event, make_notice
from tests.fixtures.jira_loopback import (
    API_TOKEN,
    EMAIL,
    PERSONAL_ACCESS_TOKEN,
    PROJECT,
    JiraLoopback,
    errors,
    rate_limited,
    unavailable,
)

pytestmark = pytest.mark.integration

API = "/rest/api/2"


@pytest.fixture
def site() -> Iterator[JiraLoopback]:
    with JiraLoopback() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    return str(path)


def config(url: str, tmp_path: Path, **overrides: Any) -> jira.JiraConfig:
    values: dict[str, Any] = {
        "type": "jira",
        "site_url": url,
        "email": EMAIL,
        "api_token_file": secret_file(tmp_path, "api-token", API_TOKEN),
        "project_key": PROJECT,
        "labels": ("prod-eu",),
    }
    values.update(overrides)
    return jira.JiraConfig(**values)


@pytest.fixture
def channel(site: JiraLoopback, tmp_path: Path, http: httpx.AsyncClient) -> jira.JiraChannel:
    return jira.build("tickets", config(site.url, tmp_path), http)


def calls(site: JiraLoopback) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in site.requests]


async def test_first_event_creates_an_issue_with_exact_fields(
    site: JiraLoopback, channel: jira.JiraChannel
) -> None:
    notice = make_notice(EventKind.OPENED)

    result = await channel.send(notice, {})

    assert result == SendResult(True, thread={"issue_key": "OPS-1", "issue_id": "10001"})
    [request] = site.requests
    assert (request.method, request.path) == ("POST", f"{API}/issue")
    assert request.headers["accept"] == "application/json"
    _, body = channel.render(notice)
    assert request.json == {
        "fields": {
            "project": {"key": "OPS"},
            "summary": "Kubernaut: KubePodCrashLooping on Deployment shop/checkout (prod-eu)",
            "description": body,
            "issuetype": {"name": "Bug"},
            "labels": ["kubernaut", "prod-eu"],
        }
    }
    # The text in a {noformat} box, the allowed runbook as a link after it.
    assert body.startswith("{noformat}\nKubernaut opened this incident: KubePodCrashLooping")
    assert body.endswith("{noformat}\n[Runbook|https://runbooks.example/KubePodCrashLooping]")
    assert site.issues["OPS-1"].fields["description"] == body


async def test_later_events_comment_and_the_end_transitions_the_same_issue(
    site: JiraLoopback, channel: jira.JiraChannel
) -> None:
    opened = await channel.send(make_notice(EventKind.OPENED), {})
    approval = await channel.send(make_notice(EventKind.APPROVAL_NEEDED), opened.thread)

    remediated = await channel.send(make_notice(EventKind.REMEDIATED), approval.thread)

    assert approval.delivered and remediated.delivered
    assert calls(site) == [
        ("POST", f"{API}/issue"),
        ("POST", f"{API}/issue/OPS-1/comment"),
        ("POST", f"{API}/issue/OPS-1/comment"),
        ("GET", f"{API}/issue/OPS-1/transitions"),
        ("POST", f"{API}/issue/OPS-1/transitions"),
    ]
    assert site.requests[-1].json == {"transition": {"id": "31"}}
    issue = site.issues["OPS-1"]
    assert issue.status == "Done"
    approval_comment, closing_comment = issue.comments
    assert "[Approve|https://kubernaut.example/approve/tok_" in approval_comment
    assert "[Reject|https://kubernaut.example/reject/tok_" in approval_comment
    assert "Kubernaut remediated KubePodCrashLooping" in closing_comment
    assert remediated.thread["resolved"] == "true"
    assert remediated.thread["issue_key"] == "OPS-1"


async def test_a_second_end_only_comments(site: JiraLoopback, channel: jira.JiraChannel) -> None:
    opened = await channel.send(make_notice(EventKind.OPENED), {})
    remediated = await channel.send(make_notice(EventKind.REMEDIATED), opened.thread)
    before = len(site.requests)

    resolved = await channel.send(make_notice(EventKind.RESOLVED), remediated.thread)

    assert resolved.delivered
    assert calls(site)[before:] == [("POST", f"{API}/issue/OPS-1/comment")]
    assert site.issues["OPS-1"].status == "Done"


async def test_an_end_that_is_the_first_event_creates_and_transitions(
    site: JiraLoopback, channel: jira.JiraChannel
) -> None:
    result = await channel.send(make_notice(EventKind.RESOLVED), {})

    assert result.delivered
    assert [m for m, _ in calls(site)] == ["POST", "GET", "POST"]
    assert site.issues["OPS-1"].status == "Done"
    assert site.issues["OPS-1"].comments == []


async def test_a_missing_transition_is_permanent_and_names_those_offered(
    site: JiraLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    channel = jira.build("tickets", config(site.url, tmp_path, done_transition="Close"), http)
    opened = await channel.send(make_notice(EventKind.OPENED), {})

    result = await channel.send(make_notice(EventKind.REMEDIATED), opened.thread)

    assert (result.delivered, result.permanent) == (False, True)
    assert result.error == (
        "Jira: issue OPS-1 offers no transition 'Close' (done_transition) now;"
        " it offers 'Start Progress', 'Done'"
    )
    assert site.issues["OPS-1"].status == "To Do"


async def test_another_attempt_after_a_failed_transition_does_not_comment_twice(
    site: JiraLoopback, channel: jira.JiraChannel
) -> None:
    opened = await channel.send(make_notice(EventKind.OPENED), {})
    site.fail_next("transition", rate_limited(retry_after=3))
    notice = make_notice(EventKind.REMEDIATED)

    first = await channel.send(notice, opened.thread)
    again = await channel.send(notice, first.thread)

    assert (first.delivered, first.permanent, first.retry_after) == (False, False, 3.0)
    assert first.thread["commented"] == notice.key
    assert again.delivered
    assert len(site.issues["OPS-1"].comments) == 1
    assert site.issues["OPS-1"].status == "Done"


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda kind: kind.value)
async def test_every_event_kind_is_accepted_as_first_and_later_event(
    site: JiraLoopback, channel: jira.JiraChannel, kind: EventKind
) -> None:
    notice = make_notice(kind)

    first = await channel.send(notice, {})
    later = await channel.send(make_notice(kind, key="another"), first.thread)

    assert first.delivered and later.delivered, (first.error, later.error)
    summary, body = channel.render(notice)
    assert "\n" not in summary
    assert body.count("{noformat}") == 2
    assert "KubePodCrashLooping" in body and "restart_deployment" in body
    assert ("[Approve|https://" in body) == (kind is EventKind.APPROVAL_NEEDED)


async def test_a_personal_access_token_is_sent_as_bearer(
    site: JiraLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    pat_config = config(
        site.url,
        tmp_path,
        email=None,
        api_token_file=None,
        personal_access_token_file=secret_file(tmp_path, "pat", PERSONAL_ACCESS_TOKEN),
    )
    channel = jira.build("tickets", pat_config, http)

    assert (await channel.send(make_notice(EventKind.OPENED), {})).delivered
    assert site.requests[0].headers["authorization"] == f"Bearer {PERSONAL_ACCESS_TOKEN}"


async def test_429_is_retried_after_the_wait_it_asks_for(
    site: JiraLoopback, channel: jira.JiraChannel
) -> None:
    site.script(rate_limited(retry_after=17))

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent, result.retry_after) == (False, False, 17.0)
    assert result.error == "Jira answered 429: Rate limit exceeded."
    assert not site.issues


async def test_5xx_is_retried(site: JiraLoopback, channel: jira.JiraChannel) -> None:
    site.script(unavailable())

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent, result.retry_after) == (False, False, None)
    assert "503" in result.error


async def test_no_answer_is_retried(tmp_path: Path, http: httpx.AsyncClient) -> None:
    with socket.socket() as closed:
        # Bound, never listening: connecting is refused.
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        result = await jira.build("tickets", config(url, tmp_path), http).send(
            make_notice(EventKind.OPENED), {}
        )

    assert (result.delivered, result.permanent) == (False, False)
    assert "ConnectError" in result.error


async def test_wrong_credentials_are_permanent_and_the_error_holds_no_secret(
    site: JiraLoopback,
    tmp_path: Path,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "ATATT-not-the-token-41d2"
    channel = jira.build(
        "tickets",
        config(site.url, tmp_path, api_token_file=secret_file(tmp_path, "wrong", wrong)),
        http,
    )

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent) == (False, True)
    assert (
        result.error == "Jira answered 401: Client must be authenticated to access this resource."
    )
    assert caplog.records, "httpx logs each request at DEBUG"
    for shown in (result.error, caplog.text):
        assert wrong not in shown and API_TOKEN not in shown


async def test_a_forbidden_project_is_permanent(
    site: JiraLoopback, channel: jira.JiraChannel
) -> None:
    site.script(errors(403, "You do not have permission to create issues in this project."))

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent) == (False, True)
    assert result.error == (
        "Jira answered 403: You do not have permission to create issues in this project."
    )


async def test_an_unknown_issue_type_is_permanent_with_jiras_field_error(
    site: JiraLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    channel = jira.build("tickets", config(site.url, tmp_path, issue_type="Incidnet"), http)

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent) == (False, True)
    assert result.error == "Jira answered 400: issuetype: Specify a valid issue type"


async def test_a_deleted_issue_is_permanent(site: JiraLoopback, channel: jira.JiraChannel) -> None:
    result = await channel.send(
        make_notice(EventKind.FAILED), {"issue_key": "OPS-999", "issue_id": "19999"}
    )

    assert (result.delivered, result.permanent) == (False, True)
    assert result.error == (
        "Jira answered 404: Issue does not exist or you do not have permission to see it."
    )


async def test_long_text_is_cut_to_jiras_limits(
    site: JiraLoopback, channel: jira.JiraChannel
) -> None:
    event = incident_event(
        name="KubePodCrashLooping\n" + "X" * 300,
        annotations={
            "summary": "s",
            "description": "restarted " * 4000,
            "runbook_url": "https://runbooks.example/KubePodCrashLooping",
        },
    )

    opened = await channel.send(make_notice(EventKind.OPENED, event=event), {})
    noted = await channel.send(make_notice(EventKind.FAILED, event=event), opened.thread)

    assert opened.delivered and noted.delivered, (opened.error, noted.error)
    fields = site.requests[0].json["fields"]
    assert len(fields["summary"]) == jira.MAX_SUMMARY and "\n" not in fields["summary"]
    assert fields["summary"].endswith("…")
    for text in (fields["description"], site.issues["OPS-1"].comments[0]):
        assert len(text) == jira.MAX_TEXT
        # Cut inside the box: it is still closed, the links still follow it.
        assert text.endswith(
            "…\n{noformat}\n[Runbook|https://runbooks.example/KubePodCrashLooping]"
        )


async def test_wiki_markup_in_alert_data_stays_text(
    site: JiraLoopback, channel: jira.JiraChannel
) -> None:
    markup = "{noformat} [~accountid:5b10a2844c20165700ede21g] {color:red}x{color} !evil.png!"
    event = incident_event(annotations={"summary": markup, "description": "d"})

    assert (await channel.send(make_notice(EventKind.OPENED, event=event), {})).delivered

    description = site.issues["OPS-1"].fields["description"]
    # Only the box's own tags: the alert's closing tag cannot end it early.
    assert description.count("{noformat}") == 2
    inside = description.split("{noformat}")[1]
    assert "{ noformat} [~accountid:5b10a2844c20165700ede21g] {color:red}x{color}" in inside
