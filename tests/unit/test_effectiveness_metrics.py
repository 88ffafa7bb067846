"""The metrics before and after an action, as plain functions: each signal's trend and
figures, the weighted score, and how they lower (never raise) the verdict of pods and
alert."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2

from kubernaut.runtime.prometheus import Sample
from kubernaut.services.effectiveness.assessment import Judgement
from kubernaut.services.effectiveness.metrics import weigh_metrics
from kubernaut.services.signals import (
    WEIGHTS,
    MetricEvidence,
    Signal,
    Trend,
    Window,
    about_target,
    alert_signal,
    pod_pattern,
    ready_signal,
    restarts_signal,
    usage_signal,
)

T0 = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)
CHECKOUT = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout")
EFFECTIVE = remediation_pb2.VERDICT_EFFECTIVE
INEFFECTIVE = remediation_pb2.VERDICT_INEFFECTIVE
UNKNOWN = remediation_pb2.VERDICT_UNKNOWN


def pod(name: str, value: float) -> Sample:
    return Sample({"namespace": "shop", "pod": name}, value)


def test_the_weights_add_up_to_one() -> None:
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_the_window_before_is_as_long_as_the_one_after_within_bounds() -> None:
    short = Window.around(T0, T0 + dt.timedelta(seconds=3))
    assert short.acted - short.start == dt.timedelta(seconds=30)
    mid = Window.around(T0, T0 + dt.timedelta(minutes=2))
    assert mid.acted - mid.start == dt.timedelta(minutes=2)
    long = Window.around(T0, T0 + dt.timedelta(minutes=30))
    assert long.acted - long.start == dt.timedelta(minutes=10)
    assert short.before < short.acted


def test_a_deployments_pods_are_told_from_a_like_named_deployments() -> None:
    pattern = pod_pattern(CHECKOUT)
    assert pattern is not None
    mine = {"namespace": "shop", "pod": "checkout-5c7dbb7b7c-2s5rf"}
    other = {"namespace": "shop", "pod": "checkout-v2-5c7dbb7b7c-2s5rf-x"}
    assert about_target(mine, CHECKOUT, pattern)
    assert not about_target(other, CHECKOUT, pattern)
    assert not about_target({**mine, "namespace": "payments"}, CHECKOUT, pattern)
    assert about_target({"namespace": "shop", "deployment": "checkout"}, CHECKOUT, pattern)
    # A series that names no object counts for its namespace.
    assert about_target({"namespace": "shop", "job": "x"}, CHECKOUT, pattern)
    assert pod_pattern(alert_pb2.ResourceRef(kind="Node", name="n1")) is None


def test_the_alerts_condition_gone_is_improved_and_still_holding_is_bad() -> None:
    fired = [Sample({"namespace": "shop", "deployment": "checkout"}, 0.4)]
    cleared = alert_signal(fired, [], "Deployment shop/checkout")
    assert (cleared.trend, cleared.good_after) == (Trend.IMPROVED, True)
    held = alert_signal(fired, fired, "Deployment shop/checkout")
    assert (held.trend, held.good_after) == (Trend.UNCHANGED, False)
    assert "still holds" in held.line


def test_restarts_count_per_pod_and_new_pods_count_from_zero() -> None:
    window = Window.around(T0, T0 + dt.timedelta(seconds=30))
    start = [pod("checkout-a-1", 3), pod("checkout-a-2", 1)]
    acted = [pod("checkout-a-1", 7), pod("checkout-a-2", 4)]
    # The rollback replaced the pods: new ones, no restarts; the old are gone.
    now = [pod("checkout-b-1", 0), pod("checkout-b-2", 0)]
    signal = restarts_signal(start, acted, now, window)
    assert (signal.trend, signal.good_after) == (Trend.IMPROVED, True)
    assert signal.detail.startswith("7 in the 30s before the action, 0 in the 30s after")
    # Still restarting afterwards: worse than none before.
    calm = [pod("checkout-a-1", 0)]
    worse = restarts_signal(calm, calm, [pod("checkout-a-1", 2)], window)
    assert (worse.trend, worse.good_after) == (Trend.WORSE, False)
    assert restarts_signal([], [], [], window).trend is Trend.NO_DATA


def test_ready_replicas_against_desired() -> None:
    healed = ready_signal((1, 3), (3, 3))
    assert (healed.trend, healed.good_after) == (Trend.IMPROVED, True)
    assert healed.detail == "1/3 ready before the action, 3/3 now (improved)"
    dropped = ready_signal((3, 3), (2, 3))
    assert (dropped.trend, dropped.good_after) == (Trend.WORSE, False)
    assert ready_signal((3, 3), (None, 3)).trend is Trend.NO_DATA
    # Nothing known before: a comparison cannot be made, the end state still counts.
    assert ready_signal((None, None), (3, 3)).trend is Trend.UNCHANGED


def test_usage_against_limits_moves_only_by_a_step() -> None:
    assert usage_signal("cpu", 0.50, 0.55).trend is Trend.UNCHANGED
    assert usage_signal("cpu", 0.95, 0.40).trend is Trend.IMPROVED
    high = usage_signal("memory", 0.60, 0.97)
    assert (high.trend, high.good_after) == (Trend.WORSE, False)
    assert usage_signal("cpu", None, None).trend is Trend.NO_DATA


def test_the_score_weighs_only_signals_with_data() -> None:
    good = Signal("alert", Trend.IMPROVED, True, "")
    bad = Signal("ready", Trend.UNCHANGED, False, "")
    blind = Signal("cpu", Trend.NO_DATA, None, "")
    evidence = MetricEvidence((good, bad, blind))
    assert evidence.score == pytest.approx(0.40 / (0.40 + 0.25))
    assert MetricEvidence((blind,)).score is None
    assert "no signal had data" in MetricEvidence((blind,)).facts[-1]
    assert MetricEvidence.none("down").facts == ("metrics: no evidence: down",)


def _judged(verdict: remediation_pb2.Verdict.ValueType) -> Judgement:
    return Judgement(verdict, "pods are healthy and the alert resolved", ("x", "pods: fine"))


def test_metrics_only_ever_lower_the_verdict() -> None:
    still_bad = MetricEvidence((Signal("alert", Trend.UNCHANGED, False, "1 series"),))
    final = weigh_metrics(_judged(EFFECTIVE), still_bad, final=True, required=True)
    assert final.verdict == INEFFECTIVE
    assert final.reason.startswith("the alert's own expression still holds")
    assert "pods: fine" in final.evidence and "metrics: alert: 1 series" in final.evidence
    early = weigh_metrics(_judged(EFFECTIVE), still_bad, final=False, required=True)
    assert early.verdict == UNKNOWN and "not settled yet" in early.reason
    worse = MetricEvidence((Signal("restarts", Trend.WORSE, False, "0 before, 4 after"),))
    assert (
        weigh_metrics(_judged(EFFECTIVE), worse, final=True, required=True).verdict == INEFFECTIVE
    )
    # Good metrics never raise an UNKNOWN; missing ones change nothing.
    cleared = MetricEvidence((Signal("alert", Trend.IMPROVED, True, ""),))
    assert weigh_metrics(_judged(UNKNOWN), cleared, final=True, required=True).verdict == UNKNOWN
    assert weigh_metrics(_judged(EFFECTIVE), cleared, final=True, required=True).verdict == (
        EFFECTIVE
    )
    # Without Prometheus, missing metrics are noted and change nothing; with it, a fix no
    # metric speaks for is not judged effective.
    down = MetricEvidence.none("down")
    unconfigured = weigh_metrics(_judged(EFFECTIVE), down, final=True, required=False)
    assert unconfigured.verdict == EFFECTIVE
    assert "metrics: no evidence: down" in unconfigured.evidence
    blind = weigh_metrics(_judged(EFFECTIVE), down, final=True, required=True)
    assert blind.verdict == UNKNOWN and "no metric had data" in blind.reason
