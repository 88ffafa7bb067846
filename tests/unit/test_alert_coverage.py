"""Every alert of the kubernetes-mixin (and every name seen in the wild) gets an answer from
the rules: an action the evidence supports, or NOT_ACTIONABLE with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import protovalidate
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.devstack.monitoring import KUBERNETES_MIXIN_RULES
from kubernaut.services.ai_analysis.rules import RULES, RulesSettings, analyze, rule_for
from kubernaut.services.ai_analysis.rules.coverage import render_markdown
from kubernaut.services.alerts import subject_of
from kubernaut.services.executor.catalogue import list_actions

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus" / "webhooks-public"
DEFAULTS = RulesSettings()
NO_RULE = "is in no rule"

Evidence = context_api_pb2.ResourceContext | None


def alert(name: str, /, **labels: str) -> alert_pb2.Alert:
    made = alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"severity": "warning", **labels},
        starts_at=Timestamp(seconds=1_700_000_000),
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    protovalidate.validate(made)
    return made


def ref(kind: str, name: str, namespace: str = "shop") -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(
        namespace="" if kind == "Node" else namespace, kind=kind, name=name
    )


def pods(
    *states: context_api_pb2.PodState, rollout: bool = False
) -> context_api_pb2.ResourceContext:
    evidence = context_api_pb2.ResourceContext()
    evidence.pods.extend(states)
    return evidence


def running(name: str, ready: bool = True) -> context_api_pb2.PodState:
    return context_api_pb2.PodState(name=name, phase="Running", ready=ready)


def waiting(name: str, reason: str) -> context_api_pb2.PodState:
    return context_api_pb2.PodState(name=name, phase="Running", ready=False, waiting_reason=reason)


def node_seen(name: str = "worker-1") -> context_api_pb2.ResourceContext:
    return context_api_pb2.ResourceContext(resource=ref("Node", name), workload=ref("Node", name))


def bad_rollout() -> context_api_pb2.ResourceContext:
    """Revision 2 rolled out 5 minutes before the alert; its pod cannot pull its image while
    revision 1's pods are Ready."""
    evidence = context_api_pb2.ResourceContext()
    new = evidence.rollout.revisions.add(number=2, images=["shop:2"], pod_template_hash="h2")
    new.created_at.FromSeconds(1_700_000_000 - 300)
    old = evidence.rollout.revisions.add(
        number=1, images=["shop:1"], pod_template_hash="h1", ready_replicas=2
    )
    old.created_at.FromSeconds(1_700_000_000 - 86_400)
    evidence.pods.add(
        name="api-new", phase="Pending", waiting_reason="ImagePullBackOff", pod_template_hash="h2"
    )
    evidence.pods.add(name="api-old", phase="Running", ready=True, pod_template_hash="h1")
    return evidence


def hpa_seen(
    *, min_replicas: int = 2, max_replicas: int = 4, current: int = 4, target_found: bool = True
) -> context_api_pb2.ResourceContext:
    """An autoscaler of Deployment shop/api as context_api reads it."""
    return context_api_pb2.ResourceContext(
        resource=HPA,
        workload=HPA,
        hpa=context_api_pb2.HpaState(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            current_replicas=current,
            desired_replicas=max_replicas,
            target_api_version="apps/v1",
            target_kind="Deployment",
            target_name="api",
            target_found=target_found,
            at_max=current >= max_replicas,
            scaling_limited_reason="TooManyReplicas" if current >= max_replicas else "",
        ),
    )


def pvc_seen(
    requested: str = "10Gi",
    *,
    capacity: str | None = None,
    expandable: bool = True,
    phase: str = "Bound",
    storage_class: str = "standard",
    resizing: str = "",
) -> context_api_pb2.ResourceContext:
    """A claim shop/data-db-0 as context_api reads it."""
    return context_api_pb2.ResourceContext(
        resource=PVC,
        workload=PVC,
        pvc=context_api_pb2.PvcState(
            requested=requested,
            capacity=requested if capacity is None else capacity,
            storage_class=storage_class,
            expansion_allowed=expandable,
            phase=phase,
            resize_condition=resizing,
        ),
    )


