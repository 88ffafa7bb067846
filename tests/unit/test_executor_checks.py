"""RunCheck's checks without a cluster: what each reads (and that the executor's role grants
it, and nothing beyond get and list), and node_pods_relocated following what a drain
evicted. The same code runs against a real cluster in tests/integration/test_executor_checks.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from kubernaut.common.v1 import alert_pb2

from kubernaut.services.executor import rbac
from kubernaut.services.executor.catalogue import list_actions
from kubernaut.services.executor.checks import (
    CHECK_KINDS,
    CHECK_READS,
    SCOPE_READS,
    NodePodsRelocated,
    looker,
)
from kubernaut.services.executor.cluster import KINDS, ApiError
from kubernaut.services.executor.operations import (
    _record_evicted,
    displaced_workloads,
    workload_of,
)

NODE = "kwok-node-0"


def _ready(ready: bool = True) -> list[dict[str, str]]:
    return [{"type": "Ready", "status": "True" if ready else "False"}]


def _pod(
    name: str,
    node: str,
    *,
    owner: tuple[str, str] | None = ("ReplicaSet", "web-5d8f7"),
    ready: bool = True,
    namespace: str = "shop",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app": "web", "pod-template-hash": "5d8f7"},
    }
    if owner is not None:
        meta["ownerReferences"] = [
            {"kind": owner[0], "name": owner[1], "controller": True, "uid": "u"}
        ]
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"phase": "Running", "conditions": _ready(ready)},
    }


def _deployment(replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "shop", "generation": 1, "uid": "d"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def _job(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": "j"},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }


class FakeCluster:
    """The objects `objects` holds ((kind, namespace, name): object); records each read as
    (kind, verb)."""

    def __init__(self, objects: Mapping[tuple[str, str, str], dict[str, Any]]) -> None:
        self.objects = dict(objects)
        self.reads: set[tuple[str, str]] = set()

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self.reads.add((kind, "get"))
        if (kind, namespace, name) not in self.objects:
            raise ApiError(404, "NotFound", f"{kind} {name} not found")
        return self.objects[(kind, namespace, name)]

    async def list_objects(
        self, kind: str, namespace: str, *, labels: str = "", fields: str = ""
    ) -> list[dict[str, Any]]:
        self.reads.add((kind, "list"))
        wanted = dict(term.split("=", 1) for term in labels.split(",") if term)
        node = fields.removeprefix("spec.nodeName=") if fields else None
        return [
            obj
            for (k, ns, _), obj in self.objects.items()
            if k == kind
            and (not namespace or ns == namespace)
            and all(obj["metadata"].get("labels", {}).get(a) == b for a, b in wanted.items())
            and (node is None or obj["spec"].get("nodeName") == node)
        ]

    async def namespace(self, name: str) -> dict[str, Any]:
        return await self.get("Namespace", "", name)


def _node(*, cordoned: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": NODE}, "spec": {"unschedulable": True} if cordoned else {}}


def _ref(kind: str, namespace: str, name: str) -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(kind=kind, namespace=namespace, name=name)


def _granted() -> dict[tuple[str, str], set[str]]:
    return {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in rbac.policy_rules()}


# -- what the checks read, and the role ---------------------------------------------------------


def _cluster_for_every_check() -> FakeCluster:
    return FakeCluster(
        {
            ("Deployment", "shop", "web"): _deployment(2, 2),
            ("StatefulSet", "shop", "web"): {**_deployment(2, 2), "status": {}},
            ("DaemonSet", "shop", "web"): _deployment(2, 2),
            ("Pod", "shop", "web-5d8f7-a"): _pod("web-5d8f7-a", "kwok-node-1"),
            ("Pod", "shop", "web-5d8f7-b"): _pod("web-5d8f7-b", NODE),
            ("Node", "", NODE): _node(),
            ("Job", "shop", "report"): _job("report"),
            ("CronJob", "shop", "nightly"): {"metadata": {"name": "nightly", "uid": "c"}},
        }
    )


@pytest.mark.parametrize(
    ("check", "kind", "namespace", "name"),
    [
        ("workload_ready", "Deployment", "shop", "web"),
        ("workload_ready", "StatefulSet", "shop", "web"),
        ("workload_ready", "DaemonSet", "shop", "web"),
        ("node_pods_relocated", "Node", "", NODE),
        ("job_succeeded", "Job", "shop", "report"),
        ("job_succeeded", "CronJob", "shop", "nightly"),
        ("pod_ready", "Pod", "shop", "web-5d8f7-a"),
    ],
)
async def test_the_role_grants_what_each_check_reads(
    check: str, kind: str, namespace: str, name: str
) -> None:
    cluster = _cluster_for_every_check()
    drained = {("Deployment", "shop", "web"), ("StatefulSet", "shop", "web")}
    look = looker(check, drained)
    await look(cluster, _ref(kind, namespace, name))  # type: ignore[arg-type]
    # Leaves the node holding a pod: look again without it, to read what follows.
    del cluster.objects[("Pod", "shop", "web-5d8f7-b")]
    await look(cluster, _ref(kind, namespace, name))  # type: ignore[arg-type]
    declared = {(k, verb) for k, verbs in CHECK_READS[check] for verb in verbs}
    assert cluster.reads <= declared, cluster.reads - declared
    granted = _granted()
    for read_kind, verb in cluster.reads | {(k, v) for k, vs in SCOPE_READS for v in vs}:
        plural = KINDS[read_kind]
        assert verb in granted.get((plural.group, plural.plural), set()), (read_kind, verb)


def test_the_checks_read_only_with_get_and_list() -> None:
    assert set(CHECK_READS) == set(CHECK_KINDS)
    for check, reads in [*CHECK_READS.items(), ("scope", SCOPE_READS)]:
        for kind, verbs in reads:
            assert set(verbs) <= {"get", "list", "watch"}, (check, kind, verbs)
    # What the actions grant, plus the checks' reads: `list` of Jobs is the checks' own.
    action_verbs = {
        verb
        for action in list_actions()
        for p in action.permissions
        if (p.api_group, p.resource, p.subresource) == ("batch", "jobs", "")
        for verb in p.verbs
    }
    assert "list" not in action_verbs
    assert _granted()[("batch", "jobs")] == action_verbs | {"get", "list"}


# -- what a drain records ---------------------------------------------------------------------


class FakeRun:
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        self.saves = 0

    async def save(self, state: Any = None) -> None:
        self.saves += 1


async def test_a_drain_records_each_pod_and_its_workload_before_evicting_it() -> None:
    run = FakeRun({"resourceVersion": "1", "extra": {}})
    web = _pod("web-5d8f7-a", NODE)
    db = _pod("db-0", NODE, owner=("StatefulSet", "db"))
    job = _pod("report-x", NODE, owner=("Job", "report"))
    await _record_evicted(run, [web, db, job])  # type: ignore[arg-type]
    assert run.saves == 1
    web_owner = {"kind": "Deployment", "name": "web"}
    db_owner = {"kind": "StatefulSet", "name": "db"}
    assert run.snapshot["extra"]["evicted"] == [
        {"namespace": "shop", "name": "web-5d8f7-a", "workload": web_owner},
        {"namespace": "shop", "name": "db-0", "workload": db_owner},
        {"namespace": "shop", "name": "report-x"},
    ]
    # The same pods again (still terminating): nothing new, nothing stored.
    await _record_evicted(run, [web, db])  # type: ignore[arg-type]
    assert run.saves == 1
    assert displaced_workloads(run.snapshot) == {
        ("Deployment", "shop", "web"),
        ("StatefulSet", "shop", "db"),
    }


def test_drains_stored_before_the_record_displaced_nothing() -> None:
    assert displaced_workloads(None) == set()
    assert displaced_workloads({"resourceVersion": "1"}) == set()
    assert displaced_workloads({"extra": {}}) == set()
    assert displaced_workloads({"extra": {"evicted": [{"namespace": "a", "name": "p"}]}}) == set()


def test_a_pods_workload_is_read_off_its_owner() -> None:
    assert workload_of(_pod("web-5d8f7-a", NODE)) == ("Deployment", "shop", "web")
    assert workload_of(_pod("db-0", NODE, owner=("StatefulSet", "db"))) == (
        "StatefulSet",
        "shop",
        "db",
    )
    assert workload_of(_pod("x", NODE, owner=("ReplicaSet", "bare"))) is None
    assert workload_of(_pod("x", NODE, owner=None)) is None


# -- node_pods_relocated after a drain --------------------------------------------------------

DRAINED = {("Deployment", "shop", "web")}


async def test_after_a_drain_the_displaced_workload_must_be_ready_elsewhere() -> None:
    # The node is empty; the drained Deployment's pods cannot be placed.
    pending = _pod("web-5d8f7-c", "", ready=False)
    cluster = FakeCluster(
        {
            ("Node", "", NODE): _node(),
            ("Deployment", "shop", "web"): _deployment(2, 0),
            ("Pod", "shop", "web-5d8f7-c"): pending,
        }
    )
    ref = _ref("Node", "", NODE)
    passed, detail = await NodePodsRelocated(DRAINED)(cluster, ref)  # type: ignore[arg-type]
    assert not passed
    assert detail.startswith(
        f"node {NODE} holds no pods but DaemonSets', mirror and finished pods, but not every "
        "displaced workload is Ready elsewhere: shop/web 0/2 Ready (2/2 updated, 0 ready"
    ), detail
    # Without the drain's record the empty node passes alone.
    assert (await NodePodsRelocated()(cluster, ref))[0]  # type: ignore[arg-type]

    cluster.objects = {
        ("Node", "", NODE): _node(),
        ("Deployment", "shop", "web"): _deployment(2, 2),
        ("Pod", "shop", "a"): _pod("web-5d8f7-a", "kwok-node-2"),
        ("Pod", "shop", "b"): _pod("web-5d8f7-b", "kwok-node-1"),
    }
    passed, detail = await NodePodsRelocated(DRAINED)(cluster, ref)  # type: ignore[arg-type]
    assert passed, detail
    assert detail == (
        f"node {NODE} holds no pods but DaemonSets', mirror and finished pods; "
        "displaced: shop/web 2/2 Ready on kwok-node-1, kwok-node-2"
    )


async def test_an_uncordoned_node_is_no_longer_drained() -> None:
    cluster = FakeCluster(
        {
            ("Node", "", NODE): _node(cordoned=False),
            ("Deployment", "shop", "web"): _deployment(2, 0),
        }
    )
    passed, detail = await NodePodsRelocated(DRAINED)(cluster, _ref("Node", "", NODE))  # type: ignore[arg-type]
    assert passed, detail
    assert detail == f"node {NODE} holds no pods but DaemonSets', mirror and finished pods"


async def test_a_deleted_workload_is_not_waited_for() -> None:
    cluster = FakeCluster({("Node", "", NODE): _node()})
    passed, _ = await NodePodsRelocated(DRAINED)(cluster, _ref("Node", "", NODE))  # type: ignore[arg-type]
    assert passed
