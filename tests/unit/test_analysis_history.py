"""How the past weighs on the rule-based analysis."""

from __future__ import annotations

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.services.ai_analysis.history import HistorySettings, HistoryUnavailable
from kubernaut.services.ai_analysis.rules import RulesSettings, analyze
from tests.unit.test_rules import DEPLOYMENT, make_alert

DEFAULTS = RulesSettings()
RESTART_CONFIDENCE = 0.6  # a crash loop without a recent rollout
OTHER = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="cart")


def crash_loop(
    history: context_api_pb2.IncidentHistory | HistoryUnavailable | None,
    settings: RulesSettings = DEFAULTS,
) -> remediation_pb2.Analysis:
    return analyze(
        make_alert("KubePodCrashLooping", {"pod": "checkout-1"}),
        DEPLOYMENT,
        None,
        settings,
        None,
        history,
    )


def history(
    verdict: remediation_pb2.Verdict.ValueType | None = None,
    *similar: context_api_pb2.PastIncident,
    lower_bound: float = 0.64,
) -> context_api_pb2.IncidentHistory:
    found = context_api_pb2.IncidentHistory(
        incident_id="00000000-0000-4000-8000-000000000001",
        alert_name="KubePodCrashLooping",
        similar_incidents=similar,
    )
    if verdict is not None:
        found.action_effectiveness.append(
            effectiveness_pb2.ActionEffectiveness(
                action="restart_deployment",
                verdict=verdict,
                attempts=8,
                success_rate=1.0 if verdict == remediation_pb2.VERDICT_EFFECTIVE else 0.2,
                success_lower_bound=lower_bound,
                reason="8 of 8 attempts succeeded, 95% interval 68%-100%",
            )
        )
    return found


def past(
    subject: alert_pb2.ResourceRef,
    outcome: storage_pb2.ActionOutcome.ValueType,
    distance: float = 0.1,
    verdict: remediation_pb2.Verdict.ValueType = remediation_pb2.VERDICT_UNKNOWN,
) -> context_api_pb2.PastIncident:
    return context_api_pb2.PastIncident(
        incident_id="00000000-0000-4000-8000-00000000000a",
        alert_name="KubePodCrashLooping",
        subject=subject,
        status=storage_pb2.INCIDENT_STATUS_FAILED,
        distance=distance,
        actions=[
            context_api_pb2.PastAction(
                action="restart_deployment", outcome=outcome, verdict=verdict
            )
        ],
    )


def test_not_asked_changes_nothing() -> None:
    analysis = crash_loop(None)
    assert analysis.recommendation.confidence == pytest.approx(RESTART_CONFIDENCE)
    assert not any(reason.startswith("History") for reason in analysis.reasons)


def test_an_effective_record_raises_confidence_and_says_why() -> None:
    analysis = crash_loop(history(remediation_pb2.VERDICT_EFFECTIVE))
    assert analysis.recommendation.confidence == pytest.approx(RESTART_CONFIDENCE + 0.1)
    reason = analysis.reasons[-1]
    assert "worked for KubePodCrashLooping" in reason and "interval 68%-100%" in reason
    # The audit trail and the workflow see the same reasons as people do.
    assert list(analysis.recommendation.reasons) == list(analysis.reasons)


def test_an_effective_verdict_on_a_thin_record_does_not_raise_confidence() -> None:
    # The mean says 100%; the interval's lower bound says it may be well under half.
    analysis = crash_loop(history(remediation_pb2.VERDICT_EFFECTIVE, lower_bound=0.44))
    assert analysis.recommendation.confidence == pytest.approx(RESTART_CONFIDENCE)
    assert "the record is thin" in analysis.reasons[-1]
    assert "lower bound is under 50%" in analysis.reasons[-1]


def test_a_fix_that_does_not_hold_needs_a_person() -> None:
    found = history(remediation_pb2.VERDICT_EFFECTIVE)
    found.recurrence.CopyFrom(
        intelligence_pb2.RecurringIncident(
            subject=DEPLOYMENT,
            alert_name="KubePodCrashLooping",
            incidents=4,
            fixes_not_held=3,
            actions_tried=["restart_deployment"],
        )
    )
    found.recurrence.first_seen.FromSeconds(1_780_000_000)
    analysis = crash_loop(found)
    recommendation = analysis.recommendation
    # Even an action that works elsewhere: here it only treats the symptom.
    assert recommendation.confidence == pytest.approx(0.3)
    assert recommendation.approval_required
    assert recommendation.approval_reason.startswith("the fix does not hold: 4 incidents")
    assert any(
        "3 of them after a fix that was verified (restart_deployment)" in r
        for r in analysis.reasons
    )


def test_unknown_recurrence_is_said_and_changes_nothing() -> None:
    found = history(remediation_pb2.VERDICT_UNKNOWN)
    found.recurrence_unavailable_reason = "intelligence: UNAVAILABLE: down"
    analysis = crash_loop(found)
    assert analysis.recommendation.confidence == pytest.approx(RESTART_CONFIDENCE)
    assert not analysis.recommendation.approval_required
    assert (
        "History: whether this recurs is unknown (intelligence: UNAVAILABLE: down)."
        in analysis.reasons
    )