DEPLOY = ref("Deployment", "api")
STS = ref("StatefulSet", "db")
DS = ref("DaemonSet", "agent")
JOB = ref("Job", "migrate")
HPA = ref("HorizontalPodAutoscaler", "api")
PVC = ref("PersistentVolumeClaim", "data-db-0")
NODE = ref("Node", "worker-1")
POD = ref("Pod", "api-7f9-x2k4m")
NS = {"namespace": "shop"}

# (alert, subject, evidence, expected action or None for NO_ACTION, a gist of the reason)
CASES: list[tuple[alert_pb2.Alert, alert_pb2.ResourceRef, Evidence, str | None, str]] = [
    # kubernetes-apps
    (
        alert(
            "KubePodCrashLooping",
            **NS,
            pod="api-7f9-x2k4m",
            container="api",
            reason="CrashLoopBackOff",
        ),
        DEPLOY,
        pods(waiting("api-7f9-x2k4m", "CrashLoopBackOff")),
        "restart_deployment",
        "CrashLoopBackOff",
    ),
    (
        alert("KubePodNotReady", **NS, pod="api-7f9-x2k4m"),
        DEPLOY,
        pods(running("api-7f9-x2k4m", ready=False)),
        "restart_deployment",
        "not Ready",
    ),
    (
        alert("KubeDeploymentGenerationMismatch", **NS, deployment="api"),
        DEPLOY,
        pods(),
        None,
        "controller has not observed",
    ),
    (
        alert("KubeDeploymentReplicasMismatch", **NS, deployment="api"),
        DEPLOY,
        pods(running("api-1", ready=False)),
        "restart_deployment",
        "not Ready",
    ),
    (
        alert("KubeDeploymentRolloutStuck", **NS, deployment="api"),
        DEPLOY,
        None,
        "rollback_deployment",
        "not progressing",
    ),
    (
        alert("KubeStatefulSetReplicasMismatch", **NS, statefulset="db"),
        STS,
        pods(running("db-0"), running("db-2", ready=False), running("db-1", ready=False)),
        "delete_pod",
        "db-1",
    ),
    (
        alert("KubeStatefulSetGenerationMismatch", **NS, statefulset="db"),
        STS,
        pods(),
        None,
        "controller has not observed",
    ),
    (
        alert("KubeStatefulSetUpdateNotRolledOut", **NS, statefulset="db"),
        STS,
        pods(running("db-0", ready=False)),
        "delete_pod",
        "db-0",
    ),
    (
        alert("KubeDaemonSetRolloutStuck", **NS, daemonset="agent"),
        DS,
        pods(running("agent-a", ready=False), running("agent-b", ready=False)),
        "restart_daemonset",
        "2 of its pods",
    ),
    (
        alert(
            "KubeContainerWaiting", **NS, pod="api-new", container="api", reason="ImagePullBackOff"
        ),
        DEPLOY,
        bad_rollout(),
        "rollback_deployment",
        "cannot start",
    ),
    (
        alert("KubeDaemonSetNotScheduled", **NS, daemonset="agent"),
        DS,
        None,
        None,
        "taints, resources or node selectors",
    ),
    (
        alert("KubeDaemonSetMisScheduled", **NS, daemonset="agent"),
        DS,
        None,
        None,
        "no longer selects",
    ),
    (alert("KubeJobNotCompleted", **NS, job_name="migrate"), JOB, pods(), None, "still runs"),
    (alert("KubeJobFailed", **NS, job_name="migrate"), JOB, pods(), "rerun_failed_job", "once"),
    (
        alert("KubeHpaReplicasMismatch", **NS, horizontalpodautoscaler="api"),
        HPA,
        None,
        None,
        "capacity or quota",
    ),
    (
        alert("KubeHpaMaxedOut", **NS, horizontalpodautoscaler="api"),
        HPA,
        hpa_seen(),
        "update_hpa",
        "Raising maxReplicas to 6",
    ),
    (
        alert("KubePdbNotEnoughHealthyPods", **NS, poddisruptionbudget="api"),
        DEPLOY,
        None,
        None,
        "PodDisruptionBudget",
    ),
    # kubernetes-resources
    (alert("KubeCPUOvercommit"), NODE, None, None, "capacity"),
    (alert("KubeMemoryOvercommit"), NODE, None, None, "capacity"),
    (alert("KubeCPUQuotaOvercommit"), NODE, None, None, "policy decision"),
    (alert("KubeMemoryQuotaOvercommit"), NODE, None, None, "policy decision"),
    (
        alert("KubeQuotaAlmostFull", **NS, resource="requests.cpu", resourcequota="q"),
        DEPLOY,
        None,
        None,
        "budget decision",
    ),
    (
        alert("KubeQuotaFullyUsed", **NS, resource="pods", resourcequota="q"),
        DEPLOY,
        None,
        None,
        "budget decision",
    ),
    (
        alert("KubeQuotaExceeded", **NS, resource="pods", resourcequota="q"),
        DEPLOY,
        None,
        None,
        "budget decision",
    ),
    (
        alert("CPUThrottlingHigh", **NS, pod="api-7f9-x2k4m", container="api"),
        DEPLOY,
        pods(),
        "increase_cpu_limit",
        "CPU-throttled",
    ),
    # kubernetes-storage
    (
        alert("KubePersistentVolumeFillingUp", **NS, persistentvolumeclaim="data-db-0"),
        PVC,
        pvc_seen(),
        "expand_pvc",
        "Expanding it to 15Gi",
    ),
    (
        alert("KubePersistentVolumeInodesFillingUp", **NS, persistentvolumeclaim="data-db-0"),
        PVC,
        pvc_seen(),  # growing the volume does not add inodes, even where it could grow
        None,
        "inodes",
    ),
    (
        alert("KubePersistentVolumeErrors", persistentvolume="pv-1", phase="Failed"),
        NODE,
        None,
        None,
        "storage provider",
    ),
    # kubernetes-system-kubelet and kubernetes-system
    (alert("KubeNodeNotReady", node="worker-1"), NODE, node_seen(), "cordon_node", "NotReady"),
    (
        alert("KubeNodePressure", node="worker-1", condition="DiskPressure"),
        NODE,
        node_seen(),
        None,
        "already taints",
    ),
    (
        alert("KubeNodeUnreachable", node="worker-1", key="node.kubernetes.io/unreachable"),
        NODE,
        node_seen(),
        None,
        "tainted the node unreachable",
    ),
    (alert("KubeletTooManyPods", node="worker-1"), NODE, node_seen(), None, "pod capacity"),
    (
        alert("KubeNodeReadinessFlapping", node="worker-1"),
        NODE,
        node_seen(),
        "cordon_node",
        "more than twice",
    ),
    (
        alert("KubeNodeEviction", node="worker-1", eviction_signal="memory.available"),
        NODE,
        node_seen(),
        None,
        "eviction threshold",
    ),
    (
        alert("KubeletPlegDurationHigh", node="worker-1", quantile="0.99"),
        NODE,
        node_seen(),
        "cordon_node",
        "relist",
    ),
    (
        alert("KubeletPodStartUpLatencyHigh", node="worker-1"),
        NODE,
        node_seen(),
        None,
        "start slowly",
    ),
    (alert("KubeletClientCertificateExpiration", node="worker-1"), NODE, None, None, "PKI"),
    (alert("KubeletServerCertificateExpiration", node="worker-1"), NODE, None, None, "PKI"),
    (alert("KubeletClientCertificateRenewalErrors", node="worker-1"), NODE, None, None, "PKI"),
    (alert("KubeletServerCertificateRenewalErrors", node="worker-1"), NODE, None, None, "PKI"),
    (alert("KubeletDown"), NODE, None, None, "control-plane"),
    (alert("KubeVersionMismatch"), NODE, None, None, "upgrade"),
    (alert("KubeClientErrors", instance="10.0.0.1:443"), NODE, None, None, "credentials"),
    # not upstream
    (
        alert("KubeContainerOOMKilled", **NS, pod="api-7f9-x2k4m", container="api"),
        DEPLOY,
        None,
        "increase_memory_limit",
        "OOM-killed",
    ),
]


