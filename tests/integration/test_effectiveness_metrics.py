"""The metrics before and after an action, read from a real Prometheus (Debian's) scraping
an exposition in kube-state-metrics' names that the test changes at the action: two
workloads whose pods heal, one whose alert's own metric stays bad (not effective however
healthy its pods are) and one whose metric clears; and Prometheus gone (no evidence, never
assumed good)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2

from kubernaut.devstack.monitoring import Prometheus
from kubernaut.runtime.prometheus import PrometheusAPI
from kubernaut.services.effectiveness.assessment import Judgement
from kubernaut.services.effectiveness.metrics import weigh_metrics
from kubernaut.services.signals import MetricReader, Trend
from tests.fixtures.devstack import WebhookReceiver
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

EXPRESSION = "shop_error_ratio > 0.1"
# The kubernetes-mixin's KubePodCrashLooping: it remembers a pod for 5 minutes.
CRASH_LOOPING = (
    'max_over_time(kube_pod_container_status_waiting_reason{reason="CrashLoopBackOff"}[5m]) >= 1'
)
# Prometheus scrapes every second: three scrapes settle each phase.
SETTLE = 3.5


def _exposition(deployments: dict[str, tuple[int, int, float]], restarts: dict[str, int]) -> str:
    """kube-state-metrics' series (and an app's error ratio) for `deployments`: name ->
    (ready, desired, error ratio); and each pod's restart count."""
    lines = []
    for name, (ready, desired, errors) in deployments.items():
        where = f'namespace="shop",deployment="{name}"'
        lines += [
            f"kube_deployment_status_replicas_ready{{{where}}} {ready}",
            f"kube_deployment_spec_replicas{{{where}}} {desired}",
            f"shop_error_ratio{{{where}}} {errors}",
        ]
    for pod, count in restarts.items():
        lines += [
            f'kube_pod_container_status_restarts_total{{namespace="shop",pod="{pod}",'
            f'container="app"}} {count}',
            f'kube_pod_info{{namespace="shop",pod="{pod}"}} 1',
            # Waiting in CrashLoopBackOff while it restarts (the kubernetes-mixin's series).
            f'kube_pod_container_status_waiting_reason{{namespace="shop",pod="{pod}",'
            f'container="app",reason="CrashLoopBackOff"}} {1 if count else 0}',
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def scraped(tmp_path: Path) -> AsyncIterator[tuple[WebhookReceiver, Prometheus]]:
    target = WebhookReceiver()
    target.start()
    prometheus = Prometheus(
        tmp_path / "prometheus",
        scrape_targets=[target.address],
        scrape_interval="1s",
        evaluation_interval="1s",
    )
    await asyncio.to_thread(prometheus.start)
    try:
        yield target, prometheus
    finally:
        await asyncio.to_thread(prometheus.stop)
        target.stop()


def _ref(name: str) -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name=name)


async def test_healed_pods_with_the_alerts_metric_still_bad_are_not_effective(
    scraped: tuple[WebhookReceiver, Prometheus],
) -> None:
    target, prometheus = scraped
    # Before: both workloads crash-loop (1 of 3 ready, restarts climbing), errors high.
    sick = {"checkout": (1, 3, 0.4), "cart": (1, 3, 0.4)}
    target.set_metrics(_exposition(sick, {}))
    api = PrometheusAPI(prometheus.url)

    async def scraped_once() -> bool:
        return len(await api.query("kube_deployment_spec_replicas")) == 2

    await eventually(scraped_once, "Prometheus' first scrape", 30)
    for count in range(1, 6):
        target.set_metrics(
            _exposition(sick, {"checkout-6d4b9c7f5-abcde": count, "cart-7f9d8b6c4-fghij": count})
        )
        await asyncio.sleep(1)
    acted_at = dt.datetime.now(dt.UTC)
    # After the rollbacks: new pods, all ready, no restarts; checkout's errors stay high.
    target.set_metrics(
        _exposition(
            {"checkout": (3, 3, 0.4), "cart": (3, 3, 0.0)},
            {"checkout-5c7dbb7b7c-klmno": 0, "cart-55d6c8d9f-pqrst": 0},
        )
    )
    await asyncio.sleep(SETTLE)
    reader = MetricReader(api)
    try:
        now = dt.datetime.now(dt.UTC)
        checkout = await reader.evidence(EXPRESSION, _ref("checkout"), acted_at, now)
        cart = await reader.evidence(EXPRESSION, _ref("cart"), acted_at, now)
        crash_loop = await reader.evidence(CRASH_LOOPING, _ref("cart"), acted_at, now)
    finally:
        await api.close()

    ready, restarts, alert = (checkout.signal(n) for n in ("ready", "restarts", "alert"))
    assert ready is not None and ready.trend is Trend.IMPROVED, checkout.facts
    assert ready.detail.startswith("1/3 ready before the action, 3/3 now"), ready.detail
    assert restarts is not None and restarts.trend is Trend.IMPROVED, checkout.facts
    assert restarts.good_after is True
    assert alert is not None and alert.good_after is False, checkout.facts
    assert "1 series about Deployment shop/checkout before the action, 1 now" in alert.detail
    # No cAdvisor series here: CPU and memory have no data, and are not counted as good.
    assert {s.name for s in checkout.signals if s.trend is Trend.NO_DATA} == {"cpu", "memory"}

    healthy = Judgement(
        remediation_pb2.VERDICT_EFFECTIVE, "pods are healthy and the alert resolved", ("",)
    )
    judged = weigh_metrics(healthy, checkout, final=True, required=True)
    assert judged.verdict == remediation_pb2.VERDICT_INEFFECTIVE, judged
    assert "the alert's own expression still holds" in judged.reason
    cleared = cart.signal("alert")
    assert cleared is not None and cleared.trend is Trend.IMPROVED, cart.facts
    assert weigh_metrics(healthy, cart, final=True, required=True).verdict == (
        remediation_pb2.VERDICT_EFFECTIVE
    )
    assert cart.score == pytest.approx(1.0)
    # The crash-looping pod was replaced: the rule still remembers it, but it is gone.
    looped = crash_loop.signal("alert")
    assert looped is not None, crash_loop.facts
    assert looped.trend is Trend.IMPROVED and looped.good_after, looped.detail

    # Prometheus gone: no metric evidence, and a fix is not judged effective without it.
    url = prometheus.url
    await asyncio.to_thread(prometheus.stop)
    api = PrometheusAPI(url, timeout=2)
    try:
        gone = await MetricReader(api).evidence(
            EXPRESSION, _ref("cart"), acted_at, dt.datetime.now(dt.UTC)
        )
    finally:
        await api.close()
    assert gone.missing and "did not answer" in gone.missing
    blind = weigh_metrics(healthy, gone, final=True, required=True)
    assert blind.verdict == remediation_pb2.VERDICT_UNKNOWN
