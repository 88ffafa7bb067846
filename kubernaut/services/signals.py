"""A workload's signals in Prometheus, then against now: the firing alert's own expression
and the workload's golden signals, in a window before a moment (an action) and a window of
the same length up to now. Effectiveness compares them around an action; context_api
serves them to an analysis (then against a while ago).

The signals, and the weight each carries in the score (README: Judging a fix):

    alert      0.40  the alert's own PromQL (its generator URL's g0.expr): how many of its
                     series are about the target; any left means the alert's condition holds
    ready      0.25  ready replicas against desired (kube-state-metrics)
    restarts   0.25  container restarts of the workload's pods in the window
    cpu        0.05  CPU used against limits (cAdvisor's container_* series)
    memory     0.05  working-set memory against limits

Each signal is improved, unchanged, worse, or without data. The score is the weighted share
of the signals with data that did not get worse and ended good (1 for improved or good both
times, 0 for unchanged and bad, 0 for worse); no signal with data means no score. A signal
without data is never counted as good.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from kubernaut.common.v1 import alert_pb2

from kubernaut.runtime.prometheus import (
    PrometheusAPI,
    PrometheusUnavailable,
    Sample,
    label_matcher,
)

# Labels that name an alert's subject (kube-state-metrics names, as the kubernetes-mixin
# alerts carry them), and the label that names a workload of each kind.
WORKLOAD_LABELS: Final[Mapping[str, str]] = {
    "Deployment": "deployment",
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
    "ReplicaSet": "replicaset",
    "Job": "job_name",
    "CronJob": "cronjob",
    "Pod": "pod",
    "Node": "node",
    "PersistentVolumeClaim": "persistentvolumeclaim",
}
SUBJECT_LABELS: Final = tuple(dict.fromkeys(WORKLOAD_LABELS.values()))


def describe_ref(ref: alert_pb2.ResourceRef) -> str:
    where = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    cluster = f" on cluster {ref.cluster}" if ref.cluster else ""
    return f"{ref.kind} {where}{cluster}"


WEIGHTS: Final[Mapping[str, float]] = {
    "alert": 0.40,
    "ready": 0.25,
    "restarts": 0.25,
    "cpu": 0.05,
    "memory": 0.05,
}
# The window before the action is as long as the time from the action to the checkpoint,
# within these bounds (a 3 s checkpoint still compares with half a minute before it).
MIN_WINDOW: Final = dt.timedelta(seconds=30)
MAX_WINDOW: Final = dt.timedelta(minutes=10)
# The condition an alert fired on held just before the action; sampled this long before it.
BEFORE_MARGIN: Final = dt.timedelta(seconds=2)
# Usage against limits: a change smaller than this (a share of the limit) is no change, and
# usage above HIGH_USAGE counts as bad.
USAGE_STEP: Final = 0.10
HIGH_USAGE: Final = 0.90

# kube-state-metrics' series for each workload kind: (ready, desired, its workload label).
_REPLICAS: Final[Mapping[str, tuple[str, str]]] = {
    "Deployment": ("kube_deployment_status_replicas_ready", "kube_deployment_spec_replicas"),
    "StatefulSet": ("kube_statefulset_status_replicas_ready", "kube_statefulset_replicas"),
    "DaemonSet": (
        "kube_daemonset_status_number_ready",
        "kube_daemonset_status_desired_number_scheduled",
    ),
    "ReplicaSet": ("kube_replicaset_status_ready_replicas", "kube_replicaset_spec_replicas"),
}


class Trend(enum.Enum):
    IMPROVED = "improved"
    UNCHANGED = "unchanged"
    WORSE = "worse"
    NO_DATA = "no data"


@dataclass(frozen=True)
class Signal:
    name: str
    trend: Trend
    # Good at the checkpoint (the alert's condition gone, every replica ready, no restarts,
    # usage under HIGH_USAGE); None without data.
    good_after: bool | None
    # The figures, as a person reads them: "1/3 ready before, 3/3 now (improved)".
    detail: str

    @property
    def line(self) -> str:
        return f"metrics: {self.name}: {self.detail}"

    @property
    def credit(self) -> float | None:
        if self.trend is Trend.NO_DATA or self.good_after is None:
            return None
        return 1.0 if self.good_after and self.trend is not Trend.WORSE else 0.0


@dataclass(frozen=True)
class MetricEvidence:
    signals: tuple[Signal, ...]
    # Why there are no metrics at all ("" when there are signals).
    missing: str = ""

    @classmethod
    def none(cls, reason: str) -> MetricEvidence:
        return cls((), reason)

    def signal(self, name: str) -> Signal | None:
        return next((s for s in self.signals if s.name == name), None)

    @property
    def score(self) -> float | None:
        """The weighted share of good signals among those with data (module docstring)."""
        credited = [(WEIGHTS[s.name], s.credit) for s in self.signals if s.credit is not None]
        total = sum(weight for weight, _ in credited)
        if not total:
            return None
        return sum(weight * (credit or 0.0) for weight, credit in credited) / total

    @property
    def worse(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals if s.trend is Trend.WORSE)

    @property
    def facts(self) -> tuple[str, ...]:
        if self.missing:
            return (f"metrics: no evidence: {self.missing}",)
        lines = [s.line for s in self.signals]
        score = self.score
        with_data = sum(1 for s in self.signals if s.credit is not None)
        lines.append(
            f"metrics: score {score:.2f} over {with_data} signal(s) with data"
            if score is not None
            else "metrics: no signal had data: no score"
        )
        return tuple(lines)


@dataclass(frozen=True)
class Window:
    """The instants compared: the window before the action ends at `acted`, the one after
    runs from `acted` to `now`."""

    start: dt.datetime
    acted: dt.datetime
    now: dt.datetime

    @classmethod
    def around(cls, acted: dt.datetime, now: dt.datetime) -> Window:
        length = min(max(now - acted, MIN_WINDOW), MAX_WINDOW)
        return cls(acted - length, acted, now)

    @property
    def before(self) -> dt.datetime:
        return self.acted - BEFORE_MARGIN

    def seconds(self, start: dt.datetime, end: dt.datetime) -> str:
        return f"{max((end - start).total_seconds(), 0):.0f}s"


def pod_pattern(target: alert_pb2.ResourceRef) -> str | None:
    """A regex of the names of the target's pods (the controllers' naming), or None for a
    kind without pods of its own."""
    name = re.escape(target.name)
    return {
        "Deployment": f"{name}-[a-z0-9]+-[a-z0-9]+",
        "StatefulSet": f"{name}-[0-9]+",
        "DaemonSet": f"{name}-[a-z0-9]+",
        "ReplicaSet": f"{name}-[a-z0-9]+",
        "Pod": name,
    }.get(target.kind)


def about_target(
    labels: Mapping[str, str], target: alert_pb2.ResourceRef, pod_regex: str | None
) -> bool:
    """A series is about the target: its namespace, and a subject label naming the target
    or one of its pods; a series naming no subject at all counts for its namespace."""
    if target.namespace and labels.get("namespace") != target.namespace:
        return False
    if not any(labels.get(key) for key in SUBJECT_LABELS):
        return True
    workload_label = WORKLOAD_LABELS.get(target.kind)
    if workload_label and labels.get(workload_label) == target.name:
        return True
    pod = labels.get("pod")
    return bool(pod and pod_regex and re.fullmatch(pod_regex, pod))


def _trend_lower_is_better(before: float, after: float, step: float = 0.0) -> Trend:
    if after < before - step:
        return Trend.IMPROVED
    if after > before + step:
        return Trend.WORSE
    return Trend.UNCHANGED


def alert_signal(before: Sequence[Sample], after: Sequence[Sample], target_text: str) -> Signal:
    """The alert's own expression: how many of its series are about the target."""
    was, now = len(before), len(after)
    trend = _trend_lower_is_better(was, now)
    detail = f"{was} series about {target_text} before the action, {now} now ({trend.value})"
    if now:
        detail += "; the alert's condition still holds"
    return Signal("alert", trend, now == 0, detail)