@pytest.mark.parametrize(
    ("alert_", "subject", "evidence", "action", "gist"),
    CASES,
    ids=[case[0].name for case in CASES],
)
def test_each_alert_gets_its_answer(
    alert_: alert_pb2.Alert,
    subject: alert_pb2.ResourceRef,
    evidence: Evidence,
    action: str | None,
    gist: str,
) -> None:
    analysis = analyze(alert_, subject, None, DEFAULTS, evidence)
    text = " ".join(analysis.reasons)
    assert gist in text
    assert NO_RULE not in text
    rule = rule_for(alert_.name)
    assert rule is not None
    if action is None:
        assert analysis.decision == remediation_pb2.DECISION_NO_ACTION, text
        assert not analysis.HasField("recommendation")
    else:
        assert analysis.decision == remediation_pb2.DECISION_REMEDIATE, text
        assert analysis.recommendation.action.WhichOneof("params") == action
        assert action in rule.actions
        protovalidate.validate(analysis.recommendation)


def test_every_alert_of_the_table_has_a_case() -> None:
    upstream = {rule.alert for rule in RULES if rule.group.startswith("kubernetes-")}
    tested = {case[0].name for case in CASES}
    # The control plane's alerts share one reason; the rest are each tested above.
    assert upstream - tested == {
        "KubeAPIErrorBudgetBurn",
        "KubeAPIDown",
        "KubeAPITerminatedRequests",
        "KubeAggregatedAPIErrors",
        "KubeAggregatedAPIDown",
        "KubeClientCertificateExpiration",
        "KubeSchedulerDown",
        "KubeControllerManagerDown",
        "KubeProxyDown",
    }


