"""RunCheck without gRPC: one read-only check of a target, looked at again and again (every
KUBERNAUT_EXECUTOR_POLL_INTERVAL_SECONDS) until it passes or its time is up. Nothing is
changed, nothing is stored.

  workload_ready        Deployment, StatefulSet, DaemonSet: what verification of an action
                        calls a finished rollout (changes.assess_workload) of the workload
                        as it is now: its generation observed, every desired replica
                        updated, Ready and available, no old replicas or revisions left
  node_pods_relocated   Node: no pods on it but what a drain leaves (operations.evictable:
                        DaemonSets', mirror and finished pods), and every Deployment,
                        StatefulSet or DaemonSet displaced from it rolled out as above,
                        with all its desired replicas Ready on other nodes. Displaced: the
                        check saw a pod of it there (while it looked), or, while the node
                        is cordoned, the executor's latest drain_node of the node recorded
                        evicting one (operations.displaced_workloads), so that the check
                        run after a drain still verifies the drained workloads
  job_succeeded         Job, or CronJob (the newest Job it owns); and if that Job was rerun
                        (rerun_failed_job marks the copy kubernaut.ai/rerun-of), the newest
                        rerun: its condition Complete=True
  pod_ready             Pod: its condition Ready=True

The target passes the scope stage of actions first (scope.check_placement and
scope.read_in_scope: protected namespaces and nodes, the cluster's allow and deny lists,
control-plane nodes, the kubernaut.ai/managed=true opt-in). What each check reads is
CHECK_READS (with SCOPE_READS): the executor's role grants it (rbac.policy_rules). Errors:
InvalidCheck (the check does not apply to the kind, or the namespace does not fit it),
OutOfScope, TargetNotFound, UnknownCluster, ClusterNotConfigured, ClusterUnavailable (also
CircuitOpen), ExecutorStoreUnavailable (node_pods_relocated reads the drain records).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from kubernaut.common.v1 import alert_pb2
from kubernaut.executor.v1 import executor_pb2
from opentelemetry import trace

from kubernaut.runtime.clusters import UnknownCluster
from kubernaut.runtime.kube import ClusterNotConfigured, is_managed
from kubernaut.runtime.logs import incident_id_var
from kubernaut.services.executor.changes import (
    RolloutState,
    assess_workload,
    label_selector,
    terminating,
    unschedulable_reason,
    waiting_reasons,
)
from kubernaut.services.executor.cluster import KINDS, ApiError, Cluster, ClusterUnavailable
from kubernaut.services.executor.clusters import CircuitOpen, ExecutorClusters
from kubernaut.services.executor.operations import (
    RERUN_OF,
    condition_of,
    controller_of,
    displaced_workloads,
    evictable,
    namespaced_name,
    workload_of,
)
from kubernaut.services.executor.run import now, open_cluster, where
from kubernaut.services.executor.scope import check_placement, read_in_scope
from kubernaut.services.executor.settings import ExecutorSettings
from kubernaut.services.executor.store import ExecutorDatabase

__all__ = [
    "CHECK_KINDS",
    "CHECK_READS",
    "SCOPE_READS",
    "CheckResult",
    "Checks",
    "ClusterNotConfigured",
    "ClusterUnavailable",
    "InvalidCheck",
    "NodePodsRelocated",
    "OutOfScope",
    "TargetNotFound",
    "UnknownCluster",
    "check_problems",
    "job_succeeded",
    "looker",
    "pod_ready",
    "run_check",
    "workload_ready",
]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("kubernaut.executor")

# The kinds each check applies to.
CHECK_KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "workload_ready": ("Deployment", "StatefulSet", "DaemonSet"),
    "node_pods_relocated": ("Node",),
    "job_succeeded": ("Job", "CronJob"),
    "pod_ready": ("Pod",),
}
# What each check reads, as (kind, verbs): get and list only, nothing else. The executor's
# role grants them (kubernaut.services.executor.rbac).
_WORKLOADS_GET: Final = tuple((kind, ("get",)) for kind in CHECK_KINDS["workload_ready"])
CHECK_READS: Final[Mapping[str, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "workload_ready": (*_WORKLOADS_GET, ("Pod", ("list",))),
    "node_pods_relocated": (("Node", ("get",)), ("Pod", ("list",)), *_WORKLOADS_GET),
    "job_succeeded": (("Job", ("get", "list")), ("CronJob", ("get",))),
    "pod_ready": (("Pod", ("get",)),),
}
# What the scope stage reads besides the target: the namespace's opt-in label.
SCOPE_READS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (("Namespace", ("get",)),)
# The action whose records say what was displaced from a node.
_DRAIN: Final = "drain_node"
# Pods named in a detail at most; the rest are counted.
_NAMED: Final = 10

Problem = tuple[str, str]
# One look at the target: (passed, what was seen, in one sentence).
Look = tuple[bool, str]
Looker = Callable[[Cluster, alert_pb2.ResourceRef], Awaitable[Look]]


class InvalidCheck(ValueError):
    """The request is malformed for its check: (field path, what is wrong) each."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{field}: {what}" for field, what in problems))
        self.problems = problems


