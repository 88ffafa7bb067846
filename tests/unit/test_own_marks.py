"""Kubernaut's marks on what it writes (kubernaut/services/executor/changes.py) and how context_api
tells its own revisions from others' (kubernaut/services/context_api/resources.py), without a
cluster."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from kubernaut.common.v1 import remediation_pb2
from kubernetes_asyncio import client

from kubernaut.runtime.kube import (
    ACTION_ID_ANNOTATION,
    CHANGE_CAUSE_ANNOTATION,
    TEMPLATE_DIGEST_ANNOTATION,
    is_own_template,
    pod_spec_digest,
)
from kubernaut.services.context_api.resources import revision_of
from kubernaut.services.executor.changes import (
    ABSENT,
    RESTARTED_AT,
    TEMPLATE_PATH,
    Change,
    Edit,
    PlanContext,
    compute_change,
    mark_ops,
    mark_template,
    template_after,
)

POD_SPEC: dict[str, Any] = {
    "containers": [
        {
            "name": "app",
            "image": "shop/checkout:1",
            "resources": {"limits": {"memory": "256Mi"}},
            "terminationMessagePath": "/dev/termination-log",
        }
    ],
    "restartPolicy": "Always",
    "dnsPolicy": "ClusterFirst",
}


def deployment() -> dict[str, Any]:
    return {
        "metadata": {"name": "checkout", "namespace": "shop", "annotations": {"a": "b"}},
        "spec": {
            "replicas": 2,
            "template": {"metadata": {"labels": {"app": "checkout"}}, "spec": POD_SPEC},
        },
    }


async def test_the_digest_is_the_same_for_the_servers_json_and_the_clients_models() -> None:
    model = client.V1PodSpec(
        containers=[
            client.V1Container(
                name="app",
                image="shop/checkout:1",
                resources=client.V1ResourceRequirements(limits={"memory": "256Mi"}),
                termination_message_path="/dev/termination-log",
            )
        ],
        restart_policy="Always",
        dns_policy="ClusterFirst",
    )
    api = client.ApiClient()  # as context_api serializes the models it reads
    try:
        serialized = api.sanitize_for_serialization(model)
    finally:
        await api.close()
    assert pod_spec_digest(serialized) == pod_spec_digest(POD_SPEC)
    # Nulls, wherever they are, do not count; values do.
    with_nulls = copy.deepcopy(POD_SPEC)
    with_nulls["nodeName"] = None
    with_nulls["containers"][0]["command"] = None
    assert pod_spec_digest(with_nulls) == pod_spec_digest(POD_SPEC)
    other = copy.deepcopy(POD_SPEC)
    other["containers"][0]["image"] = "shop/checkout:2"
    assert pod_spec_digest(other) != pod_spec_digest(POD_SPEC)


def test_a_restart_carries_the_digest_and_its_undo_restores_the_template_exactly() -> None:
    obj = deployment()
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    change = compute_change(
        obj,
        remediation_pb2.ActionParams(restart_deployment=remediation_pb2.RestartDeploymentParams()),
        PlanContext(at=at, kind="Deployment"),
    )
    marked = mark_template(obj, change, pod_spec_digest(POD_SPEC), "act-1")
    (edit,) = marked.edits
    assert edit.path == TEMPLATE_PATH
    annotations = edit.after["metadata"]["annotations"]
    assert set(annotations) == {RESTARTED_AT, TEMPLATE_DIGEST_ANNOTATION, ACTION_ID_ANNOTATION}
    assert annotations[ACTION_ID_ANNOTATION] == "act-1"
    assert is_own_template(edit.after)
    # The restore puts the snapshot's template back, without any mark.
    assert edit.before == obj["spec"]["template"]
    assert marked.restore_patch("7")[1]["value"] == obj["spec"]["template"]
    # The object itself is not touched by marking.
    assert obj == deployment()


def test_a_template_edited_below_its_root_is_marked_as_one_whole_template() -> None:
    obj = deployment()
    change = Change(
        "set an annotation",
        (
            Edit("/spec/template/metadata/annotations", ABSENT, {"x": "1"}),
            Edit("/spec/minReadySeconds", 0, 5),
        ),
    )
    assert template_after(obj, change)["metadata"]["annotations"] == {"x": "1"}
    marked = mark_template(obj, change, "d", "act-2")
    paths = [e.path for e in marked.edits]
    assert paths == ["/spec/minReadySeconds", TEMPLATE_PATH]
    assert marked.edits[1].after["metadata"]["annotations"] == {
        "x": "1",
        TEMPLATE_DIGEST_ANNOTATION: "d",
        ACTION_ID_ANNOTATION: "act-2",
    }


def test_a_persons_change_of_the_spec_breaks_the_digest() -> None:
    template = {
        "metadata": {"annotations": {TEMPLATE_DIGEST_ANNOTATION: pod_spec_digest(POD_SPEC)}},
        "spec": copy.deepcopy(POD_SPEC),
    }
    assert is_own_template(template)
    template["spec"]["containers"][0]["image"] = "shop/checkout:2"
    assert not is_own_template(template)
    assert not is_own_template({"spec": POD_SPEC})


def test_marks_are_set_in_the_patch_with_or_without_annotations() -> None:
    marks = {ACTION_ID_ANNOTATION: "act-3", CHANGE_CAUSE_ANNOTATION: "kubernaut: x (action act-3)"}
    assert mark_ops(False, marks) == [
        {"op": "add", "path": "/metadata/annotations", "value": marks}
    ]
    assert mark_ops(True, marks) == [
        {"op": "add", "path": "/metadata/annotations/kubernaut.ai~1action-id", "value": "act-3"},
        {
            "op": "add",
            "path": "/metadata/annotations/kubernetes.io~1change-cause",
            "value": "kubernaut: x (action act-3)",
        },
    ]
    change = Change("c", (Edit("/spec/replicas", 1, 2),))
    patch = change.patch("9", mark_ops(True, marks))
    assert patch[0] == {"op": "replace", "path": "/metadata/resourceVersion", "value": "9"}
    assert patch[1] == {"op": "replace", "path": "/spec/replicas", "value": 2}
    assert len(patch) == 4


def replica_set(template_annotations: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "checkout-abc",
            "labels": {"app": "checkout", "pod-template-hash": "abc"},
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "annotations": {
                "deployment.kubernetes.io/revision": "4",
                ACTION_ID_ANNOTATION: "sticky",
                CHANGE_CAUSE_ANNOTATION: "kubernaut: restart_deployment (action act-1)" + "x" * 300,
            },
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {"app": "checkout", "pod-template-hash": "abc"},
                    "annotations": template_annotations,
                },
                "spec": spec,
            }
        },
        "status": {"readyReplicas": 2},
    }


def test_context_api_reports_kubernauts_own_revision_only_when_the_digest_matches() -> None:
    marks = {TEMPLATE_DIGEST_ANNOTATION: pod_spec_digest(POD_SPEC), ACTION_ID_ANNOTATION: "act-1"}
    own = revision_of(replica_set(marks, POD_SPEC))
    assert own.number == 4
    assert own.kubernaut_action_id == "act-1"
    assert own.pod_template_hash == "abc"
    assert own.ready_replicas == 2
    assert own.images == ["shop/checkout:1"]
    assert own.created_at.ToSeconds() == int(
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()
    )
    assert len(own.change_cause) == 256
    changed = copy.deepcopy(POD_SPEC)
    changed["containers"][0]["image"] = "shop/checkout:2"
    persons = revision_of(replica_set(marks, changed))
    assert persons.kubernaut_action_id == ""
    assert persons.change_cause.startswith("kubernaut: restart_deployment")