# -- the actions the rules choose, and what the evidence changes --------------------------


def test_rule_actions_are_catalogue_actions() -> None:
    catalogue = {action.name for action in list_actions()}
    for rule in RULES:
        assert set(rule.actions) <= catalogue, rule.alert


def test_cpu_throttling_uses_the_settings_caps() -> None:
    settings = RulesSettings(cpu_factor=2.0, cpu_cap="1500m")
    analysis = analyze(alert("CPUThrottlingHigh", **NS, container="api"), STS, None, settings)
    params = analysis.recommendation.action.increase_cpu_limit
    assert (params.container, params.factor, params.max_limit) == ("api", 2.0, "1500m")


def test_cpu_throttling_on_an_unresolved_pod_is_not_actionable() -> None:
    analysis = analyze(alert("CPUThrottlingHigh", **NS, container="api"), POD, None, DEFAULTS)
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert "owning workload" in analysis.reasons[0]


def test_a_failed_rerun_is_not_rerun_again() -> None:
    rerun = ref("Job", "migrate-rerun-0a1b2c3d")
    analysis = analyze(
        alert("KubeJobFailed", **NS, job_name=rerun.name), rerun, None, DEFAULTS, pods()
    )
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert "rerun once only" in analysis.reasons[0]


def test_a_job_whose_pods_cannot_start_is_not_rerun() -> None:
    evidence = pods(waiting("migrate-x", "ErrImagePull"))
    analysis = analyze(
        alert("KubeJobFailed", **NS, job_name="migrate"), JOB, None, DEFAULTS, evidence
    )
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert "ErrImagePull" in analysis.reasons[0]


def test_a_node_that_cannot_be_read_is_not_cordoned() -> None:
    analysis = analyze(alert("KubeNodeNotReady", node="worker-1"), NODE, None, DEFAULTS)
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert "could not be read" in analysis.reasons[0]


def test_cordoning_says_why_the_node_is_not_drained() -> None:
    analysis = analyze(
        alert("KubeNodeNotReady", node="worker-1"), NODE, None, DEFAULTS, node_seen()
    )
    assert any("PodDisruptionBudgets" in r and "drain_node" in r for r in analysis.reasons)


