"""The incident event templates: one per kind, subject and plain-text body, data as text."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import jinja2
import pytest
from google.protobuf import timestamp_pb2
from kubernaut.common.v1 import alert_pb2
from kubernaut.notification.v1 import notification_pb2

from services.notification.rendering import (
    MAX_SUBJECT_LENGTH,
    TEMPLATES,
    TEMPLATES_DIR,
    EventRenderer,
    UnknownEventKind,
    plain_text,
)

KIND = notification_pb2.IncidentEventKind
SUCCEEDED = notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED

VERBS = {
    notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED: "Approval needed",
    notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED: "Remediated",
    notification_pb2.INCIDENT_EVENT_KIND_FAILED: "Remediation failed",
    notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK: "Rolled back",
    notification_pb2.INCIDENT_EVENT_KIND_REFUSED: "Refused",
}


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
        stages=["dry-run: accepted", "applied: rollout restarted", "verified: 3/3 pods ready"],
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


@pytest.mark.parametrize("kind", sorted(VERBS), ids=lambda k: KIND.Name(k))
def test_each_kind_renders_subject_and_body(
    renderer: EventRenderer, kind: notification_pb2.IncidentEventKind.ValueType
) -> None:
    message = renderer.render(make_event(kind))

    assert message.subject == (
        f"[kubernaut] {VERBS[kind]}: KubePodCrashLooping on Deployment shop/checkout"
    )
    body = message.body
    # What fired.
    assert "Alert:       KubePodCrashLooping (firing)" in body
    assert "Severity:    critical" in body
    assert "Summary:     Pod is crash looping." in body
    assert "Pod shop/checkout-7f9c-x2 restarted 5 times in 10 minutes." in body
    assert "Started at:  2025-03-14 09:26:53 UTC" in body
    assert "Runbook:     https://runbooks.example/KubePodCrashLooping" in body
    assert "    severity=critical" in body
    # On what, what was done, the verdict, the incident and when.
    assert "  Deployment shop/checkout\n" in body
    assert "Action:      restart_deployment" in body
    assert (
        "  - dry-run: accepted\n  - applied: rollout restarted\n  - verified: 3/3 pods ready\n"
    ) in body
    assert "Verdict so far\n  effective after 2 min (error rate back to 0.1%)\n" in body
    assert "Incident:      3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b" in body
    assert "When:          2025-03-14 09:31:02 UTC" in body
    # Plain text: not HTML-escaped, one final newline, no leftover template syntax.
    assert "&" not in body and "{{" not in body and "{%" not in body
    assert body.endswith("\n") and not body.endswith("\n\n")
    assert not body.startswith("\n")


def test_kinds_say_different_things(renderer: EventRenderer) -> None:
    headlines = {kind: renderer.render(make_event(kind)).body.split("\n\n")[0] for kind in VERBS}
    assert len(set(headlines.values())) == len(VERBS)
    approval = headlines[notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED]
    assert "approval" in approval and "Nothing has been changed" in approval
    # How to decide, with the incident's id (the CLI finds its workflow).
    body = renderer.render(make_event(notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED)).body
    assert "  kubernaut workflows approve 3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b --by NAME" in body
    assert "  kubernaut workflows reject 3f2b7c1e-8d4a-4f7e-9b1a-2c5d6e7f8a9b --by NAME" in body
    assert "rolled back" in headlines[notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK]


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
    assert "Labels:" not in body and "Runbook:" not in body
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
