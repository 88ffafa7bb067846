"""Judging a fix on the local stack: the dev stack's cluster with KWOK nodes, Prometheus
scraping kube-state-metrics with the kubernetes-mixin rules, AlertManager, and a context_api
with its own least-privilege identity. A fixed workload is judged at its final checkpoint
from all of it:

- healthy pods, its alert gone, Prometheus' signals with data: effective;
- the same with Prometheus unreachable: unknown (no metric speaks for it);
- an alert whose own expression the fix left true (healthy pods notwithstanding):
  ineffective;
- its golden signals, as an analysis reads them through context_api;
- the same after a neighbour in its namespace started crash-looping after the fix
  (KubePodCrashLooping fires for the neighbour in Prometheus and AlertManager, and its
  pods go unready behind the Service both apps share): side effects, ineffective.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernetes_asyncio import client

from kubernaut.devstack.monitoring import fetch_rules
from kubernaut.devstack.processes import free_port
from kubernaut.devstack.scenario import BadRollout
from kubernaut.devstack.stack import StackInfo
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.prometheus import PrometheusAPI
from kubernaut.runtime.settings import KubeSettings, RuntimeSettings
from kubernaut.services.ai_analysis import tools
from kubernaut.services.effectiveness.alertmanager import AlertmanagerClient
from kubernaut.services.effectiveness.assessment import ActiveAlert, Baseline, assessment_id
from kubernaut.services.effectiveness.scheduler import EvidenceSources, assess
from kubernaut.services.effectiveness.settings import AssessmentSettings
from kubernaut.services.effectiveness.store import Checkpoint, Result, Status
from kubernaut.services.signals import MetricReader
from tests.fixtures.cluster import running_context_api
from tests.fixtures.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EFFECTIVE = remediation_pb2.VERDICT_EFFECTIVE
INEFFECTIVE = remediation_pb2.VERDICT_INEFFECTIVE
UNKNOWN = remediation_pb2.VERDICT_UNKNOWN


@dataclass
class ContextAPI:
    """One context_api reading the dev stack's cluster and Prometheus, called as
    effectiveness and as ai_analysis."""

    as_effectiveness: ContextAPIServiceStub
    as_analysis: ContextAPIServiceStub


@pytest.fixture
async def context_api(
    dev_stack: StackInfo, runtime_settings: RuntimeSettings
) -> AsyncIterator[ContextAPI]:
    kubeconfig = Path(dev_stack.detail("kubernetes", "context-api_kubeconfig"))
    prometheus = {"KUBERNAUT_CONTEXT_PROMETHEUS_URL": dev_stack.url("prometheus")}
    async with running_context_api(runtime_settings, kubeconfig, **prometheus) as running:
        address = {ServiceName.CONTEXT_API: running.address}
        effectiveness = Clients(runtime_settings, "effectiveness", addresses=address)
        analysis = Clients(runtime_settings, "ai-analysis", addresses=address)
        try:
            yield ContextAPI(
                effectiveness.stub(ContextAPIServiceStub), analysis.stub(ContextAPIServiceStub)
            )
        finally:
            await effectiveness.close()
            await analysis.close()


async def _answered_alert(prometheus: str, namespace: str, pod: str) -> alert_pb2.Alert:
    """The KubePodCrashLooping alert the fix answered, as Prometheus sends it (its
    generator URL carries the rule's expression)."""
    (rule,) = [r for r in await fetch_rules(prometheus) if r.name == "KubePodCrashLooping"]
    query = urllib.parse.urlencode({"g0.expr": rule.query, "g0.tab": "1"})
    return alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": "KubePodCrashLooping", "namespace": namespace, "pod": pod},
        generator_url=f"{prometheus}/graph?{query}",
    )


async def create_service(kubeconfig: Path, namespace: str, body: dict[str, Any]) -> None:
    """Create a Service as the dev stack's admin."""
    connection = KubeConnection(KubeSettings(kubeconfig=str(kubeconfig)))
    try:
        service: Any = body  # the client takes plain dicts as bodies
        await client.CoreV1Api(await connection.api()).create_namespaced_service(namespace, service)
    finally:
        await connection.close()


def _checkpoint(
    alert: alert_pb2.Alert, target: alert_pb2.ResourceRef, acted_at: dt.datetime
) -> Checkpoint:
    action_id = str(uuid.uuid4())
    delay = dt.timedelta(seconds=30)
    return Checkpoint(
        action_id=action_id,
        delay=delay,
        assessment_id=assessment_id(action_id, delay),
        final=True,
        due_at=acted_at + delay,
        status=Status.PENDING,
        attempts=0,
        last_error="",
        lease_owner=None,
        result=None,
        recorded_at=None,
        incident_id=str(uuid.uuid4()),
        alert=alert,
        target=target,
        acted_at=acted_at,
        baseline=Baseline(None, "not taken in this test"),
    )