def test_one_stuck_daemonset_pod_is_deleted_not_the_daemonset_restarted() -> None:
    evidence = pods(running("agent-a"), running("agent-b", ready=False))
    analysis = analyze(
        alert("KubeDaemonSetRolloutStuck", **NS, daemonset="agent"), DS, None, DEFAULTS, evidence
    )
    assert analysis.recommendation.action.WhichOneof("params") == "delete_pod"
    assert analysis.recommendation.target == ref("Pod", "agent-b")


@pytest.mark.parametrize(
    ("state", "gist"),
    [
        (waiting("db-0", "CrashLoopBackOff"), "fail to start"),
        (
            context_api_pb2.PodState(name="db-0", phase="Pending", unschedulable="0/3 nodes"),
            "no room",
        ),
    ],
)
def test_a_statefulset_whose_pods_fail_is_left_to_a_person(
    state: context_api_pb2.PodState, gist: str
) -> None:
    analysis = analyze(
        alert("KubeStatefulSetReplicasMismatch", **NS, statefulset="db"),
        STS,
        None,
        DEFAULTS,
        pods(state),
    )
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert gist in analysis.reasons[0]


def test_image_pull_without_a_recent_rollout_is_left_to_a_person() -> None:
    evidence = pods(waiting("api-1", "ImagePullBackOff"))
    labels = {**NS, "pod": "api-1", "reason": "ImagePullBackOff"}
    analysis = analyze(alert("KubeContainerWaiting", **labels), DEPLOY, None, DEFAULTS, evidence)
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert "Rollback not chosen" in analysis.reasons[0]


HPA_MAXED = alert("KubeHpaMaxedOut", **NS, horizontalpodautoscaler="api")
PVC_FILLING = alert("KubePersistentVolumeFillingUp", **NS, persistentvolumeclaim="data-db-0")


@pytest.mark.parametrize(
    ("max_replicas", "settings", "raised"),
    [
        (4, DEFAULTS, 6),  # x1.5
        (3, DEFAULTS, 5),  # 4.5 rounds up
        (2, RulesSettings(hpa_max_factor=1.1), 3),  # x1.1 would add none: one more
        (16, DEFAULTS, 20),  # x1.5 is 24: capped at hpa_max_replicas_cap
        (10, RulesSettings(hpa_max_factor=2.0, hpa_max_replicas_cap=12), 12),
    ],
)
def test_a_maxed_out_autoscaler_gets_more_room_within_the_cap(
    max_replicas: int, settings: RulesSettings, raised: int
) -> None:
    evidence = hpa_seen(min_replicas=1, max_replicas=max_replicas, current=max_replicas)
    analysis = analyze(HPA_MAXED, HPA, None, settings, evidence)
    assert analysis.decision == remediation_pb2.DECISION_REMEDIATE, analysis.reasons
    params = analysis.recommendation.action.update_hpa
    assert params.max_replicas == raised
    assert params.min_replicas == 0  # the executor keeps the autoscaler's minReplicas
    assert analysis.recommendation.target == HPA
    assert any(f"capped at {settings.hpa_max_replicas_cap}" in r for r in analysis.reasons)
    protovalidate.validate(analysis.recommendation)


@pytest.mark.parametrize(
    ("evidence", "gist"),
    [
        (None, "could not be read"),
        (hpa_seen(max_replicas=20, current=20), "at or above the cap of 20"),
        (hpa_seen(max_replicas=30, current=30), "at or above the cap of 20"),
        (hpa_seen(current=3), "no longer at its maximum"),
        (hpa_seen(target_found=False), "does not exist"),
        (hpa_seen(min_replicas=4, max_replicas=4), "pinned on purpose"),
    ],
)
def test_an_autoscaler_is_left_alone_unless_the_evidence_shows_it_maxed_out(
    evidence: Evidence, gist: str
) -> None:
    analysis = analyze(HPA_MAXED, HPA, None, DEFAULTS, evidence)
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert gist in analysis.reasons[0]


