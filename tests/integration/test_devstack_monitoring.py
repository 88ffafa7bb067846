"""Real Prometheus 2.42 and Alertmanager 0.25 (Debian packages) on loopback.

Needs /usr/bin/prometheus, /usr/bin/promtool, /usr/bin/prometheus-alertmanager and
/usr/bin/amtool: `scripts/install-debian-packages.sh` installs them.

A small stdlib HTTP server in a thread plays two parts: the Alertmanager webhook receiver
(it keeps every POSTed JSON body) and a kube-state-metrics stand-in (GET /metrics serves
whatever exposition text the test sets). Prometheus and Alertmanager start and stop through
`asyncio.to_thread`, so the session loop is never blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from kubernaut.devstack.monitoring import (
    KUBE_STATE_METRICS_JOB,
    KUBERNAUT_ALERTS,
    KUBERNETES_MIXIN_RULES,
    Alertmanager,
    MonitoringError,
    Prometheus,
    PrometheusRule,
    check_rules,
    fetch_alertmanager_alerts,
    fetch_alerts,
    fetch_rules,
    render_rule_file,
)
from tests.fixtures.devstack import WEBHOOK_PATH, Notification, WebhookReceiver

pytestmark = pytest.mark.integration

T = TypeVar("T")

RUNBOOK = "https://github.com/kubernetes-monitoring/kubernetes-mixin/tree/master/runbook.md"
UPSTREAM_FOR_SECONDS = {
    "KubePodCrashLooping": [900.0],
    "KubePodNotReady": [900.0],
    "KubeDeploymentReplicasMismatch": [900.0],
    "KubeDeploymentRolloutStuck": [900.0],
    "KubeDeploymentGenerationMismatch": [900.0],
    "KubeStatefulSetReplicasMismatch": [900.0],
    "KubeStatefulSetGenerationMismatch": [900.0],
    "KubeStatefulSetUpdateNotRolledOut": [900.0],
    "KubeDaemonSetRolloutStuck": [900.0],
    "KubeHpaMaxedOut": [900.0],
    "KubeContainerWaiting": [3600.0],
    "KubeJobFailed": [900.0],
    # Two upstream rules: critical (<3% free, 1m) and warning (fills within 4 days, 1h).
    "KubePersistentVolumeFillingUp": [60.0, 3600.0],
    "KubeNodeNotReady": [900.0],
}


# -- the receiver / kube-state-metrics stand-in (tests/fixtures/devstack.py) ------------------


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def running(daemon: Prometheus | Alertmanager) -> AsyncIterator[None]:
    # start()/stop() block for up to seconds: keep them off the session loop.
    await asyncio.to_thread(daemon.start)
    try:
        yield
    finally:
        await asyncio.to_thread(daemon.stop)


async def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


def alert_in(
    notifications: list[Notification], status: str, **labels: str
) -> tuple[Notification, dict[str, Any]] | None:
    """The first (notification, alert) whose alert has this status and these labels."""
    for notification in notifications:
        for alert in notification["alerts"]:
            if alert["status"] == status and all(
                alert["labels"].get(key) == value for key, value in labels.items()
            ):
                return notification, alert
    return None


def write_rules(path: Path, expr: str) -> Path:
    """A rule file with one alert whose labels name a pod, as Kubernaut's alerts do."""
    document = {
        "groups": [
            {
                "name": "kubernaut-test",
                "rules": [
                    {
                        "alert": "KubernautTestAlwaysFiring",
                        "expr": expr,
                        "for": "0s",
                        "labels": {"severity": "warning", "namespace": "demo", "pod": "api-7f9"},
                        # Templates see the expression's labels, not the rule's: vector(1) has
                        # none, so {{ $labels.pod }} would render empty here.
                        "annotations": {"summary": "Always firing (value {{ $value }})."},
                    }
                ],
            }
        ]
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def wait_for_rules_evaluated(url: str, timeout: float = 20.0) -> list[PrometheusRule]:
    deadline = time.monotonic() + timeout
    while True:
        rules = await fetch_rules(url)
        if rules and all(rule.health == "ok" for rule in rules):
            return rules
        if time.monotonic() > deadline:
            raise AssertionError(f"rules not all evaluated with health=ok: {rules}")
        await asyncio.sleep(0.2)


# -- the kubernetes-mixin rule file -----------------------------------------------------------


def test_mixin_rule_file_passes_promtool_and_holds_the_eight_alerts(tmp_path: Path) -> None:
    output = check_rules(KUBERNETES_MIXIN_RULES)
    assert "SUCCESS: 15 rules found" in output

    document = yaml.safe_load(KUBERNETES_MIXIN_RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == set(KUBERNAUT_ALERTS)
    assert [group["name"] for group in document["groups"]] == [
        "kubernetes-apps",
        "kubernetes-storage",
        "kubernetes-system-kubelet",
    ]
    for rule in rules:
        assert set(rule["annotations"]) == {"description", "runbook_url", "summary"}
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK}#alert-name-{rule['alert'].lower()}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        # Every kube-state-metrics / kubelet selector is upstream's default job label.
        assert 'job="kube-state-metrics"' in rule["expr"] or 'job="kubelet"' in rule["expr"]

    variant = render_rule_file(
        KUBERNETES_MIXIN_RULES, tmp_path / "mixin-fast.yaml", for_override="5s"
    )
    assert "SUCCESS: 15 rules found" in check_rules(variant)
    text = variant.read_text()
    assert "TEST VARIANT" in text and "for:` is 5s" in text
    assert "KubeContainerWaiting=1h" in text  # the upstream duration it replaced
    fast = yaml.safe_load(text)
    fast_rules = [rule for group in fast["groups"] for rule in group["rules"]]
    assert {rule["for"] for rule in fast_rules} == {"5s"}
    # Nothing but `for:` changed.
    for before, after in zip(rules, fast_rules, strict=True):
        assert {**before, "for": "5s"} == after
    # The checked-in file keeps upstream durations.
    assert {rule["for"] for rule in rules} == {"15m", "1h", "1m"}


def test_render_rejects_a_bad_duration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        render_rule_file(KUBERNETES_MIXIN_RULES, tmp_path / "x.yaml", for_override="5 minutes")


async def test_all_mixin_alerts_load_in_prometheus(tmp_path: Path) -> None:
    fast = render_rule_file(KUBERNETES_MIXIN_RULES, tmp_path / "mixin-fast.yaml", for_override="2s")
    prometheus = Prometheus(
        tmp_path / "prometheus",
        scrape_targets=[],
        rule_files=[KUBERNETES_MIXIN_RULES, fast],
        evaluation_interval="1s",
    )
    async with running(prometheus):
        # A rule's health turns "ok" after its first evaluation without error.
        rules = await wait_for_rules_evaluated(prometheus.url)

    by_file: dict[str, dict[str, list[float]]] = {}
    for rule in rules:
        assert rule.type == "alerting"
        assert rule.state == "inactive"  # no kube-state-metrics data: nothing fires
        by_file.setdefault(Path(rule.file).name, {}).setdefault(rule.name, []).append(rule.duration)
        assert set(rule.annotations) == {"description", "runbook_url", "summary"}
    assert by_file["kubernetes-mixin.yaml"] == UPSTREAM_FOR_SECONDS
    assert by_file["mixin-fast.yaml"] == {
        name: [2.0] * len(durations) for name, durations in UPSTREAM_FOR_SECONDS.items()
    }
    crash = next(rule for rule in rules if rule.name == "KubePodCrashLooping")
    assert crash.group == "kubernetes-apps"
    assert crash.labels == {"severity": "warning"}
    assert 'reason="CrashLoopBackOff"' in crash.query


# -- end to end: Prometheus -> Alertmanager -> webhook -------------------------------------------


async def test_firing_alert_reaches_the_webhook_and_its_resolution_follows(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    rule_file = write_rules(tmp_path / "test-rules.yaml", "vector(1)")
    token_file = tmp_path / "webhook-token"
    token_file.write_text("s3cret-token\n")
    alertmanager = Alertmanager(
        tmp_path / "alertmanager",
        receiver.url,
        group_wait="1s",
        group_interval="2s",
        repeat_interval="1h",
        bearer_token_file=token_file,
    )
    async with running(alertmanager):
        prometheus = Prometheus(
            tmp_path / "prometheus",
            scrape_targets=[],
            rule_files=[rule_file],
            evaluation_interval="1s",
            alertmanager_url=alertmanager.url,
            # The resolution, evaluated while the reload has Prometheus rediscovering the
            # Alertmanager, is dropped and re-sent after this delay.
            resend_delay="1s",
        )
        async with running(prometheus):
            started = time.monotonic()
            notification, alert = await wait_for(
                lambda: alert_in(
                    receiver.notifications(), "firing", alertname="KubernautTestAlwaysFiring"
                ),
                "the firing notification",
            )
            fired_after = time.monotonic() - started

            # Alertmanager's webhook payload, version 4.
            assert notification["path"] == WEBHOOK_PATH
            assert notification["content_type"] == "application/json"
            # The token from the file, which the written config names but does not contain.
            assert notification["authorization"] == "Bearer s3cret-token"
            assert "s3cret-token" not in alertmanager.config_file.read_text()
            assert notification["version"] == "4"
            assert notification["status"] == "firing"
            assert notification["receiver"] == "kubernaut"
            assert notification["externalURL"] == alertmanager.url
            assert notification["groupLabels"] == {
                "alertname": "KubernautTestAlwaysFiring",
                "namespace": "demo",
            }
            assert notification["commonLabels"] == alert["labels"]
            assert isinstance(notification["groupKey"], str)
            assert alert["labels"] == {
                "alertname": "KubernautTestAlwaysFiring",
                "severity": "warning",
                "namespace": "demo",
                "pod": "api-7f9",
            }
            assert alert["annotations"] == {"summary": "Always firing (value 1)."}
            assert alert["endsAt"] == "0001-01-01T00:00:00Z"
            assert alert["generatorURL"].startswith(f"{prometheus.url}/graph?g0.expr=vector")
            assert alert["fingerprint"]

            # The same alert, as Prometheus and Alertmanager hold it.
            [active] = await fetch_alerts(prometheus.url)
            assert active.name == "KubernautTestAlwaysFiring" and active.state == "firing"
            assert active.labels["pod"] == "api-7f9"
            [held] = await fetch_alertmanager_alerts(alertmanager.url)
            assert held.labels == alert["labels"] and held.state == "active"

            # The condition clears: same rule (same name and labels), an empty result.
            write_rules(rule_file, "vector(1) == 0")
            cleared = time.monotonic()
            await asyncio.to_thread(prometheus.reload)
            resolved, resolved_alert = await wait_for(
                lambda: alert_in(
                    receiver.notifications(), "resolved", alertname="KubernautTestAlwaysFiring"
                ),
                "the resolved notification",
            )
            resolved_after = time.monotonic() - cleared

    assert resolved["status"] == "resolved"
    assert resolved["version"] == "4"
    assert resolved_alert["labels"] == alert["labels"]
    assert resolved_alert["fingerprint"] == alert["fingerprint"]
    assert resolved_alert["startsAt"] == alert["startsAt"]
    assert resolved_alert["endsAt"] != "0001-01-01T00:00:00Z"
    # eval 1s + group_wait 1s, and eval 1s + group_interval 2s, with room for a slow machine.
    assert fired_after < 15, fired_after
    assert resolved_after < 15, resolved_after


def series(name: str, value: float, **labels: str) -> str:
    """One sample line of the Prometheus text exposition format."""
    rendered = ",".join(f'{key}="{val}"' for key, val in labels.items())
    return f"{name}{{{rendered}}} {value:g}"


API = {"namespace": "demo", "pod": "api-7f9", "uid": "u1"}
WEB = {"namespace": "demo", "pod": "web-5d9-x2", "uid": "u2"}
CRASHING = {**API, "container": "api", "reason": "CrashLoopBackOff"}
PULLING = {**WEB, "container": "web", "reason": "ImagePullBackOff"}
OWNER = {**WEB, "owner_kind": "ReplicaSet", "owner_name": "web-5d9", "owner_is_controller": "true"}
DEPLOY = {"namespace": "demo", "deployment": "web"}
STUCK = {**DEPLOY, "condition": "Progressing", "reason": "ProgressDeadlineExceeded"}
JOB = {"namespace": "demo", "job_name": "migrate", "condition": "true"}
NODE = {"node": "kwok-node-0", "condition": "Ready"}
# Series shaped like kube-state-metrics 2.x output for a crash-looping pod, a pod stuck
# pulling its image, a deployment whose rollout passed its progress deadline, a failed job
# and a NotReady node (as a KWOK cluster would show them).
KSM_METRICS = "".join(
    f"{line}\n"
    for line in [
        series("kube_pod_container_status_waiting_reason", 1, **CRASHING),
        series("kube_pod_container_status_waiting_reason", 1, **PULLING),
        series("kube_pod_status_phase", 1, **WEB, phase="Pending"),
        series("kube_pod_status_phase", 0, **WEB, phase="Running"),
        series("kube_pod_owner", 1, **OWNER),
        series("kube_deployment_spec_replicas", 3, **DEPLOY),
        series("kube_deployment_status_replicas_available", 1, **DEPLOY),
        series("kube_deployment_status_replicas_updated", 1, **DEPLOY),
        series("kube_deployment_status_condition", 0, **STUCK, status="true"),
        series("kube_deployment_status_condition", 1, **STUCK, status="false"),
        series("kube_job_failed", 1, **JOB, reason="BackoffLimitExceeded"),
        series("kube_node_status_condition", 0, **NODE, status="true"),
        series("kube_node_status_condition", 1, **NODE, status="false"),
        series("kube_node_spec_unschedulable", 0, node="kwok-node-0"),
    ]
)

EXPECTED_FROM_KSM = {
    "KubePodCrashLooping": {"namespace": "demo", "pod": "api-7f9", "container": "api"},
    "KubeContainerWaiting": {
        "namespace": "demo",
        "pod": "web-5d9-x2",
        "reason": "ImagePullBackOff",
    },
    "KubePodNotReady": {"namespace": "demo", "pod": "web-5d9-x2"},
    "KubeDeploymentReplicasMismatch": {"namespace": "demo", "deployment": "web"},
    "KubeDeploymentRolloutStuck": {"namespace": "demo", "deployment": "web"},
    "KubeJobFailed": {"namespace": "demo", "job_name": "migrate"},
    "KubeNodeNotReady": {"node": "kwok-node-0"},
}


async def test_scraped_kube_state_metrics_fire_the_mixin_alerts(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """kube-state-metrics-shaped series fire all seven drivable mixin alerts (test `for:`).

    KubePersistentVolumeFillingUp needs kubelet volume stats, which a KWOK cluster (and this
    stand-in) lacks: it must stay silent.
    """
    receiver.set_metrics(KSM_METRICS)
    fast = render_rule_file(KUBERNETES_MIXIN_RULES, tmp_path / "mixin-fast.yaml", for_override="1s")
    alertmanager = Alertmanager(tmp_path / "alertmanager", receiver.url)
    async with running(alertmanager):
        prometheus = Prometheus(
            tmp_path / "prometheus",
            scrape_targets=[receiver.address],
            rule_files=[fast],
            evaluation_interval="1s",
            scrape_interval="1s",
            alertmanager_url=alertmanager.url,
        )
        async with running(prometheus):
            assert prometheus.config()["scrape_configs"][0]["job_name"] == KUBE_STATE_METRICS_JOB

            def all_fired() -> dict[str, dict[str, Any]] | None:
                found: dict[str, dict[str, Any]] = {}
                for name in EXPECTED_FROM_KSM:
                    hit = alert_in(receiver.notifications(), "firing", alertname=name)
                    if hit is None:
                        return None
                    found[name] = hit[1]
                return found

            fired = await wait_for(all_fired, "all seven mixin alerts at the webhook")

            async with httpx.AsyncClient() as client:
                targets = (await client.get(f"{prometheus.url}/api/v1/targets")).json()
            [target] = targets["data"]["activeTargets"]
            assert target["health"] == "up"
            assert target["labels"] == {"instance": receiver.address, "job": "kube-state-metrics"}

    for name, labels in EXPECTED_FROM_KSM.items():
        alert = fired[name]
        if name != "KubePodNotReady":  # its `sum by (namespace, pod, cluster)` drops job
            assert alert["labels"]["job"] == "kube-state-metrics", name
        assert alert["labels"]["severity"] == "warning", name
        for key, value in labels.items():
            assert alert["labels"][key] == value, (name, key)
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOK}#alert-name-{name.lower()}"
    assert fired["KubePodCrashLooping"]["annotations"]["description"] == (
        'Pod demo/api-7f9 (api) is in waiting state (reason: "CrashLoopBackOff").'
    )
    assert fired["KubeJobFailed"]["annotations"]["description"] == (
        "Job demo/migrate failed to complete. Removing failed job after investigation "
        "should clear this alert."
    )
    assert fired["KubeNodeNotReady"]["annotations"]["summary"] == "Node is not ready."
    names = {a["labels"]["alertname"] for n in receiver.notifications() for a in n["alerts"]}
    assert "KubePersistentVolumeFillingUp" not in names


# -- failures are clear ----------------------------------------------------------------------


async def test_a_broken_rule_file_is_refused_before_start(tmp_path: Path) -> None:
    broken = write_rules(tmp_path / "broken.yaml", "sum(")
    prometheus = Prometheus(tmp_path / "prometheus", rule_files=[broken])
    with pytest.raises(MonitoringError, match="promtool check rules") as caught:
        await asyncio.to_thread(prometheus.start)
    assert "broken.yaml" in str(caught.value)
    assert prometheus.pid is None


async def test_a_taken_port_fails_naming_the_log_file(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        alertmanager = Alertmanager(tmp_path / "alertmanager", "http://127.0.0.1:9/hook", port=port)
        with pytest.raises(MonitoringError, match="exited with code") as caught:
            await asyncio.to_thread(alertmanager.start)
    assert str(alertmanager.log_file) in str(caught.value)
    assert "address already in use" in str(caught.value)


async def test_alertmanager_runs_without_clustering(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    alertmanager = Alertmanager(tmp_path / "alertmanager", receiver.url)
    async with running(alertmanager):
        async with httpx.AsyncClient() as client:
            status = (await client.get(f"{alertmanager.url}/api/v2/status")).json()
        assert status["cluster"]["status"] == "disabled"
        assert status["versionInfo"]["version"] == "0.25.0"
        pid = alertmanager.pid
        assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
