"""GetPodLogs on the real local cluster: KWOK serves the kubelet API, a kwok.x-k8s.io Logs
object names the file that is a pod's container log, and context_api (a real gRPC server
with its own read-only identity, bound to exactly `rbac.policy_rules()`) reads it through
the pods/log subresource, called as ai_analysis. The tail comes back within its caps (a
1 MB log gives at most 16 KiB, its newest lines), `previous` reads the crashed run, and
nothing outside the incident's pods is read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.ai_analysis import contract, tools
from kubernaut.services.context_api.logs import MAX_BYTES, MAX_LINES
from tests.fixtures.cluster import (
    context_api_identity,
    create_deployment,
    deployment_body,
    eventually,
    kube_api,
    running_context_api,
)
from tests.fixtures.grpc_errors import field_violations

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STAMP = "2026-12-07T01:00:00.000000000Z"


def cri_log(lines: list[str], stream: str = "stdout") -> str:
    """A container log as the kubelet keeps it (CRI format), which KWOK reads."""
    return "".join(f"{STAMP} {stream} F {line}\n" for line in lines)


@pytest.fixture(scope="module")
async def logs_context_api(
    kube: LocalCluster,
    runtime_settings: RuntimeSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    """A context_api server reading `kube` as a ServiceAccount bound to exactly
    context_api's ClusterRole rules (a role of this module's); its address."""
    directory = tmp_path_factory.mktemp("logs-context-api")
    async with (
        context_api_identity(kube, directory) as kubeconfig,
        running_context_api(runtime_settings, kubeconfig) as running,
    ):
        yield running.address


@pytest.fixture
async def context_api(
    runtime_settings: RuntimeSettings, logs_context_api: str
) -> AsyncIterator[ContextAPIServiceStub]:
    """context_api's stub, called as ai_analysis (the call table's edge)."""
    clients = Clients(
        runtime_settings,
        ServiceName.AI_ANALYSIS.account,
        addresses={ServiceName.CONTEXT_API: logs_context_api},
    )
    try:
        yield clients.stub(ContextAPIServiceStub)
    finally:
        await clients.close()


async def pod_of(kube: LocalCluster, namespace: str, app: str) -> str:
    async def placed() -> str | None:
        pods = await kube_api(
            kube, "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3D{app}"
        )
        running = [p for p in pods["items"] if p["spec"].get("nodeName")]
        return str(running[0]["metadata"]["name"]) if running else None

    return await eventually(placed, f"a placed pod of {app}", timeout=60)


async def serve_log(
    kube: LocalCluster, namespace: str, pod: str, current: Path, previous: Path | None
) -> None:
    """A kwok.x-k8s.io Logs object: KWOK serves `current` (and `previous`) as the log of
    the pod's container `app`."""
    log: dict[str, object] = {"containers": ["app"], "logsFile": str(current)}
    if previous is not None:
        log["previousLogsFile"] = str(previous)
    await kube_api(
        kube,
        "POST",
        f"/apis/kwok.x-k8s.io/v1alpha1/namespaces/{namespace}/logs",
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"logs": [log]},
        },
    )


def deployment(namespace: str, name: str) -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name=name)


async def read_logs(
    context_api: ContextAPIServiceStub, **fields: object
) -> context_api_pb2.PodLogs:
    answer = await context_api.GetPodLogs(context_api_pb2.GetPodLogsRequest(**fields))  # type: ignore[arg-type]
    logs: context_api_pb2.PodLogs = answer.logs
    return logs