def restarts_signal(
    at_start: Sequence[Sample],
    at_action: Sequence[Sample],
    at_now: Sequence[Sample],
    window: Window,
) -> Signal:
    """Restarts per pod in each window; a pod that appeared within a window counts from 0."""
    if not at_action and not at_now:
        return Signal("restarts", Trend.NO_DATA, None, "no restart counts for the pods")

    def by_pod(samples: Sequence[Sample]) -> dict[str, float]:
        return {s.labels.get("pod", ""): s.value for s in samples if not math.isnan(s.value)}

    start, acted, now = by_pod(at_start), by_pod(at_action), by_pod(at_now)
    before = sum(max(value - start.get(pod, 0.0), 0.0) for pod, value in acted.items())
    after = sum(max(value - acted.get(pod, 0.0), 0.0) for pod, value in now.items())
    trend = _trend_lower_is_better(before, after)
    detail = (
        f"{before:.0f} in the {window.seconds(window.start, window.acted)} before the action,"
        f" {after:.0f} in the {window.seconds(window.acted, window.now)} after ({trend.value})"
    )
    return Signal("restarts", trend, after == 0, detail)


def ratio_text(ready: float | None, desired: float | None) -> str:
    if ready is None or desired is None:
        return "unknown"
    return f"{ready:.0f}/{desired:.0f}"