def test_confidence_never_passes_the_cap() -> None:
    settings = RulesSettings(history=HistorySettings(effective_bonus=0.9, max_confidence=0.95))
    analysis = crash_loop(history(remediation_pb2.VERDICT_EFFECTIVE), settings)
    assert analysis.recommendation.confidence == pytest.approx(0.95)


def test_an_ineffective_record_lowers_confidence_below_the_approval_threshold() -> None:
    analysis = crash_loop(history(remediation_pb2.VERDICT_INEFFECTIVE))
    assert analysis.decision == remediation_pb2.DECISION_REMEDIATE
    assert analysis.recommendation.confidence == pytest.approx(0.3)
    assert "has not worked" in analysis.reasons[-1]


def test_too_few_attempts_change_nothing_but_are_mentioned() -> None:
    analysis = crash_loop(history(remediation_pb2.VERDICT_UNKNOWN))
    assert analysis.recommendation.confidence == pytest.approx(RESTART_CONFIDENCE)
    assert "too little to judge" in analysis.reasons[-1]


def test_an_untried_action_is_mentioned() -> None:
    analysis = crash_loop(history())
    assert "has not been tried" in analysis.reasons[-1]


def test_the_same_fix_failing_on_the_same_workload_lowers_confidence() -> None:
    failed_here = past(DEPLOYMENT, storage_pb2.ACTION_OUTCOME_ROLLED_BACK)
    analysis = crash_loop(history(remediation_pb2.VERDICT_EFFECTIVE, failed_here))
    assert analysis.recommendation.confidence == pytest.approx(0.3)
    assert any("did not fix the same workload" in reason for reason in analysis.reasons)


def test_an_ineffective_verdict_on_the_same_workload_counts_as_failure() -> None:
    judged = past(
        DEPLOYMENT,
        storage_pb2.ACTION_OUTCOME_SUCCEEDED,
        verdict=remediation_pb2.VERDICT_INEFFECTIVE,
    )
    analysis = crash_loop(history(None, judged))
    assert analysis.recommendation.confidence == pytest.approx(0.3)


def test_the_same_fix_failing_elsewhere_only_informs() -> None:
    elsewhere = past(OTHER, storage_pb2.ACTION_OUTCOME_FAILED)
    analysis = crash_loop(history(None, elsewhere))
    assert analysis.recommendation.confidence == pytest.approx(RESTART_CONFIDENCE)
    similar = [r for r in analysis.reasons if r.startswith("Similar past incident")]
    assert similar == [
        "Similar past incident 00000000-0000-4000-8000-00000000000a (KubePodCrashLooping on "
        "Deployment shop/cart, distance 0.10): failed, restart_deployment failed, verdict "
        "unknown."
    ]


def test_distant_incidents_are_not_named_and_at_most_three_are() -> None:
    near = [past(OTHER, storage_pb2.ACTION_OUTCOME_SUCCEEDED, 0.05) for _ in range(5)]
    far = past(OTHER, storage_pb2.ACTION_OUTCOME_SUCCEEDED, 0.9)
    analysis = crash_loop(history(None, far, *near))
    named = [r for r in analysis.reasons if r.startswith("Similar past incident")]
    assert len(named) == 3
    assert all("distance 0.05" in reason for reason in named)


def test_unreadable_history_is_said_and_the_decision_stands() -> None:
    analysis = crash_loop(HistoryUnavailable("UNAVAILABLE: storage is down"))
    assert analysis.recommendation.confidence == pytest.approx(RESTART_CONFIDENCE)
    assert analysis.reasons[-1] == (
        "History: not read (UNAVAILABLE: storage is down); decided without it."
    )


def test_a_vector_store_outage_is_said_and_the_decision_stands() -> None:
    found = history(remediation_pb2.VERDICT_EFFECTIVE)
    found.similar_unavailable_reason = "weaviate: weaviate unavailable: connection refused"
    analysis = crash_loop(found)
    # The action's record still counts; only the similar incidents are missing.
    assert analysis.recommendation.confidence > RESTART_CONFIDENCE
    assert (
        "History: similar incidents not searched (weaviate: weaviate unavailable: "
        "connection refused)." in analysis.reasons
    )


def test_history_reasons_also_explain_no_action() -> None:
    analysis = analyze(
        make_alert("KubePodCrashLooping", {"pod": "x"}),
        alert_pb2.ResourceRef(namespace="shop", kind="StatefulSet", name="db"),
        None,
        DEFAULTS,
        None,
        history(None, past(OTHER, storage_pb2.ACTION_OUTCOME_SUCCEEDED)),
    )
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert analysis.reasons[-1].startswith("Similar past incident")


@pytest.mark.parametrize(
    "bad",
    [
        {"effective_bonus": -0.1},
        {"max_confidence": 1.5},
        {"doubtful_confidence": 2.0},
        {"similar_max_distance": 3.0},
        {"similar_shown": -1},
    ],
)
def test_invalid_history_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HistorySettings(**bad)  # type: ignore[arg-type]
