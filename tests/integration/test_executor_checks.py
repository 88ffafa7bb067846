"""RunCheck against the real control plane (KWOK nodes), called over gRPC as the workflow
calls it, by an executor with its own least-privilege identity (exactly rbac.policy_rules()):
each check passes on a target in the state it asks for and fails, saying why, on one that
is not; node_pods_relocated after a drain_node (ExecuteAction) waits for the workloads the
drain displaced; a check that does not apply to the kind, a target out of scope and a
missing target are refused with their status codes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.storage.v1 import storage_pb2

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.executor.operations import RERUN_OF
from tests.fixtures.cluster import deployment_body, prefers_node
from tests.fixtures.executor import (
    NOWHERE,
    TOLERATE_DEDICATED,
    Admin,
    action_request,
    dedicated_node,
    least_privilege_kubeconfig,
)
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("cleanup"),
]

MANAGED = {"kubernaut.ai/managed": "true"}
POLL_SECONDS = 0.2


@pytest.fixture(scope="module")
async def executor(
    admin: Admin,
    runtime_settings: RuntimeSettings,
    stack: InProcessStack,
    postgres_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ExecutorServiceStub]:
    """The executor service as production builds it (its database, where RunCheck finds
    what a drain evicted; the stack's storage) on the session's cluster as its own
    least-privilege identity, called as the workflow."""
    path = tmp_path_factory.mktemp("checks-identity") / "kubeconfig"
    async with least_privilege_kubeconfig(admin, path) as kubeconfig:
        with pytest.MonkeyPatch.context() as patch:  # read when the service is built
            patch.setenv("KUBERNAUT_KUBE_KUBECONFIG", str(kubeconfig))
            patch.delenv("KUBERNAUT_EXECUTOR_DATABASE_URL", raising=False)
            patch.setenv("KUBERNAUT_DATABASE_URL", postgres_dsn)
            patch.setenv("KUBERNAUT_EXECUTOR_POLL_INTERVAL_SECONDS", str(POLL_SECONDS))
            patch.setenv("KUBERNAUT_EXECUTOR_VERIFY_TIMEOUT_SECONDS", "60")
            # The guards have tests of their own; here they would only couple tests.
            patch.setenv("KUBERNAUT_EXECUTOR_COOLDOWN_SECONDS", "0")
            patch.setenv("KUBERNAUT_EXECUTOR_MAX_ACTIONS_PER_CLUSTER_PER_MINUTE", "0")
            settings = runtime_settings.model_copy(
                update={"grpc_port": 0, "storage_address": stack.addresses[ServiceName.STORAGE]}
            )
            running = await start_service(ServiceName.EXECUTOR, settings, serve_metrics=False)
        workflow = Clients(settings, "workflow", addresses={ServiceName.EXECUTOR: running.address})
        try:
            statuses = await wait_serving(workflow, [ServiceName.EXECUTOR], timeout=30)
            assert statuses == {ServiceName.EXECUTOR: "SERVING"}, statuses
            yield workflow.stub(ExecutorServiceStub)
        finally:
            await workflow.close()
            await running.shutdown()


def check_request(
    check: str, kind: str, namespace: str, name: str, *, timeout: int = 0, cluster: str = ""
) -> executor_pb2.RunCheckRequest:
    params: dict[str, Any] = {check: {}}
    return executor_pb2.RunCheckRequest(
        check=remediation_pb2.CheckParams(**params),
        target=alert_pb2.ResourceRef(cluster=cluster, namespace=namespace, kind=kind, name=name),
        timeout_seconds=timeout,
        incident_id=str(uuid.uuid4()),
    )


async def run_check(
    stub: ExecutorServiceStub,
    check: str,
    kind: str,
    namespace: str,
    name: str,
    *,
    timeout: int = 0,
) -> executor_pb2.RunCheckResponse:
    request = check_request(check, kind, namespace, name, timeout=timeout)
    response: executor_pb2.RunCheckResponse = await stub.RunCheck(request, timeout=timeout + 30)
    return response


async def refusal(
    stub: ExecutorServiceStub, request: executor_pb2.RunCheckRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RunCheck(request, timeout=30)
    return caught.value


def seconds(response: executor_pb2.RunCheckResponse) -> float:
    started = response.started_at.ToDatetime()
    return (response.finished_at.ToDatetime() - started).total_seconds()


# -- workload_ready ---------------------------------------------------------------------------


async def test_workload_ready_passes_for_a_ready_deployment(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    await admin.create(ns, replicas=3)
    response = await run_check(executor, "workload_ready", "Deployment", ns, "web", timeout=20)
    assert response.passed, response
    assert response.detail.startswith(f"Deployment {ns}/web is Ready: 3/3 updated, 3 ready"), (
        response.detail
    )
    assert response.looks == 1
    assert response.finished_at.ToDatetime() >= response.started_at.ToDatetime()


async def test_workload_ready_fails_in_time_for_pods_that_cannot_be_scheduled(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    await admin.create(ns, replicas=2, node_selector=NOWHERE, wait=False)
    response = await run_check(executor, "workload_ready", "Deployment", ns, "web", timeout=2)
    assert not response.passed
    assert response.detail.startswith(f"Deployment {ns}/web is not Ready: "), response.detail
    assert "0 ready" in response.detail
    assert "pods unschedulable" in response.detail and "node" in response.detail
    # Looked again and again (every POLL_SECONDS) for the 2 s, no longer.
    assert response.looks >= 3, response
    assert 2 <= seconds(response) < 10, seconds(response)


async def test_workload_ready_with_no_time_looks_once(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    await admin.create(ns, replicas=1, node_selector=NOWHERE, wait=False)
    response = await run_check(executor, "workload_ready", "Deployment", ns, "web")
    assert not response.passed
    assert response.looks == 1


# -- node_pods_relocated ----------------------------------------------------------------------


async def _pods_on(admin: Admin, node: str, ns: str) -> list[dict[str, Any]]:
    pods = await admin.raw.list_objects("Pod", ns, fields=f"spec.nodeName={node}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


async def test_node_pods_relocated_waits_for_the_pods_to_leave_and_be_ready_elsewhere(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    node = await dedicated_node(admin, ns)
    # One pod, preferring the test's node (which it tolerates); the session's node can
    # take it too once this one is cordoned.
    affinity = prefers_node(node)
    body = deployment_body(
        "web",
        "registry.invalid/app:v1",
        replicas=1,
        labels=MANAGED,
        pod_spec={
            "tolerations": [TOLERATE_DEDICATED],
            "affinity": affinity,
        },
    )
    await admin.raw.create("Deployment", ns, body, dry_run=False)
    await admin.rolled_out(ns)
    [pod] = await eventually(lambda: _pods_on(admin, node, ns), f"the pod on {node}", 30)

    response = await run_check(executor, "node_pods_relocated", "Node", "", node)
    assert not response.passed
    assert response.detail == (
        f"node {node} holds 1 pods not from DaemonSets: {ns}/{pod['metadata']['name']}"
    )

    # While one check runs: cordon the node, delete the pod; its replacement lands on
    # the session's node. The check saw the pod there, so it waits for the Deployment.
    call = asyncio.ensure_future(
        run_check(executor, "node_pods_relocated", "Node", "", node, timeout=60)
    )
    await asyncio.sleep(10 * POLL_SECONDS)  # a few looks with the pod still there
    assert not call.done()
    await admin.raw.patch(
        "Node",
        "",
        node,
        [{"op": "add", "path": "/spec/unschedulable", "value": True}],
        dry_run=False,
    )
    await admin.raw.delete("Pod", ns, pod["metadata"]["name"], dry_run=False)
    response = await call
    assert response.passed, response
    [moved] = await admin.pods(ns)
    assert moved["spec"]["nodeName"] != node
    assert moved["metadata"]["name"] != pod["metadata"]["name"]
    assert response.detail == (
        f"node {node} holds no pods but DaemonSets', mirror and finished pods; "
        f"displaced: {ns}/web 1/1 Ready on {moved['spec']['nodeName']}"
    )
    assert response.looks > 5


async def test_node_pods_relocated_after_a_drain_waits_for_the_drained_deployment(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    # The Deployment's pods may only run on the nodes of its pool: at first the drained
    # node alone; the spare node (whose taint they tolerate too) joins it later.
    pool = {"kubernaut.test/pool": ns}
    node = await dedicated_node(admin, ns, labels=pool)
    spare = await dedicated_node(admin, ns, "spare")
    body = deployment_body(
        "web",
        "registry.invalid/app:v1",
        replicas=2,
        labels=MANAGED,
        pod_spec={
            "tolerations": [TOLERATE_DEDICATED],
            "nodeSelector": pool,
        },
    )
    await admin.raw.create("Deployment", ns, body, dry_run=False)
    await admin.rolled_out(ns)
    assert {p["spec"]["nodeName"] for p in await admin.pods(ns)} == {node}

    drain = action_request("", node, kind="Node", drain_node={"grace_period_seconds": 0})
    drained = await executor.ExecuteAction(drain, timeout=120)
    assert drained.record.outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED, drained.stages
    assert await _pods_on(admin, node, ns) == []

    # The node is empty, but the drained pods' replacements can go nowhere: the check
    # knows them from the drain's record and does not pass in its 2 s.
    response = await run_check(executor, "node_pods_relocated", "Node", "", node, timeout=2)
    assert not response.passed, response
    assert response.detail.startswith(
        f"node {node} holds no pods but DaemonSets', mirror and finished pods, but not every "
        f"displaced workload is Ready elsewhere: {ns}/web 0/2 Ready ("
    ), response.detail
    assert "pods unschedulable" in response.detail, response.detail
    assert response.looks >= 3, response
    assert 2 <= seconds(response) < 10, seconds(response)

    # The spare node joins the pool: the Deployment is Ready there, and the check passes.
    label = "/metadata/labels/kubernaut.test~1pool"
    await admin.raw.patch(
        "Node", "", spare, [{"op": "add", "path": label, "value": ns}], dry_run=False
    )
    response = await run_check(executor, "node_pods_relocated", "Node", "", node, timeout=60)
    assert response.passed, response
    assert response.detail == (
        f"node {node} holds no pods but DaemonSets', mirror and finished pods; "
        f"displaced: {ns}/web 2/2 Ready on {spare}"
    )


async def test_node_pods_relocated_passes_for_a_node_without_pods(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    node = await dedicated_node(admin, ns)
    response = await run_check(executor, "node_pods_relocated", "Node", "", node)
    assert response.passed, response
    assert response.detail == f"node {node} holds no pods but DaemonSets', mirror and finished pods"


# -- job_succeeded ----------------------------------------------------------------------------


def _job(
    name: str, *, annotations: dict[str, str] | None = None, **pod_spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": MANAGED, "annotations": annotations or {}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "registry.invalid/job:1"}],
                    **pod_spec,
                }
            },
        },
    }


async def test_job_succeeded_passes_once_the_job_completes(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    await admin.raw.create("Job", ns, _job("report"), dry_run=False)
    # KWOK runs the Job's pod to Succeeded.
    response = await run_check(executor, "job_succeeded", "Job", ns, "report", timeout=60)
    assert response.passed, response
    assert response.detail == f"Job {ns}/report completed (1 succeeded)"


async def test_job_succeeded_fails_for_a_failed_job_and_follows_its_rerun(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    # Its pod cannot be placed before the deadline: the Job fails (DeadlineExceeded).
    failing = _job("migrate", nodeSelector=NOWHERE)
    failing["spec"]["activeDeadlineSeconds"] = 2
    await admin.raw.create("Job", ns, failing, dry_run=False)

    async def failed() -> bool:
        job = await admin.raw.get("Job", ns, "migrate")
        conditions = (job.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Failed" and c["status"] == "True" for c in conditions)

    await eventually(failed, "the Job to fail", 60)
    response = await run_check(executor, "job_succeeded", "Job", ns, "migrate", timeout=1)
    assert not response.passed
    assert response.detail.startswith(f"Job {ns}/migrate failed (DeadlineExceeded"), response
    assert response.looks >= 2

    # A rerun (as rerun_failed_job makes one) that completes: the check follows it.
    rerun = _job("migrate-rerun-1", annotations={RERUN_OF: "migrate"})
    await admin.raw.create("Job", ns, rerun, dry_run=False)
    response = await run_check(executor, "job_succeeded", "Job", ns, "migrate", timeout=60)
    assert response.passed, response
    assert response.detail == (
        f"Job {ns}/migrate-rerun-1 (the newest rerun of Job migrate) completed (1 succeeded)"
    )


async def test_job_succeeded_on_a_cronjob_checks_its_newest_job(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    template = _job("unused")["spec"]
    cronjob = await admin.raw.create(
        "CronJob",
        ns,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "nightly", "labels": MANAGED},
            "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": template}},
        },
        dry_run=False,
    )
    response = await run_check(executor, "job_succeeded", "CronJob", ns, "nightly")
    assert not response.passed
    assert response.detail == f"CronJob {ns}/nightly has made no Job yet"

    # A Job of the CronJob's, as `kubectl create job --from=cronjob/nightly` makes one.
    job = _job("nightly-manual")
    job["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": "nightly",
            "uid": cronjob["metadata"]["uid"],
            "controller": True,
        }
    ]
    await admin.raw.create("Job", ns, job, dry_run=False)
    response = await run_check(executor, "job_succeeded", "CronJob", ns, "nightly", timeout=60)
    assert response.passed, response
    assert response.detail == (
        f"Job {ns}/nightly-manual (the newest of CronJob nightly) completed (1 succeeded)"
    )


# -- pod_ready --------------------------------------------------------------------------------


async def test_pod_ready_passes_for_a_ready_pod_and_says_why_another_is_not(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    await admin.create(ns, replicas=1)
    [pod] = await admin.pods(ns)
    name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
    response = await run_check(executor, "pod_ready", "Pod", ns, name, timeout=10)
    assert response.passed, response
    assert response.detail == f"pod {ns}/{name} is Ready on node {node}"

    await admin.create(ns, "stuck", replicas=1, node_selector=NOWHERE, wait=False)
    [stuck] = await eventually(lambda: admin.pods(ns, "stuck"), "the stuck pod", 30)
    name = stuck["metadata"]["name"]

    async def unschedulable() -> bool:
        pod = await admin.raw.get("Pod", ns, name)
        conditions = (pod.get("status") or {}).get("conditions") or []
        return any(c["type"] == "PodScheduled" and c["status"] == "False" for c in conditions)

    await eventually(unschedulable, "the scheduler to give up on the pod", 30)
    response = await run_check(executor, "pod_ready", "Pod", ns, name, timeout=1)
    assert not response.passed
    assert response.detail.startswith(
        f"pod {ns}/{name} is not Ready (phase Pending; unschedulable: "
    ), response.detail


# -- refusals ---------------------------------------------------------------------------------


async def test_a_check_that_does_not_apply_to_the_kind_is_invalid(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    await admin.create(ns, replicas=1)
    error = await refusal(executor, check_request("pod_ready", "Deployment", ns, "web"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == {"target.kind": "pod_ready applies to Pod, not Deployment"}

    error = await refusal(executor, check_request("node_pods_relocated", "Node", ns, "n"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"target.namespace"}

    error = await refusal(executor, check_request("workload_ready", "Deployment", "", "web"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"target.namespace"}

    error = await refusal(
        executor, check_request("workload_ready", "Deployment", ns, "web", cluster="elsewhere")
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"target.cluster"}

    missing = check_request("workload_ready", "Deployment", ns, "web")
    missing.ClearField("check")
    error = await refusal(executor, missing)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_target_out_of_scope_is_refused(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=False)
    await admin.create(ns, replicas=1, managed=False)
    error = await refusal(executor, check_request("workload_ready", "Deployment", ns, "web"))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "not opted in" in (error.details() or ""), error.details()

    error = await refusal(
        executor, check_request("workload_ready", "Deployment", "kube-system", "coredns")
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "namespace kube-system is protected" in (error.details() or ""), error.details()


async def test_a_missing_target_is_not_found(admin: Admin, executor: ExecutorServiceStub) -> None:
    ns = await admin.namespace(managed=True)
    for check, kind, namespace in (
        ("workload_ready", "Deployment", ns),
        ("pod_ready", "Pod", ns),
        ("job_succeeded", "CronJob", ns),
        ("node_pods_relocated", "Node", ""),
    ):
        error = await refusal(executor, check_request(check, kind, namespace, "absent"))
        assert error.code() is grpc.StatusCode.NOT_FOUND, (kind, error)
        assert "does not exist" in (error.details() or "")


# -- DescribeTarget ---------------------------------------------------------------------------


async def test_describe_target_reads_the_namespace_labels_and_the_replicas(
    admin: Admin, executor: ExecutorServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    namespace = await admin.core.read_namespace(ns)
    namespace.metadata.labels["env"] = "prod"
    await admin.core.replace_namespace(ns, namespace)
    await admin.create(ns, replicas=3)

    def target(kind: str, name: str, namespace: str = ns) -> executor_pb2.DescribeTargetRequest:
        return executor_pb2.DescribeTargetRequest(
            target=alert_pb2.ResourceRef(kind=kind, namespace=namespace, name=name)
        )

    described = await executor.DescribeTarget(target("Deployment", "web"))
    assert described.exists and described.managed
    assert described.namespace_labels["env"] == "prod"
    assert (described.replicas, described.ready_replicas, described.available_replicas) == (
        3,
        3,
        3,
    )
    # Out of scope is no reason not to say what is there: the policy weighs it.
    other = await admin.namespace(managed=False)
    await admin.create(other, replicas=1, managed=False)
    unmanaged = await executor.DescribeTarget(target("Deployment", "web", other))
    assert unmanaged.exists and not unmanaged.managed
    missing = await executor.DescribeTarget(target("Deployment", "nosuch"))
    assert not missing.exists and missing.namespace_labels["env"] == "prod"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await executor.DescribeTarget(target("Deployment", "web", ""), timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"target.namespace"}