def ready_signal(
    before: tuple[float | None, float | None], after: tuple[float | None, float | None]
) -> Signal:
    """Ready replicas against desired, just before the action and now."""

    def share(pair: tuple[float | None, float | None]) -> float | None:
        ready, desired = pair
        if ready is None or desired is None:
            return None
        return 1.0 if desired <= 0 else min(ready / desired, 1.0)

    was, now = share(before), share(after)
    if now is None:
        return Signal("ready", Trend.NO_DATA, None, "no replica counts for the workload")
    trend = Trend.UNCHANGED if was is None else _trend_lower_is_better(-was, -now)
    detail = f"{ratio_text(*before)} ready before the action, {ratio_text(*after)} now"
    return Signal("ready", trend, now >= 1.0, f"{detail} ({trend.value})")


def usage_signal(name: str, before: float | None, after: float | None) -> Signal:
    """Usage against limits (a share of the limit) just before the action and now."""
    if after is None:
        return Signal(
            name, Trend.NO_DATA, None, "no usage or no limits for the pods (cAdvisor's series)"
        )
    trend = Trend.UNCHANGED if before is None else _trend_lower_is_better(before, after, USAGE_STEP)
    was = "unknown" if before is None else f"{before:.0%}"
    detail = f"{was} of the limit before the action, {after:.0%} now ({trend.value})"
    return Signal(name, trend, after < HIGH_USAGE, detail)


def _single(samples: Sequence[Sample]) -> float | None:
    values = [s.value for s in samples if not math.isnan(s.value)]
    return values[0] if values else None


class MetricReader:
    """The queries behind the signals, against one Prometheus."""

    def __init__(self, prometheus: PrometheusAPI) -> None:
        self.prometheus = prometheus

    async def evidence(
        self,
        expression: str | None,
        target: alert_pb2.ResourceRef,
        acted_at: dt.datetime,
        now: dt.datetime,
    ) -> MetricEvidence:
        """Every signal for `target` (the alert's only with an `expression`: "" is an alert
        without one, None leaves the alert out); MetricEvidence.none when Prometheus cannot
        answer."""
        window = Window.around(acted_at, now)
        pods = pod_pattern(target)
        try:
            signals = await asyncio.gather(
                self._alert(expression, target, pods, window),
                self._ready(target, window),
                self._restarts(target, pods, window),
                self._usage("cpu", target, pods, window),
                self._usage("memory", target, pods, window),
            )
        except PrometheusUnavailable as error:
            return MetricEvidence.none(f"{error}; not assumed good")
        return MetricEvidence(tuple(s for s in signals if s is not None))

    async def _alert(
        self,
        expression: str | None,
        target: alert_pb2.ResourceRef,
        pods: str | None,
        window: Window,
    ) -> Signal | None:
        if expression is None:
            return None
        if not expression:
            return Signal(
                "alert", Trend.NO_DATA, None, "the alert carries no expression (generator URL)"
            )
        before, after, living_before, living_now = await asyncio.gather(
            self.prometheus.query(expression, window.before),
            self.prometheus.query(expression, window.now),
            self._pods(target, pods, window.before),
            self._pods(target, pods, window.now),
        )
        mine = [s for s in before if self._counts(s, target, pods, living_before)]
        still = [s for s in after if self._counts(s, target, pods, living_now)]
        return alert_signal(mine, still, describe_ref(target))

    @staticmethod
    def _counts(
        sample: Sample, target: alert_pb2.ResourceRef, pods: str | None, living: set[str] | None
    ) -> bool:
        """A series of the alert's expression about the target, and not about a pod that
        no longer exists (`max_over_time` rules remember deleted pods for minutes)."""
        if not about_target(sample.labels, target, pods):
            return False
        pod = sample.labels.get("pod")
        return living is None or not pod or pod in living

    async def _pods(
        self, target: alert_pb2.ResourceRef, pods: str | None, at: dt.datetime
    ) -> set[str] | None:
        """The target's pods that exist at `at` (kube-state-metrics' kube_pod_info), or None
        when that is not known."""
        if pods is None:
            return None
        selector = (
            f"{label_matcher('namespace', target.namespace)},"
            f"{label_matcher('pod', pods, regex=True)}"
        )
        found = await self.prometheus.query(f"kube_pod_info{{{selector}}}", at)
        return {s.labels["pod"] for s in found if s.labels.get("pod")} or None

    async def _ready(self, target: alert_pb2.ResourceRef, window: Window) -> Signal | None:
        series = _REPLICAS.get(target.kind)
        label = WORKLOAD_LABELS.get(target.kind)
        if series is None or label is None:
            return None
        where = (
            f"{label_matcher('namespace', target.namespace)},{label_matcher(label, target.name)}"
        )
        ready, desired = (f"max({name}{{{where}}})" for name in series)
        answers = await asyncio.gather(
            *(
                self.prometheus.query(query, at)
                for at in (window.before, window.now)
                for query in (ready, desired)
            )
        )
        values = [_single(answer) for answer in answers]
        return ready_signal((values[0], values[1]), (values[2], values[3]))

    async def _restarts(
        self, target: alert_pb2.ResourceRef, pods: str | None, window: Window
    ) -> Signal | None:
        if pods is None:
            return None
        selector = (
            f"{label_matcher('namespace', target.namespace)},"
            f"{label_matcher('pod', pods, regex=True)}"
        )
        query = f"sum by (pod) (kube_pod_container_status_restarts_total{{{selector}}})"
        start, acted, now = await asyncio.gather(
            *(self.prometheus.query(query, at) for at in (window.start, window.acted, window.now))
        )
        return restarts_signal(start, acted, now, window)

    async def _usage(
        self, name: str, target: alert_pb2.ResourceRef, pods: str | None, window: Window
    ) -> Signal | None:
        if pods is None:
            return None
        selector = (
            f"{label_matcher('namespace', target.namespace)},"
            f'{label_matcher("pod", pods, regex=True)},container!=""'
        )
        used = (
            f"sum(rate(container_cpu_usage_seconds_total{{{selector}}}[2m]))"
            if name == "cpu"
            else f"sum(container_memory_working_set_bytes{{{selector}}})"
        )
        limit = f'sum(kube_pod_container_resource_limits{{{selector},resource="{name}"}})'
        query = f"({used}) / ({limit})"
        before, after = await asyncio.gather(
            self.prometheus.query(query, window.before), self.prometheus.query(query, window.now)
        )
        return usage_signal(name, _single(before), _single(after))


