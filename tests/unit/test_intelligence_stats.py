"""intelligence's success rates with uncertainty: the Wilson score interval, the minimum
sample, the trend between two windows, per action and per action and alert."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

from kubernaut.services.intelligence.stats import (
    TrendPolicy,
    action_stats,
    least_effective,
    trend_direction,
    wilson_interval,
)
from tests.fixtures.intelligence_history import NOW, record

SUCCEEDED = storage_pb2.ACTION_OUTCOME_SUCCEEDED
FAILED = storage_pb2.ACTION_OUTCOME_FAILED
ROLLED_BACK = storage_pb2.ACTION_OUTCOME_ROLLED_BACK


@pytest.mark.parametrize(
    ("successes", "attempts", "lower", "upper"),
    [
        # Published values (Wilson 1927; e.g. Newcombe 1998, Agresti & Coull 1998).
        (8, 10, 0.490, 0.943),
        (10, 10, 0.722, 1.0),
        (0, 10, 0.0, 0.278),
        (5, 10, 0.237, 0.763),
        (1, 1, 0.207, 1.0),
        (81, 263, 0.255, 0.366),
    ],
)
def test_the_wilson_interval_matches_published_values(
    successes: int, attempts: int, lower: float, upper: float
) -> None:
    low, high = wilson_interval(successes, attempts)
    assert (round(low, 3), round(high, 3)) == (lower, upper)


def test_no_attempts_say_nothing_and_impossible_counts_are_refused() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # All successes (or none) reach the bound exactly, without floating-point dust.
    assert wilson_interval(7, 7)[1] == 1.0
    assert wilson_interval(0, 7)[0] == 0.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


def test_the_interval_narrows_as_evidence_grows() -> None:
    widths = [wilson_interval(8 * n, 10 * n) for n in (1, 10, 100)]
    assert [round(high - low, 3) for low, high in widths] == sorted(
        (round(high - low, 3) for low, high in widths), reverse=True
    )
    assert all(low < 0.8 < high for low, high in widths)


@pytest.mark.parametrize(
    ("recent", "previous", "direction"),
    [
        ((2, 10), (18, 20), intelligence_pb2.TREND_DIRECTION_WORSENING),
        ((19, 20), (3, 10), intelligence_pb2.TREND_DIRECTION_IMPROVING),
        ((7, 10), (20, 28), intelligence_pb2.TREND_DIRECTION_STEADY),
        ((10, 10), (28, 28), intelligence_pb2.TREND_DIRECTION_STEADY),
        # A change within what chance gives at these sizes.
        ((4, 6), (5, 6), intelligence_pb2.TREND_DIRECTION_STEADY),
        ((1, 4), (18, 20), intelligence_pb2.TREND_DIRECTION_TOO_FEW),
        ((0, 0), (18, 20), intelligence_pb2.TREND_DIRECTION_TOO_FEW),
    ],
)
def test_the_trend_is_a_two_proportion_test_with_a_minimum_sample(
    recent: tuple[int, int], previous: tuple[int, int], direction: int
) -> None:
    assert trend_direction(recent, previous, min_attempts=5) == direction


def _history() -> list[storage_pb2.ActionRecord]:
    """restart_deployment: 9 of 10 worked 10 to 30 days ago, 2 of 8 in the last week;
    scale_deployment 3 attempts; a dry-run and a refusal, which are not attempts."""
    records = []
    for day in range(10):
        outcome = SUCCEEDED if day else ROLLED_BACK
        records.append(record("restart_deployment", outcome, NOW - dt.timedelta(days=10 + 2 * day)))
    for hour in range(8):
        outcome = SUCCEEDED if hour < 2 else FAILED
        records.append(record("restart_deployment", outcome, NOW - dt.timedelta(hours=3 + hour)))
    for day in range(3):
        records.append(record("scale_deployment", SUCCEEDED, NOW - dt.timedelta(days=day + 1)))
    records.append(
        record("scale_deployment", storage_pb2.ACTION_OUTCOME_DRY_RUN, NOW - dt.timedelta(days=1))
    )
    records.append(
        record("rollback_deployment", storage_pb2.ACTION_OUTCOME_REFUSED, NOW - dt.timedelta(1))
    )
    return records


def test_action_stats_carry_the_interval_the_sample_and_the_trend() -> None:
    stats = {
        s.action: s for s in action_stats(_history(), min_attempts=5, trend=TrendPolicy(), now=NOW)
    }
    # Refusals and dry-runs changed nothing: the refused action is not listed at all.
    assert sorted(stats) == ["restart_deployment", "scale_deployment"]
    restart = stats["restart_deployment"]
    assert (restart.attempts, restart.succeeded, restart.failed, restart.rolled_back) == (
        18,
        11,
        6,
        1,
    )
    assert restart.success_rate == pytest.approx(11 / 18)
    assert (restart.success_lower_bound, restart.success_upper_bound) == pytest.approx(
        wilson_interval(11, 18)
    )
    assert restart.enough_samples
    assert restart.alert_name == "KubePodCrashLooping"
    trend = restart.trend
    assert (trend.recent_attempts, trend.previous_attempts) == (8, 10)
    assert trend.recent_success_rate == pytest.approx(0.25)
    assert trend.previous_success_rate == pytest.approx(0.9)
    assert trend.direction == intelligence_pb2.TREND_DIRECTION_WORSENING
    assert trend.recent_window_seconds == 7 * 86400
    assert trend.previous_window_seconds == 28 * 86400
    scale = stats["scale_deployment"]
    assert scale.attempts == 3 and not scale.enough_samples  # too few to judge
    assert scale.trend.direction == intelligence_pb2.TREND_DIRECTION_TOO_FEW


def test_stats_per_action_and_alert_and_the_least_effective_by_lower_bound() -> None:
    records = [record("restart_deployment", SUCCEEDED, NOW, "A")] * 9
    records += [record("restart_deployment", FAILED, NOW, "A")]
    records += [record("restart_deployment", SUCCEEDED, NOW, "B")] * 3
    records += [record("restart_deployment", FAILED, NOW, "B")] * 7
    # 0 of 1: the worst rate, and no evidence at all: never ranked.
    records += [record("delete_pod", FAILED, NOW, "A")]
    # 4 of 12 is a surer failure than 3 of 10.
    records += [record("scale_deployment", SUCCEEDED, NOW, "C")] * 4
    records += [record("scale_deployment", FAILED, NOW, "C")] * 8
    stats = action_stats(records, min_attempts=5, by_alert=True)
    assert [(s.action, s.alert_name, s.attempts) for s in stats] == [
        ("delete_pod", "A", 1),
        ("restart_deployment", "A", 10),
        ("restart_deployment", "B", 10),
        ("scale_deployment", "C", 12),
    ]
    ranked = least_effective(stats, top=2)
    assert [(s.action, s.alert_name) for s in ranked] == [
        ("restart_deployment", "B"),
        ("scale_deployment", "C"),
    ]
    assert ranked[0].success_lower_bound < ranked[1].success_lower_bound
    # Across alerts, one entry per action.
    merged = {s.action: s for s in action_stats(records)}
    assert merged["restart_deployment"].attempts == 20
    assert merged["restart_deployment"].alert_name == ""  # counted across alert names