def test_a_maxed_out_autoscaler_that_is_not_opted_in_is_declined() -> None:
    evidence = hpa_seen()
    evidence.managed_reason = "HorizontalPodAutoscaler shop/api and its namespace do not carry"
    analysis = analyze(HPA_MAXED, HPA, None, DEFAULTS, evidence)
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert "Not Kubernaut's to change" in analysis.reasons[0]


@pytest.mark.parametrize(
    ("evidence", "settings", "size"),
    [
        (pvc_seen("10Gi"), DEFAULTS, "15Gi"),
        (pvc_seen("1Gi"), DEFAULTS, "2Gi"),  # 1.5Gi rounded up to whole Gi
        (pvc_seen("100Mi"), DEFAULTS, "1Gi"),
        (pvc_seen("8Gi", capacity="10Gi"), DEFAULTS, "15Gi"),  # grows from what it has
        (pvc_seen("10G"), DEFAULTS, "14Gi"),  # 15e9 bytes, rounded up to whole Gi
        (pvc_seen("400Gi"), DEFAULTS, "500Gi"),  # 600Gi: capped at pvc_size_cap
        (pvc_seen("1Ti"), RulesSettings(pvc_growth_factor=1.25, pvc_size_cap="2Ti"), "1280Gi"),
    ],
)
def test_a_filling_volume_grows_within_the_cap(
    evidence: Evidence, settings: RulesSettings, size: str
) -> None:
    analysis = analyze(PVC_FILLING, PVC, None, settings, evidence)
    assert analysis.decision == remediation_pb2.DECISION_REMEDIATE, analysis.reasons
    assert analysis.recommendation.action.expand_pvc.size == size
    assert analysis.recommendation.target == PVC
    assert any(f"at most {settings.pvc_size_cap}" in r for r in analysis.reasons)
    protovalidate.validate(analysis.recommendation)


@pytest.mark.parametrize(
    ("evidence", "gist"),
    [
        (None, "could not be read"),
        (pvc_seen(expandable=False), "StorageClass standard does not allow volume expansion"),
        (pvc_seen(storage_class="", expandable=False), "names no StorageClass"),
        (pvc_seen(phase="Pending", capacity=""), "not Bound"),
        (pvc_seen(resizing="FileSystemResizePending"), "FileSystemResizePending"),
        (pvc_seen("15Gi", capacity="10Gi"), "has not finished"),
        (pvc_seen("500Gi"), "at or above the cap of 500Gi"),
        (pvc_seen("450Gi", capacity="512Gi"), "at or above the cap of 500Gi"),
        (pvc_seen("lots"), "not a quantity"),
    ],
)
def test_a_filling_volume_is_left_alone_unless_it_can_grow(evidence: Evidence, gist: str) -> None:
    analysis = analyze(PVC_FILLING, PVC, None, DEFAULTS, evidence)
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert gist in analysis.reasons[0]


def test_the_hpa_and_pvc_rules_act_only_on_their_own_kind() -> None:
    for name, action in (("KubeHpaMaxedOut", "update_hpa"), ("PVCFillingUp", "expand_pvc")):
        analysis = analyze(alert(name, **NS, deployment="api"), DEPLOY, None, DEFAULTS, pods())
        assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
        assert f"{action} acts only on" in analysis.reasons[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu_factor", 1.0),
        ("cpu_factor", 4.5),
        ("cpu_cap", "2Gi"),
        ("cpu_cap", ""),
        ("hpa_max_factor", float("nan")),
        ("hpa_max_replicas_cap", 0),
        ("hpa_max_replicas_cap", 1001),
        ("pvc_growth_factor", 1.0),
        ("pvc_size_cap", "lots"),
    ],
)
def test_invalid_caps_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        RulesSettings(**{field: value})  # type: ignore[arg-type]


