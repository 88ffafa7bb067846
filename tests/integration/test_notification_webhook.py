"""The signed webhook channel against a loopback receiver that verifies every request with
`verify_webhook`: the exact event it receives, the signature and event headers, a retry
arriving under the same id, and how each answer maps to a SendResult."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubernaut.services.notification.vendors import webhook
from kubernaut.services.notification.vendors.base import EventKind, SendResult
from kubernaut.services.notification.vendors.webhook import MAX_TEXT
from tests.fixtures.incident_notices import INCIDENT_ID, RUNBOOK, incident_event, make_notice
from tests.fixtures.scripted_http import Answer
from tests.fixtures.webhook_loopback import SECRET, WebhookReceiver, status

pytestmark = pytest.mark.integration

ON = "KubePodCrashLooping on Deployment shop/checkout"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as loopback:
        yield loopback


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture(autouse=True)
def _all_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def channel(
    url: str, http: httpx.AsyncClient, tmp_path: Path, secret: str = SECRET
) -> webhook.WebhookChannel:
    path = tmp_path / "webhook-secret"
    path.write_text(secret + "\n")
    config = webhook.WebhookConfig(type="webhook", url=url, secret_file=str(path))
    return webhook.build("integrations", config, http)


def expected_event(kind: EventKind, subject: str, text: str, **links: str) -> dict[str, Any]:
    return {
        "id": f"{INCIDENT_ID}:{kind.value}:1",
        "kind": kind.value,
        "incident_id": INCIDENT_ID,
        "occurred_at": "2025-03-14T09:31:02Z",
        "ends_incident": kind.ends_incident,
        "alert": {
            "name": "KubePodCrashLooping",
            "status": "firing",
            "severity": "critical",
            "summary": "Pod is crash looping.",
            "description": "Pod shop/checkout-7f9c-x2 restarted 5 times in 10 minutes.",
            "starts_at": "2025-03-14T09:26:53Z",
            "labels": {"namespace": "shop", "pod": "checkout-7f9c-x2", "severity": "critical"},
        },
        "target": {
            "cluster": "prod-eu",
            "namespace": "shop",
            "kind": "Deployment",
            "name": "checkout",
        },
        "action": "restart_deployment",
        "changed": "applied",
        "stages": [
            "dry-run: ok: the API server accepted the change (dryRun=All)",
            "apply: rollout restarted (generation 4)",
            "verify: ok: 3/3 pods ready after 21.0s",
        ],
        "verdict": "effective: 0 restarts in the 2 minutes after",
        # The Prometheus source is not on the link allow-list: not a link to follow.
        "links": {"runbook": RUNBOOK, **links},
        "inspect_command": f"kubernaut incidents show {INCIDENT_ID}",
        "subject": subject,
        "text": text,
    }


async def test_the_receiver_gets_the_signed_event_exactly(
    receiver: WebhookReceiver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    hook = channel(receiver.hook_url, http, tmp_path)
    notice = make_notice(EventKind.REMEDIATED)
    sent_at = int(time.time())

    result = await hook.send(notice, {})

    assert result == SendResult(True)
    subject = f"[kubernaut] Remediated: {ON}"
    text = (
        f"{subject}\n\n"
        "What fired: KubePodCrashLooping (firing, severity critical)\n"
        "  Pod is crash looping.\n"
        "  Pod shop/checkout-7f9c-x2 restarted 5 times in 10 minutes.\n"
        "On what: Deployment shop/checkout (cluster prod-eu)\n"
        "Action: restart_deployment\n"
        "What was done, and why:\n"
        "  - dry-run: ok: the API server accepted the change (dryRun=All)\n"
        "  - apply: rollout restarted (generation 4)\n"
        "  - verify: ok: 3/3 pods ready after 21.0s\n"
        "Verdict: effective: 0 restarts in the 2 minutes after\n"
        f"Runbook: {RUNBOOK}\n"
        "Source: hxxp://prometheus:9090/graph?g0[.]expr=up (not a link: host not on "
        "KUBERNAUT_NOTIFICATION_LINK_HOSTS)\n"
        f"Inspect: kubernaut incidents show {INCIDENT_ID}\n\n"
        f"Incident {INCIDENT_ID}, 2025-03-14 09:31:02 UTC\n"
    )
    assert receiver.events == {notice.key: expected_event(EventKind.REMEDIATED, subject, text)}
    (request,) = receiver.requests
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-kubernaut-event"] == notice.key
    stamp, _, digest = request.headers["x-kubernaut-signature"].partition(",")
    assert abs(int(stamp.removeprefix("t=")) - sent_at) <= 2
    assert digest.startswith("v1=") and len(digest) == 3 + 64


async def test_approval_needed_carries_both_decision_links(
    receiver: WebhookReceiver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    notice = make_notice(EventKind.APPROVAL_NEEDED)
    assert (await channel(receiver.hook_url, http, tmp_path).send(notice, {})).delivered
    event = receiver.events[notice.key]
    assert event["links"] == {
        "runbook": RUNBOOK,
        "approve": notice.approve_url,
        "reject": notice.reject_url,
    }
    assert event["subject"] == f"[kubernaut] Approval needed: {ON}"
    assert "Kubernaut wants to run: restart_deployment\n" in event["text"]
    assert f"  Approve: {notice.approve_url}\n  Reject:  {notice.reject_url}\n" in event["text"]
    assert event["ends_incident"] is False


async def test_a_retry_after_5xx_arrives_again_under_the_same_id(
    receiver: WebhookReceiver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    hook = channel(receiver.hook_url, http, tmp_path)
    notice = make_notice(EventKind.ROLLED_BACK)
    receiver.script(status(503))

    first = await hook.send(notice, {})
    assert not first.delivered
    assert not first.permanent
    assert first.retry_after is None
    assert first.error.startswith("webhook answered 503")

    assert (await hook.send(notice, {})).delivered
    # Both verified; the receiver keeps the event once, by its id.
    assert receiver.deliveries == [notice.key, notice.key]
    assert list(receiver.events) == [notice.key]


async def test_429_is_retried_after_its_retry_after(
    receiver: WebhookReceiver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    receiver.script(status(429, retry_after="12"))
    result = await channel(receiver.hook_url, http, tmp_path).send(
        make_notice(EventKind.FAILED), {}
    )
    assert not result.delivered
    assert not result.permanent
    assert result.retry_after == 12.0


@pytest.mark.parametrize("code", [400, 404, 410, 413])
async def test_other_4xx_are_permanent(
    receiver: WebhookReceiver, http: httpx.AsyncClient, tmp_path: Path, code: int
) -> None:
    receiver.script(status(code))
    result = await channel(receiver.hook_url, http, tmp_path).send(
        make_notice(EventKind.OPENED), {}
    )
    assert not result.delivered
    assert result.permanent
    assert result.error.startswith(f"webhook answered {code}")


async def test_a_redirect_is_not_followed_and_is_permanent(
    receiver: WebhookReceiver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    receiver.script(Answer(308, {}, headers={"Location": "https://elsewhere.example/hook"}))
    result = await channel(receiver.hook_url, http, tmp_path).send(
        make_notice(EventKind.OPENED), {}
    )
    assert result.permanent
    assert "the receiver moved" in result.error
    assert len(receiver.requests) == 1


async def test_a_wrong_secret_is_refused_permanently_and_never_shown(
    receiver: WebhookReceiver,
    http: httpx.AsyncClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "whsec-not-the-receivers-0a1b2c3d"
    result = await channel(receiver.hook_url, http, tmp_path, secret=wrong).send(
        make_notice(EventKind.STORM), {}
    )
    assert not result.delivered
    assert result.permanent
    assert result.error.startswith("webhook answered 401")
    assert receiver.refusals == ["signature does not match the body"]
    assert receiver.events == {}
    for secret in (wrong, SECRET):
        assert secret not in result.error
        assert secret not in caplog.text


async def test_no_answer_is_retried(http: httpx.AsyncClient, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = channel(f"http://127.0.0.1:{port}/hooks/kubernaut", http, tmp_path)
    result = await hook.send(make_notice(EventKind.OPENED), {})
    assert result == SendResult(False, "webhook: no answer (ConnectError)")


async def test_long_text_is_cut_and_the_event_still_verifies(
    receiver: WebhookReceiver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    event = incident_event(stages=[f"verify: attempt {n}: " + "w" * 200 for n in range(200)])
    notice = make_notice(EventKind.FAILED, event=event)
    assert (await channel(receiver.hook_url, http, tmp_path).send(notice, {})).delivered
    received = receiver.events[notice.key]
    assert len(received["text"]) == MAX_TEXT
    assert received["text"].endswith("…")
    # The structured stages are whole: a receiver that needs them all has them.
    assert len(received["stages"]) == 200
