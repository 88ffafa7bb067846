"""Per-action outcome statistics from the action history: counts, the success rate with
its 95% Wilson score interval, whether the sample is big enough to judge, and the trend of
the rate between a recent window and the one before it."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

# The normal quantile of a two-sided 95% interval (and of the trend's test at 5%).
Z_95: Final = 1.96
DEFAULT_MIN_ATTEMPTS: Final = 5
_MICROSECOND: Final = dt.timedelta(microseconds=1)

# Dry-runs and refusals changed nothing, so they say nothing about whether a fix works.
ATTEMPT_OUTCOMES: Final = frozenset(
    {
        storage_pb2.ACTION_OUTCOME_SUCCEEDED,
        storage_pb2.ACTION_OUTCOME_FAILED,
        storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
    }
)


def wilson_interval(successes: int, attempts: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success rate: (lower, upper). Unlike the normal
    approximation it stays within [0, 1] and is honest about small samples (8 of 10 is
    [0.490, 0.943] at 95%, 10 of 10 is [0.722, 1]); no attempts is [0, 1]."""
    if attempts < 0 or not 0 <= successes <= attempts:
        raise ValueError(f"need 0 <= successes <= attempts, got {successes}/{attempts}")
    if attempts == 0:
        return 0.0, 1.0
    rate = successes / attempts
    z2 = z * z
    denominator = 1 + z2 / attempts
    centre = (rate + z2 / (2 * attempts)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / attempts + z2 / (4 * attempts**2)) / denominator
    # All successes (or none) make a bound exactly 1 (or 0); floating point would not.
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == attempts else min(1.0, centre + half)
    return lower, upper


@dataclass(frozen=True)
class TrendPolicy:
    """The trend compares the `recent` window before now with the `previous` one before it."""

    recent: dt.timedelta = dt.timedelta(days=7)
    previous: dt.timedelta = dt.timedelta(days=28)


def trend_direction(
    recent: tuple[int, int], previous: tuple[int, int], min_attempts: int, z: float = Z_95
) -> intelligence_pb2.TrendDirection.ValueType:
    """How the success rate moved from `previous` to `recent` (each (succeeded, attempts)):
    TOO_FEW when either window has fewer than `min_attempts`; otherwise a two-proportion
    z-test (pooled): IMPROVING or WORSENING when |z| >= `z` (5% two-sided), else STEADY."""
    (s1, n1), (s2, n2) = recent, previous
    if n1 < min_attempts or n2 < min_attempts:
        return intelligence_pb2.TREND_DIRECTION_TOO_FEW
    pooled = (s1 + s2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:  # both all successes, or both none: the same rate
        return intelligence_pb2.TREND_DIRECTION_STEADY
    score = (s1 / n1 - s2 / n2) / spread
    if score >= z:
        return intelligence_pb2.TREND_DIRECTION_IMPROVING
    if score <= -z:
        return intelligence_pb2.TREND_DIRECTION_WORSENING
    return intelligence_pb2.TREND_DIRECTION_STEADY


def _started(record: storage_pb2.ActionRecord) -> dt.datetime:
    return record.started_at.ToDatetime(tzinfo=dt.UTC)


def _success_trend(
    records: list[storage_pb2.ActionRecord],
    policy: TrendPolicy,
    now: dt.datetime,
    min_attempts: int,
) -> intelligence_pb2.SuccessTrend:
    recent_from = now - policy.recent
    previous_from = recent_from - policy.previous

    def tally(start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
        """(succeeded, attempts) of the records started in [start, end)."""
        within = [r for r in records if start <= _started(r) < end]
        return sum(r.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED for r in within), len(within)

    (s1, n1), (s2, n2) = tally(recent_from, now), tally(previous_from, recent_from)
    return intelligence_pb2.SuccessTrend(
        direction=trend_direction((s1, n1), (s2, n2), min_attempts),
        recent_attempts=n1,
        recent_success_rate=s1 / n1 if n1 else 0.0,
        previous_attempts=n2,
        previous_success_rate=s2 / n2 if n2 else 0.0,
        recent_window_seconds=int(policy.recent.total_seconds()),
        previous_window_seconds=int(policy.previous.total_seconds()),
    )


def action_stats(
    records: Iterable[storage_pb2.ActionRecord],
    *,
    min_attempts: int = DEFAULT_MIN_ATTEMPTS,
    trend: TrendPolicy | None = None,
    now: dt.datetime | None = None,
    by_alert: bool = False,
) -> list[intelligence_pb2.ActionStats]:
    """How each action fared: per action, or per action and alert name with `by_alert`
    (sorted by action, then alert name). Only applied actions count (see
    ATTEMPT_OUTCOMES). With `trend`, each entry also compares the success rate of the
    windows before `now` (default: the newest record's start)."""
    key: Callable[[storage_pb2.ActionRecord], tuple[str, str]] = (
        (lambda r: (r.action, r.alert_name)) if by_alert else (lambda r: (r.action, ""))
    )
    groups: defaultdict[tuple[str, str], list[storage_pb2.ActionRecord]] = defaultdict(list)
    alerts: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for record in records:
        if record.outcome in ATTEMPT_OUTCOMES:
            groups[key(record)].append(record)
            alerts[key(record)].add(record.alert_name)
    if trend is not None and now is None and groups:
        now = max(_started(r) for group in groups.values() for r in group) + _MICROSECOND
    stats = []
    for group_key in sorted(groups):
        group = groups[group_key]
        outcome = Counter(record.outcome for record in group)
        attempts = len(group)
        succeeded = outcome[storage_pb2.ACTION_OUTCOME_SUCCEEDED]
        lower, upper = wilson_interval(succeeded, attempts)
        entry = intelligence_pb2.ActionStats(
            action=group_key[0],
            # One alert name when all records share it (GetActionStats' are of one).
            alert_name=group_key[1] or _only(alerts[group_key]),
            attempts=attempts,
            succeeded=succeeded,
            failed=outcome[storage_pb2.ACTION_OUTCOME_FAILED],
            rolled_back=outcome[storage_pb2.ACTION_OUTCOME_ROLLED_BACK],
            success_rate=succeeded / attempts if attempts else 0.0,
            success_lower_bound=lower,
            success_upper_bound=upper,
            enough_samples=attempts >= min_attempts,
        )
        if trend is not None and now is not None:
            entry.trend.CopyFrom(_success_trend(group, trend, now, min_attempts))
        stats.append(entry)
    return stats


def _only(names: set[str]) -> str:
    return next(iter(names)) if len(names) == 1 else ""


def least_effective(
    stats: Iterable[intelligence_pb2.ActionStats], top: int
) -> list[intelligence_pb2.ActionStats]:
    """The `top` entries with enough samples whose success rate is lowest at best: by the
    Wilson lower bound, ascending (a sure 40% ranks below a lucky 0 of 1, which is not
    ranked at all), then the most attempts first."""
    judged = [s for s in stats if s.enough_samples]
    judged.sort(key=lambda s: (s.success_lower_bound, -s.attempts, s.action, s.alert_name))
    return judged[:top]
