"""A workload's state (kubernaut.runtime.workload_state) and the quiet period's decision
(kubernaut.services.storage.quiet_period): what counts as a change since a fix, and what is said."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

from kubernaut.common.v1 import remediation_pb2

from kubernaut.runtime.workload_state import (
    canonical_template,
    changes_since,
    template_digest,
    workload_state,
)
from kubernaut.services.storage.quiet_period import decide

INCIDENT = "3f2b1c4e-0000-4000-8000-000000000001"


def deployment(image: str = "shop/checkout:v2", generation: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "checkout", "namespace": "shop", "generation": generation},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": {
                "metadata": {"labels": {"app": "checkout"}, "creationTimestamp": None},
                "spec": {
                    "initContainers": [{"name": "migrate", "image": "shop/migrate:1"}],
                    "containers": [
                        {"name": "app", "image": image, "resources": {"limits": None}},
                        {"name": "proxy", "image": "envoy:1.30"},
                    ],
                },
            },
        },
    }


def pod(restarts: int, *, deleting: bool = False, init_restarts: int = 0) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "checkout-abc"}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    return {
        "metadata": metadata,
        "status": {
            "initContainerStatuses": [{"name": "migrate", "restartCount": init_restarts}],
            "containerStatuses": [
                {"name": "app", "restartCount": restarts},
                {"name": "proxy", "restartCount": 1},
            ],
        },
    }


def state(
    digest: str = "a" * 64,
    images: tuple[str, ...] = ("app:v2",),
    generation: int = 4,
    restarts: int = 0,
) -> remediation_pb2.WorkloadState:
    return remediation_pb2.WorkloadState(
        generation=generation, template_digest=digest, images=images, restarts=restarts
    )


def test_the_state_names_the_version_and_sums_the_restarts_of_pods_not_leaving() -> None:
    at = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    got = workload_state(
        deployment(),
        [pod(3, init_restarts=2), pod(4), pod(50, deleting=True)],
        observed_at=at,
    )
    assert got.generation == 4
    assert list(got.images) == ["shop/migrate:1", "shop/checkout:v2", "envoy:1.30"]
    # (3 + 2 + 1) + (4 + 0 + 1); the pod being deleted does not count.
    assert got.restarts == 11
    assert got.template_digest == template_digest(deployment()["spec"]["template"])
    assert len(got.template_digest) == 64
    assert got.observed_at.ToDatetime(dt.UTC) == at


def test_the_digest_ignores_key_order_nulls_and_kubernauts_own_annotations() -> None:
    template = deployment()["spec"]["template"]
    reordered = {"spec": template["spec"], "metadata": {"labels": {"app": "checkout"}}}
    marked = copy.deepcopy(template)
    marked["metadata"]["annotations"] = {
        "kubernaut.ai/restartedAt": "2026-01-01T12:00:00Z",
        "kubernaut.ai/template-digest": "abc",
    }
    assert template_digest(reordered) == template_digest(template) == template_digest(marked)
    assert "annotations" not in canonical_template(marked)["metadata"]
    # Anyone else's annotation, an image, a limit: a change.
    changes: list[Callable[[dict[str, Any]], None]] = [
        lambda t: t["metadata"].setdefault("annotations", {}).update({"a.io/restartedAt": "1"}),
        lambda t: t["spec"]["containers"][0].update(image="shop/checkout:v3"),
        lambda t: t["spec"]["containers"][0]["resources"].update(limits={"memory": "1Gi"}),
    ]
    for change in changes:
        changed = copy.deepcopy(template)
        change(changed)
        assert template_digest(changed) != template_digest(template)


async def test_a_client_model_and_the_api_servers_json_digest_alike() -> None:
    """context_api reads models and serializes them (absent fields become missing, not
    null); the executor reads JSON that may carry nulls. Both must digest alike."""
    from kubernetes_asyncio import client

    raw = deployment()
    async with client.ApiClient() as api:
        model = api._ApiClient__deserialize(raw, "V1Deployment")
        serialized = api.sanitize_for_serialization(model)
    assert workload_state(serialized, []).template_digest == workload_state(raw, []).template_digest


def test_changes_since_names_each_change_that_matters() -> None:
    base = state(restarts=2)
    assert changes_since(base, base) == []
    # Fewer restarts (pods replaced) and a generation bump with the same template (a
    # scale) are no change.
    assert changes_since(base, state(restarts=0, generation=9)) == []
    assert changes_since(base, state(digest="b" * 64, restarts=7)) == [
        "template aaaaaaaaaaaa→bbbbbbbbbbbb",
        "restarts 2→7",
    ]
    assert changes_since(base, state(images=("app:v3",))) == ["images app:v2→app:v3"]
    # Without a digest on either side the generation decides.
    assert changes_since(state(digest=""), state(generation=5)) == ["generation 4→5"]
    assert changes_since(state(digest=""), state(digest="")) == []


def test_the_quiet_period_counts_an_unchanged_workload_on_the_closed_incident() -> None:
    decision = decide(
        alert_name="KubePodCrashLooping",
        closed_incident_id=INCIDENT,
        closed_seconds_ago=720,
        baseline=state(restarts=1),
        current=state(restarts=1),
    )
    assert not decision.opens
    assert decision.note == (
        f"counted on incident {INCIDENT}, closed 12.0m ago; the workload has not changed"
        " since its fix"
    )
    assert decision.status_reason == ""


def test_the_quiet_period_opens_a_new_incident_when_the_workload_changed() -> None:
    decision = decide(
        alert_name="KubePodCrashLooping",
        closed_incident_id=INCIDENT,
        closed_seconds_ago=720,
        baseline=state(),
        current=state(digest="c" * 64, restarts=7),
    )
    assert decision.opens
    assert decision.status_reason == (
        f"opened by alert KubePodCrashLooping: incident {INCIDENT} was fixed 12.0m ago, but the"
        " workload changed since (template aaaaaaaaaaaa→cccccccccccc, restarts 0→7)"
    )
    assert decision.note == (
        f"incident {INCIDENT} closed 12.0m ago but the workload changed since its fix"
        " (template aaaaaaaaaaaa→cccccccccccc, restarts 0→7): opened a new incident"
    )


def test_without_a_baseline_or_a_current_state_the_alert_is_counted_as_before() -> None:
    for baseline, current, why in [
        (None, state(), "no workload state was verified after its fix"),
        (state(), None, "the workload's current state is unknown"),
    ]:
        decision = decide(
            alert_name="KubePodCrashLooping",
            closed_incident_id=INCIDENT,
            closed_seconds_ago=30,
            baseline=baseline,
            current=current,
        )
        assert not decision.opens
        assert decision.note.startswith(f"counted on incident {INCIDENT}, closed 30s ago; {why}")
