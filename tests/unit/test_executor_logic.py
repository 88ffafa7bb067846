"""The executor's logic without a cluster: computing changes, quantities, judging rollouts,
settings. The same code runs against a real cluster in tests/integration/test_executor.py."""

from __future__ import annotations

import copy
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from kubernaut.common.v1 import remediation_pb2

from kubernaut.services.executor.changes import (
    ABSENT,
    POD_TEMPLATE_HASH,
    RESTARTED_AT,
    REVISION,
    Change,
    ChangeRefused,
    Edit,
    PlanContext,
    allowed_pointer,
    assess_rollout,
    edit_at,
    equivalent,
    format_memory,
    label_selector,
    own_taints,
    parse_quantity,
    pointer_get,
    scale_cpu,
    scale_memory,
    spec_json,
)
from kubernaut.services.executor.changes import (
    compute_change as _compute_change,
)
from kubernaut.services.executor.operations import content_of, snapshot_content
from kubernaut.services.executor.settings import DEFAULT_PROTECTED_NAMESPACES, ExecutorSettings

AT = dt.datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)


def compute_change(
    deployment: dict[str, Any],
    params: remediation_pb2.ActionParams,
    *,
    at: dt.datetime,
    replica_sets: list[dict[str, Any]] | None = None,
) -> Change:
    context = PlanContext(at=at, kind="Deployment", replica_sets=replica_sets or [])
    return _compute_change(deployment, params, context)


def only(change: Change) -> Edit:
    """The one edit of a change."""
    (edit,) = change.edits
    return edit


UID = "0b7c6f0e-1111-2222-3333-444455556666"


def _container(name: str = "app", image: str = "app:v3", memory: str | None = "256Mi") -> Any:
    container: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent"}
    if memory is not None:
        container["resources"] = {"limits": {"memory": memory}, "requests": {"memory": "64Mi"}}
    return container


def _deployment(
    *, replicas: int = 2, revision: int = 3, containers: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": UID,
            "resourceVersion": "1234",
            "generation": 7,
            "labels": {"app": "web"},
            "annotations": {REVISION: str(revision)},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers or [_container()]},
            },
        },
    }


def _replica_set(revision: int, image: str, *, owner: str = UID) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"web-{revision}abc",
            "annotations": {REVISION: str(revision)},
            "ownerReferences": [{"uid": owner, "controller": True, "kind": "Deployment"}],
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web", POD_TEMPLATE_HASH: f"{revision}abc"}},
                "spec": {"containers": [_container(image=image)]},
            }
        },
    }


def _params(**kwargs: Any) -> remediation_pb2.ActionParams:
    return remediation_pb2.ActionParams(**kwargs)


# -- quantities -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "factor", "cap", "expected", "capped"),
    [
        ("256Mi", 1.5, "2Gi", "384Mi", False),
        ("1Gi", 1.5, "4Gi", "1536Mi", False),
        ("1Gi", 2.0, "4Gi", "2Gi", False),
        ("100Mi", 1.3, "1Gi", "130Mi", False),
        # 123Mi x 1.1 = 135.3Mi: rounded up to a whole MiB.
        ("123Mi", 1.1, "1Gi", "136Mi", False),
        ("500M", 1.5, "2G", "750M", False),
        ("1G", 1.5, "4G", "1500M", False),
        ("1Gi", 3.0, "2Gi", "2Gi", True),
        # The cap is printed the way the API server would print it.
        ("1Gi", 3.0, "2048Mi", "2Gi", True),
        ("1Gi", 3.0, "1.5Gi", "1536Mi", True),
        # No suffix is bytes; treated as the binary family.
        ("268435456", 1.5, "1Gi", "384Mi", False),
        ("512Ki", 1.5, "1Gi", "768Ki", False),
    ],
)
def test_memory_limit_is_multiplied_within_the_cap(
    current: str, factor: float, cap: str, expected: str, capped: bool
) -> None:
    assert scale_memory(current, factor, cap) == (expected, capped)
    assert parse_quantity(expected) <= parse_quantity(cap)
    assert parse_quantity(expected) > parse_quantity(current)


@pytest.mark.parametrize(("current", "cap"), [("2Gi", "2Gi"), ("3Gi", "2Gi"), ("2048Mi", "2Gi")])
def test_a_limit_at_or_above_the_cap_is_not_raised(current: str, cap: str) -> None:
    with pytest.raises(ChangeRefused, match="already at or above max_limit"):
        scale_memory(current, 1.5, cap)