class OutOfScope(Exception):
    """The target may not be checked (the scope of actions refuses it), or the executor
    may not read what the check needs."""


class TargetNotFound(LookupError):
    """The target does not exist."""


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    # What the last look saw, in a sentence.
    detail: str
    looks: int
    started_at: dt.datetime
    finished_at: dt.datetime

    def to_proto(self) -> executor_pb2.RunCheckResponse:
        response = executor_pb2.RunCheckResponse(
            passed=self.passed, detail=self.detail, looks=self.looks
        )
        response.started_at.FromDatetime(self.started_at)
        response.finished_at.FromDatetime(self.finished_at)
        return response


def check_problems(request: executor_pb2.RunCheckRequest) -> list[Problem]:
    """What buf.validate cannot say about a RunCheckRequest: the check applies to the
    target's kind, and the namespace fits the kind."""
    name = request.check.WhichOneof("check")
    if name is None:
        return [("check", "choose a check")]
    kinds = CHECK_KINDS[name]
    ref = request.target
    if ref.kind not in kinds:
        return [
            (
                "target.kind",
                f"{name} applies to {' or '.join(kinds)}, not {ref.kind or 'an unnamed kind'}",
            )
        ]
    return placement_problems(ref)


def placement_problems(ref: alert_pb2.ResourceRef) -> list[Problem]:
    """A kind the executor knows, with a namespace exactly when the kind has one."""
    if ref.kind not in KINDS:
        return [("target.kind", f"the executor does not know the kind {ref.kind or '(none)'}")]
    if KINDS[ref.kind].namespaced and not ref.namespace:
        return [("target.namespace", f"a {ref.kind} is namespaced: name its namespace")]
    if not KINDS[ref.kind].namespaced and ref.namespace:
        return [("target.namespace", f"a {ref.kind} has no namespace (got {ref.namespace})")]
    return []


# -- reading ------------------------------------------------------------------------------------


def _unreadable(error: ApiError, what: str) -> NoReturn:
    if error.forbidden:
        raise OutOfScope(f"the executor's identity may not read {what}: {error.message}")
    raise ClusterUnavailable(f"cannot read {what}: {error}") from error


