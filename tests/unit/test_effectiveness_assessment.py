"""The staged assessments' rules, as plain functions: pod evidence, alert matching, the
verdict, assessment ids, evidence limits and settings. No evidence is never EFFECTIVE."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from pydantic import ValidationError

from kubernaut.runtime.redaction import redact_url
from kubernaut.services.effectiveness.assessment import (
    MAX_EVIDENCE_CHARS,
    MAX_EVIDENCE_LINES,
    ActiveAlert,
    AlertEvidence,
    AlertState,
    Baseline,
    PodEvidence,
    PodHealth,
    alert_evidence,
    alert_matches,
    assessment_id,
    evidence_lines,
    format_delay,
    judge,
    pod_evidence,
)
from kubernaut.services.effectiveness.settings import DEFAULT_DELAYS, AssessmentSettings

EFFECTIVE = remediation_pb2.VERDICT_EFFECTIVE
INEFFECTIVE = remediation_pb2.VERDICT_INEFFECTIVE
UNKNOWN = remediation_pb2.VERDICT_UNKNOWN

DEPLOYMENT = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout")

PODS = {
    PodHealth.HEALTHY: PodEvidence(PodHealth.HEALTHY, ("pods: 3 of 3 Ready",)),
    PodHealth.UNHEALTHY: PodEvidence(PodHealth.UNHEALTHY, ("pods: not Ready: checkout-1",)),
    PodHealth.MISSING: PodEvidence.missing("no cluster"),
}
ALERTS = {
    AlertState.RESOLVED: AlertEvidence(AlertState.RESOLVED, ("alert: none active",)),
    AlertState.ACTIVE: AlertEvidence(AlertState.ACTIVE, ("alert: still active",)),
    AlertState.MISSING: AlertEvidence.missing("AlertManager is not configured"),
}


# -- the verdict ------------------------------------------------------------------------------

H, U, M = PodHealth.HEALTHY, PodHealth.UNHEALTHY, PodHealth.MISSING
R, A, X = AlertState.RESOLVED, AlertState.ACTIVE, AlertState.MISSING

# (pods, alert, final) -> (verdict, words of the reason): every branch of judge().
RULES = [
    (U, R, False, INEFFECTIVE, "pods are not healthy"),
    (U, A, True, INEFFECTIVE, "pods are not healthy"),
    (U, X, False, INEFFECTIVE, "pods are not healthy"),
    (H, A, True, INEFFECTIVE, "still active at the final checkpoint, although the pods"),
    (M, A, True, INEFFECTIVE, "still active at the final checkpoint"),
    (H, A, False, UNKNOWN, "pods recovered; the alert has not resolved yet"),
    (M, A, False, UNKNOWN, "the alert has not resolved yet, and there is no pod evidence"),
    (H, R, False, EFFECTIVE, "pods are healthy and the alert resolved"),
    (H, R, True, EFFECTIVE, "pods are healthy and the alert resolved"),
    (H, X, False, UNKNOWN, "whether the alert resolved is not known"),
    (H, X, True, UNKNOWN, "whether the alert resolved is not known"),
    (M, R, True, UNKNOWN, "the alert is not active, but there is no pod evidence"),
    (M, X, False, UNKNOWN, "no evidence"),
    (M, X, True, UNKNOWN, "no evidence"),
]


@pytest.mark.parametrize(("pods", "alert", "final", "verdict", "reason"), RULES)
def test_each_rule_gives_its_verdict_and_says_why(
    pods: PodHealth, alert: AlertState, final: bool, verdict: int, reason: str
) -> None:
    judgement = judge(PODS[pods], ALERTS[alert], final=final)
    assert judgement.verdict == verdict
    assert reason in judgement.reason
    # The reason first, then every fact of both kinds of evidence.
    assert judgement.evidence == (judgement.reason, *PODS[pods].facts, *ALERTS[alert].facts)


def test_only_healthy_pods_and_a_resolved_alert_are_effective() -> None:
    for pods, alert, final in itertools.product(PodHealth, AlertState, (False, True)):
        verdict = judge(PODS[pods], ALERTS[alert], final=final).verdict
        expected = pods is H and alert is R
        assert (verdict == EFFECTIVE) is expected, (pods, alert, final)


@pytest.mark.parametrize("final", [False, True])
def test_no_evidence_at_all_is_unknown_never_effective(final: bool) -> None:
    judgement = judge(PODS[M], ALERTS[X], final=final)
    assert judgement.verdict == UNKNOWN
    assert any("no evidence: no cluster" in line for line in judgement.evidence)
    assert any("AlertManager is not configured" in line for line in judgement.evidence)


def test_an_unreachable_alertmanager_is_missing_evidence_not_a_resolved_alert() -> None:
    unreachable = AlertEvidence.missing("AlertManager at http://127.0.0.1:9 could not be read")
    judgement = judge(PODS[H], unreachable, final=True)
    assert judgement.verdict == UNKNOWN
    assert "alert: no evidence: AlertManager at http://127.0.0.1:9" in judgement.evidence[-1]


# -- pod evidence ---------------------------------------------------------------------------


def pod(
    name: str, *, ready: bool = True, restarts: int = 0, waiting: str = "", phase: str = "Running"
) -> context_api_pb2.PodState:
    return context_api_pb2.PodState(
        name=name, phase=phase, ready=ready, restarts=restarts, waiting_reason=waiting
    )


def deployment_context(
    *pods: context_api_pb2.PodState,
    desired: int = 2,
    ready: int | None = None,
    available: int | None = None,
) -> context_api_pb2.ResourceContext:
    ready_count = sum(p.ready for p in pods) if ready is None else ready
    return context_api_pb2.ResourceContext(
        resource=DEPLOYMENT,
        workload=DEPLOYMENT,
        pods=list(pods),
        rollout=context_api_pb2.RolloutState(
            desired_replicas=desired,
            ready_replicas=ready_count,
            available_replicas=ready_count if available is None else available,
        ),
    )


BASELINE = Baseline({"checkout-a": 4, "checkout-b": 0})


def test_all_replicas_ready_without_new_restarts_is_healthy() -> None:
    # checkout-a restarted 4 times before the action: not new.
    evidence = pod_evidence(
        deployment_context(pod("checkout-a", restarts=4), pod("checkout-b")), BASELINE
    )
    assert evidence.health is PodHealth.HEALTHY
    assert "pods: 2 of 2 pod(s) of Deployment shop/checkout Ready" in evidence.facts[0]
    assert (
        "pods: Deployment shop/checkout: 2 of 2 desired replicas Ready, 2 available"
        in evidence.facts
    )
    assert "pods: no new restarts in 2 pod(s)" in evidence.facts


def test_a_restart_since_the_baseline_is_unhealthy() -> None:
    evidence = pod_evidence(
        deployment_context(pod("checkout-a", restarts=6), pod("checkout-b")), BASELINE
    )
    assert evidence.health is PodHealth.UNHEALTHY
    assert "pods: restarted since the action: checkout-a (+2, 6 now)" in evidence.facts


def test_a_new_pod_counts_its_restarts_from_zero() -> None:
    fresh = pod_evidence(deployment_context(pod("checkout-c"), pod("checkout-d")), BASELINE)
    assert fresh.health is PodHealth.HEALTHY
    assert "pods: no new restarts in 2 pod(s) (2 new since the action)" in fresh.facts
    restarted = pod_evidence(
        deployment_context(pod("checkout-c", restarts=1), pod("checkout-d")), BASELINE
    )
    assert restarted.health is PodHealth.UNHEALTHY
    assert "checkout-c (+1, 1 now)" in restarted.facts[0]


def test_crash_loop_back_off_is_unhealthy_even_while_ready_counts_look_fine() -> None:
    evidence = pod_evidence(
        deployment_context(
            pod("checkout-a", restarts=4, waiting="CrashLoopBackOff", ready=False),
            pod("checkout-b"),
            ready=2,
        ),
        BASELINE,
    )
    assert evidence.health is PodHealth.UNHEALTHY
    assert "pods: in CrashLoopBackOff: checkout-a" in evidence.facts


def test_a_pod_not_ready_is_unhealthy_with_its_phase_and_reason() -> None:
    evidence = pod_evidence(
        deployment_context(
            pod("checkout-a", restarts=4),
            pod("checkout-b", ready=False, phase="Pending", waiting="ImagePullBackOff"),
        ),
        BASELINE,
    )
    assert evidence.health is PodHealth.UNHEALTHY
    assert (
        "pods: Deployment shop/checkout: only 1 of 2 desired replicas Ready, 1 available"
        in evidence.facts
    )
    assert "pods: not Ready: checkout-b (Pending, ImagePullBackOff)" in evidence.facts


def test_ready_but_not_available_replicas_are_unhealthy() -> None:
    evidence = pod_evidence(
        deployment_context(pod("checkout-a", restarts=4), pod("checkout-b"), available=1), BASELINE
    )
    assert evidence.health is PodHealth.UNHEALTHY
    assert "only 2 of 2 desired replicas Ready, 1 available" in evidence.facts[0]


def test_desired_replicas_without_any_pod_are_unhealthy() -> None:
    evidence = pod_evidence(deployment_context(desired=3), BASELINE)
    assert evidence.health is PodHealth.UNHEALTHY
    assert "only 0 of 3 desired replicas Ready" in evidence.facts[0]


def test_a_workload_without_pods_is_no_evidence() -> None:
    statefulset = alert_pb2.ResourceRef(namespace="shop", kind="StatefulSet", name="db")
    context = context_api_pb2.ResourceContext(resource=statefulset, workload=statefulset)
    evidence = pod_evidence(context, BASELINE)
    assert evidence.health is PodHealth.MISSING
    assert evidence.facts == ("pods: no evidence: StatefulSet shop/db has no pods to look at",)
    assert pod_evidence(deployment_context(desired=0), BASELINE).health is PodHealth.MISSING


def test_without_a_baseline_restarts_are_not_compared_and_say_why() -> None:
    no_baseline = Baseline(None, "no baseline was taken at schedule time: context_api down")
    evidence = pod_evidence(
        deployment_context(pod("checkout-a", restarts=9), pod("checkout-b")), no_baseline
    )
    assert evidence.health is PodHealth.HEALTHY
    assert (
        "pods: restarts not compared: no baseline was taken at schedule time: context_api down"
        in evidence.facts
    )
    # Readiness still decides.
    crashing = pod_evidence(
        deployment_context(pod("checkout-a", waiting="CrashLoopBackOff", ready=False), desired=1),
        no_baseline,
    )
    assert crashing.health is PodHealth.UNHEALTHY


def test_completed_pods_of_a_job_are_fine() -> None:
    job = alert_pb2.ResourceRef(namespace="shop", kind="Job", name="migrate")
    context = context_api_pb2.ResourceContext(
        resource=job, workload=job, pods=[pod("migrate-x", ready=False, phase="Succeeded")]
    )
    assert pod_evidence(context, Baseline({})).health is PodHealth.HEALTHY


def test_many_bad_pods_are_counted_not_all_named() -> None:
    pods = [pod(f"p{i}", ready=False, phase="Pending") for i in range(25)]
    evidence = pod_evidence(deployment_context(*pods, desired=25), Baseline({}))
    assert evidence.health is PodHealth.UNHEALTHY
    assert any(line.endswith("and 15 more") for line in evidence.facts)


# -- alert evidence ---------------------------------------------------------------------------

CRASHING = alert_pb2.Alert(
    name="KubePodCrashLooping",
    status=alert_pb2.ALERT_STATUS_FIRING,
    labels={
        "alertname": "KubePodCrashLooping",
        "namespace": "shop",
        "pod": "checkout-a",
        "container": "app",
    },
)


def labels(**extra: str) -> dict[str, str]:
    return {"alertname": "KubePodCrashLooping", "namespace": "shop", **extra}


@pytest.mark.parametrize(
    ("candidate", "pods", "matches"),
    [
        (labels(pod="checkout-a"), (), True),  # the same subject
        (labels(pod="checkout-z"), ("checkout-z",), True),  # a pod of the workload
        (labels(deployment="checkout"), (), True),  # the workload itself
        (labels(pod="other-1"), ("checkout-z",), False),  # another workload's pod
        ({**labels(pod="checkout-a"), "alertname": "KubePodNotReady"}, (), False),
        ({**labels(pod="checkout-a"), "namespace": "other"}, (), False),
    ],
)
def test_an_alert_matches_by_name_namespace_and_subject(
    candidate: dict[str, str], pods: tuple[str, ...], matches: bool
) -> None:
    assert alert_matches(candidate, CRASHING, DEPLOYMENT, pods) is matches


def test_an_alert_without_subject_labels_matches_by_name_and_namespace() -> None:
    bare = alert_pb2.Alert(name="ShopErrors", labels={"namespace": "shop"})
    assert alert_matches(
        {"alertname": "ShopErrors", "namespace": "shop", "x": "1"}, bare, DEPLOYMENT
    )
    assert not alert_matches({"alertname": "ShopErrors", "namespace": "web"}, bare, DEPLOYMENT)


def test_the_cluster_label_must_match_when_the_alert_had_one() -> None:
    clustered = alert_pb2.Alert(
        name="KubePodCrashLooping", labels={**CRASHING.labels, "cluster": "eu"}
    )
    assert alert_matches(labels(pod="checkout-a", cluster="eu"), clustered, DEPLOYMENT)
    assert not alert_matches(labels(pod="checkout-a", cluster="us"), clustered, DEPLOYMENT)


def test_a_node_alert_matches_by_its_node_label() -> None:
    node = alert_pb2.ResourceRef(kind="Node", name="n1")
    not_ready = alert_pb2.Alert(name="KubeNodeNotReady", labels={"node": "n1"})
    assert alert_matches({"alertname": "KubeNodeNotReady", "node": "n1"}, not_ready, node)
    assert not alert_matches({"alertname": "KubeNodeNotReady", "node": "n2"}, not_ready, node)


def test_no_matching_active_alert_is_resolved() -> None:
    held = [ActiveAlert(labels(pod="other-1"), "active")]
    evidence = alert_evidence(held, CRASHING, DEPLOYMENT, {"checkout-a"})
    assert evidence.state is AlertState.RESOLVED
    assert evidence.facts == (
        "alert: AlertManager has no active KubePodCrashLooping alert for Deployment shop/checkout",
    )


def test_a_silenced_alert_still_fires() -> None:
    held = [ActiveAlert(labels(pod="checkout-a"), "suppressed", starts_at="2025-01-01T00:00:00Z")]
    evidence = alert_evidence(held, CRASHING, DEPLOYMENT, (), source="AlertManager at http://am")
    assert evidence.state is AlertState.ACTIVE
    assert evidence.facts == (
        "alert: AlertManager at http://am still has KubePodCrashLooping active (suppressed)"
        " for pod=checkout-a since 2025-01-01T00:00:00Z",
    )


# -- ids, limits, settings ------------------------------------------------------------------


def test_assessment_ids_are_deterministic_per_action_and_delay() -> None:
    action = str(uuid.uuid4())
    first = assessment_id(action, dt.timedelta(seconds=30))
    assert first == assessment_id(action, dt.timedelta(seconds=30))
    assert first == assessment_id(action.upper(), dt.timedelta(milliseconds=30_000))
    assert first != assessment_id(action, dt.timedelta(seconds=120))
    assert first != assessment_id(str(uuid.uuid4()), dt.timedelta(seconds=30))
    assert uuid.UUID(first).version == 5


def test_evidence_lines_fit_the_storage_record() -> None:
    lines = evidence_lines(["x" * 5000, "a\x00b", *(f"line {i}" for i in range(100))])
    assert len(lines) == MAX_EVIDENCE_LINES
    assert all(len(line) <= MAX_EVIDENCE_CHARS for line in lines)
    assert lines[1] == "ab"
    assert lines[-1] == "… and 39 more line(s)"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(30, "30s"), (120, "2m"), (1800, "30m"), (5400, "1h30m"), (0.5, "0.5s"), (90, "1m30s")],
)
def test_delays_read_as_operators_write_them(seconds: float, text: str) -> None:
    assert format_delay(dt.timedelta(seconds=seconds)) == text


def test_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("KUBERNAUT_EFFECTIVENESS_DELAYS", "KUBERNAUT_EFFECTIVENESS_ALERTMANAGER_URL"):
        monkeypatch.delenv(key, raising=False)
    settings = AssessmentSettings()
    assert settings.delays == DEFAULT_DELAYS == (30.0, 120.0, 1800.0)
    assert settings.alertmanager_url == ""
    assert settings.poll_interval_seconds == 1.0


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNAUT_EFFECTIVENESS_DELAYS", "30m, 500ms,2m")
    monkeypatch.setenv("KUBERNAUT_EFFECTIVENESS_ALERTMANAGER_URL", "http://127.0.0.1:9093/")
    monkeypatch.setenv("KUBERNAUT_EFFECTIVENESS_POLL_INTERVAL_SECONDS", "0.2")
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", "postgresql://shared/db")
    monkeypatch.delenv("KUBERNAUT_EFFECTIVENESS_DATABASE_URL", raising=False)
    settings = AssessmentSettings()
    assert settings.delays == (0.5, 120.0, 1800.0)
    assert settings.alertmanager_url == "http://127.0.0.1:9093"
    assert settings.poll_interval_seconds == 0.2
    assert settings.database_url == "postgresql://shared/db"
    monkeypatch.setenv("KUBERNAUT_EFFECTIVENESS_DATABASE_URL", "postgresql://own/db")
    monkeypatch.setenv("KUBERNAUT_EFFECTIVENESS_DELAYS", "[1.5, 0.5]")
    assert AssessmentSettings().database_url == "postgresql://own/db"
    assert AssessmentSettings().delays == (0.5, 1.5)


@pytest.mark.parametrize(
    "delays", ["", "1,1", "0,5", "-1", "soon", "200h", ",".join(["1s"] * 17), "[]"]
)
def test_bad_delays_are_refused(delays: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNAUT_EFFECTIVENESS_DELAYS", delays)
    with pytest.raises(ValidationError):
        AssessmentSettings()


@pytest.mark.parametrize("url", ["ftp://am", "127.0.0.1:9093", "http://"])
def test_a_bad_alertmanager_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        AssessmentSettings(alertmanager_url=url)


def test_credentials_never_show_in_the_alertmanager_url() -> None:
    assert redact_url("http://user:secret@am:9093") == "http://***@am:9093"
    assert redact_url("http://am:9093") == "http://am:9093"
