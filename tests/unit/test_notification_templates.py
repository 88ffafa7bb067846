"""The incident event templates: one per kind, subject and plain-text body, data as text."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import jinja2
import pytest
from google.protobuf import timestamp_pb2
from kubernaut.common.v1 import alert_pb2
from kubernaut.notification.v1 import notification_pb2

from kubernaut.services.notification.links import LinkPolicy, defang
from kubernaut.services.notification.rendering import (
    MAX_SUBJECT_LENGTH,
    TEMPLATES,
    TEMPLATES_DIR,
    Changed,
    EventRenderer,
    UnknownEventKind,
    plain_text,
    what_changed,
)
from kubernaut.services.notification.settings import NotificationSettings

KIND = notification_pb2.IncidentEventKind
SUCCEEDED = notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED

ON = "KubePodCrashLooping on Deployment shop/checkout"
# What each kind's subject says happened to the workload (the executor's stages of
# make_event: the change was applied).
SUBJECTS = {
    notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED: f"[kubernaut] Approval needed: {ON}",
    notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED: f"[kubernaut] Remediated: {ON}",
    notification_pb2.INCIDENT_EVENT_KIND_FAILED: (
        f"[kubernaut] Fix failed: {ON} needs a person (its change is in place)"
    ),
    notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK: (
        f"[kubernaut] Fix failed, undone: {ON} still broken, needs a person"
    ),
    notification_pb2.INCIDENT_EVENT_KIND_REFUSED: f"[kubernaut] Not acted on (refused): {ON}",
    notification_pb2.INCIDENT_EVENT_KIND_NOT_ACTED_ON: f"[kubernaut] Not acted on: {ON}",
    notification_pb2.INCIDENT_EVENT_KIND_OPENED: f"[kubernaut] New incident: {ON}",
    notification_pb2.INCIDENT_EVENT_KIND_ACTION_PLANNED: (
        f"[kubernaut] Fix planned: restart_deployment for {ON}"
    ),
    notification_pb2.INCIDENT_EVENT_KIND_ESCALATED: (
        f"[kubernaut] Escalated, needs a person: {ON}"
    ),
    notification_pb2.INCIDENT_EVENT_KIND_RESOLVED: f"[kubernaut] Resolved: {ON}",
}
# Stage lines as the executor writes them (the stage modules of kubernaut/services/executor/).
APPLIED_STAGES = [
    "dry-run: ok: the API server accepted the change (dryRun=All)",
    "apply: rollout restarted (generation 4)",
    "verify: ok: 3/3 pods ready after 21.0s",
]


def timestamp(at: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def make_event(
    kind: notification_pb2.IncidentEventKind.ValueType = SUCCEEDED,
    **annotations: str,
) -> notification_pb2.IncidentEvent:
    return notification_pb2.IncidentEvent(
        incident_id="3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b",
        kind=kind,
        alert=alert_pb2.Alert(
            name="KubePodCrashLooping",
            status=alert_pb2.ALERT_STATUS_FIRING,
            labels={"severity": "critical", "namespace": "shop", "pod": "checkout-7f9c-x2"},
            annotations=annotations
            or {
                "summary": "Pod is crash looping.",
                "description": "Pod shop/checkout-7f9c-x2 restarted 5 times in 10 minutes.",
                "runbook_url": "https://runbooks.example/KubePodCrashLooping",
            },
            starts_at=timestamp(dt.datetime(2025, 3, 14, 9, 26, 53, tzinfo=dt.UTC)),
            generator_url="http://prometheus:9090/graph?g0.expr=up",
        ),
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout"),
        action="restart_deployment",
        stages=APPLIED_STAGES,
        verdict="effective after 2 min (error rate back to 0.1%)",
        occurred_at=timestamp(dt.datetime(2025, 3, 14, 9, 31, 2, tzinfo=dt.UTC)),
    )


@pytest.fixture(scope="module")
def renderer() -> EventRenderer:
    return EventRenderer()


def test_one_template_file_per_defined_kind() -> None:
    defined = {value for value in KIND.values() if value != 0}
    assert set(TEMPLATES) == defined
    for name in TEMPLATES.values():
        assert (TEMPLATES_DIR / name).is_file()


def test_every_kind_but_storm_has_its_subject_here() -> None:
    assert set(SUBJECTS) | {notification_pb2.INCIDENT_EVENT_KIND_STORM} == set(TEMPLATES)


@pytest.mark.parametrize("kind", sorted(SUBJECTS), ids=lambda k: KIND.Name(k))
def test_each_kind_renders_subject_and_body(
    renderer: EventRenderer, kind: notification_pb2.IncidentEventKind.ValueType
) -> None:
    message = renderer.render(make_event(kind))

    assert message.subject == SUBJECTS[kind]
    body = message.body
    # What fired.
    assert "Alert:       KubePodCrashLooping (firing)" in body
    assert "Severity:    critical" in body
    assert "Summary:     Pod is crash looping." in body
    assert "Pod shop/checkout-7f9c-x2 restarted 5 times in 10 minutes." in body
    assert "Started at:  2025-03-14 09:26:53 UTC" in body
    # From the alert, and not on the (empty) allow-list: text, not a link.
    assert (
        "  Runbook (from the alert's annotations): hxxps://runbooks[.]example/KubePodCrashLooping\n"
        "    (not a link: host not on KUBERNAUT_NOTIFICATION_LINK_HOSTS)\n"
    ) in body
    assert "    severity=critical" in body
    # On what, what was done, the verdict, the incident and when.
    assert "  Deployment shop/checkout\n" in body
    assert "Action:      restart_deployment" in body
    assert "".join(f"  - {line}\n" for line in APPLIED_STAGES) in body
    assert "Verdict so far\n  effective after 2 min (error rate back to 0.1%)\n" in body
    assert "Incident:      3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b" in body
    assert "When:          2025-03-14 09:31:02 UTC" in body
    # Plain text: not HTML-escaped, one final newline, no leftover template syntax.
    assert "&" not in body and "{{" not in body and "{%" not in body
    assert body.endswith("\n") and not body.endswith("\n\n")
    assert not body.startswith("\n")


def test_kinds_say_different_things(renderer: EventRenderer) -> None:
    headlines = {kind: renderer.render(make_event(kind)).body.split("\n\n")[0] for kind in SUBJECTS}
    assert len(set(headlines.values())) == len(SUBJECTS)
    approval = headlines[notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED]
    assert "approval" in approval and "Nothing has been changed" in approval
    # How to decide, with the incident's id (the CLI finds its workflow).
    body = renderer.render(make_event(notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED)).body
    assert "  kubernaut workflows approve 3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b --reason" in body
    assert "  kubernaut workflows reject 3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b --reason" in body
    rolled_back = renderer.render(make_event(notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK))
    assert rolled_back.body.startswith(
        f"{ON} is still broken and needs a person.\n\n"
        "Kubernaut's fix (restart_deployment) did not pass its verification, so\n"
        "Kubernaut undid it"
    )
    assert "The cause of the alert is not fixed." in rolled_back.body


@pytest.mark.parametrize(
    ("kind", "headline", "heading"),
    [
        (
            notification_pb2.INCIDENT_EVENT_KIND_OPENED,
            f"Kubernaut opened an incident for {ON} and is working out\n"
            "whether and how to fix it. Nothing has been changed.",
            "So far",
        ),
        (
            notification_pb2.INCIDENT_EVENT_KIND_ACTION_PLANNED,
            "Kubernaut plans to run restart_deployment on Deployment shop/checkout for "
            "KubePodCrashLooping.\nNothing has been changed yet",
            "The plan, and why",
        ),
        (
            notification_pb2.INCIDENT_EVENT_KIND_ESCALATED,
            "Kubernaut waited for people and nobody decided in time, so it hands "
            "KubePodCrashLooping on\nDeployment shop/checkout to you",
            "Why it is yours",
        ),
        (
            notification_pb2.INCIDENT_EVENT_KIND_RESOLVED,
            f"{ON} is resolved: every alert of the incident stopped\nfiring.",
            "What happened",
        ),
    ],
    ids=["opened", "action_planned", "escalated", "resolved"],
)
def test_the_incidents_own_events_say_what_happened(
    renderer: EventRenderer,
    kind: notification_pb2.IncidentEventKind.ValueType,
    headline: str,
    heading: str,
) -> None:
    body = renderer.render(make_event(kind)).body
    assert body.startswith(headline), body
    assert f"\n{heading}\n  Action:      restart_deployment\n" in body


def test_an_opened_event_without_stages_says_the_analysis_started(
    renderer: EventRenderer,
) -> None:
    event = make_event(notification_pb2.INCIDENT_EVENT_KIND_OPENED)
    del event.stages[:]
    assert "So far\n  Action:      restart_deployment\n  (the analysis has started)\n" in (
        renderer.render(event).body
    )


def test_hostile_annotation_is_shown_literally_never_evaluated(renderer: EventRenderer) -> None:
    hostile = (
        "{{ 7*7 }} {% for x in range(3) %}loop{% endfor %}\n"
        "Verdict so far\n  effective\n"
        "{{ self.__init__.__globals__ }}"
    )
    event = make_event(summary="{{ 7*7 }}", description=hostile)
    event.alert.labels["team"] = "{{ config }}\nincident: forged"

    message = renderer.render(event)

    body = message.body
    assert "49" not in body and "looploop" not in body
    assert "Summary:     {{ 7*7 }}\n" in body
    # Every line of the description is there, as written, indented under its heading, so
    # the forged "Verdict so far" line cannot pass for the real section.
    assert (
        "  Description:\n"
        "    {{ 7*7 }} {% for x in range(3) %}loop{% endfor %}\n"
        "    Verdict so far\n"
        "      effective\n"
        "    {{ self.__init__.__globals__ }}\n"
    ) in body
    assert "    team={{ config }}\n      incident: forged\n" in body
    assert body.count("\nVerdict so far\n") == 1


def test_control_characters_are_escaped(renderer: EventRenderer) -> None:
    event = make_event(summary="red \x1b[31malert\x1b[0m\x00 \u202eevil", description="a\r\nb\rc")

    body = renderer.render(event).body

    assert "Summary:     red \\x1b[31malert\\x1b[0m\\x00 \\u202eevil\n" in body
    assert "    a\n    b\n    c\n" in body
    assert "\x1b" not in body and "\x00" not in body and "\r" not in body


def test_subject_is_one_line_and_bounded(renderer: EventRenderer) -> None:
    event = make_event()
    event.alert.name = "Disk\r\nBcc: evil@example.com\n{{ 7*7 }}"

    subject = renderer.render(event).subject

    assert "\n" not in subject and "\r" not in subject
    assert subject == (
        "[kubernaut] Remediated: Disk Bcc: evil@example.com {{ 7*7 }} on Deployment shop/checkout"
    )
    event.alert.name = "A" * 256
    long_subject = renderer.render(event).subject
    assert len(long_subject) == MAX_SUBJECT_LENGTH and long_subject.endswith("…")


def test_optional_parts_have_defaults(renderer: EventRenderer) -> None:
    event = make_event(notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED)
    event.alert.ClearField("annotations")
    event.alert.ClearField("labels")
    event.alert.generator_url = ""
    event.ClearField("stages")
    event.action = ""
    event.verdict = ""
    event.target.CopyFrom(alert_pb2.ResourceRef(cluster="prod-eu", kind="Node", name="worker-1"))

    message = renderer.render(event)

    assert message.subject == "[kubernaut] Approval needed: KubePodCrashLooping on Node worker-1"
    body = message.body
    assert "Severity:    unknown" in body
    assert "Summary:     (none)" in body
    assert "Description: (none)" in body
    assert "Labels:" not in body and "Runbook" not in body and "Source" not in body
    assert "  Node worker-1\n  Cluster:     prod-eu\n" in body
    assert "What was done\n  (nothing yet)\n" in body
    assert "Verdict so far\n  not assessed yet\n" in body


def test_unspecified_kind_has_no_template(renderer: EventRenderer) -> None:
    with pytest.raises(UnknownEventKind):
        renderer.render(make_event(notification_pb2.INCIDENT_EVENT_KIND_UNSPECIFIED))


def test_undefined_variables_are_errors_not_blanks(tmp_path: Path) -> None:
    for name in TEMPLATES.values():
        (tmp_path / name).write_text(
            "{% block subject %}{{ alert.nmae }}{% endblock %}", encoding="utf-8"
        )
    renderer = EventRenderer(tmp_path)

    with pytest.raises(jinja2.UndefinedError):
        renderer.render(make_event())


def test_a_template_without_a_subject_fails_at_start(tmp_path: Path) -> None:
    for name in TEMPLATES.values():
        (tmp_path / name).write_text("body only", encoding="utf-8")

    with pytest.raises(ValueError, match="block subject"):
        EventRenderer(tmp_path)


def test_plain_text_is_idempotent() -> None:
    once = plain_text("a\x1b[0m\r\nb\u2028c\u202e\x00")
    assert once == "a\\x1b[0m\nb\nc\\u202e\\x00"
    assert plain_text(once) == once


# -- what happened to the workload ----------------------------------------------------------


@pytest.mark.parametrize(
    ("stages", "changed"),
    [
        ([], Changed.UNKNOWN),
        (["executor unavailable: connection refused"], Changed.UNKNOWN),
        (["scope: refused: namespace kube-system is protected"], Changed.NOTHING),
        (["plan: restart", "dry-run: failed: forbidden"], Changed.NOTHING),
        (
            ["plan: delete pod", "apply: failed: the API server rejected the deletion"],
            Changed.NOTHING,
        ),
        (APPLIED_STAGES, Changed.APPLIED),
        (
            [*APPLIED_STAGES[:2], "verify: failed: 0/3 ready", "rollback: restored spec.template"],
            Changed.UNDONE,
        ),
        (
            [
                *APPLIED_STAGES[:2],
                "verify: failed",
                "rollback: not possible: a deleted pod cannot come back",
            ],
            Changed.NOT_UNDONE,
        ),
        (
            [*APPLIED_STAGES[:2], "verify: failed", "rollback: failed: the API server rejected"],
            Changed.NOT_UNDONE,
        ),
    ],
)
def test_what_changed_reads_the_executors_stages(stages: list[str], changed: Changed) -> None:
    assert what_changed(stages) is changed


@pytest.mark.parametrize(
    ("stages", "subject_end", "says"),
    [
        (
            ["scope: refused: protected"],
            "needs a person (nothing was changed)",
            "Nothing was changed: it stopped before applying anything",
        ),
        (
            ["apply: pod deleted", "verify: failed", "rollback: not possible: a deleted pod"],
            "needs a person (its change is NOT undone)",
            "Kubernaut's change was applied and could NOT be undone",
        ),
        (
            ["executor unavailable"],
            "needs a person",
            "Whether anything was changed is not known here",
        ),
    ],
)
def test_failed_says_whether_anything_was_changed(
    renderer: EventRenderer, stages: list[str], subject_end: str, says: str
) -> None:
    event = make_event(notification_pb2.INCIDENT_EVENT_KIND_FAILED)
    event.ClearField("stages")
    event.stages.extend(stages)

    message = renderer.render(event)

    assert message.subject == f"[kubernaut] Fix failed: {ON} {subject_end}"
    assert message.body.startswith(
        f"{ON} is still broken and needs a person: Kubernaut's fix (restart_deployment) failed.\n"
        f"{says}"
    )


def test_a_success_that_changed_nothing_is_not_called_remediated(renderer: EventRenderer) -> None:
    event = make_event(notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED)
    event.ClearField("stages")
    # The executor's dry-run mode: it stops after the dry-run.
    event.stages.extend(["plan: restart", "dry-run: ok: the API server accepted the change"])

    message = renderer.render(event)

    assert message.subject == (f"[kubernaut] Done, nothing changed: restart_deployment for {ON}")
    assert "Remediated" not in message.subject and "remediated" not in message.body


def test_not_acted_on_says_why_and_that_a_person_should_look(renderer: EventRenderer) -> None:
    event = make_event(notification_pb2.INCIDENT_EVENT_KIND_NOT_ACTED_ON)
    event.action = ""
    event.ClearField("stages")
    event.stages.extend(["No rule handles alert KubeJobFailed", "no action for a Job"])
    event.verdict = "not acted on"

    message = renderer.render(event)

    assert message.subject == f"[kubernaut] Not acted on: {ON}"
    body = message.body
    assert body.startswith(f"Kubernaut saw {ON} and did not act on it. Nothing was\nchanged")
    assert "If this alert matters, a person should look" in body
    assert (
        "Why it was not acted on\n"
        "  - No rule handles alert KubeJobFailed\n"
        "  - no action for a Job\n"
    ) in body
    assert "What was done" not in body
    assert "Verdict so far\n  not acted on\n" in body
    event.ClearField("stages")
    assert "Why it was not acted on\n  (no reason was given)\n" in renderer.render(event).body


# -- URLs from the alert ---------------------------------------------------------------------

NOT_ON_LIST = "(not a link: host not on KUBERNAUT_NOTIFICATION_LINK_HOSTS)"


def runbook_lines(renderer: EventRenderer, url: str) -> list[str]:
    body = renderer.render(make_event(runbook_url=url)).body
    lines = body.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  Runbook"))
    return lines[at : at + 2]


@pytest.fixture(scope="module")
def allowing() -> EventRenderer:
    return EventRenderer(links=LinkPolicy(["runbooks.example.com", "*.grafana.example"]))


def test_an_evil_runbook_is_labelled_and_not_a_link(allowing: EventRenderer) -> None:
    assert runbook_lines(allowing, "https://evil.example/runbooks/KubePodCrashLooping.md") == [
        "  Runbook (from the alert's annotations): "
        "hxxps://evil[.]example/runbooks/KubePodCrashLooping[.]md",
        f"    {NOT_ON_LIST}",
    ]


def test_an_allowed_host_is_a_link_labelled_as_from_the_alert(allowing: EventRenderer) -> None:
    url = "https://runbooks.example.com/kubernetes/kubepodcrashlooping"
    lines = runbook_lines(allowing, url)
    assert lines[0] == f"  Runbook (from the alert's annotations): {url}"
    assert "not a link" not in lines[1]
    sub = "https://eu.grafana.example/d/abc?orgId=1"
    assert runbook_lines(allowing, sub)[0].endswith(f": {sub}")


@pytest.mark.parametrize(
    ("url", "shown", "why"),
    [
        ("javascript:alert(document.cookie)", "javascript[:]alert(document[.]cookie)", "only http"),
        ("JavaScript:alert(1)", "JavaScript[:]alert(1)", "only http"),
        ("data:text/html,<b>x</b>", "data[:]text/html,<b>x</b>", "only http"),
        (
            "https://runbooks.example.com@evil.example/",
            "hxxps://runbooks[.]example[.]com[@]evil[.]example/",
            "user name",
        ),
        (
            "https://evil.example@runbooks.example.com/",
            "hxxps://evil[.]example[@]runbooks[.]example[.]com/",
            "user name",
        ),
        (
            "https://runbooks.example.com\\@evil.example/",
            "hxxps://runbooks[.]example[.]com\\[@]evil[.]example/",
            "characters",
        ),
        # Cyrillic o (U+043E) in the host: looks allowed, is not.
        (
            "https://runb\u043e\u043eks.example.com/",
            "hxxps://runb\u043e\u043eks[.]example[.]com/",
            "characters",
        ),
        ("https://runbooks.example.com.evil.example/", None, "host not on"),
        ("https://grafana.example/", None, "host not on"),  # *.domain: not the domain itself
        ("https://evil%2eexample/", "hxxps://evil%2eexample/", "not a plain host name"),
        ("ftp://runbooks.example.com/x", "ftp[:]//runbooks[.]example[.]com/x", "only http"),
        ("runbooks.example.com/x", "runbooks[.]example[.]com/x", "only http"),
    ],
)
def test_tricks_are_never_links(
    allowing: EventRenderer, url: str, shown: str | None, why: str
) -> None:
    first, second = runbook_lines(allowing, url)
    text = first.removeprefix("  Runbook (from the alert's annotations): ")
    if shown is not None:
        assert text == shown
    assert "://" not in text or text.startswith(("hxxp", "ftp[:]"))
    assert "." not in text.replace("[.]", "")
    assert second.startswith("    (not a link: ") and why in second


def test_urls_in_the_alerts_text_are_defanged_unless_allowed(allowing: EventRenderer) -> None:
    event = make_event(
        summary="Fix it at https://evil.example/fix.",
        description="Docs: https://runbooks.example.com/ok, or www.evil.example/x",
    )
    event.alert.labels["link"] = "http://evil.example"
    event.alert.generator_url = "http://prometheus.evil.example:9090/graph?g0.expr=up"

    body = allowing.render(event).body

    assert "Summary:     Fix it at hxxps://evil[.]example/fix.\n" in body
    assert "    Docs: https://runbooks.example.com/ok, or www[.]evil[.]example/x\n" in body
    assert "    link=hxxp://evil[.]example\n" in body
    assert (
        "  Source (from the alert, its generator URL): "
        "hxxp://prometheus[.]evil[.]example:9090/graph?g0[.]expr=up\n"
        f"    {NOT_ON_LIST}\n"
    ) in body
    assert "shown as text,\nnot as links" in body
    assert "evil.example" not in body


def test_by_default_no_url_is_a_link(renderer: EventRenderer) -> None:
    event = make_event()
    event.alert.generator_url = "http://prometheus:9090/graph"
    body = renderer.render(event).body
    assert "  Source (from the alert, its generator URL): hxxp://prometheus:9090/graph\n" in body
    assert "https://" not in body and "http://" not in body


def test_defang_breaks_schemes_dots_and_at_signs() -> None:
    assert defang("HTTPS://a.b/c@d") == "HxxPS://a[.]b/c[@]d"
    assert defang("https://a\u3002b\uff0ec") == "hxxps://a[.]b[.]c"


def test_link_hosts_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KUBERNAUT_NOTIFICATION_LINK_HOSTS", " Runbooks.Example.com., *.grafana.example ,,10.0.0.7"
    )
    settings = NotificationSettings()
    assert settings.link_hosts == ("runbooks.example.com", "*.grafana.example", "10.0.0.7")
    policy = LinkPolicy(settings.link_hosts)
    assert policy.show("http://10.0.0.7:3000/d").is_link
    assert policy.show("https://RUNBOOKS.example.com/x").is_link

    monkeypatch.delenv("KUBERNAUT_NOTIFICATION_LINK_HOSTS")
    assert NotificationSettings().link_hosts == ()
    for bad in ("evil example", "https://evil.example", "*.10.0.0.7", "a_b.example"):
        monkeypatch.setenv("KUBERNAUT_NOTIFICATION_LINK_HOSTS", bad)
        with pytest.raises(ValueError, match="KUBERNAUT_NOTIFICATION_LINK_HOSTS"):
            NotificationSettings()