def test_a_malformed_limit_is_refused() -> None:
    with pytest.raises(ChangeRefused, match="not a quantity"):
        scale_memory("lots", 1.5, "2Gi")


@pytest.mark.parametrize(
    ("value", "decimal_si", "text"),
    [
        (Decimal(1024**3), False, "1Gi"),
        (Decimal(1536 * 1024**2), False, "1536Mi"),
        (Decimal(1000**3), True, "1G"),
        (Decimal(1000**3), False, "1000000000"),
        (Decimal("1000.2"), False, "1001"),
        (Decimal(0), False, "0"),
    ],
)
def test_format_memory(value: Decimal, decimal_si: bool, text: str) -> None:
    assert format_memory(value, decimal_si=decimal_si) == text


def test_parse_quantity_uses_the_kubernetes_parser() -> None:
    assert parse_quantity("1.5Gi") == Decimal(1536 * 1024**2)
    assert parse_quantity("100m") == Decimal("0.1")
    with pytest.raises(ValueError):
        parse_quantity("12Qi")


# -- JSON helpers -----------------------------------------------------------------------------


def test_quantities_compare_by_value_only_under_resources() -> None:
    a = {"resources": {"limits": {"memory": "1.5Gi"}}, "image": "x"}
    b = {"resources": {"limits": {"memory": "1536Mi"}}, "image": "x"}
    assert equivalent(a, b)
    assert not equivalent({"image": "1Gi"}, {"image": "1024Mi"})
    assert not equivalent({"a": 1}, {"a": 1, "b": None})
    assert not equivalent({"a": True}, {"a": 1})
    assert equivalent([1, {"x": "y"}], [1, {"x": "y"}])


def test_pointer_get() -> None:
    doc = {"metadata": {"annotations": {"a/b": "1"}}, "list": [{"x": 2}]}
    assert pointer_get(doc, "/metadata/annotations/a~1b") == "1"
    assert pointer_get(doc, "/list/0/x") == 2
    assert pointer_get(doc, "/list/5/x") is None
    assert pointer_get(doc, "/missing/deeper") is None


