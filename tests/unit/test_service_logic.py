"""Plain logic of alert_processor, workflow, intelligence and effectiveness."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.services.alert_processor.processing import triage
from kubernaut.services.alerts import dedup_key_of, incident_key_of
from kubernaut.services.effectiveness.settings import VerdictSettings
from kubernaut.services.effectiveness.verdicts import verdict_of
from kubernaut.services.executor.catalogue import describe_action
from kubernaut.services.intelligence.stats import action_stats, wilson_interval
from kubernaut.services.workflow.planning import TargetHistory, guard_for, plan
from kubernaut.services.workflow.settings import PlanningSettings


def alert(status: int = alert_pb2.ALERT_STATUS_FIRING, **labels: str) -> alert_pb2.Alert:
    name = labels.pop("alertname", "KubePodCrashLooping")
    return alert_pb2.Alert(name=name, status=status, labels=labels)  # type: ignore[arg-type]


def test_a_resolved_alert_is_never_work_even_with_a_subject() -> None:
    result = triage(alert(alert_pb2.ALERT_STATUS_RESOLVED, namespace="shop", deployment="checkout"))
    assert result.disposition == remediation_pb2.ALERT_DISPOSITION_IGNORED_RESOLVED


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"alertname": "Watchdog"}, "heartbeat"),
        ({"namespace": "shop", "pod": "p", "severity": "info"}, "informational"),
        ({"namespace": "shop"}, "names no Kubernetes object"),
        (
            {"namespace": "Shop_1", "deployment": "web"},
            "name no valid Kubernetes object (namespace",
        ),
        ({"namespace": "shop", "pod": "p" * 254}, "(name: must be at most 253 characters)"),
        ({"namespace": "shop", "pod": "p", "cluster": "c" * 300}, "(cluster: must be at most"),
    ],
)
def test_filtered_alerts_say_why(labels: dict[str, str], reason: str) -> None:
    result = triage(alert(alert_pb2.ALERT_STATUS_FIRING, **labels))
    assert result.disposition == remediation_pb2.ALERT_DISPOSITION_FILTERED
    assert reason in result.reason
    # Each is recorded as a drop, with its kind of reason.
    assert result.drop_reason != storage_pb2.ALERT_DROP_REASON_UNSPECIFIED


@pytest.mark.parametrize(
    ("label", "kind"),
    [
        ("horizontalpodautoscaler", "HorizontalPodAutoscaler"),
        ("persistentvolumeclaim", "PersistentVolumeClaim"),
        ("job_name", "Job"),
        ("cronjob", "CronJob"),
        ("daemonset", "DaemonSet"),
        ("statefulset", "StatefulSet"),
    ],
)
def test_kube_state_metrics_subject_labels_are_recognised(label: str, kind: str) -> None:
    labels = {"alertname": "KubeHpaMaxedOut", "namespace": "shop", label: "web"}
    result = triage(alert(alert_pb2.ALERT_STATUS_FIRING, **labels))
    assert result.disposition == remediation_pb2.ALERT_DISPOSITION_ANALYZED
    assert result.subject == alert_pb2.ResourceRef(namespace="shop", kind=kind, name="web")


def test_the_subject_is_the_most_specific_workload_and_nodes_have_no_namespace() -> None:
    result = triage(alert(namespace="shop", deployment="checkout", pod="checkout-1", cluster="eu"))
    assert result.subject == alert_pb2.ResourceRef(
        cluster="eu", namespace="shop", kind="Deployment", name="checkout"
    )
    node = triage(alert(alertname="KubeNodeNotReady", node="worker-1", namespace="monitoring"))
    assert node.subject == alert_pb2.ResourceRef(kind="Node", name="worker-1")


def test_keys_ignore_labels_that_do_not_name_the_problem() -> None:
    one = dedup_key_of(alert(namespace="shop", deployment="checkout", instance="a"))
    two = dedup_key_of(alert(namespace="shop", deployment="checkout", instance="b"))
    other = dedup_key_of(alert(namespace="shop", deployment="cart"))
    assert one == two != other


def test_the_dedup_key_is_the_pods_and_the_incident_key_the_workloads() -> None:
    """Two pods of one Deployment: two lives in the gateway, one incident."""
    first = alert(namespace="shop", pod="checkout-5d8f-aaaaa")
    second = alert(namespace="shop", pod="checkout-5d8f-bbbbb")
    assert dedup_key_of(first) != dedup_key_of(second)
    workload = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout")
    assert incident_key_of(first, workload) == incident_key_of(second, workload)


def recommendation(action: str, confidence: float) -> remediation_pb2.Recommendation:
    params = remediation_pb2.ActionParams()
    getattr(params, action).SetInParent()
    return remediation_pb2.Recommendation(
        action=params,
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout"),
        confidence=confidence,
    )


def kinds(result: workflow_pb2.WorkflowPlan) -> list[int]:
    return [step.kind for step in result.steps]


def test_a_confident_low_risk_plan_runs_without_approval_and_verifies() -> None:
    result = plan(
        recommendation("restart_deployment", 0.9),
        describe_action("restart_deployment"),
        PlanningSettings(),
    )
    assert not result.requires_approval
    assert kinds(result) == [
        workflow_pb2.STEP_KIND_VALIDATE,
        workflow_pb2.STEP_KIND_DRY_RUN,
        workflow_pb2.STEP_KIND_SNAPSHOT,
        workflow_pb2.STEP_KIND_APPLY,
        workflow_pb2.STEP_KIND_VERIFY,
        workflow_pb2.STEP_KIND_NOTIFY,
    ]
    assert result.rollback


def test_low_confidence_or_high_risk_waits_for_approval() -> None:
    unsure = plan(
        recommendation("restart_deployment", 0.3),
        describe_action("restart_deployment"),
        PlanningSettings(),
    )
    assert unsure.requires_approval and "confidence" in unsure.approval_reason
    assert workflow_pb2.STEP_KIND_APPROVAL in kinds(unsure)
    risky = executor_pb2.ActionDefinition()
    risky.CopyFrom(describe_action("scale_deployment"))
    risky.risk = remediation_pb2.RISK_LEVEL_HIGH
    high = plan(recommendation("scale_deployment", 0.99), risky, PlanningSettings())
    assert high.requires_approval and "high risk" in high.approval_reason


def record(action: str, outcome: int) -> storage_pb2.ActionRecord:
    return storage_pb2.ActionRecord(action=action, outcome=outcome)  # type: ignore[arg-type]


def test_stats_count_only_applied_actions() -> None:
    stats = action_stats(
        [
            record("restart_deployment", storage_pb2.ACTION_OUTCOME_SUCCEEDED),
            record("restart_deployment", storage_pb2.ACTION_OUTCOME_FAILED),
            record("restart_deployment", storage_pb2.ACTION_OUTCOME_DRY_RUN),
            record("restart_deployment", storage_pb2.ACTION_OUTCOME_REFUSED),
            record("scale_deployment", storage_pb2.ACTION_OUTCOME_DRY_RUN),
        ]
    )
    assert [s.action for s in stats] == ["restart_deployment"]
    assert stats[0].attempts == 2 and stats[0].success_rate == 0.5


@pytest.mark.parametrize(
    ("attempts", "succeeded", "verdict"),
    [
        (0, 0, remediation_pb2.VERDICT_UNKNOWN),
        (2, 2, remediation_pb2.VERDICT_UNKNOWN),
        # A mean of 100% or 80%, but a lower bound of 44% or 38%: not yet a record.
        (3, 3, remediation_pb2.VERDICT_UNKNOWN),
        (5, 4, remediation_pb2.VERDICT_UNKNOWN),
        (5, 5, remediation_pb2.VERDICT_EFFECTIVE),
        (20, 16, remediation_pb2.VERDICT_EFFECTIVE),
        # 6 of 10: the upper bound (83%) still reaches 70%; 25 of 50 (63%) does not.
        (10, 6, remediation_pb2.VERDICT_UNKNOWN),
        (50, 25, remediation_pb2.VERDICT_INEFFECTIVE),
        (5, 1, remediation_pb2.VERDICT_INEFFECTIVE),
    ],
)
def test_verdicts_go_by_the_interval_not_the_mean(
    attempts: int, succeeded: int, verdict: int
) -> None:
    lower, upper = wilson_interval(succeeded, attempts)
    stats = intelligence_pb2.ActionStats(
        action="restart_deployment",
        attempts=attempts,
        succeeded=succeeded,
        success_rate=succeeded / attempts if attempts else 0.0,
        success_lower_bound=lower,
        success_upper_bound=upper,
    )
    judged = verdict_of(stats, VerdictSettings())
    assert judged.verdict == verdict
    assert (judged.success_lower_bound, judged.success_upper_bound) == (lower, upper)
    if attempts >= 3:
        assert f"{succeeded} of {attempts} attempts succeeded, 95% interval" in judged.reason


_NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


def failed_record(
    action: str,
    ago: dt.timedelta,
    outcome: int = storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
    params: remediation_pb2.ActionParams | None = None,
) -> storage_pb2.ActionRecord:
    record = storage_pb2.ActionRecord(
        action_id="a1",
        incident_id="i1",
        action=action,
        outcome=outcome,  # type: ignore[arg-type]
    )
    if params is not None:
        record.params.CopyFrom(params)
    else:
        getattr(record.params, action).SetInParent()
    record.finished_at.FromDatetime(_NOW - ago)
    return record


def test_the_guard_holds_any_plan_for_a_workload_whose_fix_failed_recently() -> None:
    history = TargetHistory([failed_record("restart_deployment", dt.timedelta(minutes=15))])
    guard = guard_for(recommendation("rollback_deployment", 0.9), history, _NOW, PlanningSettings())
    assert guard is not None and guard.required
    assert "restart_deployment failed verification and was undone 15.0m ago" in guard.reason
    held = plan(
        recommendation("rollback_deployment", 0.9),
        describe_action("rollback_deployment"),
        PlanningSettings(),
        guard,
    )
    assert held.requires_approval and held.approval_reason == guard.reason
    assert workflow_pb2.STEP_KIND_APPROVAL in kinds(held)
    # After the hold, another action is planned as usual; a refusal never counted.
    old = TargetHistory([failed_record("restart_deployment", dt.timedelta(hours=7))])
    assert (
        guard_for(recommendation("rollback_deployment", 0.9), old, _NOW, PlanningSettings()) is None
    )
    refused = TargetHistory(
        [
            failed_record(
                "restart_deployment", dt.timedelta(minutes=1), storage_pb2.ACTION_OUTCOME_REFUSED
            )
        ]
    )
    assert (
        guard_for(recommendation("restart_deployment", 0.9), refused, _NOW, PlanningSettings())
        is None
    )


def test_the_same_action_with_the_same_parameters_is_never_repeated_on_its_own() -> None:
    raise_memory = remediation_pb2.ActionParams(
        increase_memory_limit=remediation_pb2.IncreaseMemoryLimitParams(factor=1.5, max_limit="4Gi")
    )
    history = TargetHistory(
        [failed_record("increase_memory_limit", dt.timedelta(days=30), params=raise_memory)]
    )
    again = remediation_pb2.Recommendation(
        action=raise_memory,
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout"),
        confidence=0.9,
    )
    guard = guard_for(again, history, _NOW, PlanningSettings())
    assert guard is not None and "never repeated automatically" in guard.reason
    different = remediation_pb2.Recommendation()
    different.CopyFrom(again)
    different.action.increase_memory_limit.factor = 2.0
    assert guard_for(different, history, _NOW, PlanningSettings()) is None


def test_a_second_change_right_after_a_successful_fix_waits_for_a_person() -> None:
    """Two alerts of one bad rollout (a replica mismatch, then a crash loop) must not lead
    to two fixes in a row: the second waits while the first's effect is judged."""
    succeeded = storage_pb2.ACTION_OUTCOME_SUCCEEDED
    recent = TargetHistory(
        [failed_record("rollback_deployment", dt.timedelta(seconds=20), succeeded)]
    )
    guard = guard_for(recommendation("restart_deployment", 0.9), recent, _NOW, PlanningSettings())
    assert guard is not None and guard.required
    assert "rollback_deployment succeeded 20s ago" in guard.reason
    assert "KUBERNAUT_WORKFLOW_SETTLE_SECONDS" in guard.reason
    settled = TargetHistory(
        [failed_record("rollback_deployment", dt.timedelta(minutes=11), succeeded)]
    )
    assert (
        guard_for(recommendation("restart_deployment", 0.9), settled, _NOW, PlanningSettings())
        is None
    )
    off = PlanningSettings(settle_seconds=0)
    assert guard_for(recommendation("restart_deployment", 0.9), recent, _NOW, off) is None