@dataclass(frozen=True)
class NeighbourChange:
    """Pods not Ready behind one Service or on one node, other than the target's, just
    before a moment (an action) and now."""

    scope: str
    before: int
    now: int
    # The pods not Ready now (at most MAX_NEIGHBOURS_NAMED).
    pods: tuple[str, ...]


MAX_NEIGHBOURS_NAMED: Final = 5


class NeighbourReader:
    """The target's neighbours in kube-state-metrics: pods behind the same Services (their
    EndpointSlices' not-ready endpoints) and pods on the same nodes."""

    def __init__(self, prometheus: PrometheusAPI) -> None:
        self.prometheus = prometheus

    async def changes(
        self,
        target: alert_pb2.ResourceRef,
        services: Sequence[str],
        nodes: Sequence[str],
        acted_at: dt.datetime,
        now: dt.datetime,
    ) -> list[NeighbourChange]:
        """Each scope's not-ready neighbours before the action and now. Raises
        PrometheusUnavailable."""
        mine = pod_pattern(target)
        scopes: list[tuple[str, str]] = []
        namespace = label_matcher("namespace", target.namespace)
        for service in services:
            # The not-ready endpoints of the Service's EndpointSlices (which its controller
            # names <service>-<5 characters>), as the pods they are.
            slices = label_matcher("endpointslice", f"{re.escape(service)}-[a-z0-9]+", regex=True)
            scopes.append(
                (
                    f"Service {service}",
                    f'kube_endpointslice_endpoints{{{namespace},{slices},ready="false",'
                    'targetref_kind="Pod"}',
                )
            )
        for node in nodes:
            scopes.append(
                (
                    f"node {node}",
                    'kube_pod_status_ready{condition="false"} == 1 and on(namespace, pod)'
                    f" kube_pod_info{{{label_matcher('node', node)}}}",
                )
            )
        before = acted_at - BEFORE_MARGIN
        found = []
        for scope, query in scopes:
            then, current = await asyncio.gather(
                self.prometheus.query(query, before), self.prometheus.query(query, now)
            )

            def others(samples: Sequence[Sample]) -> set[str]:
                named = {
                    f"{s.labels.get('targetref_namespace') or s.labels.get('namespace', '')}/"
                    f"{s.labels.get('targetref_name') or s.labels.get('pod', '')}"
                    for s in samples
                }
                return {
                    pod
                    for pod in named
                    if not (
                        mine
                        and pod.startswith(f"{target.namespace}/")
                        and re.fullmatch(mine, pod.split("/", 1)[1])
                    )
                }

            was, now_set = others(then), others(current)
            found.append(
                NeighbourChange(
                    scope, len(was), len(now_set), tuple(sorted(now_set))[:MAX_NEIGHBOURS_NAMED]
                )
            )
        return found
