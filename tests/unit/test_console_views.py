"""What the console's pages show, from the records alone."""

from __future__ import annotations

import datetime as dt
import json

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.edge.console.views import (
    MAX_DIFF_LINES,
    age,
    analysis_view,
    incident_row,
    latest_actions,
    overview_of,
    spec_diff,
    timeline_of,
)

T0 = dt.datetime(2026, 12, 7, 3, 0, 0, tzinfo=dt.UTC)


def _at(seconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(T0 + dt.timedelta(seconds=seconds))
    return stamp


def test_the_diff_shows_what_changed_in_the_pretty_spec() -> None:
    before = json.dumps({"spec": {"image": "shop:bad", "replicas": 3}})
    after = json.dumps({"spec": {"image": "shop:good", "replicas": 3}})
    diff = spec_diff(before, after)
    assert '-    "image": "shop:bad",' in diff and '+    "image": "shop:good",' in diff
    assert '     "replicas": 3' in diff  # context
    assert spec_diff("", "") == ()
    # A huge change is cut, saying how much was left out.
    big = spec_diff("{}", json.dumps({f"k{i}": i for i in range(1000)}))
    assert len(big) == MAX_DIFF_LINES + 1 and big[-1].endswith("more lines)")


def test_the_timeline_runs_from_the_alert_to_the_last_assessment_in_order() -> None:
    alert = alert_pb2.Alert(name="KubePodCrashLooping", starts_at=_at(0))
    incident = storage_pb2.Incident(
        incident_id="i-1",
        alert_name="KubePodCrashLooping",
        alert=alert,
        occurrences=3,
        opened_at=_at(30),
        closed_at=_at(400),
        status=storage_pb2.INCIDENT_STATUS_REMEDIATED,
        status_reason="rolled back",
    )
    reply = storage_pb2.GetIncidentResponse(
        incident=incident,
        # Recorded out of order: the timeline sorts by time.
        assessments=[
            storage_pb2.Assessment(
                verdict=remediation_pb2.VERDICT_EFFECTIVE, assessed_at=_at(300), evidence=["ok"]
            )
        ],
        actions=[
            storage_pb2.ActionRecord(
                action="rollback_deployment",
                outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED,
                started_at=_at(60),
                message="rolled back",
            )
        ],
    )
    whats = [entry.what for entry in timeline_of(reply, None)]
    assert whats == [
        "KubePodCrashLooping fired",
        "incident opened",
        "rollback_deployment",
        "assessment",
        "incident closed",
    ]


def test_ages_read_as_people_say_them() -> None:
    assert age(_at(0), T0 + dt.timedelta(seconds=42)) == "42s"
    assert age(_at(0), T0 + dt.timedelta(minutes=5, seconds=9)) == "5m"
    assert age(_at(0), T0 + dt.timedelta(hours=3)) == "3h"
    assert age(_at(0), T0 + dt.timedelta(days=2, hours=1)) == "2d"
    assert age(Timestamp(), T0) == ""


def test_the_overview_counts_days_statuses_outcomes_and_time_to_fix() -> None:
    now = T0 + dt.timedelta(days=1)

    def incident(opened: int, status: int, closed: int | None = None) -> storage_pb2.Incident:
        made = storage_pb2.Incident(
            alert_name="KubePodCrashLooping",
            status=status,  # type: ignore[arg-type]
            opened_at=_at(opened),
            alert=alert_pb2.Alert(starts_at=_at(opened - 60)),
        )
        if closed is not None:
            made.closed_at.CopyFrom(_at(closed))
        return made

    incidents = [
        incident(0, storage_pb2.INCIDENT_STATUS_REMEDIATED, closed=240),  # 5 min from the alert
        incident(60, storage_pb2.INCIDENT_STATUS_REMEDIATED, closed=60 + 540),  # 10 min
        incident(86400, storage_pb2.INCIDENT_STATUS_NO_ACTION, closed=86500),
        incident(-30 * 86400, storage_pb2.INCIDENT_STATUS_FAILED),  # outside the 14 days
    ]
    actions = [
        storage_pb2.ActionRecord(outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED),
        storage_pb2.ActionRecord(outcome=storage_pb2.ACTION_OUTCOME_SUCCEEDED),
        storage_pb2.ActionRecord(outcome=storage_pb2.ACTION_OUTCOME_ROLLED_BACK),
    ]
    overview = overview_of(incidents, actions, [("rollback for X", 0.75, 4)], now)
    per_day = {bar.label: bar.value for bar in overview.incidents_per_day}
    assert len(per_day) == 14 and per_day["12-07"] == 2 and per_day["12-08"] == 1
    assert sum(per_day.values()) == 3
    assert [(b.label, b.value) for b in overview.by_status] == [
        ("remediated", 2),
        ("no_action", 1),
        ("failed", 1),
    ]
    assert [(b.label, b.value, b.percent) for b in overview.actions_by_outcome] == [
        ("succeeded", 2, 100),
        ("rolled_back", 1, 50),
    ]
    assert overview.median_minutes_to_fix == 7.5 and overview.worst_minutes_to_fix == 10.0
    assert overview.effectiveness[0].text == "75% of 4"


def test_an_analysis_shows_the_models_part_and_the_guards_verdict() -> None:
    analysis = remediation_pb2.Analysis(
        decision=remediation_pb2.DECISION_REMEDIATE,
        reasons=["crash-looping since the rollout"],
        analyzer="local",
        reasoning=remediation_pb2.ModelReasoning(
            provider="local",
            model="smollm2-135m",
            prompt="alert KubePodCrashLooping ...",
            answer='{"decision":"remediate"}',
            validation="valid",
            guard="disagreed: approval",
            input_tokens=812,
            output_tokens=40,
            latency_seconds=1.94,
            tool_uses=[remediation_pb2.ToolUse(name="pod_logs", arguments='{"pod":"a"}')],
            asked_after_the_plan=True,
        ),
    )
    view = analysis_view(analysis)
    assert (view.analyzer, view.decision) == ("local", "remediate")
    assert view.model is not None
    assert view.model.guard == "disagreed: approval" and view.model.after_the_plan
    assert view.model.tokens == "812 in, 40 out" and view.model.latency == "1.9 s"
    assert view.model.tools == ('pod_logs({"pod":"a"})',)
    # The rules alone: no model part, and the analyzer is named.
    rules = analysis_view(remediation_pb2.Analysis(decision=remediation_pb2.DECISION_NO_ACTION))
    assert (rules.analyzer, rules.decision, rules.model) == ("rules", "no_action", None)


def test_the_list_shows_each_incidents_latest_action_and_searches_its_fields() -> None:
    def record(
        incident: str, action: str, seconds: int, outcome: storage_pb2.ActionOutcome.ValueType
    ) -> storage_pb2.ActionRecord:
        return storage_pb2.ActionRecord(
            incident_id=incident,
            action=action,
            outcome=outcome,
            started_at=_at(seconds),
        )

    taken = latest_actions(
        [
            record("a", "restart_deployment", 20, storage_pb2.ACTION_OUTCOME_FAILED),
            record("a", "rollback_deployment", 90, storage_pb2.ACTION_OUTCOME_SUCCEEDED),
            record("b", "scale_deployment", 10, storage_pb2.ACTION_OUTCOME_ROLLED_BACK),
        ]
    )
    assert taken == {"a": "rollback_deployment: succeeded", "b": "scale_deployment: rolled_back"}
    incident = storage_pb2.Incident(
        incident_id="a",
        alert_name="KubePodCrashLooping",
        subject=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout"),
        opened_at=_at(0),
    )
    row = incident_row(incident, T0 + dt.timedelta(minutes=5), taken["a"])
    assert row.action == "rollback_deployment: succeeded"
    assert row.matches("crashloop") and row.matches("CHECKOUT") and row.matches("default")
    assert not row.matches("payments")
