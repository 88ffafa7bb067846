"""The ServiceNow and Jira channels' entries in the routing file: unknown keys and inline
credentials are refused, credentials come from files, and every event kind renders within
the vendors' limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from kubernaut.services.notification.vendors import jira, servicenow
from kubernaut.services.notification.vendors.base import EventKind
from tests.fixtures.incident_notices import make_notice

SECRET = "hunter2-inline-secret-7d1c"
SERVICENOW: dict[str, Any] = {
    "type": "servicenow",
    "instance_url": "https://acme.service-now.com",
    "username": "svc.kubernaut",
    "password_file": "/var/run/secrets/servicenow/password",
}
JIRA: dict[str, Any] = {
    "type": "jira",
    "site_url": "https://acme.atlassian.net",
    "email": "kubernaut@acme.example",
    "api_token_file": "/var/run/secrets/jira/token",
    "project_key": "OPS",
}


def test_valid_entries_parse_with_the_documented_defaults() -> None:
    sn = servicenow.ServiceNowConfig(**SERVICENOW)
    assert (sn.category, sn.close_code) == ("software", "Solved (Permanently)")
    issue = jira.JiraConfig(**JIRA)
    assert (issue.issue_type, issue.done_transition, issue.labels) == ("Bug", "Done", ())


@pytest.mark.parametrize(
    ("model", "entry", "extra"),
    [
        (servicenow.ServiceNowConfig, SERVICENOW, {"password": SECRET}),
        (servicenow.ServiceNowConfig, SERVICENOW, {"token": SECRET}),
        (servicenow.ServiceNowConfig, SERVICENOW, {"table": "problem"}),
        (jira.JiraConfig, JIRA, {"api_token": SECRET}),
        (jira.JiraConfig, JIRA, {"priority": "High"}),
    ],
    ids=[
        "servicenow-password",
        "servicenow-token",
        "servicenow-unknown",
        "jira-token",
        "jira-unknown",
    ],
)
def test_unknown_keys_and_inline_secrets_are_refused_without_echoing_them(
    model: type[pydantic.BaseModel], entry: dict[str, Any], extra: dict[str, Any]
) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        model(**entry, **extra)

    [error] = raised.value.errors()
    assert (error["type"], error["loc"]) == ("extra_forbidden", tuple(extra))
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("model", "entry", "change", "says"),
    [
        (servicenow.ServiceNowConfig, SERVICENOW, {"password_file": None}, "go together"),
        (
            servicenow.ServiceNowConfig,
            SERVICENOW,
            {"username": None, "password_file": None},
            "token_file",
        ),
        (servicenow.ServiceNowConfig, SERVICENOW, {"token_file": "/t"}, "not both"),
        (servicenow.ServiceNowConfig, SERVICENOW, {"instance_url": "acme"}, "instance_url"),
        (jira.JiraConfig, JIRA, {"api_token_file": None}, "go together"),
        (
            jira.JiraConfig,
            JIRA,
            {"email": None, "api_token_file": None},
            "personal_access_token_file",
        ),
        (jira.JiraConfig, JIRA, {"personal_access_token_file": "/t"}, "not both"),
        (jira.JiraConfig, JIRA, {"project_key": "ops"}, "project_key"),
        (jira.JiraConfig, JIRA, {"labels": ("on call",)}, "labels"),
    ],
)
def test_bad_entries_say_what_is_wrong(
    model: type[pydantic.BaseModel], entry: dict[str, Any], change: dict[str, Any], says: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=says):
        model(**(entry | change))


async def test_build_reads_the_credential_file_and_names_it_when_it_cannot(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError, match=f"password_file: cannot read {missing}"):
            servicenow.build(
                "itsm", servicenow.ServiceNowConfig(**SERVICENOW | {"password_file": missing}), http
            )
        with pytest.raises(ValueError, match=f"api_token_file: {empty} is empty"):
            jira.build("tickets", jira.JiraConfig(**JIRA | {"api_token_file": str(empty)}), http)


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda kind: kind.value)
async def test_every_event_kind_renders_within_the_limits(tmp_path: Path, kind: EventKind) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    notice = make_notice(kind)
    async with httpx.AsyncClient() as http:
        sn = servicenow.build(
            "itsm", servicenow.ServiceNowConfig(**SERVICENOW | {"password_file": str(secret)}), http
        )
        issue = jira.build(
            "tickets", jira.JiraConfig(**JIRA | {"api_token_file": str(secret)}), http
        )

    for title, text, title_limit, text_limit in (
        (*sn.render(notice), servicenow.MAX_SHORT_DESCRIPTION, servicenow.MAX_TEXT),
        (*issue.render(notice), jira.MAX_SUMMARY, jira.MAX_TEXT),
    ):
        assert 0 < len(title) <= title_limit and "\n" not in title
        assert 0 < len(text) <= text_limit
        assert "KubePodCrashLooping" in text and "Deployment shop/checkout" in text
        assert f"kubernaut incidents show {notice.incident_id}" in text
        assert SECRET not in title + text


ON = "KubePodCrashLooping on Deployment shop/checkout"
# What each kind's ticket text says first, lines joined (the stages of incident_notices:
# the change was applied).
HEADLINES = {
    EventKind.OPENED: "Kubernaut opened this incident: KubePodCrashLooping fires on Deployment",
    EventKind.ACTION_PLANNED: "Kubernaut plans to run restart_deployment on Deployment",
    EventKind.APPROVAL_NEEDED: "is waiting for an operator's approval. Nothing has been changed",
    EventKind.REMEDIATED: f"Kubernaut remediated {ON} with restart_deployment: the change passed",
    EventKind.FAILED: f"{ON} is still broken and needs a person: Kubernaut's fix"
    " (restart_deployment) failed. Kubernaut's change was applied and is still in place",
    EventKind.ROLLED_BACK: "Kubernaut's fix (restart_deployment) did not pass its verification,"
    " so Kubernaut undid it.",
    EventKind.REFUSED: f"Kubernaut did not act on {ON}: restart_deployment was refused.",
    EventKind.ESCALATED: f"Kubernaut hands {ON} to a person",
    EventKind.STORM: "KubePodCrashLooping fires on many resources at once, Deployment",
    EventKind.NOT_ACTED_ON: f"Kubernaut saw {ON} and did not act on it.",
    EventKind.RESOLVED: f"{ON} has resolved: the incident is over.",
}


def test_every_kind_has_its_headline() -> None:
    assert set(HEADLINES) == set(EventKind)


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda kind: kind.value)
async def test_each_kind_says_what_happened_first(tmp_path: Path, kind: EventKind) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    async with httpx.AsyncClient() as http:
        config = servicenow.ServiceNowConfig(**SERVICENOW | {"password_file": str(secret)})
        _, text = servicenow.build("itsm", config, http).render(make_notice(kind))

    headline = " ".join(text.split("\n\nWhat fired")[0].split())
    assert HEADLINES[kind] in headline
