"""Every catalogue action against the real control plane: for each, the happy path changes
exactly what it should (and a retry with the same action_id acts no more), the executor's
dry-run mode changes nothing, an identity that lacks the action's verb is refused before
anything changes, and a protected namespace (or node) is refused.

"Exactly" is checked as the set of JSON leaves that differ between the target's content
(every field but metadata and status, plus the labels) before and after the action.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernaut.executor.v1 import executor_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.devstack.identities import write_token_kubeconfig
from kubernaut.services.executor import catalogue, rbac
from kubernaut.services.executor.changes import QUARANTINED, RESTARTED_AT
from kubernaut.services.executor.cluster import KINDS, ApiError
from kubernaut.services.executor.engine import ActionNotFound, RollbackRefused
from kubernaut.services.executor.operations import content_of
from tests.fixtures.cluster import deployment_body
from tests.fixtures.executor import (
    NOWHERE,
    Admin,
    ExecutorFactory,
    action_request,
    as_model,
    outcome,
    stage,
    stored,
)
from tests.fixtures.waiting import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("cleanup"),
]

MANAGED = {"kubernaut.ai/managed": "true"}
DEDICATED = {"key": "kubernaut.test/dedicated", "value": "executor", "effect": "NoSchedule"}
TOLERATE_DEDICATED = [{"key": DEDICATED["key"], "operator": "Exists"}]
RESOURCES = {
    "limits": {"memory": "256Mi", "cpu": "500m"},
    "requests": {"memory": "64Mi", "cpu": "100m"},
}


# -- setting up targets -----------------------------------------------------------------------


@dataclass
class Target:
    kind: str
    namespace: str
    name: str
    # More to check or clean up: the pods of a node, the uid of a pod, ...
    notes: dict[str, Any] = field(default_factory=dict)

    async def read(self, admin: Admin) -> dict[str, Any]:
        return await admin.raw.get(self.kind, self.namespace, self.name)


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a JSON value by its pointer (lists by index)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(leaves(item, f"{prefix}/{key.replace('~', '~0').replace('/', '~1')}"))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(leaves(item, f"{prefix}/{index}"))
        return out or {prefix: []}
    return {prefix: value}


# The marks the executor adds to a pod template it writes (changes.mark_template; checked
# in tests/integration/test_own_changes.py), not a change the action is asked for.
_TEMPLATE_MARKS = frozenset(
    {
        "/spec/template/metadata/annotations/kubernaut.ai~1template-digest",
        "/spec/template/metadata/annotations/kubernaut.ai~1action-id",
    }
)


def changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """The pointers whose leaves differ between two objects' contents, but for
    Kubernaut's own marks."""
    # content_of leaves out the taints the node controller manages by itself.
    a = leaves(content_of(before))
    b = leaves(content_of(after))
    differ = {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}
    return differ - _TEMPLATE_MARKS