async def test_a_fix_is_judged_by_its_effects_on_the_local_stack(
    dev_stack: StackInfo, context_api: ContextAPI
) -> None:
    kubeconfig = Path(dev_stack.detail("kubernetes", "kubeconfig"))
    namespace = f"judge-{uuid.uuid4().hex[:8]}"
    # Both apps' pods are behind one Service, "shop".
    shared = {"tier": "shop"}
    target = BadRollout(kubeconfig, namespace, name="checkout", pod_labels=shared)
    neighbour = BadRollout(kubeconfig, namespace, name="cart", pod_labels=shared)
    prometheus_url = dev_stack.url("prometheus")
    settings = AssessmentSettings(database_url="postgresql://unused")
    alertmanager = AlertmanagerClient(dev_stack.url("alertmanager"))
    prometheus = PrometheusAPI(prometheus_url)
    dead_prometheus = PrometheusAPI(f"http://127.0.0.1:{free_port()}", timeout=2)
    try:
        await target.deploy()
        await neighbour.deploy()
        await create_service(
            kubeconfig,
            namespace,
            {"metadata": {"name": "shop"}, "spec": {"selector": shared, "ports": [{"port": 80}]}},
        )
        # The fix happened a while ago (its window before the action has the workload's
        # series); the pods it left are healthy, and the alert it answered is gone.
        acted_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=40)
        ref = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="checkout")
        alert = await _answered_alert(prometheus_url, namespace, "checkout-gone-1")
        checkpoint = _checkpoint(alert, ref, acted_at)
        sources = EvidenceSources(
            context_api.as_effectiveness, alertmanager, settings, MetricReader(prometheus)
        )

        async def judged_effective() -> Result | None:
            # Once Prometheus has scraped kube-state-metrics' series of the new Deployment.
            result = await assess(checkpoint, sources)
            ready = [line for line in result.evidence if line.startswith("metrics: ready: ")]
            scraped = ready and "2/2 now" in ready[0]
            return result if result.verdict == EFFECTIVE and scraped else None

        result = await eventually(judged_effective, "an effective verdict on scraped series", 90, 2)
        evidence = list(result.evidence)
        assert any(line.startswith("side effects: none") for line in evidence), evidence

        # The same signals, now against ten minutes ago, as an analysis reads them
        # (context_api's GetWorkloadMetrics, through the model's workload_metrics tool).
        tool = tools.workload_metrics_tool(context_api.as_analysis, ref)
        read = await tool.handler({})
        ready = next(signal for signal in read["signals"] if signal["name"] == "ready")
        assert "2/2 now" in ready["detail"], ready
        assert ready["good"] is True and read["score"] > 0
        assert {signal["name"] for signal in read["signals"]} == {
            "ready",
            "restarts",
            "cpu",
            "memory",
        }

        # Prometheus unreachable: no metric speaks for the fix, so it is not effective.
        blind = EvidenceSources(
            context_api.as_effectiveness, alertmanager, settings, MetricReader(dead_prometheus)
        )
        unseen = await assess(checkpoint, blind)
        assert unseen.verdict == UNKNOWN, unseen.evidence
        assert "no metric had data" in unseen.evidence[0]

        # An alert whose own metric the fix left bad (too few replicas desired: healthy pods
        # do not change that): not effective, however healthy the pods are.
        capacity = alert_pb2.Alert()
        capacity.CopyFrom(alert)
        capacity.name = "CheckoutCapacityLow"
        expression = (
            f'kube_deployment_spec_replicas{{namespace="{namespace}",deployment="checkout"}} < 3'
        )
        capacity.generator_url = (
            f"{prometheus_url}/graph?{urllib.parse.urlencode({'g0.expr': expression})}"
        )
        still_bad = await assess(_checkpoint(capacity, ref, acted_at), sources)
        assert still_bad.verdict == INEFFECTIVE, "\n".join(still_bad.evidence)
        assert "the alert's own expression still holds" in still_bad.evidence[0]
        assert any(line.startswith("pods: ") for line in still_bad.evidence)

        # The neighbour starts crash-looping after the fix: Prometheus fires for it, and the
        # fix is judged by that side effect.
        await neighbour.break_it()

        async def neighbour_alerted() -> list[ActiveAlert] | None:
            held = await alertmanager.firing_where(f'namespace="{namespace}"')
            return [a for a in held if a.labels.get("pod", "").startswith("cart-")] or None

        await eventually(neighbour_alerted, "KubePodCrashLooping for cart in AlertManager", 180, 2)
        judged = await assess(checkpoint, sources)
        assert judged.verdict == INEFFECTIVE, judged.evidence
        assert judged.evidence[0].startswith("a side effect followed the action (medium: ")
        effects = [line for line in judged.evidence if line.startswith("side effect (")]
        assert any("KubePodCrashLooping" in line and "pod=cart-" in line for line in effects)
        # Its pods are behind the target's Service: a neighbour gone unready behind it.
        behind = [line for line in effects if "not Ready behind Service shop" in line]
        assert behind and f"{namespace}/cart-" in behind[0], effects
    finally:
        await target.close()
        await neighbour.close()
        await alertmanager.close()
        await prometheus.close()
        await dead_prometheus.close()
