"""The executor's guards, scopes, clusters and breaker, end to end through ExecuteAction
against real control planes (the session's cluster, and a second one where two are needed),
and the service's own request checks through gRPC."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.clusters import ClusterConfig, UnknownCluster
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.runtime.settings import KubeSettings, RuntimeSettings
from kubernaut.services.executor.clusters import CircuitOpen
from kubernaut.services.executor.engine import ClusterUnavailable
from kubernaut.services.executor.settings import ClusterScope
from kubernaut.services.executor.store import ActionRow
from tests.fixtures.cluster import contexts_kubeconfig
from tests.fixtures.executor import (
    Admin,
    ExecutorFactory,
    action_request,
    as_model,
    dead_kubeconfig,
    outcome,
    stage,
)
from tests.fixtures.grpc_errors import code_of, field_violations
from tests.fixtures.kubernaut import InProcessStack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("cleanup"),
]


# -- guards -------------------------------------------------------------------------------------


async def test_a_second_action_on_a_busy_target_is_refused_naming_the_first(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    await admin.create(ns)
    paused, release = asyncio.Event(), asyncio.Event()

    async def hold(name: str, row: ActionRow) -> None:
        if name == "snapshot":
            paused.set()
            await release.wait()

    first = action_request(ns, scale_deployment={"replicas": 3})
    running = asyncio.create_task(make_executor(checkpoint=hold).execute(first))
    await asyncio.wait_for(paused.wait(), 30)
    second = await make_executor().execute(action_request(ns, restart_deployment={}))
    assert outcome(second) == "ACTION_OUTCOME_REFUSED", second.stages
    line = stage(second, "guards:")
    assert "is busy: scale_deployment" in line and first.action_id in line, line
    assert "one action at a time" in second.record.message
    release.set()
    assert outcome(await running) == "ACTION_OUTCOME_SUCCEEDED"
    # Free again: the next one runs.
    third = await make_executor().execute(action_request(ns, scale_deployment={"replicas": 2}))
    assert outcome(third) == "ACTION_OUTCOME_SUCCEEDED", third.stages


async def test_cooldown_refuses_the_same_action_on_the_same_target(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    await admin.create(ns)
    executor = make_executor(cooldown_seconds=600)
    first = await executor.execute(action_request(ns, restart_deployment={}))
    assert outcome(first) == "ACTION_OUTCOME_SUCCEEDED", first.stages
    again = await executor.execute(action_request(ns, restart_deployment={}))
    assert outcome(again) == "ACTION_OUTCOME_REFUSED", again.stages
    assert "is cooling down" in stage(again, "guards:")
    assert "KUBERNAUT_EXECUTOR_COOLDOWN_SECONDS=600" in again.record.message
    # Another action on the same target is not held back.
    other = await executor.execute(action_request(ns, scale_deployment={"replicas": 3}))
    assert outcome(other) == "ACTION_OUTCOME_SUCCEEDED", other.stages


async def test_the_rate_limit_per_cluster_refuses_with_when_a_slot_frees(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    await admin.create(ns)
    await admin.create(ns, "api")
    # Everything this session ran in the last minute counts too: the limit is set above it.
    executor = make_executor(max_actions_per_cluster_per_minute=10_000)
    first = await executor.execute(action_request(ns, scale_deployment={"replicas": 3}))
    assert outcome(first) == "ACTION_OUTCOME_SUCCEEDED", first.stages
    store = await executor.database.store()
    async with store._acquire() as conn:
        recent = await conn.fetchval(
            "SELECT count(*) FROM executor.actions WHERE cluster = 'default'"
            " AND admitted_at > now() - interval '60 seconds'"
        )
    limited = make_executor(max_actions_per_cluster_per_minute=int(recent))
    refused = await limited.execute(action_request(ns, "api", scale_deployment={"replicas": 3}))
    assert outcome(refused) == "ACTION_OUTCOME_REFUSED", refused.stages
    line = stage(refused, "guards:")
    assert "KUBERNAUT_EXECUTOR_MAX_ACTIONS_PER_CLUSTER_PER_MINUTE" in line and "frees at" in line
    assert (await admin.get(ns, "api"))["spec"]["replicas"] == 2


# -- scope --------------------------------------------------------------------------------------


async def test_cluster_allow_and_deny_lists_refuse_by_namespace(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    await admin.create(ns)
    denied = make_executor(cluster_scopes={"default": ClusterScope(deny=(f"{ns[:5]}*",))})
    result = await denied.execute(action_request(ns, scale_deployment={"replicas": 3}))
    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    assert f"is in cluster default's deny list ({ns[:5]}*" in stage(result, "scope:")
    not_allowed = make_executor(cluster_scopes={"default": ClusterScope(allow=("shop-*",))})
    result = await not_allowed.execute(action_request(ns, scale_deployment={"replicas": 3}))
    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    assert "is not in cluster default's allow list (shop-*" in stage(result, "scope:")
    allowed = make_executor(cluster_scopes={"default": ClusterScope(allow=(ns,))})
    result = await allowed.execute(action_request(ns, scale_deployment={"replicas": 3}))
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages


async def test_a_control_plane_node_is_never_touched(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    name = f"{ns}-cp"
    await admin.raw.create(
        "Node",
        "",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "node-role.kubernetes.io/control-plane": "",
                    "kubernaut.ai/managed": "true",
                },
            },
            "spec": {"taints": [{"key": "kubernaut.test/dedicated", "effect": "NoSchedule"}]},
        },
        dry_run=False,
    )
    admin.created_nodes.append(name)
    result = await make_executor().execute(action_request("", name, kind="Node", cordon_node={}))
    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    assert "is a control-plane node" in stage(result, "scope:")
    assert "unschedulable" not in (await admin.raw.get("Node", "", name))["spec"]


async def test_a_concurrent_change_to_a_configmap_is_kept_not_clobbered(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    await admin.raw.create(
        "ConfigMap",
        ns,
        {"metadata": {"name": "settings", "labels": {"kubernaut.ai/managed": "true"}},
         "data": {"LOG_LEVEL": "debug"}},
        dry_run=False,
    )  # fmt: skip

    async def someone_edits(name: str, row: ActionRow) -> None:
        if name == "snapshot":
            await admin.raw.patch(
                "ConfigMap",
                ns,
                "settings",
                [{"op": "add", "path": "/data/POOL", "value": "20"}],
                dry_run=False,
            )

    result = await make_executor(checkpoint=someone_edits).execute(
        action_request(
            ns,
            "settings",
            kind="ConfigMap",
            update_configmap_key={"key": "LOG_LEVEL", "value": "info"},
        )
    )
    assert outcome(result) == "ACTION_OUTCOME_FAILED", result.stages
    assert "changed concurrently since the snapshot" in stage(result, "apply:")
    data = (await admin.raw.get("ConfigMap", ns, "settings"))["data"]
    assert data == {"LOG_LEVEL": "debug", "POOL": "20"}


async def test_drain_honours_a_pod_disruption_budget_and_rolls_back_when_blocked(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    """Two pods and a budget of minAvailable 2: no eviction is allowed, so the drain times
    out, is rolled back (uncordoned), and both pods are still running on the node."""
    from tests.integration.test_executor_actions import node_with_pods

    ns = await admin.namespace()
    target = await node_with_pods(admin, ns)
    await admin.api.call_api(
        f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
        "POST",
        body={
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
        },
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
    )

    async def budget_observed() -> bool | None:
        pdb: Any = await admin.api.call_api(
            f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/web",
            "GET",
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            response_types_map={200: "object"},
            _return_http_data_only=True,
        )
        return True if (pdb.get("status") or {}).get("currentHealthy") == 2 else None

    from tests.fixtures.waiting import eventually

    await eventually(budget_observed, timeout=30)
    result = await make_executor(verify_timeout_seconds=4).execute(
        action_request("", target.name, kind="Node", drain_node={})
    )
    assert outcome(result) == "ACTION_OUTCOME_ROLLED_BACK", result.stages
    assert "blocked by PodDisruptionBudgets" in stage(result, "verify:")
    assert "evicted pods stay where their controllers put them" in result.record.message
    node = await admin.raw.get("Node", "", target.name)
    assert "unschedulable" not in node["spec"]
    on_node = await admin.raw.list_objects("Pod", ns, fields=f"spec.nodeName={target.name}")
    assert len([p for p in on_node if not p["metadata"].get("deletionTimestamp")]) == 2


# -- several clusters, and the breaker ------------------------------------------------------------


async def test_with_two_clusters_an_action_lands_only_on_the_one_it_names(
    kube: LocalCluster,
    second_kube: LocalCluster,
    admin: Admin,
    make_executor: ExecutorFactory,
    tmp_path: Path,
) -> None:
    kubeconfig = contexts_kubeconfig(
        tmp_path / "two.kubeconfig", {"one": kube.kubeconfig, "two": second_kube.kubeconfig}
    )
    other = KubeConnection(KubeSettings(kubeconfig=str(second_kube.kubeconfig)))
    admin_two = Admin(await other.api(), second_kube.info)
    try:
        ns = await admin.namespace()
        await admin_two.core.create_namespace(as_model({"metadata": {"name": ns}}))
        await admin.create(ns)
        await admin_two.create(ns)
        clusters = {
            "one": ClusterConfig(kubeconfig=str(kubeconfig), context="one"),
            "two": ClusterConfig(kubeconfig=str(kubeconfig), context="two"),
        }
        executor = make_executor(clusters=clusters, default_cluster="one")
        result = await executor.execute(
            action_request(ns, cluster="two", scale_deployment={"replicas": 3})
        )
        assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
        assert "in cluster two" in result.record.message
        assert (await admin_two.get(ns))["spec"]["replicas"] == 3
        assert (await admin.get(ns))["spec"]["replicas"] == 2
        # No cluster named: the default one.
        result = await executor.execute(action_request(ns, scale_deployment={"replicas": 1}))
        assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
        assert (await admin.get(ns))["spec"]["replicas"] == 1
        assert (await admin_two.get(ns))["spec"]["replicas"] == 3
        with pytest.raises(UnknownCluster, match="unknown cluster 'three'"):
            await executor.execute(
                action_request(ns, cluster="three", scale_deployment={"replicas": 2})
            )
    finally:
        await other.close()


async def test_the_breaker_opens_after_api_failures_and_refuses_at_once(
    admin: Admin, make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    dead = dead_kubeconfig(admin.info, tmp_path / "dead.kubeconfig")
    executor = make_executor(kubeconfig=dead, breaker_failures=2, breaker_open_seconds=60)
    for _ in range(2):
        with pytest.raises(ClusterUnavailable) as failed:
            await executor.execute(action_request("shop", scale_deployment={"replicas": 3}))
        assert not isinstance(failed.value, CircuitOpen)
    started = time.monotonic()
    with pytest.raises(CircuitOpen, match="cluster default: circuit open after 2 API failures"):
        await executor.execute(action_request("shop", scale_deployment={"replicas": 3}))
    assert time.monotonic() - started < 1.0


# -- through gRPC ---------------------------------------------------------------------------------


async def test_the_service_lists_the_catalogue_and_checks_requests(
    admin: Admin,
    stack: InProcessStack,
    runtime_settings: RuntimeSettings,
    postgres_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = runtime_settings.model_copy(
        update={"grpc_port": 0, "storage_address": stack.addresses[ServiceName.STORAGE]}
    )
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", postgres_dsn)
    monkeypatch.setenv("KUBECONFIG", str(admin.info.kubeconfig))
    # The rate guard has tests of its own: here the session's other actions on this
    # cluster (their executors share its database) would only couple the tests.
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_MAX_ACTIONS_PER_CLUSTER_PER_MINUTE", "0")
    running = await start_service(ServiceName.EXECUTOR, settings, serve_metrics=False)
    workflow = Clients(settings, "workflow", addresses={ServiceName.EXECUTOR: running.address})
    operator = Clients(settings, addresses={ServiceName.EXECUTOR: running.address})
    try:
        await wait_serving(workflow, [ServiceName.EXECUTOR], timeout=20)
        stub = workflow.stub(ExecutorServiceStub)
        ops = operator.stub(ExecutorServiceStub)
        listed = await ops.ListActions(executor_pb2.ListActionsRequest())
        assert len(listed.actions) == 25
        assert {a.name for a in listed.actions} >= {"drain_node", "rerun_failed_job"}

        bad = action_request(
            "shop",
            kind="HorizontalPodAutoscaler",
            update_hpa={"min_replicas": 5, "max_replicas": 2},
        )
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.ExecuteAction(bad)
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(invalid.value) == {
            "action.update_hpa.min_replicas": "min_replicas 5 exceeds max_replicas 2"
        }

        same = str(uuid.uuid4())
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await ops.RollbackAction(
                executor_pb2.RollbackActionRequest(action_id=same, rollback_id=same)
            )
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "rollback_id" in field_violations(invalid.value)
        unknown = executor_pb2.RollbackActionRequest(
            action_id=str(uuid.uuid4()), rollback_id=str(uuid.uuid4())
        )
        assert await code_of(ops.RollbackAction(unknown)) is grpc.StatusCode.NOT_FOUND
    finally:
        await workflow.close()
        await operator.close()
        await running.shutdown()


async def test_a_statefulset_whose_new_pods_cannot_start_is_rolled_back_and_healthy(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    """A StatefulSet does not replace a pod of a failed revision by itself once the
    template is restored (Kubernetes' "forced rollback"): the rollback does it, so the
    StatefulSet is healthy again on its old template."""
    from tests.integration.test_executor_actions import (
        RESOURCES,
        TOLERATE_DEDICATED,
        _statefulset_ready,
        node,
        wait_for,
    )

    ns = await admin.namespace()
    target = await node(admin, ns, memory="2Gi")
    resources = {**RESOURCES, "limits": {**RESOURCES["limits"], "memory": "4Gi"}}
    resources["requests"] = {**RESOURCES["requests"], "memory": "256Mi"}
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "labels": {"app": "db", "kubernaut.ai/managed": "true"}},
        "spec": {
            "serviceName": "db",
            "replicas": 2,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "registry.invalid/db:1", "resources": resources}
                    ],
                    "tolerations": TOLERATE_DEDICATED,
                    "nodeSelector": {"kubernetes.io/hostname": target.name},
                },
            },
        },
    }
    await admin.raw.create("StatefulSet", ns, body, dry_run=False)
    before = await wait_for(admin, "StatefulSet", ns, "db", _statefulset_ready)
    # 256Mi + 1900Mi does not fit in the node's 2Gi: the updated pod stays Pending.
    result = await make_executor(verify_timeout_seconds=6).execute(
        action_request(ns, "db", kind="StatefulSet", update_resource_requests={"memory": "1900Mi"})
    )
    assert outcome(result) == "ACTION_OUTCOME_ROLLED_BACK", result.stages
    assert stage(result, "verify:").startswith("verify: failed")
    assert "deleted pods of the failed revision" in stage(result, "rollback:")
    assert stage(result, "rollback verify:").startswith("rollback verify: ok"), result.stages
    after = await wait_for(admin, "StatefulSet", ns, "db", _statefulset_ready)
    assert after["spec"]["template"] == before["spec"]["template"]
