"""The PagerDuty and Teams channels' config models, severity mapping, Markdown escaping and
templates, without a network (the channels against their vendors' APIs are in
tests/integration/test_notification_{pagerduty,teams}.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from kubernaut.services.notification.vendors import pagerduty, teams
from kubernaut.services.notification.vendors.base import EventKind
from tests.fixtures.incident_notices import make_notice

KEY = "R0UT1NGKEYL00PBACK0123456789abcd"
WEBHOOK = (
    "https://prod-1.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=S3cr3tSig"
)


def test_pagerduty_config_defaults_to_the_real_api(tmp_path: Path) -> None:
    config = pagerduty.PagerDutyConfig(type="pagerduty", routing_key_file=str(tmp_path / "k"))
    assert config.url == "https://events.pagerduty.com"


@pytest.mark.parametrize(
    ("model", "entry", "secret"),
    [
        # An unknown key: the credential inline instead of in a file.
        (
            pagerduty.PagerDutyConfig,
            {"type": "pagerduty", "routing_key_file": "/k", "routing_key": KEY},
            KEY,
        ),
        # The credential where its file's path belongs.
        (pagerduty.PagerDutyConfig, {"type": "pagerduty", "routing_key_file": KEY}, KEY),
        (
            teams.TeamsConfig,
            {"type": "teams", "webhook_url_file": "/u", "webhook_url": WEBHOOK},
            "S3cr3tSig",
        ),
        (teams.TeamsConfig, {"type": "teams", "webhook_url_file": WEBHOOK}, "S3cr3tSig"),
    ],
)
def test_config_refuses_unknown_keys_and_inline_secrets_without_echoing_them(
    model: type[pagerduty.PagerDutyConfig | teams.TeamsConfig], entry: dict[str, Any], secret: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(entry)
    # What a loader logs or answers: the message (errors() keeps the input, for code only).
    assert secret not in str(raised.value)


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "teams", "webhook_url_file": "/u"},  # the wrong type for the model
        {"type": "pagerduty", "routing_key_file": "/k", "url": "http://events.example.com"},
        {"type": "pagerduty", "routing_key_file": "/k", "url": "ftp://events.pagerduty.com"},
        {"type": "pagerduty"},  # no key file
    ],
)
def test_pagerduty_config_refuses_bad_entries(entry: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        pagerduty.PagerDutyConfig.model_validate(entry)


def test_pagerduty_build_names_the_field_and_never_the_key(tmp_path: Path) -> None:
    http = httpx.AsyncClient()
    short = tmp_path / "short"
    short.write_text("not-a-key-0123\n")
    config = pagerduty.PagerDutyConfig(type="pagerduty", routing_key_file=str(short))
    with pytest.raises(ValueError, match="routing_key_file") as raised:
        pagerduty.build("pd", config, http)
    assert "not-a-key-0123" not in str(raised.value)
    missing = pagerduty.PagerDutyConfig(type="pagerduty", routing_key_file=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="routing_key_file: cannot read"):
        pagerduty.build("pd", missing, http)


def test_teams_build_refuses_a_file_without_an_https_url_and_never_shows_it(tmp_path: Path) -> None:
    http = httpx.AsyncClient()
    plain = tmp_path / "url"
    plain.write_text("http://teams.example.com/hook?sig=S3cr3tSig\n")
    config = teams.TeamsConfig(type="teams", webhook_url_file=str(plain))
    with pytest.raises(ValueError, match="webhook_url_file: not an https URL") as raised:
        teams.build("teams", config, http)
    assert "S3cr3tSig" not in str(raised.value)


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("critical", "critical"),
        ("Warning", "warning"),
        ("warn", "warning"),
        ("info", "info"),
        ("none", "info"),
        ("error", "error"),
        ("", "error"),
        ("P1-whatever", "error"),
    ],
)
def test_pagerduty_severity_of_the_alert_label(label: str, severity: str) -> None:
    assert pagerduty.severity_of(label) == severity


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("restart_deployment", "restart\\_deployment"),
        ("[click](https://evil.example)", "\\[click\\](https://evil.example)"),
        ("**loud**", "\\*\\*loud\\*\\*"),
        ("a\\b", "a\\\\b"),
        ("- not a list\n1. nor this", "\\- not a list\n\n1\\. nor this"),
        # plain_text's escape, its backslash escaped in turn: Teams shows "bell\x07".
        ("bell\x07", "bell\\\\x07"),
    ],
)
def test_teams_markdown_text_shows_data_as_it_is(text: str, shown: str) -> None:
    assert teams.markdown_text(text) == shown


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_event_kind_renders_for_both_vendors(kind: EventKind) -> None:
    notice = make_notice(kind)
    summary = pagerduty.summary_of(notice)
    assert "KubePodCrashLooping" in summary and "{" not in summary
    assert summary.endswith("| Pod is crash looping.")
    card = teams.card_of(notice)
    title, headline = card["body"][0]["text"], card["body"][1]["text"]
    assert "KubePodCrashLooping" in title and "{" not in title + headline
    assert ("Approve" in str(card.get("actions"))) == (kind is EventKind.APPROVAL_NEEDED)


def test_kinds_say_different_things() -> None:
    summaries = {pagerduty.summary_of(make_notice(kind)) for kind in EventKind}
    titles = {teams.card_of(make_notice(kind))["body"][0]["text"] for kind in EventKind}
    assert len(summaries) == len(titles) == len(EventKind)