async def _get(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist (any more)."""
    try:
        return await cluster.get(kind, namespace, name)
    except ApiError as error:
        if error.not_found:
            return None
        _unreadable(error, f"{KINDS[kind].plural} {name}")


async def _list(
    cluster: Cluster, kind: str, namespace: str, *, labels: str = "", fields: str = ""
) -> list[dict[str, Any]]:
    try:
        return await cluster.list_objects(kind, namespace, labels=labels, fields=fields)
    except ApiError as error:
        _unreadable(error, KINDS[kind].plural + (f" in namespace {namespace}" if namespace else ""))


def _named(items: Sequence[str]) -> str:
    names = sorted(items)
    more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    return ", ".join(names[:_NAMED]) + more


def _gone(ref: alert_pb2.ResourceRef) -> Look:
    return False, f"{where(ref)} does not exist (any more)"


# -- the checks ---------------------------------------------------------------------------------


async def _rollout(cluster: Cluster, kind: str, workload: Mapping[str, Any]) -> RolloutState:
    """Verification's verdict on the workload as it is (its current generation)."""
    meta = workload.get("metadata") or {}
    pods = await _list(
        cluster,
        "Pod",
        str(meta.get("namespace") or ""),
        labels=label_selector((workload.get("spec") or {}).get("selector")),
    )
    return assess_workload(kind, workload, pods, generation=int(meta.get("generation") or 0))


async def workload_ready(cluster: Cluster, ref: alert_pb2.ResourceRef) -> Look:
    """Every desired replica of the Deployment, StatefulSet or DaemonSet updated, Ready
    and available, and no rollout in progress."""
    workload = await _get(cluster, ref.kind, ref.namespace, ref.name)
    if workload is None:
        return _gone(ref)
    state = await _rollout(cluster, ref.kind, workload)
    if state.done:
        return True, f"{where(ref)} is Ready: {state.summary}"
    return False, f"{where(ref)} is not Ready: {state.summary}"


Workload = tuple[str, str, str]  # (kind, namespace, name)


async def _relocated(cluster: Cluster, node: str, workload: Workload) -> tuple[bool, str] | None:
    """Whether the workload is rolled out with all its desired replicas Ready on nodes
    other than `node`, and what was seen ("shop/web 3/3 Ready on n1, n2"); None when it
    does not exist (any more)."""
    kind, namespace, name = workload
    obj = await _get(cluster, kind, namespace, name)
    if obj is None:
        return None
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if kind == "DaemonSet":
        desired = int(status.get("desiredNumberScheduled") or 0)
    else:
        desired = 1 if spec.get("replicas") is None else int(spec["replicas"])
    meta = obj.get("metadata") or {}
    pods = await _list(cluster, "Pod", namespace, labels=label_selector(spec.get("selector")))
    state = assess_workload(kind, obj, pods, generation=int(meta.get("generation") or 0))
    ready_on = [
        str((p.get("spec") or {}).get("nodeName") or "")
        for p in pods
        if not terminating(p) and (condition_of(p, "Ready") or {}).get("status") == "True"
    ]
    # A drain leaves a DaemonSet's pods where they are: all of them count.
    elsewhere = [n for n in ready_on if n != node or kind == "DaemonSet"]
    what = f"{namespace}/{name} {len(elsewhere)}/{desired} Ready"
    if elsewhere:
        what += f" on {', '.join(sorted(set(elsewhere)))}"
    if kind != "Deployment":
        what = f"{kind} {what}"
    if state.done and len(elsewhere) >= desired:
        return True, what
    return False, f"{what} ({state.summary})"


class NodePodsRelocated:
    """node_pods_relocated, for one run of the check: remembers the workloads whose pods
    it saw on the node; with `drained` (what the executor's latest drain of the node
    evicted), those too while the node is cordoned. Each must then be Ready elsewhere."""

    def __init__(self, drained: set[Workload] | frozenset[Workload] = frozenset()) -> None:
        self.workloads: set[Workload] = set()
        self.drained = frozenset(drained)

    async def __call__(self, cluster: Cluster, ref: alert_pb2.ResourceRef) -> Look:
        node = ref.name
        target = await _get(cluster, "Node", "", node)
        if target is None:
            return _gone(ref)
        if (target.get("spec") or {}).get("unschedulable") is True:
            # The drain holds while the node is cordoned (uncordoned, its pods may return).
            self.workloads.update(self.drained)
        on_node = await _list(cluster, "Pod", "", fields=f"spec.nodeName={node}")
        staying = [p for p in on_node if evictable(p)]
        self.workloads.update(w for p in staying if (w := workload_of(p)) is not None)
        if staying:
            going = sum(1 for p in staying if terminating(p))
            note = f" ({going} terminating)" if going else ""
            return False, (
                f"node {node} holds {len(staying)} pods not from DaemonSets{note}: "
                f"{_named([namespaced_name(p) for p in staying])}"
            )
        ready: list[str] = []
        not_ready: list[str] = []
        for workload in sorted(self.workloads):
            seen = await _relocated(cluster, node, workload)
            if seen is None:
                continue  # deleted: nothing of it to place elsewhere
            (ready if seen[0] else not_ready).append(seen[1])
        empty = f"node {node} holds no pods but DaemonSets', mirror and finished pods"
        if not_ready:
            return False, f"{empty}, but not every displaced workload is Ready elsewhere: " + (
                "; ".join(not_ready + ready)
            )
        if ready:
            return True, f"{empty}; displaced: {'; '.join(ready)}"
        return True, empty


def _created(job: Mapping[str, Any]) -> tuple[str, str]:
    meta = job.get("metadata") or {}
    # RFC 3339 in UTC ("2025-01-02T03:04:05Z") sorts as text.
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def _newest_rerun(
    job: dict[str, Any], jobs: Sequence[dict[str, Any]]
) -> tuple[dict[str, Any], int]:
    """The newest rerun of `job` (following reruns of reruns), and how many reruns deep
    it is (0: `job` itself)."""
    seen = {job["metadata"]["name"]}
    depth = 0
    while True:
        name = job["metadata"]["name"]
        reruns = [
            j
            for j in jobs
            if ((j.get("metadata") or {}).get("annotations") or {}).get(RERUN_OF) == name
            and j["metadata"]["name"] not in seen
        ]
        if not reruns:
            return job, depth
        job = max(reruns, key=_created)
        seen.add(job["metadata"]["name"])
        depth += 1


def _job_look(job: Mapping[str, Any], what: str) -> Look:
    status = job.get("status") or {}
    counts = {k: int(status.get(k) or 0) for k in ("active", "succeeded", "failed")}
    complete = condition_of(job, "Complete")
    if complete is not None and complete.get("status") == "True":
        return True, f"{what} completed ({counts['succeeded']} succeeded)"
    failed = condition_of(job, "Failed")
    if failed is not None and failed.get("status") == "True":
        why = ": ".join(str(failed[k]) for k in ("reason", "message") if failed.get(k))
        return False, f"{what} failed ({why or 'condition Failed'})"
    state = ", ".join(f"{n} {k}" for k, n in counts.items())
    if (job.get("spec") or {}).get("suspend"):
        return False, f"{what} is suspended ({state})"
    return False, f"{what} has not completed ({state})"


async def job_succeeded(cluster: Cluster, ref: alert_pb2.ResourceRef) -> Look:
    """The Job (a CronJob: the newest Job it owns), or its newest rerun, completed."""
    target = await _get(cluster, ref.kind, ref.namespace, ref.name)
    if target is None:
        return _gone(ref)
    jobs = await _list(cluster, "Job", ref.namespace)
    if ref.kind == "CronJob":
        uid = target["metadata"].get("uid")
        owned = [j for j in jobs if (controller_of(j) or {}).get("uid") == uid]
        if not owned:
            return False, f"CronJob {ref.namespace}/{ref.name} has made no Job yet"
        job, via = max(owned, key=_created), f"the newest of CronJob {ref.name}"
    else:
        job, via = target, ""
    job, reruns = _newest_rerun(job, jobs)
    if reruns:
        via = f"the newest rerun of {via or f'Job {ref.name}'}"
    what = f"Job {namespaced_name(job)}" + (f" ({via})" if via else "")
    return _job_look(job, what)


async def pod_ready(cluster: Cluster, ref: alert_pb2.ResourceRef) -> Look:
    """The pod exists and its condition Ready is True."""
    pod = await _get(cluster, "Pod", ref.namespace, ref.name)
    what = f"pod {ref.namespace}/{ref.name}"
    if pod is None:
        return False, f"{what} does not exist (any more)"
    node = (pod.get("spec") or {}).get("nodeName") or ""
    if terminating(pod):
        return False, f"{what} is being deleted"
    if (condition_of(pod, "Ready") or {}).get("status") == "True":
        return True, f"{what} is Ready on node {node}"
    phase = (pod.get("status") or {}).get("phase") or "Unknown"
    notes = [f"phase {phase}"]
    if node:
        notes.append(f"on node {node}")
    if waiting := waiting_reasons(pod):
        notes.append(f"waiting: {', '.join(sorted(set(waiting)))}")
    if unschedulable := unschedulable_reason(pod):
        notes.append(f"unschedulable: {unschedulable}")
    return False, f"{what} is not Ready ({'; '.join(notes)})"


def looker(check: str, drained: set[Workload] | frozenset[Workload] = frozenset()) -> Looker:
    """How one run of `check` looks at its target (`drained`: NodePodsRelocated's)."""
    if check == "node_pods_relocated":
        return NodePodsRelocated(drained)
    lookers: dict[str, Looker] = {
        "workload_ready": workload_ready,
        "job_succeeded": job_succeeded,
        "pod_ready": pod_ready,
    }
    return lookers[check]


async def run_check(
    cluster: Cluster,
    ref: alert_pb2.ResourceRef,
    look: Looker,
    *,
    timeout: float,
    interval: float,
) -> CheckResult:
    """Look until the check passes or `timeout` seconds passed (0: one look)."""
    started_at = now()
    started = time.monotonic()
    deadline = started + timeout
    looks = 0
    while True:
        passed, detail = await look(cluster, ref)
        looks += 1
        if passed or time.monotonic() >= deadline:
            return CheckResult(passed, detail, looks, started_at, now())
        await asyncio.sleep(min(interval, max(deadline - time.monotonic(), 0)))


# -- the scope and the call ---------------------------------------------------------------------


class _CheckScope:
    """A RunCheck as the scope stage of actions sees a call (scope.ScopeContext). A
    missing target is TargetNotFound at once (the scope stage would call it a failed
    action); a refusal or failure is OutOfScope."""

    def __init__(
        self,
        ref: alert_pb2.ResourceRef,
        check: str,
        cluster_name: str,
        cluster: Cluster,
        settings: ExecutorSettings,
    ) -> None:
        self.ref = ref
        self.check = check
        self.cluster_name = cluster_name
        self.settings = settings
        self.seen: dict[str, Any] | None = None
        self._cluster = cluster

    def stage(self, line: str) -> None:
        log.debug(line, extra={"check": self.check, "target": where(self.ref)})

    def refuse(self, line: str, message: str) -> NoReturn:
        raise OutOfScope(message)

    def fail(self, line: str, message: str) -> NoReturn:
        raise OutOfScope(message)

    def what(self) -> str:
        in_cluster = f" in cluster {self.cluster_name}" if self.ref.cluster else ""
        return f"{self.check} check of {where(self.ref)}{in_cluster}"

    async def cluster(self) -> Cluster:
        return self._cluster

    async def read(self) -> dict[str, Any]:
        ref = self.ref
        try:
            return await self._cluster.get(ref.kind, ref.namespace, ref.name)
        except ApiError as error:
            if error.not_found:
                raise TargetNotFound(f"{self.what()}: {where(ref)} does not exist") from error
            raise


class Checks:
    """RunCheck: `clusters` holds the executor's own identity on each cluster; `database`
    (if any) its action records, where node_pods_relocated finds what a drain evicted."""

    def __init__(
        self,
        clusters: ExecutorClusters,
        settings: ExecutorSettings,
        database: ExecutorDatabase | None = None,
    ) -> None:
        self.clusters = clusters
        self.settings = settings
        self.database = database

    async def _drained(self, cluster_name: str, ref: alert_pb2.ResourceRef) -> set[Workload]:
        """What the executor's latest applied drain_node of the node evicted (workloads)."""
        if self.database is None:
            return set()
        store = await self.database.store()
        row = await store.latest_applied(cluster_name, "Node", "", ref.name, _DRAIN)
        return set() if row is None else displaced_workloads(row.snapshot)

    async def _open(self, ref: alert_pb2.ResourceRef) -> tuple[str, Cluster]:
        cluster_name = self.clusters.resolve(ref.cluster)
        if not self.clusters.connection(cluster_name).configured:
            raise ClusterNotConfigured(
                f"cluster {cluster_name} is not configured: set KUBECONFIG (or "
                "KUBERNAUT_KUBE_KUBECONFIG, or KUBERNAUT_KUBE_CLUSTERS)"
            )
        return cluster_name, await open_cluster(self.clusters, cluster_name)

    async def describe(self, ref: alert_pb2.ResourceRef) -> executor_pb2.DescribeTargetResponse:
        """DescribeTarget: the target (in scope or not: nothing acts on it here), its
        namespace's labels, whether it is opted in, and a workload's replicas."""
        if problems := placement_problems(ref):
            raise InvalidCheck(problems)
        cluster_name, cluster = await self._open(ref)
        breaker = self.clusters.breaker(cluster_name)
        breaker.check()
        described = executor_pb2.DescribeTargetResponse()
        try:
            labels: dict[str, str] = {}
            if ref.namespace:
                namespace = await _get(cluster, "Namespace", "", ref.namespace)
                labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
            described.namespace_labels.update(labels)
            obj = await _get(cluster, ref.kind, ref.namespace, ref.name)
        except ClusterUnavailable as error:
            if not isinstance(error, CircuitOpen):
                breaker.failure()
            raise
        breaker.success()
        if obj is None:
            return described
        described.exists = True
        own = (obj.get("metadata") or {}).get("labels")
        described.managed = is_managed(own) or is_managed(labels)
        if ref.kind in ("Deployment", "StatefulSet"):
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            described.replicas = 1 if spec.get("replicas") is None else int(spec["replicas"])
            described.ready_replicas = int(status.get("readyReplicas") or 0)
            described.available_replicas = int(status.get("availableReplicas") or 0)
        return described

    async def run(self, request: executor_pb2.RunCheckRequest) -> CheckResult:
        if problems := check_problems(request):
            raise InvalidCheck(problems)
        check = request.check.WhichOneof("check")
        assert check is not None
        ref = request.target
        cluster_name, cluster = await self._open(ref)
        scope = _CheckScope(ref, check, cluster_name, cluster, self.settings)
        check_placement(scope)
        breaker = self.clusters.breaker(cluster_name)
        breaker.check()
        token = incident_id_var.set(request.incident_id)
        try:
            with _tracer.start_as_current_span(f"executor check {check}") as span:
                try:
                    await read_in_scope(scope)
                    drained: set[Workload] = set()
                    if check == "node_pods_relocated":
                        drained = await self._drained(cluster_name, ref)
                    result = await run_check(
                        cluster,
                        ref,
                        looker(check, drained),
                        timeout=float(request.timeout_seconds),
                        interval=self.settings.poll_interval_seconds,
                    )
                except ClusterUnavailable as error:
                    if not isinstance(error, CircuitOpen):
                        breaker.failure()
                    raise
                except Exception:
                    breaker.success()  # the API server answered
                    raise
                breaker.success()
                span.set_attribute("kubernaut.check.passed", result.passed)
                span.set_attribute("kubernaut.check.looks", result.looks)
        finally:
            incident_id_var.reset(token)
        log.info(
            "check passed" if result.passed else "check did not pass",
            extra={
                "check": check,
                "target": where(ref),
                "cluster": cluster_name,
                "looks": result.looks,
                "detail": result.detail,
            },
        )
        return result
