"""The Twilio SMS channel against a loopback server speaking Twilio's Messages API: the
exact form each recipient's message is, Basic auth, how every Twilio answer maps to a
SendResult, resuming after a partial failure without texting anyone twice, and bodies cut
to the configured length."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from kubernaut.services.notification.vendors import twilio
from kubernaut.services.notification.vendors.base import EventKind, SendResult
from tests.fixtures.incident_notices import INCIDENT_ID, incident_event, make_notice
from tests.fixtures.scripted_http import Answer
from tests.fixtures.twilio_loopback import ACCOUNT_SID, AUTH_TOKEN, TwilioLoopback, error, form_of

pytestmark = pytest.mark.integration

FROM = "+15005550006"
ALICE = "+15551230001"
BOB = "+447700900123"
CAROL = "+4915112345678"
ON = "KubePodCrashLooping (critical) on Deployment shop/checkout in prod-eu"


@pytest.fixture
def server() -> Iterator[TwilioLoopback]:
    with TwilioLoopback() as loopback:
        yield loopback


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture(autouse=True)
def _all_logs(caplog: pytest.LogCaptureFixture) -> None:
    # httpx and httpcore log every request at DEBUG: what a leaked credential would be in.
    caplog.set_level(logging.DEBUG)


def token_file(tmp_path: Path, token: str = AUTH_TOKEN) -> str:
    path = tmp_path / "auth-token"
    path.write_text(token + "\n")
    return str(path)


def channel(
    server: TwilioLoopback,
    http: httpx.AsyncClient,
    tmp_path: Path,
    *,
    token: str = AUTH_TOKEN,
    **overrides: object,
) -> twilio.TwilioChannel:
    entry: dict[str, object] = {
        "type": "twilio",
        "api": server.url,
        "account_sid": ACCOUNT_SID,
        "auth_token_file": token_file(tmp_path, token),
        "from_number": FROM,
        "to": [ALICE, BOB],
    }
    entry.update(overrides)
    return twilio.build("oncall-sms", twilio.TwilioConfig.model_validate(entry), http)


async def test_each_recipient_gets_one_message_with_the_incident_and_key_facts_first(
    server: TwilioLoopback, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    sms = channel(server, http, tmp_path)
    result = await sms.send(make_notice(EventKind.REMEDIATED), {})

    assert result.delivered, result.error
    body = (
        f"Kubernaut incident {INCIDENT_ID}: Remediated: {ON}\n"
        "Action: restart_deployment\n"
        "Pod is crash looping.\n"
        "Why: verify: ok: 3/3 pods ready after 21.0s\n"
        "Verdict: effective: 0 restarts in the 2 minutes after\n"
        "..."
    )
    assert server.messages == [
        {"To": ALICE, "From": FROM, "Body": body},
        {"To": BOB, "From": FROM, "Body": body},
    ]
    request = server.requests[0]
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    # The sids Twilio gave, one per recipient, kept for this event.
    assert sorted(result.thread) == sorted(
        f"sms {INCIDENT_ID}:remediated:1 {number}" for number in (ALICE, BOB)
    )
    assert all(sid.startswith("SM") and len(sid) == 34 for sid in result.thread.values())
    assert sms.destinations() == (ALICE, BOB)


async def test_approval_sms_carries_both_links_or_neither(
    server: TwilioLoopback, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    notice = make_notice(EventKind.APPROVAL_NEEDED)
    decide = f"Decide: kubernaut workflows approve (or reject) {INCIDENT_ID}"
    links = f"Approve: {notice.approve_url} Reject: {notice.reject_url}"

    roomy = channel(server, http, tmp_path, to=[ALICE], max_length=640)
    assert (await roomy.send(notice, {})).delivered
    lines = server.messages[-1]["Body"].splitlines()
    assert lines[:4] == [
        f"Kubernaut incident {INCIDENT_ID}: APPROVAL NEEDED: {ON}",
        "Wants to run: restart_deployment",
        links,
        decide,
    ]

    # Two segments leave no room for both links: neither is sent, the command is.
    tight = channel(server, http, tmp_path, to=[ALICE])
    assert (await tight.send(notice, {})).delivered
    body = server.messages[-1]["Body"]
    assert "Approve:" not in body and "Reject:" not in body
    assert decide in body.splitlines()


async def test_a_messaging_service_sends_without_from(
    server: TwilioLoopback, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    service = "MG0123456789abcdef0123456789abcdef"
    sms = channel(
        server, http, tmp_path, from_number=None, messaging_service_sid=service, to=[ALICE]
    )
    assert (await sms.send(make_notice(EventKind.FAILED), {})).delivered
    (message,) = server.messages
    assert set(message) == {"To", "MessagingServiceSid", "Body"}
    assert message["MessagingServiceSid"] == service


async def test_429_stops_and_the_next_attempt_texts_only_who_was_not_texted(
    server: TwilioLoopback, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    sms = channel(server, http, tmp_path, to=[ALICE, BOB, CAROL])
    notice = make_notice(EventKind.FAILED)
    server.script(
        Answer(201, {"sid": "SM" + "a" * 32, "status": "queued"}),
        error(429, 20429, retry_after="30"),
    )

    first = await sms.send(notice, {})

    assert not first.delivered
    assert not first.permanent
    assert first.retry_after == 30.0
    assert f"twilio answered 429 for {BOB}: error 20429: Too Many Requests" in first.error
    # Carol was not tried: the account is rate-limited, not Bob's number.
    assert [form_of(r)["To"] for r in server.requests] == [ALICE, BOB]
    assert first.thread == {f"sms {notice.key} {ALICE}": "SM" + "a" * 32}

    second = await sms.send(notice, first.thread)

    assert second.delivered, second.error
    assert [m["To"] for m in server.messages] == [BOB, CAROL]
    assert [form_of(r)["To"] for r in server.requests[2:]] == [BOB, CAROL]


@pytest.mark.parametrize(("status", "code"), [(500, 20500), (503, 20503)])
async def test_5xx_is_retried_not_permanent(
    server: TwilioLoopback, http: httpx.AsyncClient, tmp_path: Path, status: int, code: int
) -> None:
    server.script(error(status, code))
    result = await channel(server, http, tmp_path).send(make_notice(EventKind.OPENED), {})
    assert not result.delivered
    assert not result.permanent
    assert result.retry_after is None
    assert f"twilio answered {status} for {ALICE}: error {code}" in result.error


async def test_an_invalid_number_is_permanent_and_the_others_still_get_it(
    server: TwilioLoopback, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    server.script(error(400, 21211, message=f"The 'To' number {ALICE} is not valid."))
    result = await channel(server, http, tmp_path).send(make_notice(EventKind.ESCALATED), {})
    assert not result.delivered
    assert result.permanent
    assert result.error == (
        f"twilio answered 400 for {ALICE}: error 21211: The 'To' number {ALICE} is not "
        "valid. (https://www.twilio.com/docs/errors/21211)"
    )
    assert [m["To"] for m in server.messages] == [BOB]
    assert list(result.thread) == [f"sms {INCIDENT_ID}:escalated:1 {BOB}"]


async def test_a_wrong_token_is_permanent_and_never_shown(
    server: TwilioLoopback,
    http: httpx.AsyncClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "wrong-token-9c8b7a6d5e4f3a2b"
    result = await channel(server, http, tmp_path, token=wrong).send(
        make_notice(EventKind.STORM), {}
    )
    assert not result.delivered
    assert result.permanent
    assert "twilio answered 401" in result.error and "error 20003: Authenticate" in result.error
    # One request: a refused credential is refused for every recipient alike.
    assert len(server.requests) == 1
    for secret in (wrong, AUTH_TOKEN):
        assert secret not in result.error
        assert secret not in caplog.text
    assert server.messages == []


async def test_another_accounts_sid_is_permanent(
    server: TwilioLoopback, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    other = "AC" + "f" * 32
    result = await channel(server, http, tmp_path, account_sid=other, to=[ALICE]).send(
        make_notice(EventKind.REFUSED), {}
    )
    assert result.permanent
    assert "twilio answered 404" in result.error and "error 20404" in result.error
    assert AUTH_TOKEN not in result.error


async def test_no_answer_is_retried(http: httpx.AsyncClient, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    entry = {
        "type": "twilio",
        "api": f"http://127.0.0.1:{port}",
        "account_sid": ACCOUNT_SID,
        "auth_token_file": token_file(tmp_path),
        "from_number": FROM,
        "to": [ALICE],
    }
    sms = twilio.build("oncall-sms", twilio.TwilioConfig.model_validate(entry), http)
    result = await sms.send(make_notice(EventKind.OPENED), {})
    assert result == SendResult(False, "twilio: no answer (ConnectError)")


# At 1600 characters the template's own bounds on each free-text value suffice.
@pytest.mark.parametrize(("limit", "cut_lines"), [(160, True), (320, True), (1600, False)])
async def test_long_text_is_cut_to_the_limit_keeping_the_incident_first(
    server: TwilioLoopback, http: httpx.AsyncClient, tmp_path: Path, limit: int, cut_lines: bool
) -> None:
    event = incident_event(
        name="KubePodCrashLooping" + "X" * 3000,
        annotations={"summary": "S" * 5000, "description": "D" * 5000},
        stages=[f"verify: attempt {n}: " + "w" * 400 for n in range(20)],
    )
    sms = channel(server, http, tmp_path, to=[ALICE], max_length=limit)
    result = await sms.send(make_notice(EventKind.FAILED, event=event), {})
    # Delivered: Twilio (the loopback) refuses a Body over 1600 characters with 21617.
    assert result.delivered, result.error
    body = server.messages[0]["Body"]
    assert len(body) <= limit
    assert body.startswith(f"Kubernaut incident {INCIDENT_ID}: FIX FAILED: KubePodCrashLooping")
    assert body.endswith("...") is cut_lines