def test_the_guard_fails_closed_when_the_past_cannot_be_read() -> None:
    guard = guard_for(
        recommendation("restart_deployment", 0.9),
        TargetHistory(unreadable="UNAVAILABLE: storage down"),
        _NOW,
        PlanningSettings(),
    )
    assert guard is not None and guard.required and "could not be read" in guard.reason


def _succeeded(
    action: str, ago: dt.timedelta, action_id: str, before: str = "", after: str = ""
) -> storage_pb2.ActionRecord:
    record = failed_record(action, ago, storage_pb2.ACTION_OUTCOME_SUCCEEDED)
    record.action_id = action_id
    record.spec_before_json, record.spec_after_json = before, after
    return record


def test_actions_that_keep_coming_back_to_one_workload_wait_for_a_person() -> None:
    """The third action on one workload within the hour waits, however far apart (beyond
    the settle time) the first two were."""
    twice = TargetHistory(
        [
            _succeeded("restart_deployment", dt.timedelta(minutes=15), "a2"),
            _succeeded("restart_deployment", dt.timedelta(minutes=40), "a1"),
        ]
    )
    guard = guard_for(recommendation("restart_deployment", 0.9), twice, _NOW, PlanningSettings())
    assert guard is not None and guard.required and "oscillates" in guard.reason
    assert "2 actions within 1.0h" in guard.reason and "number 3" in guard.reason
    once = TargetHistory(twice.records[:1])
    assert (
        guard_for(recommendation("restart_deployment", 0.9), once, _NOW, PlanningSettings()) is None
    )
    long_ago = TargetHistory(
        [_succeeded("restart_deployment", dt.timedelta(hours=h), f"a{h}") for h in (2, 3, 4)]
    )
    assert (
        guard_for(recommendation("restart_deployment", 0.9), long_ago, _NOW, PlanningSettings())
        is None
    )
    off = PlanningSettings(oscillation_actions=0)
    assert guard_for(recommendation("restart_deployment", 0.9), twice, _NOW, off) is None
    with pytest.raises(ValueError, match="at least 2"):
        PlanningSettings(oscillation_actions=1)