# -- aliases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("PodCrashLooping", "KubePodCrashLooping"),
        ("KubePodCrashLoopBackOff", "KubePodCrashLooping"),
        ("PodCrashLoopBackOff", "KubePodCrashLooping"),
        ("kubepodcrashlooping", "KubePodCrashLooping"),
        ("PodNotReady", "KubePodNotReady"),
        ("ContainerOOMKilled", "KubeContainerOOMKilled"),
        ("NodeNotReady", "KubeNodeNotReady"),
        ("KubeJobCompletion", "KubeJobNotCompleted"),
    ],
)
def test_aliases_map_to_the_canonical_rule(name: str, canonical: str) -> None:
    rule = rule_for(name)
    assert rule is not None and rule.alert == canonical


def test_upstream_kubernauts_own_fixture_is_understood() -> None:
    # jordigilh/kubernaut's test/fixtures/pod-crash-alert.json sends PodCrashLooping.
    analysis = analyze(
        alert(
            "PodCrashLooping",
            namespace="production",
            pod="payment-service-7b9d5c4f6-qwerty",
            deployment="payment-service",
            container="payment-processor",
            reason="CrashLoopBackOff",
        ),
        ref("Deployment", "payment-service", "production"),
        None,
        DEFAULTS,
    )
    assert analysis.recommendation.action.WhichOneof("params") == "restart_deployment"


def test_an_image_pull_alias_without_a_reason_label_is_read_as_its_name() -> None:
    analysis = analyze(
        alert("KubePodImagePullBackOff", **NS, pod="api-new"), DEPLOY, None, DEFAULTS, bad_rollout()
    )
    assert analysis.recommendation.action.WhichOneof("params") == "rollback_deployment"


def test_an_unknown_alert_says_it_is_in_no_rule() -> None:
    analysis = analyze(alert("SomethingElse", **NS, deployment="api"), DEPLOY, None, DEFAULTS)
    assert analysis.decision == remediation_pb2.DECISION_NO_ACTION
    assert NO_RULE in analysis.reasons[0] and "SomethingElse" in analysis.reasons[0]


# -- everything shipped or seen gets an answer -----------------------------------------------


def shipped_alert_names() -> set[str]:
    document = yaml.safe_load(KUBERNETES_MIXIN_RULES.read_text())
    return {
        rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule
    }


def corpus_alerts() -> list[alert_pb2.Alert]:
    found: list[alert_pb2.Alert] = []
    for path in sorted(CORPUS.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except ValueError:
            continue  # the invalid bodies are the edge's business
        if not isinstance(body, dict):
            continue
        for member in body.get("alerts") or []:
            labels = member.get("labels") if isinstance(member, dict) else None
            name = (labels or {}).get("alertname") or (body.get("commonLabels") or {}).get(
                "alertname"
            )
            if name:
                found.append(
                    alert(
                        name,
                        **{
                            k: v
                            for k, v in (labels or {}).items()
                            if k != "alertname" and isinstance(v, str) and v
                        },
                    )
                )
    return found


def test_every_shipped_and_tabled_alert_is_answered() -> None:
    names = shipped_alert_names() | {r.alert for r in RULES} | {a for r in RULES for a in r.aliases}
    for name in sorted(names):
        assert rule_for(name) is not None, name
        for subject in (DEPLOY, POD, NODE, STS, JOB):
            analysis = analyze(alert(name, **NS), subject, None, DEFAULTS)
            assert analysis.reasons and NO_RULE not in " ".join(analysis.reasons), name


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the public webhook corpus is not checked out")
def test_every_alert_name_of_the_public_corpus_is_answered() -> None:
    alerts = corpus_alerts()
    assert len({a.name for a in alerts}) >= 20
    for made in alerts:
        assert rule_for(made.name) is not None, made.name
        subject = subject_of(made) or DEPLOY
        analysis = analyze(made, subject, None, DEFAULTS)
        assert NO_RULE not in " ".join(analysis.reasons), made.name


def test_the_generated_docs_match_the_table() -> None:
    assert (ROOT / "docs" / "alert-coverage.md").read_text() == render_markdown()


def test_the_docs_name_every_rule_and_its_decision() -> None:
    text = render_markdown()
    for rule in RULES:
        assert f"| {rule.alert} |" in text
        if not rule.actions:
            assert "NOT_ACTIONABLE" in rule.decision
