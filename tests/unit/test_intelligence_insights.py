"""intelligence's weekly insight report on a seeded history: what it ranks, the time
saved from the audit trail's approvals, and how it renders as text and Markdown; and the
service's settings."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernaut.storage.v1 import storage_pb2
from pydantic import ValidationError

from kubernaut.services.intelligence.insights import (
    InsightPolicy,
    handled_by_people,
    insight_report,
)
from kubernaut.services.intelligence.render import render_markdown, render_text
from kubernaut.services.intelligence.settings import IntelligenceSettings
from tests.fixtures.intelligence_history import NOW, History, ref

DAY = dt.timedelta(days=1)
REMEDIATED = storage_pb2.INCIDENT_STATUS_REMEDIATED
FAILED = storage_pb2.INCIDENT_STATUS_FAILED
SUCCEEDED = storage_pb2.ACTION_OUTCOME_SUCCEEDED
ROLLED_BACK = storage_pb2.ACTION_OUTCOME_ROLLED_BACK


def _week() -> History:
    """A week: web's crash loop fixed by restarts that do not hold (4 times); rollbacks of
    api that mostly fail (2 of 8 worked); a noisy disk alert on many nodes; one approval by
    a person, one by a service; and last month's incidents, outside the window."""
    history = History(3)
    web = ref("shop", "web")
    for day in range(4):
        history.incident(
            web,
            "KubePodCrashLooping",
            NOW - (5 - day) * DAY,
            action="restart_deployment",
            occurrences=3,
        )
    for n in range(8):
        worked = n < 2
        history.incident(
            ref("shop", f"api-{n}"),
            "KubeDeploymentRolloutStuck",
            NOW - (n % 6 + 1) * DAY,
            REMEDIATED if worked else FAILED,
            action="rollback_deployment",
            outcome=SUCCEEDED if worked else ROLLED_BACK,
        )
    for n in range(6):
        history.incident(
            ref("", f"node-{n}", kind="Node"),
            "NodeFilesystemAlmostFull",
            NOW - dt.timedelta(hours=n + 2),
            storage_pb2.INCIDENT_STATUS_NO_ACTION,
            occurrences=40,
        )
    # One restart of a database: too few attempts to judge.
    history.incident(ref("data", "db"), "KubePodNotReady", NOW - DAY, action="restart_statefulset")
    # Last month: not in the window.
    for _ in range(10):
        history.incident(
            ref("old", "app"), "OldAlert", NOW - 30 * DAY, action="delete_pod", outcome=ROLLED_BACK
        )
    remediated = [i for i in history.incidents if i.status == REMEDIATED]
    history.approval(remediated[0], "person:alice@example.com", NOW - 5 * DAY)
    history.approval(remediated[1], "operator:operator", NOW - 4 * DAY)
    history.approval(remediated[2], "service:workflow", NOW - 3 * DAY)
    return history


def test_the_report_names_what_recurs_what_fails_what_is_noisy_and_the_time_saved() -> None:
    history = _week()
    report = insight_report(
        history.incidents,
        history.actions,
        handled_by_people(history.entries),
        window_start=NOW - 7 * DAY,
        window_end=NOW,
        policy=InsightPolicy(min_attempts=5, min_incidents=3, minutes_per_manual_incident=30),
    )
    assert report.incidents == 4 + 8 + 6 + 1
    assert report.alerts == 4 * 3 + 8 + 6 * 40 + 1
    [recurring] = report.recurring
    assert (recurring.subject.name, recurring.alert_name) == ("web", "KubePodCrashLooping")
    assert (recurring.incidents, recurring.fixes_not_held) == (4, 3)
    assert list(recurring.actions_tried) == ["restart_deployment"]
    # Judged: the rollbacks (8 attempts). Too few: restarts of web (4) and of the db (1).
    [worst] = report.least_effective_actions
    assert (worst.action, worst.alert_name, worst.attempts, worst.succeeded) == (
        "rollback_deployment",
        "KubeDeploymentRolloutStuck",
        8,
        2,
    )
    assert worst.success_lower_bound == pytest.approx(0.0715, abs=1e-4)
    assert (report.too_few_to_judge, report.min_attempts) == (2, 5)
    assert [
        (a.alert_name, a.incidents, a.occurrences, a.workloads) for a in report.noisiest_alerts
    ][:2] == [("NodeFilesystemAlmostFull", 6, 240, 6), ("KubePodCrashLooping", 4, 12, 1)]
    # 4 web fixes + 2 rollbacks + 1 db restart remediated; alice and the shared operator
    # approved two of them; the workflow service's own call is no person's.
    saved = report.time_saved
    assert (saved.remediated, saved.without_a_person) == (7, 5)
    assert (saved.minutes_per_incident, saved.minutes_saved) == (30, 150)
    assert report.window_end.ToDatetime(dt.UTC) == NOW
    assert not report.truncated