def test_an_action_that_undid_another_is_an_oscillation() -> None:
    """Scaled up, then scaled back down: the workload is as it was before the first, and
    a third scale waits for a person, with two actions only."""
    two = '{"replicas": 2, "template": {"image": "a"}}'
    four = '{"template": {"image": "a"}, "replicas": 4}'
    undone = TargetHistory(
        [
            _succeeded("scale_deployment", dt.timedelta(minutes=15), "down", four, two),
            _succeeded("scale_deployment", dt.timedelta(minutes=30), "up", two, four),
        ]
    )
    settings = PlanningSettings(oscillation_actions=0)
    guard = guard_for(recommendation("scale_deployment", 0.9), undone, _NOW, settings)
    assert guard is not None and "undid scale_deployment (action up)" in guard.reason
    onward = TargetHistory(
        [
            _succeeded(
                "scale_deployment", dt.timedelta(minutes=15), "more", four, '{"replicas": 6}'
            ),
            _succeeded("scale_deployment", dt.timedelta(minutes=30), "up", two, four),
        ]
    )
    assert guard_for(recommendation("scale_deployment", 0.9), onward, _NOW, settings) is None


class _Intelligence:
    """intelligence's GetRecurringIncidents as effectiveness sees it."""

    def __init__(self, answer: list[intelligence_pb2.RecurringIncident] | Exception) -> None:
        self.answer = answer
        self.asked: list[intelligence_pb2.GetRecurringIncidentsRequest] = []

    async def GetRecurringIncidents(
        self, request: intelligence_pb2.GetRecurringIncidentsRequest, **_: object
    ) -> intelligence_pb2.GetRecurringIncidentsResponse:
        self.asked.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return intelligence_pb2.GetRecurringIncidentsResponse(recurring=self.answer)


async def test_recurrence_is_asked_for_the_subject_and_an_outage_is_a_reason() -> None:
    import grpc
    from grpc.aio import AioRpcError, Metadata
    from kubernaut.common.v1 import alert_pb2

    from kubernaut.services.effectiveness.verdicts import recurrence_of

    web = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web")
    recurring = intelligence_pb2.RecurringIncident(subject=web, incidents=3, fixes_not_held=2)
    intelligence = _Intelligence([recurring])
    assert await recurrence_of(intelligence, web, "KubePodCrashLooping") == recurring
    assert intelligence.asked[0].subject == web
    assert intelligence.asked[0].alert_name == "KubePodCrashLooping"
    assert await recurrence_of(_Intelligence([]), web, "KubePodCrashLooping") is None
    down = AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), "no route")
    assert (
        await recurrence_of(_Intelligence(down), web, "X") == "intelligence: UNAVAILABLE: no route"
    )
