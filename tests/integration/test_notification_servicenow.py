"""The ServiceNow channel against a loopback instance that speaks the Table API: the
incident the first event creates, the work notes and resolution of later events, and what
each of ServiceNow's answers means."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from kubernaut.services.notification.vendors import servicenow
from kubernaut.services.notification.vendors.base import EventKind, SendResult
from tests.fixtures.incident_notices import INCIDENT_ID, incident_event, make_notice
from tests.fixtures.servicenow_loopback import (
    PASSWORD,
    TOKEN,
    USERNAME,
    ServiceNowLoopback,
    failure,
    rate_limited,
    unavailable,
)

pytestmark = pytest.mark.integration

TABLE = "/api/now/table/incident"


@pytest.fixture
def instance() -> Iterator[ServiceNowLoopback]:
    with ServiceNowLoopback() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    return str(path)


def config(url: str, tmp_path: Path, **overrides: Any) -> servicenow.ServiceNowConfig:
    values: dict[str, Any] = {
        "type": "servicenow",
        "instance_url": url,
        "username": USERNAME,
        "password_file": secret_file(tmp_path, "password", PASSWORD),
        "assignment_group": "Kubernetes Platform",
        "caller_id": "svc.kubernaut",
    }
    values.update(overrides)
    return servicenow.ServiceNowConfig(**values)


@pytest.fixture
def channel(
    instance: ServiceNowLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> servicenow.ServiceNowChannel:
    return servicenow.build("itsm", config(instance.url, tmp_path), http)


async def test_first_event_creates_an_incident_with_the_table_fields(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel
) -> None:
    notice = make_notice(EventKind.OPENED)

    result = await channel.send(notice, {})

    assert result == SendResult(
        True, thread={"sys_id": result.thread["sys_id"], "number": "INC0010001"}
    )
    [request] = instance.requests
    assert request.method == "POST"
    assert urlsplit(request.path).path == TABLE
    assert parse_qs(urlsplit(request.path).query) == {"sysparm_fields": ["sys_id,number"]}
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"
    title, text = channel.render(notice)
    assert request.json == {
        "short_description": "Kubernaut: KubePodCrashLooping on Deployment shop/checkout (prod-eu)",
        "description": text,
        "urgency": "1",
        "impact": "1",
        "category": "software",
        "correlation_id": INCIDENT_ID,
        "correlation_display": "Kubernaut",
        "caller_id": "svc.kubernaut",
        "assignment_group": "Kubernetes Platform",
    }
    assert title == request.json["short_description"]
    assert text.startswith("Kubernaut opened this incident: KubePodCrashLooping fires on")
    assert "Runbook:     https://runbooks.example/KubePodCrashLooping" in text
    assert f"Inspect: kubernaut incidents show {INCIDENT_ID}" in text
    assert instance.incidents[result.thread["sys_id"]]["state"] == "1"


async def test_later_events_are_work_notes_and_the_end_resolves_the_same_incident(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel
) -> None:
    opened = await channel.send(make_notice(EventKind.OPENED), {})
    sys_id = opened.thread["sys_id"]

    approval = await channel.send(make_notice(EventKind.APPROVAL_NEEDED), opened.thread)
    remediated = await channel.send(make_notice(EventKind.REMEDIATED), opened.thread)

    assert approval.delivered and remediated.delivered
    assert approval.thread == remediated.thread == opened.thread
    assert [(r.method, urlsplit(r.path).path) for r in instance.requests] == [
        ("POST", TABLE),
        ("PATCH", f"{TABLE}/{sys_id}"),
        ("PATCH", f"{TABLE}/{sys_id}"),
    ]
    assert set(instance.requests[1].json) == {"work_notes"}
    [note] = instance.work_notes[sys_id]
    assert "waiting for an operator's approval" in note
    assert "Approve: https://kubernaut.example/approve/tok_" in note
    assert "Reject:  https://kubernaut.example/reject/tok_" in note
    resolution = instance.requests[2].json
    assert resolution["state"] == "6"
    assert resolution["close_code"] == "Solved (Permanently)"
    assert resolution["close_notes"].startswith(
        "Kubernaut remediated KubePodCrashLooping on Deployment shop/checkout"
        " with restart_deployment"
    )
    [incident] = instance.by_correlation(INCIDENT_ID)
    assert incident["state"] == "6"


async def test_an_end_that_is_the_first_event_creates_and_resolves(
    instance: ServiceNowLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    channel = servicenow.build(
        "itsm", config(instance.url, tmp_path, close_code="Solved Remotely (Permanently)"), http
    )

    result = await channel.send(make_notice(EventKind.RESOLVED), {})

    assert result.delivered
    assert [r.method for r in instance.requests] == ["POST", "PATCH"]
    [incident] = instance.by_correlation(INCIDENT_ID)
    assert incident["state"] == "6"
    assert incident["close_code"] == "Solved Remotely (Permanently)"
    assert "has resolved: the incident is over" in incident["close_notes"]


async def test_a_failed_resolution_keeps_the_new_incident_for_the_next_attempt(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel
) -> None:
    instance.fail_next("update", rate_limited(retry_after=5))
    notice = make_notice(EventKind.REMEDIATED)

    first = await channel.send(notice, {})
    again = await channel.send(notice, first.thread)

    assert (first.delivered, first.permanent, first.retry_after) == (False, False, 5.0)
    assert first.thread["sys_id"] in instance.incidents
    assert again.delivered
    [incident] = instance.by_correlation(INCIDENT_ID)
    assert incident["state"] == "6"


@pytest.mark.parametrize(
    ("severity", "urgency"), [("critical", "1"), ("warning", "2"), ("info", "3"), ("", "3")]
)
async def test_urgency_and_impact_follow_the_severity(
    instance: ServiceNowLoopback,
    channel: servicenow.ServiceNowChannel,
    severity: str,
    urgency: str,
) -> None:
    event = incident_event()
    event.alert.labels["severity"] = severity

    assert (await channel.send(make_notice(EventKind.OPENED, event=event), {})).delivered

    fields = instance.requests[0].json
    assert (fields["urgency"], fields["impact"]) == (urgency, urgency)


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda kind: kind.value)
async def test_every_event_kind_is_accepted_as_first_and_later_event(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel, kind: EventKind
) -> None:
    notice = make_notice(kind)

    first = await channel.send(notice, {})
    later = await channel.send(notice, first.thread)

    assert first.delivered and later.delivered, (first.error, later.error)
    _, text = channel.render(notice)
    assert "KubePodCrashLooping" in text and "Deployment shop/checkout" in text
    assert "restart_deployment" in text and "Verdict so far" in text
    assert ("Approve: https://" in text) == (kind is EventKind.APPROVAL_NEEDED)


async def test_an_oauth_token_is_sent_as_bearer(
    instance: ServiceNowLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    token_config = config(
        instance.url,
        tmp_path,
        username=None,
        password_file=None,
        token_file=secret_file(tmp_path, "token", TOKEN),
    )
    channel = servicenow.build("itsm", token_config, http)

    assert (await channel.send(make_notice(EventKind.OPENED), {})).delivered
    assert instance.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


async def test_429_is_retried_after_the_wait_it_asks_for(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel
) -> None:
    instance.script(rate_limited(retry_after=30))

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent, result.retry_after) == (False, False, 30.0)
    assert "429" in result.error and "Rate limit" in result.error
    assert not instance.incidents


async def test_5xx_is_retried(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel
) -> None:
    instance.script(unavailable())

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent, result.retry_after) == (False, False, None)
    assert "503" in result.error


async def test_no_answer_is_retried(tmp_path: Path, http: httpx.AsyncClient) -> None:
    with socket.socket() as closed:
        # Bound, never listening: connecting is refused.
        closed.bind(("127.0.0.1", 0))
        channel = servicenow.build(
            "itsm", config(f"http://127.0.0.1:{closed.getsockname()[1]}", tmp_path), http
        )
        result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent) == (False, False)
    assert "ConnectError" in result.error


async def test_wrong_credentials_are_permanent_and_the_error_holds_no_secret(
    instance: ServiceNowLoopback,
    tmp_path: Path,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password-8c1f0e"
    channel = servicenow.build(
        "itsm",
        config(instance.url, tmp_path, password_file=secret_file(tmp_path, "wrong", wrong)),
        http,
    )

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent) == (False, True)
    assert result.error == (
        "ServiceNow answered 401: User Not Authenticated (Required to provide Auth information)"
    )
    assert caplog.records, "httpx logs each request at DEBUG"
    for shown in (result.error, caplog.text):
        assert wrong not in shown and PASSWORD not in shown


@pytest.mark.parametrize(
    "answer",
    [
        failure(403, "Operation Failed", "ACL Exception Insert Failed due to security constraints"),
        failure(400, "Invalid table incident"),
    ],
    ids=["403-acl", "400"],
)
async def test_a_refused_configuration_is_permanent(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel, answer: Any
) -> None:
    instance.script(answer)

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert (result.delivered, result.permanent) == (False, True)
    assert result.error.startswith(f"ServiceNow answered {answer.status}: ")
    assert answer.body["error"]["message"] in result.error


async def test_an_unknown_close_code_is_refused_permanently(
    instance: ServiceNowLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    channel = servicenow.build("itsm", config(instance.url, tmp_path, close_code="Fixed"), http)
    opened = await channel.send(make_notice(EventKind.OPENED), {})

    result = await channel.send(make_notice(EventKind.REMEDIATED), opened.thread)

    assert (result.delivered, result.permanent) == (False, True)
    assert "close_code" in result.error


async def test_a_deleted_incident_is_permanent(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel
) -> None:
    result = await channel.send(
        make_notice(EventKind.FAILED), {"sys_id": "0" * 32, "number": "INC0000001"}
    )

    assert (result.delivered, result.permanent) == (False, True)
    assert result.error == (
        "ServiceNow answered 404: No Record found"
        " (Record doesn't exist or ACL restricts the record retrieval)"
    )


async def test_long_text_is_cut_to_the_field_lengths(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel
) -> None:
    event = incident_event(
        name="KubePodCrashLooping" + "X" * 300,
        annotations={"summary": "s", "description": "restarted " * 1000},
    )
    notice = make_notice(EventKind.OPENED, event=event)

    opened = await channel.send(notice, {})
    noted = await channel.send(make_notice(EventKind.FAILED, event=event), opened.thread)

    assert opened.delivered and noted.delivered
    fields = instance.requests[0].json
    assert len(fields["short_description"]) == servicenow.MAX_SHORT_DESCRIPTION
    assert fields["short_description"].endswith("…")
    assert len(fields["description"]) == servicenow.MAX_TEXT
    assert len(instance.requests[1].json["work_notes"]) == servicenow.MAX_TEXT


async def test_code_tags_in_alert_data_stay_text(
    instance: ServiceNowLoopback, channel: servicenow.ServiceNowChannel
) -> None:
    event = incident_event(
        annotations={"summary": "[code]<img src=x onerror=alert(1)>[/CODE]", "description": "d"}
    )
    opened = await channel.send(make_notice(EventKind.OPENED, event=event), {})

    await channel.send(make_notice(EventKind.FAILED, event=event), opened.thread)

    [note] = instance.work_notes[opened.thread["sys_id"]]
    assert "(code)<img src=x onerror=alert(1)>(/CODE)" in note
    assert "[code]" not in note.lower() and "[/code]" not in note.lower()