def test_label_selector() -> None:
    selector = {
        "matchLabels": {"b": "2", "a": "1"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["web", "api"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert label_selector(selector) == "a=1,b=2,tier in (api,web),!canary"
    assert label_selector(None) == ""


# -- computing changes ------------------------------------------------------------------------


def test_rollback_to_zero_takes_the_highest_revision_below_the_current() -> None:
    deployment = _deployment(revision=3)
    replica_sets = [
        _replica_set(1, "app:v1"),
        _replica_set(2, "app:v2"),
        _replica_set(3, "app:v3"),
        _replica_set(2, "stranger:v2", owner="someone-else"),
    ]
    change = compute_change(
        deployment, _params(rollback_deployment={}), at=AT, replica_sets=replica_sets
    )
    assert only(change).path == "/spec/template"
    assert only(change).before == deployment["spec"]["template"]
    assert only(change).after["spec"]["containers"][0]["image"] == "app:v2"
    # The controller's hash label is not part of the Deployment's template.
    assert only(change).after["metadata"]["labels"] == {"app": "web"}
    assert "revision 3 back to revision 2" in change.summary
    # The ReplicaSet itself is not modified.
    assert POD_TEMPLATE_HASH in replica_sets[1]["spec"]["template"]["metadata"]["labels"]


def test_rollback_to_a_named_revision_and_its_refusals() -> None:
    deployment = _deployment(revision=3)
    replica_sets = [_replica_set(1, "app:v1"), _replica_set(3, "app:v3")]
    change = compute_change(
        deployment,
        _params(rollback_deployment={"to_revision": 1}),
        at=AT,
        replica_sets=replica_sets,
    )
    assert only(change).after["spec"]["containers"][0]["image"] == "app:v1"
    with pytest.raises(
        ChangeRefused, match=r"revision 2 .* not retained \(retained revisions: 1, 3"
    ):
        compute_change(
            deployment,
            _params(rollback_deployment={"to_revision": 2}),
            at=AT,
            replica_sets=replica_sets,
        )
    with pytest.raises(ChangeRefused, match="at revision 3 already"):
        compute_change(
            deployment,
            _params(rollback_deployment={"to_revision": 3}),
            at=AT,
            replica_sets=replica_sets,
        )
    with pytest.raises(ChangeRefused, match="no revision before 1"):
        compute_change(
            _deployment(revision=1),
            _params(rollback_deployment={}),
            at=AT,
            replica_sets=[_replica_set(1, "app:v1")],
        )


def test_restart_sets_the_annotation_to_the_action_time() -> None:
    deployment = _deployment()
    change = compute_change(deployment, _params(restart_deployment={}), at=AT)
    annotations = only(change).after["metadata"]["annotations"]
    assert annotations == {RESTARTED_AT: "2025-03-04T05:06:07.890123Z"}
    assert "annotations" not in only(change).before["metadata"]
    with pytest.raises(ChangeRefused, match="0 replicas"):
        compute_change(_deployment(replicas=0), _params(restart_deployment={}), at=AT)


def test_scale_changes_only_the_replicas() -> None:
    change = compute_change(
        _deployment(replicas=2), _params(scale_deployment={"replicas": 5}), at=AT
    )
    assert (only(change).path, only(change).before, only(change).after) == ("/spec/replicas", 2, 5)
    assert change.summary == "replicas 2 -> 5"
    with pytest.raises(ChangeRefused, match="has 2 replicas already"):
        compute_change(_deployment(replicas=2), _params(scale_deployment={"replicas": 2}), at=AT)


def test_increase_memory_limit_changes_one_container() -> None:
    deployment = _deployment(containers=[_container("app"), _container("sidecar", memory="64Mi")])
    params = _params(
        increase_memory_limit={"container": "sidecar", "factor": 1.5, "max_limit": "1Gi"}
    )
    change = compute_change(deployment, params, at=AT)
    containers = only(change).after["spec"]["containers"]
    assert containers[1]["resources"]["limits"]["memory"] == "96Mi"
    assert containers[1]["resources"]["requests"]["memory"] == "64Mi"  # requests untouched
    assert containers[0] == deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["template"]["spec"]["containers"][1]["resources"]["limits"] == {
        "memory": "64Mi"
    }
    assert "'sidecar' memory limit 64Mi -> 96Mi" in change.summary


def test_increase_memory_limit_refusals() -> None:
    def memory(container: str, deployment: dict[str, Any]) -> Change:
        params = _params(
            increase_memory_limit={"container": container, "factor": 1.5, "max_limit": "1Gi"}
        )
        return compute_change(deployment, params, at=AT)

    two = _deployment(containers=[_container("app"), _container("sidecar")])
    with pytest.raises(ChangeRefused, match="no container 'db'"):
        memory("db", two)
    with pytest.raises(ChangeRefused, match="has 2 containers"):
        memory("", two)
    with pytest.raises(ChangeRefused, match="no memory limit"):
        memory("", _deployment(containers=[_container(memory=None)]))
    # The only container, unnamed in the parameters.
    assert "'app'" in memory("", _deployment()).summary


def test_change_patches_carry_the_resource_version_and_roundtrip_as_json() -> None:
    deployment = _deployment()
    change = compute_change(deployment, _params(scale_deployment={"replicas": 4}), at=AT)
    assert change.patch("99") == [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": "99"},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
    ]
    assert change.restore_patch("100")[1] == {"op": "replace", "path": "/spec/replicas", "value": 2}
    assert Change.from_json(change.to_json()) == change
    assert not change.is_applied(deployment) and change.is_restored(deployment)
    scaled = copy.deepcopy(deployment)
    scaled["spec"]["replicas"] = 4
    assert change.is_applied(scaled) and not change.is_restored(scaled)


def test_spec_json_is_stable() -> None:
    a = {"spec": {"b": 1, "a": [1, 2]}}
    assert spec_json(a) == '{"a":[1,2],"b":1}'


# -- judging rollouts -------------------------------------------------------------------------


def _pod(
    name: str,
    hash_: str = "new",
    *,
    ready: bool = True,
    waiting: str = "",
    terminating: bool = False,
    unschedulable: str = "",
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": str(ready)}]}
    if waiting:
        status["containerStatuses"] = [{"name": "app", "state": {"waiting": {"reason": waiting}}}]
    if unschedulable:
        status["conditions"].append(
            {"type": "PodScheduled", "status": "False", "message": unschedulable}
        )
    metadata: dict[str, Any] = {"name": name, "labels": {POD_TEMPLATE_HASH: hash_}}
    if terminating:
        metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": metadata, "status": status}


def _status(
    replicas: int, *, observed: int = 7, updated: int | None = None, ready: int | None = None
) -> dict[str, Any]:
    deployment = _deployment(replicas=replicas)
    deployment["status"] = {
        "observedGeneration": observed,
        "replicas": replicas,
        "updatedReplicas": replicas if updated is None else updated,
        "readyReplicas": replicas if ready is None else ready,
        "availableReplicas": replicas if ready is None else ready,
    }
    return deployment


def test_a_complete_rollout_is_done() -> None:
    state = assess_rollout(_status(2), [_pod("a"), _pod("b")], generation=7)
    assert state.done and not state.broken
    assert state.summary == "2/2 updated, 2 ready, 2 available, 2 pods"


def test_an_unobserved_generation_or_missing_pods_is_not_done() -> None:
    assert not assess_rollout(_status(2, observed=6), [_pod("a"), _pod("b")], generation=7).done
    assert not assess_rollout(_status(2), [_pod("a")], generation=7).done
    waiting = assess_rollout(
        _status(2, ready=1),
        [_pod("a"), _pod("b", ready=False, unschedulable="0/3 nodes are available")],
        generation=7,
    )
    assert not waiting.done and not waiting.broken
    assert "1 pods unschedulable: 0/3 nodes are available" in waiting.summary


def test_scaled_to_zero_waits_for_every_pod_to_go() -> None:
    gone = assess_rollout(_status(0), [_pod("a", terminating=True)], generation=7)
    assert not gone.done
    assert assess_rollout(_status(0), [], generation=7).done


def test_a_crash_loop_of_the_new_template_is_broken_at_once() -> None:
    pods = [_pod("old", "old1", waiting="CrashLoopBackOff"), _pod("new", "new1", ready=False)]
    # An old pod crashing (the reason for a restart, say) is no reason to give up.
    state = assess_rollout(
        _status(2, updated=1, ready=0), pods, generation=7, old_hashes=frozenset({"old1"})
    )
    assert not state.done and not state.broken
    pods[1] = _pod("new", "new1", ready=False, waiting="CrashLoopBackOff")
    state = assess_rollout(
        _status(2, updated=1, ready=0), pods, generation=7, old_hashes=frozenset({"old1"})
    )
    assert state.broken
    assert "in CrashLoopBackOff: new, old" in state.summary
    # Without old hashes (verifying a restore) only a finished rollout is judged.
    assert not assess_rollout(_status(2, updated=1, ready=0), pods, generation=7).broken


def test_complete_but_crashing_is_broken() -> None:
    pods = [_pod("a"), _pod("b", waiting="CrashLoopBackOff")]
    state = assess_rollout(_status(2), pods, generation=7)
    assert state.broken and not state.done


def test_progress_deadline_exceeded_is_broken() -> None:
    deployment = _status(2, updated=1, ready=1)
    deployment["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    ]
    state = assess_rollout(deployment, [_pod("a"), _pod("b")], generation=7)
    assert state.broken and state.summary.startswith("progress deadline exceeded")


# -- settings ---------------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("KUBERNAUT_DATABASE_URL", "KUBERNAUT_EXECUTOR_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    defaults = ExecutorSettings()
    assert defaults.protected_namespaces == DEFAULT_PROTECTED_NAMESPACES
    assert "kube-system" in defaults.protected_namespaces
    assert defaults.verify_timeout_seconds == 120
    assert defaults.database_url is None
    assert defaults.lock_wait == 300
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_PROTECTED_NAMESPACES", "kube-system, payments,,")
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_VERIFY_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", "postgresql://shared/db")
    settings = ExecutorSettings()
    assert settings.protected_namespaces == frozenset({"kube-system", "payments"})
    assert settings.verify_timeout_seconds == 5
    assert settings.database_url == "postgresql://shared/db"
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_DATABASE_URL", "postgresql://own/db")
    assert ExecutorSettings().database_url == "postgresql://own/db"


# -- the wider catalogue: edits, quantities, nodes, requests --------------------------------------


def test_edit_at_makes_missing_parents_and_round_trips_absent_values() -> None:
    configmap = {"metadata": {"name": "settings"}}
    edit = edit_at(configmap, "/data/LOG_LEVEL", "info")
    assert (edit.path, edit.before, edit.after) == ("/data", ABSENT, {"LOG_LEVEL": "info"})
    change = Change("set", (edit,))
    assert change.patch("7")[1] == {"op": "add", "path": "/data", "value": {"LOG_LEVEL": "info"}}
    assert change.restore_patch("8")[1] == {"op": "remove", "path": "/data"}
    assert Change.from_json(json.loads(json.dumps(change.to_json()))) == change
    existing = edit_at({"data": {"a/b": "1"}}, "/data/a~1b", "2")
    assert (existing.path, existing.before, existing.after) == ("/data/a~1b", "1", "2")
    assert Change("x", (existing,)).patch("1")[1]["op"] == "replace"


def test_a_change_stored_before_several_edits_still_loads() -> None:
    legacy = {"summary": "replicas 2 -> 3", "path": "/spec/replicas", "before": 2, "after": 3}
    change = Change.from_json(legacy)
    assert change.edits == (Edit("/spec/replicas", 2, 3),)


def test_snapshots_stored_before_other_kinds_give_their_content() -> None:
    legacy = {"spec": {"replicas": 2}, "labels": {"app": "web"}, "resourceVersion": "1"}
    assert snapshot_content(legacy) == content_of(
        {"spec": {"replicas": 2}, "metadata": {"labels": {"app": "web"}}}
    )


@pytest.mark.parametrize(
    ("current", "factor", "cap", "expected"),
    [
        ("500m", 1.5, "2", ("750m", False)),
        ("1", 2.0, "2", ("2", True)),
        ("1500m", 2.0, "2", ("2", True)),
        ("333m", 1.1, "4", ("367m", False)),
    ],
)
def test_scale_cpu(current: str, factor: float, cap: str, expected: tuple[str, bool]) -> None:
    assert scale_cpu(current, factor, cap) == expected


def test_scale_cpu_refuses_at_the_cap() -> None:
    with pytest.raises(ChangeRefused, match="already at or above max_limit"):
        scale_cpu("2", 1.5, "2")
    with pytest.raises(ChangeRefused, match="CPU limit 'x' is not a quantity"):
        scale_cpu("x", 1.5, "2")


def _node(taints: list[dict[str, str]] | None = None, **spec: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"metadata": {"name": "n1"}, "spec": dict(spec)}
    if taints is not None:
        node["spec"]["taints"] = taints
    return node


def _plan(obj: dict[str, Any], kind: str, **action: Any) -> Change:
    return _compute_change(obj, _params(**action), PlanContext(at=AT, kind=kind))


def test_cordon_and_uncordon() -> None:
    cordon = only(_plan(_node(), "Node", cordon_node={}))
    assert (cordon.path, cordon.before, cordon.after) == ("/spec/unschedulable", ABSENT, True)
    uncordon = only(_plan(_node(unschedulable=True), "Node", uncordon_node={}))
    assert (uncordon.before, uncordon.after) == (True, ABSENT)
    with pytest.raises(ChangeRefused, match="cordoned already"):
        _plan(_node(unschedulable=True), "Node", cordon_node={})
    with pytest.raises(ChangeRefused, match="schedulable already"):
        _plan(_node(), "Node", uncordon_node={})


def test_taints_replace_the_same_key_and_effect_and_untaint_clears_the_field() -> None:
    ours = {"key": "example.com/disk", "value": "bad", "effect": "NoSchedule"}
    controller = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    change = _plan(
        _node([controller, ours]),
        "Node",
        taint_node={
            "key": "example.com/disk",
            "value": "worse",
            "effect": "TAINT_EFFECT_NO_SCHEDULE",
        },
    )
    assert only(change).after == [controller, {**ours, "value": "worse"}]
    with pytest.raises(ChangeRefused, match=r"has the taint example\.com/disk=bad:NoSchedule"):
        _plan(
            _node([ours]),
            "Node",
            taint_node={
                "key": "example.com/disk",
                "value": "bad",
                "effect": "TAINT_EFFECT_NO_SCHEDULE",
            },
        )
    removed = only(_plan(_node([ours]), "Node", untaint_node={"key": "example.com/disk"}))
    assert removed.after is ABSENT
    # The node controller's own taints do not count when reading a change back.
    applied = Change("t", (removed,))
    assert applied.is_applied(_node([controller]))
    assert own_taints([controller, ours]) == [ours]


def test_patch_resource_allow_list() -> None:
    allowed = {"Deployment": ("/spec/minReadySeconds", "/spec/template/metadata/annotations/*")}
    assert allowed_pointer("Deployment", "/spec/minReadySeconds", allowed)
    assert allowed_pointer("Deployment", "/spec/template/metadata/annotations/x", allowed)
    assert not allowed_pointer("Deployment", "/spec/template/metadata/annotations", allowed)
    assert not allowed_pointer("Deployment", "/spec/replicas", allowed)
    assert not allowed_pointer("StatefulSet", "/spec/minReadySeconds", allowed)
    context = PlanContext(at=AT, kind="Deployment", patch_allowed_fields=allowed)
    with pytest.raises(ChangeRefused, match="may not set /spec/replicas of a Deployment"):
        _compute_change(
            _deployment(),
            _params(patch_resource={"path": "/spec/replicas", "value_json": "9"}),
            context,
        )
    with pytest.raises(ChangeRefused, match="value_json is not JSON"):
        _compute_change(
            _deployment(),
            _params(patch_resource={"path": "/spec/minReadySeconds", "value_json": "{"}),
            context,
        )


def test_requests_and_hpa_refusals() -> None:
    deployment = _deployment(containers=[_container()])
    with pytest.raises(ChangeRefused, match="would exceed container 'app''s limit 256Mi"):
        _plan(deployment, "Deployment", update_resource_requests={"memory": "1Gi"})
    change = only(_plan(deployment, "Deployment", update_resource_requests={"memory": "128Mi"}))
    assert change.after["spec"]["containers"][0]["resources"]["requests"] == {"memory": "128Mi"}
    hpa = {"metadata": {"name": "web"}, "spec": {"minReplicas": 2, "maxReplicas": 4}}
    with pytest.raises(ChangeRefused, match="minReplicas 5 would exceed maxReplicas 4"):
        _plan(hpa, "HorizontalPodAutoscaler", update_hpa={"min_replicas": 5})


def test_request_checks_relate_fields() -> None:
    from kubernaut.executor.v1 import executor_pb2

    from kubernaut.services.executor.requests import execute_problems, rollback_problems

    def execute(**action: Any) -> executor_pb2.ExecuteActionRequest:
        return executor_pb2.ExecuteActionRequest(action=_params(**action))

    assert execute_problems(execute(update_resource_requests={})) == [
        ("action.update_resource_requests", "set cpu, memory or both")
    ]
    assert execute_problems(execute(update_hpa={"min_replicas": 3, "max_replicas": 2})) == [
        ("action.update_hpa.min_replicas", "min_replicas 3 exceeds max_replicas 2")
    ]
    assert execute_problems(execute(update_hpa={"max_replicas": 2})) == []
    same = "0b7c6f0e-1111-2222-3333-444455556666"
    request = executor_pb2.RollbackActionRequest(action_id=same, rollback_id=same.upper())
    assert [field for field, _ in rollback_problems(request)] == ["rollback_id"]


def test_drain_evicts_what_kubectl_drain_evicts() -> None:
    from kubernaut.services.executor.operations import _evictable

    def pod(owner: str | None = None, phase: str = "Running", mirror: bool = False) -> Any:
        meta: dict[str, Any] = {"name": "p", "namespace": "ns"}
        if owner:
            meta["ownerReferences"] = [{"kind": owner, "name": "o", "controller": True}]
        if mirror:
            meta["annotations"] = {"kubernetes.io/config.mirror": "x"}
        return {"metadata": meta, "status": {"phase": phase}}

    assert _evictable(pod("ReplicaSet"))
    assert _evictable(pod())  # a bare pod is evictable, and the plan refuses to lose it
    assert not _evictable(pod("DaemonSet"))
    assert not _evictable(pod(mirror=True))
    assert not _evictable(pod("ReplicaSet", phase="Succeeded"))


def test_diagnostics_bundles_stay_within_their_bound() -> None:
    from kubernaut.services.executor.operations import _bounded_json

    bundle = {
        "object": {"metadata": {"name": "p"}},
        "events": [{"reason": "x" * 100}] * 50,
        "logs": {"p/app": "line\n" * 5000, "p/side": "y" * 100},
    }
    text = _bounded_json(bundle, 4096)
    assert len(text.encode()) <= 4096
    assert json.loads(text)["object"] == {"metadata": {"name": "p"}}
