"""The PagerDuty channel against a loopback server speaking the Events API v2
(tests/fixtures/pagerduty_loopback.py): the exact events, one alert per incident that the
incident's end resolves, and what each of PagerDuty's answers means for a retry."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from kubernaut.services.notification.vendors import pagerduty
from kubernaut.services.notification.vendors.base import EventKind
from tests.fixtures.incident_notices import INCIDENT_ID, RUNBOOK, incident_event, make_notice
from tests.fixtures.pagerduty_loopback import (
    ROUTING_KEY,
    PagerDutyLoopback,
    server_error,
    throttled,
)

pytestmark = pytest.mark.integration

APPROVE = "https://kubernaut.example/approve/tok_0123456789abcdef0123456789abcdef"
REJECT = "https://kubernaut.example/reject/tok_0123456789abcdef0123456789abcdef"


@pytest.fixture
def server() -> Iterator[PagerDutyLoopback]:
    with PagerDutyLoopback() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def key_file(tmp_path: Path, key: str = ROUTING_KEY) -> str:
    path = tmp_path / "routing-key"
    path.write_text(key + "\n")
    return str(path)


def channel_for(
    url: str, tmp_path: Path, http: httpx.AsyncClient, key: str = ROUTING_KEY
) -> pagerduty.PagerDutyChannel:
    config = pagerduty.PagerDutyConfig.model_validate(
        {"type": "pagerduty", "url": url, "routing_key_file": key_file(tmp_path, key)}
    )
    return pagerduty.build("oncall", config, http)


@pytest.fixture
def channel(
    server: PagerDutyLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> pagerduty.PagerDutyChannel:
    return channel_for(server.url, tmp_path, http)


async def test_approval_needed_is_this_exact_trigger(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel
) -> None:
    result = await channel.send(make_notice(EventKind.APPROVAL_NEEDED), {})

    assert result.delivered and not result.error
    assert result.thread == {"dedup_key": INCIDENT_ID, "page": "triggered"}
    [request] = server.requests
    assert request.path == "/v2/enqueue"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": INCIDENT_ID,
        "payload": {
            "summary": (
                "Approval needed: Kubernaut wants to run restart_deployment on Deployment"
                " shop/checkout for KubePodCrashLooping (nothing changed yet)"
                " | Pod is crash looping."
            ),
            "source": "prod-eu",
            "severity": "critical",
            "component": "Deployment shop/checkout",
            "group": "shop",
            "class": "KubePodCrashLooping",
            "timestamp": "2025-03-14T09:31:02+00:00",
            "custom_details": {
                "incident": INCIDENT_ID,
                "event": "approval_needed",
                "alert": "KubePodCrashLooping",
                "alert status": "firing",
                "alert summary": "Pod is crash looping.",
                "alert description": "Pod shop/checkout-7f9c-x2 restarted 5 times in 10 minutes.",
                "target": "Deployment shop/checkout",
                "cluster": "prod-eu",
                "action": "restart_deployment",
                "stages": [
                    "dry-run: ok: the API server accepted the change (dryRun=All)",
                    "apply: rollout restarted (generation 4)",
                    "verify: ok: 3/3 pods ready after 21.0s",
                ],
                "verdict": "effective: 0 restarts in the 2 minutes after",
                "what changed": "applied",
                "inspect": f"kubernaut incidents show {INCIDENT_ID}",
                "labels": {"namespace": "shop", "pod": "checkout-7f9c-x2", "severity": "critical"},
                "runbook": RUNBOOK,
                # The generator URL's host is not allowed as a link: shown defanged.
                "alert source": "hxxp://prometheus:9090/graph?g0[.]expr=up",
            },
        },
        "client": "Kubernaut",
        "links": [
            {"href": RUNBOOK, "text": "Runbook"},
            {"href": APPROVE, "text": "Approve in Kubernaut"},
            {"href": REJECT, "text": "Reject in Kubernaut"},
        ],
    }


@pytest.mark.parametrize("kind", list(EventKind))
async def test_every_kind_is_an_event_pagerduty_accepts(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel, kind: EventKind
) -> None:
    # The end of an incident resolves the page this channel triggered for it.
    open_page = {"dedup_key": INCIDENT_ID, "page": "triggered"}
    result = await channel.send(make_notice(kind), open_page if kind.ends_incident else {})

    assert result.delivered, result.error
    event = server.events[-1]
    if kind.ends_incident:
        # A resolve carries nothing but the key and the alert's key.
        assert event == {
            "routing_key": ROUTING_KEY,
            "event_action": "resolve",
            "dedup_key": INCIDENT_ID,
        }
    else:
        assert event["event_action"] == "trigger"
        assert event["payload"]["custom_details"]["event"] == kind.value
        assert ("links" in event and len(event["links"]) == 3) == (
            kind is EventKind.APPROVAL_NEEDED
        )


async def test_an_incident_is_one_alert_updated_then_resolved(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel
) -> None:
    thread: dict[str, str] = {}
    for kind in (EventKind.OPENED, EventKind.APPROVAL_NEEDED, EventKind.REMEDIATED):
        result = await channel.send(make_notice(kind), thread)
        assert result.delivered, result.error
        thread |= result.thread

    assert thread == {"dedup_key": INCIDENT_ID, "page": "resolved"}
    # The alert's own resolution after Kubernaut's fix: resolved once is enough.
    after = await channel.send(make_notice(EventKind.RESOLVED), thread)
    assert after.delivered and after.thread == thread
    assert list(server.alerts) == [INCIDENT_ID]
    alert = server.alerts[INCIDENT_ID]
    assert alert.actions == ["trigger", "trigger", "resolve"]
    assert alert.status == "resolved"
    # The open alert shows the latest trigger's summary; nobody was acknowledged for.
    assert alert.event["payload"]["summary"].startswith("Approval needed:")
    assert all(event["event_action"] != "acknowledge" for event in server.events)


async def test_an_incident_never_paged_is_not_resolved(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel
) -> None:
    # The route pages only some kinds: a remediation of an incident nobody was paged for
    # sends nothing.
    result = await channel.send(make_notice(EventKind.REMEDIATED), {})
    assert result.delivered and not server.requests


async def test_the_kept_dedup_key_is_reused(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel
) -> None:
    # What PagerDuty answered for this incident before (e.g. a key of an earlier version).
    result = await channel.send(make_notice(EventKind.FAILED), {"dedup_key": "kept-key-7"})

    assert result.delivered
    assert result.thread == {"dedup_key": "kept-key-7", "page": "triggered"}
    assert server.events[-1]["dedup_key"] == "kept-key-7"


@pytest.mark.parametrize(
    ("label", "severity"), [("warning", "warning"), ("none", "info"), ("", "error")]
)
async def test_severity_comes_from_the_alert_label(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel, label: str, severity: str
) -> None:
    event = incident_event()
    if label:
        event.alert.labels["severity"] = label
    else:
        del event.alert.labels["severity"]
    result = await channel.send(make_notice(EventKind.OPENED, event=event), {})

    assert result.delivered, result.error
    assert server.events[-1]["payload"]["severity"] == severity


async def test_a_long_summary_is_cut_to_1024_characters(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel
) -> None:
    event = incident_event(annotations={"summary": "x" * 5000, "description": "y" * 50_000})
    result = await channel.send(make_notice(EventKind.FAILED, event=event), {})

    assert result.delivered, result.error
    payload = server.events[-1]["payload"]
    assert len(payload["summary"]) == 1024 and payload["summary"].endswith("x…")
    assert len(payload["custom_details"]["alert description"]) == pagerduty.MAX_DETAIL


async def test_no_cluster_means_source_kubernaut(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel
) -> None:
    event = incident_event()
    event.target.cluster = ""
    result = await channel.send(make_notice(EventKind.ESCALATED, event=event), {})

    assert result.delivered, result.error
    assert server.events[-1]["payload"]["source"] == "kubernaut"


async def test_429_is_retried_later_not_delivered_not_permanent(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel
) -> None:
    server.script(throttled())
    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and not result.permanent
    # PagerDuty sends no Retry-After: its guide's 30 seconds.
    assert result.retry_after == pagerduty.RATE_LIMITED_RETRY_AFTER
    assert "429" in result.error
    assert server.alerts == {}


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retried_not_permanent(
    server: PagerDutyLoopback, channel: pagerduty.PagerDutyChannel, status: int
) -> None:
    server.script(server_error(status))
    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and not result.permanent and result.retry_after is None
    assert str(status) in result.error
    # The next attempt goes through.
    assert (await channel.send(make_notice(EventKind.OPENED), {})).delivered


async def test_an_unknown_routing_key_is_permanent_and_never_shown(
    server: PagerDutyLoopback,
    tmp_path: Path,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = "UNKNOWNKEY0000000000000000000000"
    channel = channel_for(server.url, tmp_path, http, key=other)
    caplog.set_level(logging.DEBUG)

    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and result.permanent
    assert result.error == (
        'pagerduty answered 400: Event object is invalid ["Invalid routing key"]'
    )
    assert other not in result.error and other not in caplog.text
    assert server.requests[-1].json["routing_key"] == other  # it did go, in the body


async def test_a_wrong_url_is_permanent(
    server: PagerDutyLoopback, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    channel = channel_for(server.url + "/not-pagerduty", tmp_path, http)
    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and result.permanent and "404" in result.error


async def test_no_answer_is_retried(tmp_path: Path, http: httpx.AsyncClient) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    channel = channel_for(f"http://127.0.0.1:{port}", tmp_path, http)
    result = await channel.send(make_notice(EventKind.OPENED), {})

    assert not result.delivered and not result.permanent
    assert result.error == "pagerduty: no answer (ConnectError)"


async def test_destinations_never_show_the_key(
    channel: pagerduty.PagerDutyChannel, server: PagerDutyLoopback
) -> None:
    assert channel.destinations() == ("PagerDuty Events API v2 (127.0.0.1)",)
    assert ROUTING_KEY not in repr(channel.destinations())
    assert channel.kind == "pagerduty" and channel.name == "oncall"


GOOD_TRIGGER = {
    "routing_key": ROUTING_KEY,
    "event_action": "trigger",
    "payload": {"summary": "s", "source": "kubernaut", "severity": "info"},
}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"routing_key": "short"}, "Length of 'routing_key' is incorrect"),
        ({"event_action": "acknowledged"}, "'event_action' is invalid"),
        ({"payload": {"summary": "x" * 1025, "source": "k", "severity": "info"}}, "1024"),
        ({"payload": {"summary": "s", "source": "k", "severity": "fatal"}}, "severity"),
        ({"payload": {"summary": "s", "severity": "info"}}, "'payload.source' is missing"),
        ({"event_action": "resolve", "payload": {}}, "'dedup_key' is required for resolve"),
        ({"links": [{"href": "javascript:alert(1)"}]}, "'links[0].href' must be an http/https"),
        ({"severity": "info"}, "'severity' is not a recognised field"),
    ],
)
async def test_the_loopback_refuses_what_the_api_refuses(
    server: PagerDutyLoopback, http: httpx.AsyncClient, change: dict[str, object], error: str
) -> None:
    """So a channel test passing means the event is one PagerDuty takes."""
    assert (await http.post(f"{server.url}/v2/enqueue", json=GOOD_TRIGGER)).status_code == 202
    response = await http.post(f"{server.url}/v2/enqueue", json=GOOD_TRIGGER | change)

    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "invalid event"
    assert any(error in line for line in body["errors"]), body