def test_people_are_every_principal_but_services_and_only_calls_that_worked() -> None:
    history = History(1)
    incident = history.incident(ref("shop", "web"), "KubePodCrashLooping", NOW)
    refused = history.approval(incident, "person:mallory", NOW)
    refused.outcome_code = "PERMISSION_DENIED"
    history.approval(incident, "service:workflow", NOW)
    assert handled_by_people(history.entries) == set()
    history.approval(incident, "person:bob via gateway-http", NOW)
    assert handled_by_people(history.entries) == {incident.incident_id}


def test_the_report_renders_as_text_tables_and_as_markdown() -> None:
    history = _week()
    # An alert name that tries to rewrite the terminal and break a Markdown table.
    history.incident(
        ref("shop", "evil"),
        "Evil|\x1b[2J",
        NOW - DAY,
        storage_pb2.INCIDENT_STATUS_NO_ACTION,
        occurrences=1000,
    )
    report = insight_report(
        history.incidents,
        history.actions,
        handled_by_people(history.entries),
        window_start=NOW - 7 * DAY,
        window_end=NOW,
    )
    text = render_text(report)
    lines = text.splitlines()
    assert (
        lines[0]
        == "Insights 2026-11-30 12:00 to 2026-12-07 12:00 UTC (7 days): 20 incidents, 1261 alerts"
    )
    assert "Recurring incidents: the fix does not hold" in lines
    header = next(line for line in lines if line.startswith("WORKLOAD"))
    assert header.split("  ")[0] == "WORKLOAD" and "FIXES NOT HELD" in header
    row = lines[lines.index(header) + 1]
    assert row.split() == [
        "Deployment",
        "shop/web",
        "KubePodCrashLooping",
        "4",
        "3",
        "restart_deployment",
        "2026-12-02",
        "12:00",
        "2026-12-05",
        "12:00",
    ]
    assert any(
        line.split()[:5] == ["rollback_deployment", "KubeDeploymentRolloutStuck", "8", "2", "25%"]
        for line in lines
    )
    assert "2 action(s) per alert had fewer than 5 attempts: too few to judge." in lines
    assert (
        "5 of 7 remediated incidents needed no person: about 2.5 h saved (30 min each by hand)."
        in lines
    )
    assert "\x1b" not in text and "Evil|\\x1b[2J" in text
    markdown = render_markdown(report)
    assert markdown.startswith("# Insights 2026-11-30 12:00 to 2026-12-07 12:00 UTC")
    assert "## Least effective actions" in markdown
    assert (
        "| Deployment shop/web | KubePodCrashLooping | 4 | 3 | restart_deployment |"
        " 2026-12-02 12:00 | 2026-12-05 12:00 |" in markdown
    )
    assert "| Evil\\|\\\\x1b[2J | 1 | 1000 | 1 |" in markdown
    assert "|---|---|---|---|---|---|---|" in markdown


def test_an_empty_week_renders_plainly() -> None:
    report = insight_report([], [], set(), window_start=NOW - DAY, window_end=NOW)
    text = render_text(report)
    assert "(1 day): 0 incidents, 0 alerts" in text
    assert text.count("  none") == 3
    assert "0 of 0 remediated incidents needed no person" in text
    assert render_markdown(report).count("None.") == 3


def test_settings_are_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBERNAUT_INTELLIGENCE_MIN_ATTEMPTS", "8")
    monkeypatch.setenv("KUBERNAUT_INTELLIGENCE_TREND_RECENT_SECONDS", "86400")
    settings = IntelligenceSettings()
    assert settings.min_attempts == 8
    assert settings.trend_policy().recent == DAY
    assert settings.anomaly_policy().history == dt.timedelta(hours=169)
    with pytest.raises(ValidationError):
        settings.min_attempts = 3  # frozen
    with pytest.raises(ValidationError, match="365 days"):
        IntelligenceSettings(anomaly_bucket_seconds=86400, anomaly_baseline_buckets=400)
    with pytest.raises(ValidationError):
        IntelligenceSettings(recurring_min_incidents=1)