async def test_a_crash_loops_log_tail_is_read_within_its_caps(
    kube: LocalCluster, context_api: ContextAPIServiceStub, tmp_path: Path
) -> None:
    namespace = f"logs-{uuid.uuid4().hex[:8]}"
    await create_deployment(kube, namespace, "web", replicas=1)
    await create_deployment_in(kube, namespace, "other")
    web_pod = await pod_of(kube, namespace, "web")
    other_pod = await pod_of(kube, namespace, "other")
    # 1 MB of log: 10,000 lines of 100 bytes; the newest say which they are.
    current = tmp_path / "web.log"
    current.write_text(cri_log([f"{i:06d} " + "x" * 93 for i in range(10_000)]))
    assert current.stat().st_size > 1_000_000
    previous = tmp_path / "web-previous.log"
    previous.write_text(
        cri_log(["starting", "panic: runtime error: nil map", "goroutine 1 [running]"], "stderr")
    )
    await serve_log(kube, namespace, web_pod, current, previous)
    other_log = tmp_path / "other.log"
    other_log.write_text(cri_log(["other's own line"]))
    await serve_log(kube, namespace, other_pod, other_log, None)
    scope = deployment(namespace, "web")

    # KWOK picks up the Logs object through its watch: the first reads may find none.
    async def first_read() -> context_api_pb2.PodLogs | None:
        try:
            return await read_logs(context_api, scope=scope)
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise

    logs = await eventually(first_read, "the pod's log", timeout=30)
    # The default: the scope's pod, its only container, the caps at their most.
    assert logs.pod.name == web_pod and logs.container == "app" and not logs.previous
    assert (logs.tail_lines, logs.limit_bytes) == (MAX_LINES, MAX_BYTES)
    assert logs.lines[-1] == "009999 " + "x" * 93
    # 200 lines of 101 bytes do not fit 16 KiB: the newest whole lines that do.
    assert sum(len(line) + 1 for line in logs.lines) <= MAX_BYTES
    assert len(logs.lines) == MAX_BYTES // 101
    assert logs.lines[0] == f"{10_000 - len(logs.lines):06d} " + "x" * 93
    assert logs.truncated
    assert list(logs.pods) == [web_pod] and list(logs.containers) == ["app"]

    # Smaller caps, asked for.
    five = await read_logs(context_api, scope=scope, pod=web_pod, container="app", tail_lines=5)
    assert [line[:6] for line in five.lines] == ["009995", "009996", "009997", "009998", "009999"]
    assert not five.truncated
    small = await read_logs(context_api, scope=scope, limit_bytes=1000)
    assert sum(len(line) + 1 for line in small.lines) <= 1000
    assert small.lines[-1].startswith("009999") and small.truncated

    # The crashed run: what a crash loop printed before it died.
    crashed = await read_logs(context_api, scope=scope, previous=True)
    assert crashed.previous
    assert list(crashed.lines) == [
        "starting",
        "panic: runtime error: nil map",
        "goroutine 1 [running]",
    ]

    # The alert naming the pod itself: its workload's pods are in scope.
    by_pod = await read_logs(
        context_api,
        scope=alert_pb2.ResourceRef(namespace=namespace, kind="Pod", name=web_pod),
        tail_lines=1,
    )
    assert by_pod.pod.name == web_pod and by_pod.lines[-1].startswith("009999")

    # Another workload's pod in the same namespace is not the incident's.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_logs(context_api, scope=scope, pod=other_pod)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "pod" in field_violations(refused.value)
    # Nor is a container the pod does not have.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_logs(context_api, scope=scope, container="sidecar")
    assert "container" in field_violations(refused.value)
    # Nodes have no logs to read here.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_logs(
            context_api, scope=alert_pb2.ResourceRef(kind="Node", name=kube.info.nodes[0])
        )
    assert "scope.kind" in field_violations(refused.value)
    # The caps cannot be raised.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_logs(
            context_api, scope=scope, tail_lines=MAX_LINES + 1, limit_bytes=MAX_BYTES + 1
        )
    assert {"tail_lines", "limit_bytes"} <= set(field_violations(refused.value))

    # The other workload, read in its own scope; it has no previous run: a clear refusal.
    own = await read_logs(context_api, scope=deployment(namespace, "other"))
    assert list(own.lines) == ["other's own line"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_logs(context_api, scope=deployment(namespace, "other"), previous=True)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot serve the logs" in (refused.value.details() or "")

    # A workload that does not exist.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_logs(context_api, scope=deployment(namespace, "missing"))
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    # A pod that does not exist.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_logs(context_api, scope=scope, pod="web-gone")
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND

    # The model's log_tail tool, as ai_analysis builds it: the incident's targets from the
    # evidence context_api reads, the tail from GetPodLogs.
    subject = alert_pb2.ResourceRef(namespace=namespace, kind="Pod", name=web_pod)
    evidence = (
        await context_api.GetResourceContext(
            context_api_pb2.GetResourceContextRequest(resource=subject)
        )
    ).context
    tool = tools.log_tool(
        tools.context_api_logs(context_api), contract.targets_of(subject, evidence), evidence
    )
    assert tool is not None
    view = await tool.handler({"target": f"Deployment/{namespace}/web", "previous": True})
    assert view["lines"][-1] == "goroutine 1 [running]" and view["previous"]
    view = await tool.handler({"target": f"Pod/{namespace}/{web_pod}", "lines": 3})
    assert [line[:6] for line in view["lines"]] == ["009997", "009998", "009999"]
    with pytest.raises(tools.ToolRefused, match="no such container"):
        await tool.handler({"target": f"Deployment/{namespace}/web", "container": "sidecar"})
    with pytest.raises(tools.ToolRefused, match="target must be one of"):
        await tool.handler({"target": f"Deployment/{namespace}/other"})


async def create_deployment_in(kube: LocalCluster, namespace: str, name: str) -> None:
    """A second Deployment in a namespace create_deployment made."""
    body = deployment_body(name, f"example.invalid/{name}:1", replicas=1)
    await kube_api(kube, "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body)
