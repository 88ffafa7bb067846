"""The Twilio SMS and signed-webhook channels without a network: their config models, the
SMS body's fitting, every event kind's rendering, and the receiver's `verify_webhook`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from kubernaut.services.notification.vendors import twilio, webhook
from kubernaut.services.notification.vendors.base import EventKind
from kubernaut.services.notification.vendors.webhook import (
    WebhookConfig,
    WebhookVerificationError,
    sign,
    verify_webhook,
)
from tests.fixtures.incident_notices import INCIDENT_ID, incident_event, make_notice

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "twilio-auth-token-5f1e0c9a7b3d42e8"
SECRET = "whsec-unit-0f8e7d6c5b4a39281706"
NOW = 1_760_000_000


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "twilio-token"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "webhook-secret"
    path.write_text(SECRET)
    return str(path)


def twilio_config(token_file: str, **overrides: object) -> twilio.TwilioConfig:
    entry: dict[str, object] = {
        "type": "twilio",
        "account_sid": ACCOUNT_SID,
        "auth_token_file": token_file,
        "from_number": "+15005550006",
        "to": ["+15551230001", "+447700900123"],
    }
    entry.update(overrides)
    return twilio.TwilioConfig.model_validate(entry)


# -- config models ---------------------------------------------------------------------------


def test_twilio_config_defaults_to_twilios_api_and_two_segments(token_file: str) -> None:
    config = twilio_config(token_file)
    assert config.api == "https://api.twilio.com"
    assert config.max_length == 320
    assert config.to == ("+15551230001", "+447700900123")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"auth_token": TOKEN}, "auth_token"),  # a credential inline: an unknown key
        ({"sender": "+15005550006"}, "sender"),  # any unknown key
        ({"to": ["5551230001"]}, "to"),  # not E.164
        ({"to": ["+1 555 123 0001"]}, "to"),
        ({"to": []}, "to"),
        ({"to": ["+15551230001", "+15551230001"]}, "to"),
        ({"from_number": "+1-500-555"}, "from_number"),
        ({"from_number": None}, "messaging_service_sid"),  # no sender at all
        ({"account_sid": "AC123"}, "account_sid"),
        ({"messaging_service_sid": "MG12"}, "messaging_service_sid"),
        ({"max_length": 1601}, "max_length"),  # over Twilio's own limit
        ({"api": "ftp://api.twilio.com"}, "api"),
        ({"api": "http://api.twilio.com"}, "api"),  # plain http only to loopback
        ({"type": "webhook"}, "type"),
    ],
)
def test_twilio_config_refuses(token_file: str, overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        twilio_config(token_file, **overrides)
    assert field in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_twilio_config_takes_an_alphanumeric_sender_or_a_messaging_service(
    token_file: str,
) -> None:
    assert twilio_config(token_file, from_number="Kubernaut").from_number == "Kubernaut"
    service = "MG0123456789abcdef0123456789abcdef"
    config = twilio_config(token_file, from_number=None, messaging_service_sid=service)
    assert config.messaging_service_sid == service


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"secret": SECRET}, "secret"),  # a credential inline: an unknown key
        ({"headers": {"Authorization": "x"}}, "headers"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://hooks.example.com/x"}, "url"),  # plain http only to loopback
        ({"secret_file": ""}, "secret_file"),
    ],
)
def test_webhook_config_refuses(secret_file: str, overrides: dict[str, object], field: str) -> None:
    entry: dict[str, object] = {
        "type": "webhook",
        "url": "https://hooks.example.com/kubernaut",
        "secret_file": secret_file,
    }
    entry.update(overrides)
    with pytest.raises(ValidationError) as raised:
        WebhookConfig.model_validate(entry)
    assert field in str(raised.value)
    assert SECRET not in str(raised.value)


async def test_build_reads_secrets_from_files_and_names_the_field(
    tmp_path: Path, secret_file: str
) -> None:
    async with httpx.AsyncClient() as http:
        missing = str(tmp_path / "absent")
        with pytest.raises(ValueError, match=r"pager: auth_token_file: cannot read .*absent"):
            twilio.build("pager", twilio_config(missing), http)
        short = tmp_path / "short"
        short.write_text("0123456789")
        config = WebhookConfig(type="webhook", url="https://h.example/x", secret_file=str(short))
        with pytest.raises(ValueError, match=r"hook: secret_file: .* shorter than 16") as raised:
            webhook.build("hook", config, http)
        assert "0123456789" not in str(raised.value)
        config = WebhookConfig(
            type="webhook", url="https://h.example/t/0ken?key=abc", secret_file=secret_file
        )
        # Where it sends, without the path and query that may hold a receiver's token.
        assert webhook.build("hook", config, http).destinations() == ("https://h.example/",)


# -- the SMS body ----------------------------------------------------------------------------


def test_fit_keeps_the_first_line_and_the_lines_that_fit_in_order() -> None:
    text = "incident 42\n" + "x" * 50 + "\nshort line\n" + "y" * 10
    assert twilio.fit(text, 100) == text
    # The 50-character line does not fit 40 characters; the later ones do.
    assert twilio.fit(text, 40) == "incident 42\nshort line\nyyyyyyyyyy\n..."
    assert twilio.fit("z" * 500, 160) == "z" * 157 + "..."


@pytest.mark.parametrize("kind", list(EventKind))
async def test_every_kind_renders_an_sms_with_the_incident_first(
    kind: EventKind, token_file: str
) -> None:
    async with httpx.AsyncClient() as http:
        channel = twilio.build("sms", twilio_config(token_file), http)
        body = channel.render(make_notice(kind))
    lines = body.splitlines()
    assert lines[0].startswith(f"Kubernaut incident {INCIDENT_ID}: ")
    assert lines[0].endswith(
        ": KubePodCrashLooping (critical) on Deployment shop/checkout in prod-eu"
    )
    assert len(body) <= 320
    assert body.isascii()  # GSM-friendly: our words add no UCS-2 characters


@pytest.mark.parametrize("kind", list(EventKind))
async def test_every_kind_renders_a_webhook_subject_and_text(
    kind: EventKind, secret_file: str
) -> None:
    config = WebhookConfig(type="webhook", url="https://h.example/x", secret_file=secret_file)
    async with httpx.AsyncClient() as http:
        channel = webhook.build("hook", config, http)
        subject, text = channel.render(make_notice(kind))
    assert subject.startswith("[kubernaut] ")
    assert subject.endswith(": KubePodCrashLooping on Deployment shop/checkout")
    assert "\n" not in subject
    assert text.startswith(subject + "\n")
    assert f"Incident {INCIDENT_ID}, 2025-03-14 09:31:02 UTC" in text
    assert f"Inspect: kubernaut incidents show {INCIDENT_ID}" in text


async def test_alert_text_stays_text_in_both_channels(token_file: str, secret_file: str) -> None:
    event = incident_event(
        name="Evil\x1b[2J{{ 7 * 7 }}",
        annotations={"summary": "line one\nApprove: https://evil.example/approve"},
    )
    notice = make_notice(EventKind.APPROVAL_NEEDED, event=event)
    config = WebhookConfig(type="webhook", url="https://h.example/x", secret_file=secret_file)
    async with httpx.AsyncClient() as http:
        sms = twilio.build("sms", twilio_config(token_file, max_length=1600), http).render(notice)
        subject, text = webhook.build("hook", config, http).render(notice)
    for shown in (sms, subject, text):
        assert "\x1b" not in shown
        assert "Evil\\x1b[2J{{ 7 * 7 }}" in shown  # escaped, never evaluated
        assert "https://evil.example" not in shown  # defanged
    # On one line in the SMS: the summary cannot pose as an approval line of ours.
    assert "line one Approve: hxxps://evil[.]example/approve" in sms


# -- verify_webhook --------------------------------------------------------------------------

BODY = json.dumps({"id": "incident-1:remediated:1", "kind": "remediated"}).encode()


def headers_for(
    body: bytes = BODY, at: int = NOW, event: str = "incident-1:remediated:1"
) -> dict[str, str]:
    return {"X-Kubernaut-Signature": sign(SECRET, body, at), "X-Kubernaut-Event": event}


def test_a_genuine_request_verifies_and_gives_the_event() -> None:
    assert sign(SECRET, BODY, NOW).startswith(f"t={NOW},v1=")
    event = verify_webhook(SECRET, headers_for(), BODY, now=NOW + 299)
    assert event == {"id": "incident-1:remediated:1", "kind": "remediated"}
    # Header names are case-insensitive, as HTTP's are.
    lower = {name.lower(): value for name, value in headers_for().items()}
    assert verify_webhook(SECRET.encode(), lower, BODY, now=NOW)["id"] == "incident-1:remediated:1"


def test_any_of_several_signatures_may_match_during_a_secret_rotation() -> None:
    old = sign("whsec-old-secret-0000000000", BODY, NOW).split(",")[1]
    headers = headers_for()
    headers["X-Kubernaut-Signature"] = f"{headers['X-Kubernaut-Signature']},{old}"
    assert verify_webhook(SECRET, headers, BODY, now=NOW)["id"] == "incident-1:remediated:1"


def test_refuses_a_forged_signature() -> None:
    forged = {**headers_for(), "X-Kubernaut-Signature": sign("whsec-guessed-123456", BODY, NOW)}
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        verify_webhook(SECRET, forged, BODY, now=NOW)


def test_refuses_a_changed_body() -> None:
    changed = BODY.replace(b"remediated", b"rolled_back")
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        verify_webhook(SECRET, headers_for(), changed, now=NOW)


@pytest.mark.parametrize("delay", [301, -301, 86_400])
def test_refuses_a_stale_or_future_timestamp(delay: int) -> None:
    with pytest.raises(WebhookVerificationError, match="stale or replayed"):
        verify_webhook(SECRET, headers_for(), BODY, now=NOW + delay)


def test_refuses_a_replay_under_a_fresh_timestamp() -> None:
    # An old request's signature, with its t= moved to now: the timestamp is signed too.
    captured = headers_for(at=NOW - 3600)
    digest = captured["X-Kubernaut-Signature"].split(",")[1]
    replayed = {**captured, "X-Kubernaut-Signature": f"t={NOW},{digest}"}
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        verify_webhook(SECRET, replayed, BODY, now=NOW)


def test_refuses_an_event_header_other_than_the_signed_id() -> None:
    # A replay within the tolerance under another id would slip past de-duplication.
    with pytest.raises(WebhookVerificationError, match="not the signed event's id"):
        verify_webhook(SECRET, headers_for(event="incident-1:remediated:2"), BODY, now=NOW)


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "v1=" + "0" * 64,  # no timestamp
        f"t={NOW}",  # no signature
        f"t={NOW},t={NOW},v1=" + "0" * 64,
        f"t=abc,v1={'0' * 64}",
        f"t={'9' * 5000},v1={'0' * 64}",  # a number too long to be a time
        f"t={NOW},v1={'0' * 63}",  # not a SHA-256
        f"t={NOW};v1={'0' * 64}",
        "sha256=" + "0" * 64,
    ],
)
def test_refuses_a_missing_or_malformed_signature_header(signature: str) -> None:
    headers = {"X-Kubernaut-Event": "incident-1:remediated:1"}
    if signature:
        headers["X-Kubernaut-Signature"] = signature
    with pytest.raises(WebhookVerificationError, match="X-Kubernaut-Signature"):
        verify_webhook(SECRET, headers, BODY, now=NOW)