def unchanged(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Nothing an action could do to the object happened: the same object (uid), not being
    deleted, the same content (spec and labels, see content_of) and, but for nodes, the
    same annotations other than the ones Kubernetes' controllers keep. Not the
    resourceVersion: it moves with the status, which controllers update on their own
    schedule (a node's heartbeat; a Deployment's conditions a moment after its rollout)."""
    identity = [
        (obj["metadata"]["uid"], obj["metadata"].get("deletionTimestamp"))
        for obj in (before, after)
    ]
    if identity[0] != identity[1] or changed(before, after):
        return False
    if before.get("kind") == "Node" or "nodeInfo" in (before.get("status") or {}):
        return True
    return _annotations(before) == _annotations(after)


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if not k.startswith("deployment.kubernetes.io/")}


async def wait_for(
    admin: Admin, kind: str, namespace: str, name: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        obj = await admin.raw.get(kind, namespace, name)
        return obj if ready(obj) else None

    result: dict[str, Any] = await eventually(check, timeout=60)
    return result


async def create(admin: Admin, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return await admin.raw.create(kind, namespace, body, dry_run=False)


def _workload_template(name: str, **pod_spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "containers": [
                {"name": "app", "image": "registry.invalid/app:v1", "resources": RESOURCES}
            ],
            **pod_spec,
        },
    }


async def deployment(admin: Admin, ns: str, name: str = "web", **pod_spec: Any) -> Target:
    body = deployment_body(
        name,
        "registry.invalid/app:v1",
        replicas=2,
        labels=MANAGED,
        container={"resources": RESOURCES},
        pod_spec=pod_spec or None,
    )
    await create(admin, "Deployment", ns, body)
    await admin.rolled_out(ns, name)
    return Target("Deployment", ns, name)


async def deployment_with_two_revisions(admin: Admin, ns: str) -> Target:
    target = await deployment(admin, ns)
    await admin.set_image(ns, "registry.invalid/app:v2")
    return target


def _statefulset_ready(obj: dict[str, Any]) -> bool:
    status, spec = obj.get("status") or {}, obj["spec"]
    return (
        status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
        and status.get("readyReplicas", 0) == spec["replicas"]
        and status.get("updatedReplicas", 0) == spec["replicas"]
        and status.get("currentRevision") == status.get("updateRevision")
    )


async def statefulset(admin: Admin, ns: str) -> Target:
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "labels": {"app": "db", **MANAGED}},
        "spec": {
            "serviceName": "db",
            "replicas": 2,
            "selector": {"matchLabels": {"app": "db"}},
            "template": _workload_template("db"),
        },
    }
    await create(admin, "StatefulSet", ns, body)
    await wait_for(admin, "StatefulSet", ns, "db", _statefulset_ready)
    return Target("StatefulSet", ns, "db")


def _daemonset_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    desired = status.get("desiredNumberScheduled", 0)
    return bool(
        status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
        and desired > 0
        and status.get("numberReady", 0) == desired
        and status.get("updatedNumberScheduled", 0) == desired
    )


async def daemonset(admin: Admin, ns: str) -> Target:
    body = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "labels": {"app": "agent", **MANAGED}},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": _workload_template("agent"),
        },
    }
    await create(admin, "DaemonSet", ns, body)
    await wait_for(admin, "DaemonSet", ns, "agent", _daemonset_ready)
    return Target("DaemonSet", ns, "agent")


async def pod_of_deployment(admin: Admin, ns: str) -> Target:
    await deployment(admin, ns)
    pods = await admin.pods(ns)
    pod = pods[0]
    await admin.raw.patch(
        "Pod",
        ns,
        pod["metadata"]["name"],
        [{"op": "add", "path": "/metadata/labels/kubernaut.ai~1managed", "value": "true"}],
        dry_run=False,
    )
    return Target("Pod", ns, pod["metadata"]["name"], {"uid": pod["metadata"]["uid"]})


async def hpa(admin: Admin, ns: str) -> Target:
    await deployment(admin, ns)
    body = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "labels": MANAGED},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 2,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        },
    }
    await create(admin, "HorizontalPodAutoscaler", ns, body)
    return Target("HorizontalPodAutoscaler", ns, "web")


async def node(
    admin: Admin,
    ns: str,
    *,
    cordoned: bool = False,
    taints: list[dict[str, str]] | None = None,
    memory: str = "256Gi",
) -> Target:
    """A fake node of its own (KWOK plays its kubelet), tainted so that only pods that
    tolerate it land there: the other tests keep their one-node cluster."""
    name = f"{ns}-node"
    spec: dict[str, Any] = {"taints": [DEDICATED, *(taints or [])]}
    if cordoned:
        spec["unschedulable"] = True
    resources = {"cpu": "32", "memory": memory, "pods": "110"}
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok", **MANAGED},
        },
        "spec": spec,
        "status": {"allocatable": resources, "capacity": resources},
    }
    await create(admin, "Node", "", body)
    admin.created_nodes.append(name)

    def is_ready(obj: dict[str, Any]) -> bool:
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    await wait_for(admin, "Node", "", name, is_ready)
    return Target("Node", "", name)


async def node_with_pods(admin: Admin, ns: str) -> Target:
    target = await node(admin, ns)
    await deployment(
        admin,
        ns,
        tolerations=TOLERATE_DEDICATED,
        nodeSelector={"kubernetes.io/hostname": target.name},
    )
    target.notes["namespace"] = ns
    return target


async def pvc(admin: Admin, ns: str) -> Target:
    """A claim bound to a static volume of an expandable StorageClass."""
    await admin.storage_class("kubernaut-test-expandable")
    await create(
        admin,
        "PersistentVolume",
        "",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{ns}-pv"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "kubernaut-test-expandable",
                "hostPath": {"path": f"/tmp/{ns}"},
                "claimRef": {"namespace": ns, "name": "data"},
            },
        },
    )
    admin.created_volumes.append(f"{ns}-pv")
    await create(
        admin,
        "PersistentVolumeClaim",
        ns,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "labels": MANAGED},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "kubernaut-test-expandable",
                "volumeName": f"{ns}-pv",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    await wait_for(
        admin,
        "PersistentVolumeClaim",
        ns,
        "data",
        lambda o: (o.get("status") or {}).get("phase") == "Bound",
    )
    return Target("PersistentVolumeClaim", ns, "data")


async def configmap(admin: Admin, ns: str) -> Target:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "labels": MANAGED},
        "data": {"LOG_LEVEL": "debug", "POOL": "10"},
    }
    await create(admin, "ConfigMap", ns, body)
    return Target("ConfigMap", ns, "settings")


async def cronjob(admin: Admin, ns: str, *, suspended: bool = False) -> Target:
    body = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "report", "labels": MANAGED},
        "spec": {
            "schedule": "0 0 1 1 *",
            "suspend": suspended,
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "report", "image": "registry.invalid/r:1"}],
                        }
                    }
                }
            },
        },
    }
    await create(admin, "CronJob", ns, body)
    return Target("CronJob", ns, "report")


async def suspended_cronjob(admin: Admin, ns: str) -> Target:
    return await cronjob(admin, ns, suspended=True)


async def failed_job(admin: Admin, ns: str) -> Target:
    """A Job whose pod could not be placed before its deadline: failed (DeadlineExceeded)."""
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate", "labels": MANAGED},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 2,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": NOWHERE,
                    "containers": [{"name": "migrate", "image": "registry.invalid/m:1"}],
                }
            },
        },
    }
    await create(admin, "Job", ns, body)

    def has_failed(obj: dict[str, Any]) -> bool:
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Failed" and c["status"] == "True" for c in conditions)

    await wait_for(admin, "Job", ns, "migrate", has_failed)
    return Target("Job", ns, "migrate")


# -- what each action should do -----------------------------------------------------------------


Check = Callable[[Admin, Target, dict[str, Any], dict[str, Any] | None, Any], Awaitable[None]]


async def no_check(
    admin: Admin, target: Target, before: dict[str, Any], after: dict[str, Any] | None, record: Any
) -> None:
    return None


async def pod_replaced(
    admin: Admin, target: Target, before: dict[str, Any], after: dict[str, Any] | None, record: Any
) -> None:
    assert after is None or after["metadata"]["uid"] != target.notes["uid"]


async def node_drained(
    admin: Admin, target: Target, before: dict[str, Any], after: dict[str, Any] | None, record: Any
) -> None:
    assert after is not None and after["spec"].get("unschedulable") is True
    on_node = await admin.raw.list_objects("Pod", "", fields=f"spec.nodeName={target.name}")
    live = [p for p in on_node if not p["metadata"].get("deletionTimestamp")]
    assert live == [], [p["metadata"]["name"] for p in live]


async def job_rerun(
    admin: Admin, target: Target, before: dict[str, Any], after: dict[str, Any] | None, record: Any
) -> None:
    jobs = await admin.raw.list_objects("Job", target.namespace)
    reruns = [
        j
        for j in jobs
        if (j["metadata"].get("annotations") or {}).get("kubernaut.ai/rerun-of") == target.name
    ]
    assert len(reruns) == 1, [j["metadata"]["name"] for j in jobs]
    rerun = reruns[0]
    assert rerun["metadata"]["name"].startswith("migrate-rerun-")
    assert (
        rerun["spec"]["template"]["spec"]["containers"]
        == (before["spec"]["template"]["spec"]["containers"])
    )
    assert (rerun["metadata"]["annotations"] or {})["kubernaut.ai/action-id"] == record.action_id


async def diagnostics_stored(
    admin: Admin, target: Target, before: dict[str, Any], after: dict[str, Any] | None, record: Any
) -> None:
    bundle = json.loads(record.spec_after_json)
    assert bundle["object"]["metadata"]["name"] == target.name
    assert "managedFields" not in bundle["object"]["metadata"]
    assert isinstance(bundle["events"], list)
    assert set(bundle["logs"]) == {f"{target.name}/app"}


async def quarantined(
    admin: Admin, target: Target, before: dict[str, Any], after: dict[str, Any] | None, record: Any
) -> None:
    assert after is not None
    assert after["metadata"]["labels"] == {QUARANTINED: "true", **MANAGED}
    assert not any(o.get("controller") for o in after["metadata"].get("ownerReferences") or [])
    # The controller replaced it: two pods of the app again, the quarantined one aside.
    await admin.rolled_out(target.namespace)


@dataclass(frozen=True)
class Scenario:
    action: str
    params: dict[str, Any]
    setup: Callable[[Admin, str], Awaitable[Target]]
    # The content pointers the action changes; None: the target is gone or a new object
    # is made (the check says what).
    changes: frozenset[str] | None
    check: Check = no_check
    # The verb (and resource) whose absence must refuse the action.
    verb: tuple[str, str] = ("patch", "")

    @property
    def id(self) -> str:
        return self.action


TEMPLATE = "/spec/template/spec/containers/0"
SCENARIOS = [
    Scenario("scale_deployment", {"replicas": 3}, deployment, frozenset({"/spec/replicas"})),
    Scenario("scale_statefulset", {"replicas": 3}, statefulset, frozenset({"/spec/replicas"})),
    *(
        Scenario(
            action,
            {},
            setup,
            frozenset({f"/spec/template/metadata/annotations/{RESTARTED_AT.replace('/', '~1')}"}),
        )
        for action, setup in (
            ("restart_deployment", deployment),
            ("restart_statefulset", statefulset),
            ("restart_daemonset", daemonset),
        )
    ),
    Scenario(
        "rollback_deployment",
        {},
        deployment_with_two_revisions,
        frozenset({f"{TEMPLATE}/image"}),
    ),
    Scenario(
        "delete_pod",
        {"grace_period_seconds": 0},
        pod_of_deployment,
        None,
        pod_replaced,
        ("delete", "pods"),
    ),
    Scenario(
        "increase_memory_limit",
        {"factor": 2.0, "max_limit": "1Gi"},
        deployment,
        frozenset({f"{TEMPLATE}/resources/limits/memory"}),
    ),
    Scenario(
        "increase_cpu_limit",
        {"factor": 1.5, "max_limit": "2"},
        statefulset,
        frozenset({f"{TEMPLATE}/resources/limits/cpu"}),
    ),
    Scenario(
        "update_resource_requests",
        {"cpu": "200m"},
        daemonset,
        frozenset({f"{TEMPLATE}/resources/requests/cpu"}),
    ),
    Scenario("update_hpa", {"max_replicas": 6}, hpa, frozenset({"/spec/maxReplicas"})),
    Scenario("cordon_node", {}, node, frozenset({"/spec/unschedulable"})),
    Scenario(
        "uncordon_node",
        {},
        lambda admin, ns: node(admin, ns, cordoned=True),
        frozenset({"/spec/unschedulable"}),
    ),
    Scenario(
        "drain_node",
        {"grace_period_seconds": 0},
        node_with_pods,
        None,
        node_drained,
        ("create", "pods/eviction"),
    ),
    Scenario(
        "taint_node",
        {"key": "example.com/maintenance", "value": "disk", "effect": "TAINT_EFFECT_NO_EXECUTE"},
        node,
        frozenset({"/spec/taints/1/key", "/spec/taints/1/value", "/spec/taints/1/effect"}),
    ),
    Scenario(
        "untaint_node",
        {"key": "example.com/maintenance"},
        lambda admin, ns: node(
            admin, ns, taints=[{"key": "example.com/maintenance", "effect": "NoSchedule"}]
        ),
        frozenset({"/spec/taints/1/key", "/spec/taints/1/effect"}),
    ),
    Scenario("expand_pvc", {"size": "2Gi"}, pvc, frozenset({"/spec/resources/requests/storage"})),
    Scenario(
        "quarantine_pod",
        {},
        pod_of_deployment,
        None,
        quarantined,
    ),
    Scenario(
        "update_configmap_key",
        {"key": "LOG_LEVEL", "value": "info"},
        configmap,
        frozenset({"/data/LOG_LEVEL"}),
    ),
    Scenario("suspend_cronjob", {}, cronjob, frozenset({"/spec/suspend"})),
    Scenario("resume_cronjob", {}, suspended_cronjob, frozenset({"/spec/suspend"})),
    Scenario("rerun_failed_job", {}, failed_job, None, job_rerun, ("create", "jobs.batch")),
    Scenario(
        "patch_resource",
        {"path": "/spec/minReadySeconds", "value_json": "5"},
        deployment,
        frozenset({"/spec/minReadySeconds"}),
    ),
    Scenario(
        "collect_diagnostics",
        {"log_lines": 50},
        pod_of_deployment,
        frozenset(),
        diagnostics_stored,
        ("list", "events"),
    ),
    Scenario(
        "notify_only",
        {"message": "disk nearly full; a person should look"},
        configmap,
        frozenset(),
        no_check,
        ("", ""),
    ),
]


def test_every_catalogue_action_has_a_scenario() -> None:
    assert sorted(s.action for s in SCENARIOS) == sorted(a.name for a in catalogue.list_actions())


def request_for(scenario: Scenario, target: Target) -> executor_pb2.ExecuteActionRequest:
    params: dict[str, Any] = {scenario.action: scenario.params}
    return action_request(target.namespace, target.name, kind=target.kind, **params)


async def read_or_none(admin: Admin, target: Target) -> dict[str, Any] | None:
    try:
        return await target.read(admin)
    except ApiError as error:
        if error.not_found:
            return None
        raise


# -- the four checks for every action -----------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
async def test_the_happy_path_changes_exactly_what_it_should_and_a_retry_acts_once(
    scenario: Scenario,
    admin: Admin,
    make_executor: ExecutorFactory,
    operator: StorageServiceStub,
) -> None:
    ns = await admin.namespace()
    target = await scenario.setup(admin, ns)
    before = await target.read(admin)
    request = request_for(scenario, target)
    executor = make_executor()
    result = await executor.execute(request)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    after = await read_or_none(admin, target)
    if scenario.changes is not None:
        assert after is not None
        assert changed(before, after) == scenario.changes
    await scenario.check(admin, target, before, after, result.record)
    assert (await stored(operator, request)).outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED

    # The same action_id again: the same record, and nothing more happens.
    settled = await read_or_none(admin, target)
    again = await make_executor().execute(request)
    assert again.record == result.record
    latest = await read_or_none(admin, target)
    if settled is not None and latest is not None:
        assert changed(settled, latest) == set()
    await scenario.check(admin, target, before, latest, result.record)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
async def test_dry_run_mode_changes_nothing(
    scenario: Scenario, admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    target = await scenario.setup(admin, ns)
    before = await target.read(admin)
    jobs_before = len(await admin.raw.list_objects("Job", ns))
    pods_before = sorted(p["metadata"]["uid"] for p in await admin.raw.list_objects("Pod", ns))
    result = await make_executor(dry_run=True).execute(request_for(scenario, target))
    assert outcome(result) == "ACTION_OUTCOME_DRY_RUN", result.stages
    assert not any(line.startswith(("apply", "snapshot")) for line in result.stages)
    after = await target.read(admin)
    assert changed(before, after) == set()
    assert after["metadata"].get("uid") == before["metadata"].get("uid")
    assert len(await admin.raw.list_objects("Job", ns)) == jobs_before
    pods_after = sorted(p["metadata"]["uid"] for p in await admin.raw.list_objects("Pod", ns))
    assert pods_after == pods_before


def _without(rules: list[dict[str, Any]], verb: str, resource: str) -> list[dict[str, Any]]:
    """The executor's rules, less one verb on one resource ("jobs.batch", "pods/eviction")."""
    name, _, group = resource.partition(".")
    out = []
    for rule in rules:
        if rule["resources"] == [name] and rule["apiGroups"] == [group]:
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
            if not rule["verbs"]:
                continue
        out.append(rule)
    assert out != rules, (verb, resource)
    return out


async def identity_without(admin: Admin, ns: str, verb: str, resource: str, path: Path) -> Path:
    """A ServiceAccount bound (cluster-wide) to the executor's whole role but one verb."""
    name = f"{ns}-limited"
    await admin.core.create_namespaced_service_account(
        ns, as_model({"metadata": {"name": "limited"}})
    )
    await admin.rbac.create_cluster_role(
        as_model(
            {"metadata": {"name": name}, "rules": _without(rbac.policy_rules(), verb, resource)}
        )
    )
    admin.created_cluster_roles.append(name)
    await admin.rbac.create_cluster_role_binding(
        as_model(
            {
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": ns}],
            }
        )
    )
    token = await admin.core.create_namespaced_service_account_token(
        "limited", ns, as_model({"spec": {"expirationSeconds": 3600}})
    )
    return write_token_kubeconfig(
        path, admin.info.apiserver_url, admin.info.ca_file, "limited", token.status.token
    )


def acting_verb(scenario: Scenario, kind: str) -> tuple[str, str]:
    verb, resource = scenario.verb
    if resource:
        return verb, resource
    plural = KINDS[kind]
    return verb, f"{plural.plural}.{plural.group}" if plural.group else plural.plural


@pytest.mark.parametrize(
    "scenario", [s for s in SCENARIOS if s.action != "notify_only"], ids=lambda s: s.id
)
async def test_an_identity_without_the_verb_is_refused_before_anything_changes(
    scenario: Scenario,
    admin: Admin,
    make_executor: ExecutorFactory,
    tmp_path: Path,
) -> None:
    ns = await admin.namespace()
    target = await scenario.setup(admin, ns)
    before = await target.read(admin)
    verb, resource = acting_verb(scenario, target.kind)
    kubeconfig = await identity_without(admin, ns, verb, resource, tmp_path / "limited")
    result = await make_executor(kubeconfig=kubeconfig).execute(request_for(scenario, target))
    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    line = stage(result, "rbac:")
    assert line.startswith("rbac: refused: the executor's identity may not"), line
    assert f"{verb} {resource}" in line, line
    assert f"missing RBAC permission: {verb} {resource}" in result.record.message
    assert not any(s.startswith(("dry-run", "snapshot", "apply")) for s in result.stages)
    assert unchanged(before, await target.read(admin))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
async def test_a_protected_namespace_or_node_is_refused(
    scenario: Scenario, admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    target = await scenario.setup(admin, ns)
    before = await target.read(admin)
    if target.kind == "Node":
        executor = make_executor(protected_nodes=frozenset({f"{ns}-*"}))
        expected = f"scope: refused: node {target.name} is protected"
    else:
        executor = make_executor(protected_namespaces=frozenset({ns, "kube-system"}))
        expected = f"scope: refused: namespace {ns} is protected"
    result = await executor.execute(request_for(scenario, target))
    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    assert stage(result, "scope:").startswith(expected)
    assert len(result.stages) == 2  # scope, record: nothing else ran
    assert unchanged(before, await target.read(admin))


# -- RollbackAction ------------------------------------------------------------------------------


def rollback_request(action_id: str, reason: str = "") -> executor_pb2.RollbackActionRequest:
    return executor_pb2.RollbackActionRequest(
        action_id=action_id, rollback_id=str(uuid.uuid4()), reason=reason
    )


REVERSIBLE = [s for s in SCENARIOS if catalogue.describe_action(s.action).reversible]


@pytest.mark.parametrize("scenario", REVERSIBLE, ids=lambda s: s.id)
async def test_rollback_action_puts_the_target_back_as_it_was(
    scenario: Scenario, admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    target = await scenario.setup(admin, ns)
    before = await target.read(admin)
    executor = make_executor()
    original = request_for(scenario, target)
    done = await executor.execute(original)
    assert outcome(done) == "ACTION_OUTCOME_SUCCEEDED", done.stages

    request = rollback_request(done.record.action_id, reason="the fix made it worse")
    undone = await executor.rollback(request)
    assert outcome(undone) == "ACTION_OUTCOME_SUCCEEDED", undone.stages
    assert undone.record.action_id == request.rollback_id
    assert undone.record.action == scenario.action
    assert f"rollback of {scenario.action} {done.record.action_id}" in undone.record.message
    assert "the fix made it worse" in undone.record.message
    assert [line.split(":")[0] for line in undone.stages] == [
        "scope", "rbac", "guards", "plan", "dry-run", "snapshot", "apply", "verify", "record",
    ]  # fmt: skip
    after = await read_or_none(admin, target)
    if scenario.action == "drain_node":
        assert after is not None and "unschedulable" not in after["spec"]
    elif scenario.action == "rerun_failed_job":
        jobs = await admin.raw.list_objects("Job", ns)
        assert [j["metadata"]["name"] for j in jobs] == [target.name]
    elif scenario.action == "quarantine_pod":
        # The labels are back, so its ReplicaSet adopts it again (and may remove a surplus
        # pod, this one among them).
        if after is not None:
            assert after["metadata"]["labels"] == before["metadata"]["labels"]
        await admin.rolled_out(ns)
    else:
        assert after is not None
        assert changed(before, after) == set()
    original.action_id = request.rollback_id  # the rollback's record, same alert
    assert (await stored(operator, original)).outcome == storage_pb2.ACTION_OUTCOME_SUCCEEDED
    # The same rollback_id again returns the same record and does nothing more.
    assert (await executor.rollback(request)).record == undone.record
    # A second rollback of the same action is refused.
    with pytest.raises(RollbackRefused, match="rolled back already"):
        await executor.rollback(rollback_request(done.record.action_id))


async def test_rollback_action_refuses_what_it_cannot_undo(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    await deployment(admin, ns)
    executor = make_executor()
    with pytest.raises(ActionNotFound):
        await executor.rollback(rollback_request(str(uuid.uuid4())))

    # Not reversible: a deleted pod cannot come back.
    pod = await pod_of_deployment(admin, await admin.namespace())
    deleted = await executor.execute(
        action_request(pod.namespace, pod.name, kind="Pod", delete_pod={})
    )
    assert outcome(deleted) == "ACTION_OUTCOME_SUCCEEDED", deleted.stages
    with pytest.raises(RollbackRefused, match="not reversible: Not reversible"):
        await executor.rollback(rollback_request(deleted.record.action_id))

    # Nothing applied: a refused action has nothing to undo.
    refused = await make_executor(protected_namespaces=frozenset({ns})).execute(
        action_request(ns, scale_deployment={"replicas": 3})
    )
    assert outcome(refused) == "ACTION_OUTCOME_REFUSED"
    with pytest.raises(RollbackRefused, match="ended REFUSED: nothing of it is in place"):
        await executor.rollback(rollback_request(refused.record.action_id))

    # Beyond the retention window.
    scaled = await executor.execute(action_request(ns, scale_deployment={"replicas": 3}))
    assert outcome(scaled) == "ACTION_OUTCOME_SUCCEEDED", scaled.stages
    with pytest.raises(RollbackRefused, match="beyond the rollback window"):
        await make_executor(rollback_retention_seconds=0.001).rollback(
            rollback_request(scaled.record.action_id)
        )

    # Someone changed the field since: the rollback fails and keeps their change.
    await admin.raw.patch(
        "Deployment",
        ns,
        "web",
        [{"op": "replace", "path": "/spec/replicas", "value": 4}],
        dry_run=False,
    )
    kept = await executor.rollback(rollback_request(scaled.record.action_id))
    assert outcome(kept) == "ACTION_OUTCOME_FAILED", kept.stages
    assert "changed since the action; not undoing over someone else's change" in stage(
        kept, "plan:"
    )
    assert (await admin.get(ns))["spec"]["replicas"] == 4

    # A rollback is not itself rolled back.
    back = await executor.execute(action_request(ns, scale_deployment={"replicas": 2}))
    undone = await executor.rollback(rollback_request(back.record.action_id))
    assert outcome(undone) == "ACTION_OUTCOME_SUCCEEDED", undone.stages
    assert (await admin.get(ns))["spec"]["replicas"] == 4
    with pytest.raises(RollbackRefused, match="is itself a rollback"):
        await executor.rollback(rollback_request(undone.record.action_id))


async def test_a_failed_rollback_verification_restores_the_action_s_state(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    """Undoing a scale-down when a quota no longer admits the pods: the undo cannot become
    healthy, so it is itself rolled back and the workload stays as the action left it."""
    ns = await admin.namespace()
    await admin.create(ns, replicas=3)
    executor = make_executor(verify_timeout_seconds=5)
    down = await executor.execute(action_request(ns, scale_deployment={"replicas": 1}))
    assert outcome(down) == "ACTION_OUTCOME_SUCCEEDED", down.stages
    await admin.rolled_out(ns)
    await admin.core.create_namespaced_resource_quota(
        ns, as_model({"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}})
    )
    undone = await executor.rollback(rollback_request(down.record.action_id))
    assert outcome(undone) == "ACTION_OUTCOME_ROLLED_BACK", undone.stages
    assert stage(undone, "verify:").startswith("verify: failed: timed out")
    assert stage(undone, "rollback verify:").startswith("rollback verify: ok")
    after = await admin.rolled_out(ns)
    assert after["spec"]["replicas"] == 1
