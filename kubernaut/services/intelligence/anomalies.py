"""Anomalies: incident rates per namespace and per alert name against their own baseline.

Each key's incidents are counted per bucket (an hour by default) by when they opened. The
last bucket, [now - bucket, now), is compared with the `baseline_buckets` buckets before it
(a week of hours by default; buckets without incidents count as 0): it is an anomaly when

    count >= min_count  and  count > mean + stddevs * max(stddev, 1)

(defaults: 3 incidents, 3 standard deviations). The floor of 1 on the standard deviation
keeps a perfectly steady baseline (stddev 0) from flagging one incident more than usual,
and lets a key with no history at all (mean 0) be flagged only for a real burst. A
seasonal baseline (the same hour of past weeks) would need weeks of history per key; the
plain trailing window reacts to new keys and changed levels within the week.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

Scope: TypeAlias = intelligence_pb2.AnomalyScope.ValueType


@dataclass(frozen=True)
class AnomalyPolicy:
    bucket: dt.timedelta = dt.timedelta(hours=1)
    baseline_buckets: int = 168
    stddevs: float = 3.0
    min_count: int = 3

    def __post_init__(self) -> None:
        if self.bucket <= dt.timedelta(0) or self.baseline_buckets < 2 or self.min_count < 1:
            raise ValueError(f"an anomaly policy needs a bucket, 2 baseline buckets: {self}")

    @property
    def history(self) -> dt.timedelta:
        """How far back the counts reach: the baseline and the last bucket."""
        return self.bucket * (self.baseline_buckets + 1)


@dataclass(frozen=True)
class Anomalies:
    # Furthest above their threshold first.
    anomalies: list[intelligence_pb2.Anomaly]
    # The last bucket: [bucket_start, bucket_end).
    bucket_start: dt.datetime
    bucket_end: dt.datetime


def namespace_key(incident: storage_pb2.Incident) -> str:
    """The namespace an incident counts on: "cluster/namespace", or the namespace alone in
    the default cluster ("" for cluster-scoped subjects such as Nodes)."""
    subject = incident.subject
    return f"{subject.cluster}/{subject.namespace}" if subject.cluster else subject.namespace


def baseline(counts: list[int]) -> tuple[float, float]:
    """The mean and (population) standard deviation of the counts per bucket."""
    mean = sum(counts) / len(counts)
    variance = sum((c - mean) ** 2 for c in counts) / len(counts)
    return mean, math.sqrt(variance)


def threshold_of(mean: float, stddev: float, policy: AnomalyPolicy) -> float:
    return mean + policy.stddevs * max(stddev, 1.0)


def find_anomalies(
    incidents: Iterable[storage_pb2.Incident],
    now: dt.datetime,
    policy: AnomalyPolicy | None = None,
) -> Anomalies:
    """The namespaces and alert names whose incidents in the last bucket before `now` are
    anomalous against their baseline (see the module's docstring)."""
    policy = policy or AnomalyPolicy()
    start = now - policy.history
    # (scope, key) -> bucket index (0: the last bucket, 1..baseline_buckets before it) -> n
    counts: defaultdict[tuple[Scope, str], defaultdict[int, int]] = defaultdict(
        lambda: defaultdict(int)
    )
    for incident in incidents:
        opened = incident.opened_at.ToDatetime(tzinfo=dt.UTC)
        if not start <= opened < now:
            continue
        index = int((now - opened) / policy.bucket)
        counts[(intelligence_pb2.ANOMALY_SCOPE_NAMESPACE, namespace_key(incident))][index] += 1
        counts[(intelligence_pb2.ANOMALY_SCOPE_ALERT, incident.alert_name)][index] += 1
    found = []
    for (scope, key), per_bucket in counts.items():
        count = per_bucket.get(0, 0)
        if count < policy.min_count:
            continue
        history = [per_bucket.get(i, 0) for i in range(1, policy.baseline_buckets + 1)]
        mean, stddev = baseline(history)
        threshold = threshold_of(mean, stddev, policy)
        if count > threshold:
            found.append(
                intelligence_pb2.Anomaly(
                    scope=scope,
                    key=key,
                    count=count,
                    baseline_mean=mean,
                    baseline_stddev=stddev,
                    threshold=threshold,
                )
            )
    found.sort(key=lambda a: (-(a.count - a.threshold), a.scope, a.key))
    return Anomalies(found, now - policy.bucket, now)
