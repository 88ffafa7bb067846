"""ExecuteAction against a real control plane (KWOK nodes), a real PostgreSQL and the real
storage service: nothing of Kubernetes or storage is mocked.

The cluster is the session's shared one-node LocalCluster (`kube` in
tests/fixtures/cluster.py). Most tests drive `kubernaut.services.executor.engine.Executor` directly,
with its own ClusterRegistry for that cluster and the in-process stack's storage as the
executor's identity records; the last ones go through the gRPC service as
`kubernaut serve executor` builds it. Each test works in namespaces of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.kube import (
    ACTION_ID_ANNOTATION,
    MANAGED_LABEL,
    TEMPLATE_DIGEST_ANNOTATION,
    pod_spec_digest,
)
from kubernaut.runtime.launcher import health_of, wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.executor import guards
from kubernaut.services.executor.changes import POD_TEMPLATE_HASH, RESTARTED_AT, REVISION
from kubernaut.services.executor.cluster import ApiError
from kubernaut.services.executor.engine import (
    ClusterUnavailable,
)
from kubernaut.services.executor.store import ActionRow, ActionState, ExecutorDatabase
from tests.fixtures.executor import (
    NOWHERE,
    Admin,
    ExecutorFactory,
    action_request,
    as_model,
    dead_kubeconfig,
    image_of,
    outcome,
    ready,
    same_record,
    specs,
    stage,
    stored,
    write_kubeconfig,
)
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.waiting import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("cleanup"),
]

O = storage_pb2  # noqa: E741 - outcome constants read as O.ACTION_OUTCOME_...


# -- the four actions -------------------------------------------------------------------------


async def test_rollback_restores_the_previous_revision_and_its_pods_become_ready(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    await admin.create(ns, image="registry.invalid/app:v1")
    await admin.set_image(ns, "registry.invalid/app:v2")
    before = await admin.set_image(ns, "registry.invalid/app:v3")
    assert before["metadata"]["annotations"][REVISION] == "3"
    request = action_request(ns, rollback_deployment={})

    result = await make_executor().execute(request)

    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    after = await admin.rolled_out(ns)
    assert image_of(after) == "registry.invalid/app:v2"
    pods = await admin.pods(ns)
    assert len(pods) == 2 and all(ready(p) for p in pods)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"registry.invalid/app:v2"}
    # The template is revision 2's exactly, without the controller's hash label.
    assert after["spec"]["template"]["metadata"]["labels"] == {"app": "web"}
    assert [line.split(":")[0] for line in result.stages] == [
        "scope", "rbac", "guards", "plan", "dry-run", "snapshot", "apply", "verify", "record",
    ]  # fmt: skip
    assert "revision 3 back to revision 2" in stage(result, "plan:")

    record = await stored(operator, request)
    assert same_record(record, result.record)
    assert record.action == "rollback_deployment"
    assert (record.incident_id, record.alert_name) == (request.incident_id, request.alert_name)
    spec_before, spec_after = specs(record)
    assert spec_before == before["spec"]
    assert spec_after["template"]["spec"]["containers"][0]["image"] == "registry.invalid/app:v2"
    assert "verified" in record.message and "\n" not in record.message
    assert record.started_at.ToDatetime() <= record.finished_at.ToDatetime()


async def test_restart_rolls_out_a_new_replica_set(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace(managed=True)  # opted in by the namespace this time
    before = await admin.create(ns, managed=False)
    old_sets = {rs["metadata"]["name"] for rs in await admin.replica_sets(ns)}
    old_pods = {p["metadata"]["name"] for p in await admin.pods(ns)}
    request = action_request(ns, restart_deployment={})

    result = await make_executor().execute(request)

    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    assert "namespace" in stage(result, "scope:")
    after = await admin.get(ns)
    stamp = after["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    assert stamp == result.record.started_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    new_sets = {rs["metadata"]["name"] for rs in await admin.replica_sets(ns)} - old_sets
    assert len(new_sets) == 1
    pods = await admin.pods(ns)
    assert len(pods) == 2 and all(ready(p) for p in pods)
    assert not old_pods & {p["metadata"]["name"] for p in pods}
    assert {p["metadata"]["labels"][POD_TEMPLATE_HASH] for p in pods} == {
        next(iter(new_sets)).removeprefix("web-")
    }
    spec_before, spec_after = specs(await stored(operator, request))
    assert spec_before == before["spec"]
    # Kubernaut marks the template it writes: the digest of its spec, and the action.
    assert spec_after["template"]["metadata"]["annotations"] == {
        RESTARTED_AT: stamp,
        TEMPLATE_DIGEST_ANNOTATION: pod_spec_digest(spec_after["template"]["spec"]),
        ACTION_ID_ANNOTATION: request.action_id,
    }


async def test_scale_changes_the_pod_count(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    before = await admin.create(ns, replicas=2)
    up = action_request(ns, scale_deployment={"replicas": 4})
    result = await make_executor().execute(up)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    pods = await admin.pods(ns)
    assert len(pods) == 4 and all(ready(p) for p in pods)
    after = await admin.get(ns)
    # Only the replica count changed: the template is the same, so is the ReplicaSet.
    assert after["spec"] == {**before["spec"], "replicas": 4}
    assert len(await admin.replica_sets(ns)) == 1
    spec_before, spec_after = specs(await stored(operator, up))
    assert (spec_before["replicas"], spec_after["replicas"]) == (2, 4)

    down = action_request(ns, scale_deployment={"replicas": 0})
    result = await make_executor().execute(down)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    assert await admin.raw.pods(ns, "app=web") == []  # none left, not even terminating


async def test_increase_memory_limit_multiplies_within_the_cap(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    before = await admin.create(ns, memory="256Mi")
    request = action_request(
        ns, increase_memory_limit={"container": "app", "factor": 1.5, "max_limit": "1Gi"}
    )
    result = await make_executor().execute(request)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    after = await admin.get(ns)
    resources = after["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"memory": "384Mi"}, "requests": {"memory": "64Mi"}}
    pods = await admin.pods(ns)
    assert len(pods) == 2 and all(ready(p) for p in pods)
    assert {p["spec"]["containers"][0]["resources"]["limits"]["memory"] for p in pods} == {"384Mi"}
    spec_before, spec_after = specs(await stored(operator, request))
    assert spec_before == before["spec"]
    assert spec_after["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "memory": "384Mi"
    }

    # x4 from 384Mi would be 1536Mi: capped at 1Gi.
    capped = action_request(
        ns, increase_memory_limit={"container": "", "factor": 4.0, "max_limit": "1Gi"}
    )
    result = await make_executor().execute(capped)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    assert "capped at max_limit 1Gi" in result.record.message
    limits = (await admin.get(ns))["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert limits["limits"] == {"memory": "1Gi"}


async def test_memory_limit_of_an_unknown_container_or_without_a_limit_fails_unchanged(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    await admin.create(ns, "limited")
    await admin.create(ns, "unlimited", memory=None)
    executor = make_executor()
    for name, container, reason in (
        ("limited", "db", "no container 'db' (containers: app)"),
        ("unlimited", "app", "container 'app' has no memory limit"),
    ):
        before = await admin.get(ns, name)
        request = action_request(
            ns,
            name,
            increase_memory_limit={"container": container, "factor": 1.5, "max_limit": "1Gi"},
        )
        result = await executor.execute(request)
        assert outcome(result) == "ACTION_OUTCOME_FAILED", result.stages
        assert reason in result.record.message
        assert stage(result, "plan:").startswith("plan: failed:")
        assert (await admin.get(ns, name))["metadata"]["resourceVersion"] == before["metadata"][
            "resourceVersion"
        ]
        assert (await stored(operator, request)).outcome == O.ACTION_OUTCOME_FAILED


# -- scope ------------------------------------------------------------------------------------


async def test_protected_namespaces_are_refused_and_recorded(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    request = action_request("kube-system", "coredns", scale_deployment={"replicas": 0})
    result = await make_executor().execute(request)
    assert outcome(result) == "ACTION_OUTCOME_REFUSED"
    assert result.stages[0] == (
        "scope: refused: namespace kube-system is protected "
        "(KUBERNAUT_EXECUTOR_PROTECTED_NAMESPACES)"
    )
    record = await stored(operator, request)
    assert record.outcome == O.ACTION_OUTCOME_REFUSED
    assert "protected" in record.message

    # The list is configurable: an opted-in namespace named there is refused too.
    ns = await admin.namespace(managed=True)
    before = await admin.create(ns)
    executor = make_executor(protected_namespaces=frozenset({"kube-system", ns}))
    result = await executor.execute(action_request(ns, scale_deployment={"replicas": 3}))
    assert outcome(result) == "ACTION_OUTCOME_REFUSED"
    assert (await admin.get(ns))["spec"] == before["spec"]


async def test_objects_that_have_not_opted_in_are_refused_and_not_changed(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace(managed=False)
    before = await admin.create(ns, managed=False)
    request = action_request(ns, scale_deployment={"replicas": 5})
    result = await make_executor().execute(request)
    assert outcome(result) == "ACTION_OUTCOME_REFUSED"
    assert result.stages == [
        f"scope: refused: neither Deployment {ns}/web nor its namespace carries the label "
        f"{MANAGED_LABEL}=true (not opted in)",
        "record: stored through storage.RecordAction (outcome REFUSED)",
    ]
    after = await admin.get(ns)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    record = await stored(operator, request)
    assert record.outcome == O.ACTION_OUTCOME_REFUSED
    assert MANAGED_LABEL in record.message
    spec_before, spec_after = specs(record)
    assert spec_before == spec_after == before["spec"]


async def test_a_gitops_managed_object_is_not_patched_and_the_change_is_proposed(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    """Argo CD would sync a patch away: the change is planned and dry-run, then refused,
    and the refusal carries it as a kubectl patch; `gitops=apply` patches anyway."""
    ns = await admin.namespace(managed=True)
    await admin.create(ns)
    tracking = "argocd.argoproj.io~1tracking-id"
    await admin.patch(
        ns,
        "web",
        [
            {
                "op": "add",
                "path": f"/metadata/annotations/{tracking}",
                "value": f"shop:apps/Deployment:{ns}/web",
            }
        ],
    )
    before = await admin.get(ns)
    request = action_request(ns, scale_deployment={"replicas": 4})
    result = await make_executor().execute(request)

    assert outcome(result) == "ACTION_OUTCOME_REFUSED"
    refusal = next(line for line in result.stages if line.startswith("gitops: refused"))
    assert "Argo CD (application shop; annotation argocd.argoproj.io/tracking-id)" in refusal
    patch = (
        f"kubectl patch deployment web -n {ns} --type=json -p "
        f"""'[{{"op":"replace","path":"/spec/replicas","value":4}}]'"""
    )
    assert refusal.endswith(patch)
    assert any(line.startswith("dry-run") for line in result.stages)
    # Not changed (its status may be: the Deployment controller still writes it).
    after = await admin.get(ns)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    record = await stored(operator, request)
    assert record.outcome == O.ACTION_OUTCOME_REFUSED
    assert "change it in Git instead" in record.message and patch in record.message

    applied = await make_executor(gitops="apply").execute(
        action_request(ns, scale_deployment={"replicas": 4})
    )
    assert outcome(applied) == "ACTION_OUTCOME_SUCCEEDED"
    assert any("applying anyway" in line for line in applied.stages)
    assert (await admin.get(ns))["spec"]["replicas"] == 4


async def test_a_missing_target_fails_and_says_so(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace(managed=True)
    request = action_request(ns, "ghost", restart_deployment={})
    result = await make_executor().execute(request)
    assert outcome(result) == "ACTION_OUTCOME_FAILED"
    assert 'deployments.apps "ghost" not found' in result.stages[0]
    assert "does not exist" in (await stored(operator, request)).message


# -- dry-run, RBAC ----------------------------------------------------------------------------


async def test_a_change_the_api_server_rejects_in_the_dry_run_is_not_applied(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    """A ValidatingAdmissionPolicy (CEL, in the API server) caps replicas at 5 here."""
    ns = await admin.namespace()
    before = await admin.create(ns)
    policy = f"kubernaut-test-max-replicas-{ns}"
    await admin.admission.create_validating_admission_policy(
        as_model(
            {
                "metadata": {"name": policy},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": ["apps"],
                                "apiVersions": ["v1"],
                                "operations": ["UPDATE"],
                                "resources": ["deployments"],
                            }
                        ]
                    },
                    "validations": [
                        {"expression": "object.spec.replicas <= 5", "message": "at most 5 replicas"}
                    ],
                },
            }
        )
    )
    await admin.admission.create_validating_admission_policy_binding(
        as_model(
            {
                "metadata": {"name": policy},
                "spec": {
                    "policyName": policy,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
                    },
                },
            }
        )
    )
    try:
        # The policy takes effect once the API server has loaded it.
        probe = [{"op": "replace", "path": "/spec/replicas", "value": 9}]

        async def refused() -> bool:
            try:
                await admin.raw.patch("Deployment", ns, "web", probe, dry_run=True)
            except ApiError:
                return True
            return False

        await eventually(refused, "the admission policy to take effect", timeout=30, interval=0.2)
        request = action_request(ns, scale_deployment={"replicas": 9})
        result = await make_executor().execute(request)
        assert outcome(result) == "ACTION_OUTCOME_FAILED", result.stages
        assert "at most 5 replicas" in stage(result, "dry-run:")
        assert "at most 5 replicas" in result.record.message
        assert not any(line.startswith(("snapshot", "apply")) for line in result.stages)
        after = await admin.get(ns)
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert after["spec"] == before["spec"]
    finally:
        await admin.admission.delete_validating_admission_policy_binding(policy)
        await admin.admission.delete_validating_admission_policy(policy)


async def test_dry_run_mode_stops_after_the_dry_run(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    before = await admin.create(ns)
    request = action_request(ns, restart_deployment={})
    result = await make_executor(dry_run=True).execute(request)
    assert outcome(result) == "ACTION_OUTCOME_DRY_RUN", result.stages
    assert stage(result, "dry-run:").startswith("dry-run: ok")
    assert "dry-run only, not applied" in result.record.message
    after = await admin.get(ns)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert (await stored(operator, request)).outcome == O.ACTION_OUTCOME_DRY_RUN


async def _limited_kubeconfig(admin: Admin, ns: str, verbs: list[str], path: Path) -> Path:
    """A ServiceAccount in `ns` with a Role that grants what the catalogue asks for scale,
    except that deployments get only `verbs`; a kubeconfig with a TokenRequest token."""
    account = "limited-executor"
    await admin.core.create_namespaced_service_account(
        ns, as_model({"metadata": {"name": account}})
    )
    await admin.rbac.create_namespaced_role(
        ns,
        as_model(
            {
                "metadata": {"name": account},
                "rules": [
                    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": verbs},
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
                ],
            }
        ),
    )
    await admin.rbac.create_namespaced_role_binding(
        ns,
        as_model(
            {
                "metadata": {"name": account},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": account,
                },
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
            }
        ),
    )
    token = await admin.core.create_namespaced_service_account_token(
        account, ns, as_model({"spec": {"expirationSeconds": 3600}})
    )
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": admin.info.apiserver_url,
                    "certificate-authority": str(admin.info.ca_file),
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token.status.token}}],
        "contexts": [{"name": "limited", "context": {"cluster": "local", "user": account}}],
        "current-context": "limited",
    }
    return write_kubeconfig(path, kubeconfig)


async def test_an_identity_without_patch_is_refused_before_anything_changes(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub, tmp_path: Path
) -> None:
    ns = await admin.namespace()
    before = await admin.create(ns)
    kubeconfig = await _limited_kubeconfig(admin, ns, ["get"], tmp_path / "limited.kubeconfig")
    request = action_request(ns, scale_deployment={"replicas": 3})
    result = await make_executor(kubeconfig=kubeconfig).execute(request)
    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    assert stage(result, "scope:").startswith("scope: ok")
    assert stage(result, "rbac:") == (
        f"rbac: refused: the executor's identity may not patch deployments.apps in namespace {ns}"
    )
    assert "missing RBAC permission: patch deployments.apps" in result.record.message
    assert (await stored(operator, request)).outcome == O.ACTION_OUTCOME_REFUSED
    after = await admin.get(ns)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    # The same identity with patch granted acts: the check is the RBAC, not the identity.
    await admin.rbac.patch_namespaced_role(
        "limited-executor",
        ns,
        [{"op": "replace", "path": "/rules/0/verbs", "value": ["get", "patch"]}],
    )
    result = await make_executor(kubeconfig=kubeconfig).execute(
        action_request(ns, scale_deployment={"replicas": 3})
    )
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    assert (await admin.get(ns))["spec"]["replicas"] == 3


# -- idempotency and crashes ------------------------------------------------------------------


class Crash(Exception):
    """Stands for the executor process dying at a checkpoint."""


async def test_a_repeated_action_acts_once_even_across_a_crash(
    admin: Admin,
    make_executor: ExecutorFactory,
    operator: StorageServiceStub,
    executor_database: ExecutorDatabase,
) -> None:
    ns = await admin.namespace()
    await admin.create(ns, image="registry.invalid/app:v1")
    await admin.set_image(ns, "registry.invalid/app:v2")
    await admin.set_image(ns, "registry.invalid/app:v3")
    request = action_request(ns, rollback_deployment={})

    async def crash_after_apply(stage_name: str, row: ActionRow) -> None:
        if stage_name == "apply":
            raise Crash()

    with pytest.raises(Crash):
        ended = await make_executor(checkpoint=crash_after_apply).execute(request)
        # Seen once in CI (not reproduced): say where it stopped instead of "DID NOT RAISE".
        pytest.fail(f"the action ended before applying: {outcome(ended)} {list(ended.stages)}")
    row = await (await executor_database.store()).get(request.action_id)
    assert row is not None and row.state is ActionState.APPLIED
    # The rollback made revision 2's template revision 4: a naive second rollback would now
    # go to revision 3 (v3). The retry continues the stored change instead.
    assert image_of(await admin.get(ns)) == "registry.invalid/app:v2"

    first = await make_executor().execute(request)  # "after the restart"
    assert outcome(first) == "ACTION_OUTCOME_SUCCEEDED", first.stages
    assert "resume: attempt 2 continues from applied" in first.stages
    assert not any(line.startswith("apply:") for line in first.stages[first.stages.index(
        "resume: attempt 2 continues from applied"):])  # fmt: skip
    settled = await admin.rolled_out(ns)
    assert image_of(settled) == "registry.invalid/app:v2"

    # Done: a repeat returns the stored record and does not touch the cluster.
    again = await make_executor().execute(request)
    assert again.record == first.record and again.stages == first.stages
    now = await admin.get(ns)
    assert now["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]
    assert image_of(now) == "registry.invalid/app:v2"
    assert same_record(await stored(operator, request), first.record)

    # Two calls at once: one acts, the other waits for it and gets the same answer.
    both = action_request(ns, rollback_deployment={})
    executor = make_executor()
    a, b = await asyncio.gather(executor.execute(both), make_executor().execute(both))
    assert a.record == b.record
    assert outcome(a) == "ACTION_OUTCOME_SUCCEEDED"
    assert image_of(await admin.rolled_out(ns)) == "registry.invalid/app:v3"


async def test_an_applied_action_never_lacks_the_start_of_its_cooldown(
    admin: Admin,
    make_executor: ExecutorFactory,
    executor_database: ExecutorDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = await admin.namespace()
    await admin.create(ns)
    request = action_request(ns, scale_deployment={"replicas": 3})

    async def dies(*_: object) -> None:
        raise Crash()

    # The process dies as it records when the action changed its target.
    monkeypatch.setattr(guards, "mark_applied", dies)
    with pytest.raises(Crash):
        await make_executor().execute(request)
    store = await executor_database.store()
    row = await store.get(request.action_id)
    # Not APPLIED without applied_at (a cooldown that never starts): neither was kept.
    assert row is not None and row.state is ActionState.PLANNED
    monkeypatch.undo()
    # "After the restart": the change is found applied, and its cooldown starts now.
    resumed = await make_executor().execute(request)
    assert outcome(resumed) == "ACTION_OUTCOME_SUCCEEDED", resumed.stages
    assert any(line.startswith("apply: already applied") for line in resumed.stages)
    conn = await asyncpg.connect(executor_database.dsn)
    try:
        applied_at = await conn.fetchval(
            "SELECT applied_at FROM executor.actions WHERE action_id = $1",
            uuid.UUID(request.action_id),
        )
    finally:
        await conn.close()
    assert applied_at is not None


async def test_a_crash_before_recording_records_the_same_record_on_retry(
    admin: Admin,
    make_executor: ExecutorFactory,
    operator: StorageServiceStub,
    executor_database: ExecutorDatabase,
) -> None:
    ns = await admin.namespace()
    await admin.create(ns)
    request = action_request(ns, scale_deployment={"replicas": 3})

    async def crash_after_snapshot(stage_name: str, row: ActionRow) -> None:
        if stage_name == "snapshot":
            raise Crash()

    with pytest.raises(Crash):
        await make_executor(checkpoint=crash_after_snapshot).execute(request)
    assert (await admin.get(ns))["spec"]["replicas"] == 2  # stored, not applied
    result = await make_executor().execute(request)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    assert "resume: attempt 2 continues from planned" in result.stages
    assert same_record(await stored(operator, request), result.record)
    row = await (await executor_database.store()).get(request.action_id)
    assert row is not None and row.state is ActionState.RECORDED and row.attempts == 2


# -- verification and automatic rollback -------------------------------------------------------


async def test_a_scale_that_cannot_schedule_is_rolled_back_exactly(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    before = await admin.create(ns, replicas=0, node_selector=NOWHERE)
    request = action_request(ns, scale_deployment={"replicas": 2})
    started = time.monotonic()
    result = await make_executor(verify_timeout_seconds=3).execute(request)
    assert outcome(result) == "ACTION_OUTCOME_ROLLED_BACK", result.stages
    assert time.monotonic() - started < 20
    verify = stage(result, "verify:")
    assert verify.startswith("verify: failed: timed out after 3s")
    assert "didn't match Pod's node affinity/selector" in verify
    assert stage(result, "rollback:").startswith("rollback: restored /spec/replicas")
    assert stage(result, "rollback verify:").startswith("rollback verify: ok")
    after = await admin.get(ns)
    assert after["spec"] == before["spec"]
    assert await admin.raw.pods(ns, "app=web") == []
    record = await stored(operator, request)
    assert record.outcome == O.ACTION_OUTCOME_ROLLED_BACK
    spec_before, spec_after = specs(record)
    assert spec_before == spec_after == before["spec"]
    assert "rolled back to the snapshot and verified" in record.message


async def test_a_scale_during_a_stuck_rollout_is_judged_on_keeping_what_was_available(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    await admin.create(ns, image="registry.invalid/app:v1", replicas=2)
    # Revision 2 cannot run anywhere: its rollout is stuck, revision 1's two pods serve.
    await admin.patch(
        ns,
        "web",
        [
            {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": NOWHERE},
            {"op": "replace", "path": "/spec/template/spec/containers/0/image",
             "value": "registry.invalid/app:v2"},
        ],
    )  # fmt: skip
    # A scale guard's extra replica: the rollout cannot complete, so it is judged on what
    # the scale may change (the controller took it, no available replica lost).
    result = await make_executor(verify_timeout_seconds=20).execute(
        action_request(ns, scale_deployment={"replicas": 3})
    )
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    verify = stage(result, "verify:")
    assert "it was not rolled out before the change (2 available)" in verify, verify
    assert (await admin.get(ns))["spec"]["replicas"] == 3


async def test_a_crash_during_the_rollback_resumes_the_rollback(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    before = await admin.create(ns, replicas=0, node_selector=NOWHERE)
    request = action_request(ns, scale_deployment={"replicas": 1})

    async def crash_after_failed_verification(stage_name: str, row: ActionRow) -> None:
        if stage_name == "verify":
            raise Crash()

    with pytest.raises(Crash):
        await make_executor(
            verify_timeout_seconds=1, checkpoint=crash_after_failed_verification
        ).execute(request)
    assert (await admin.get(ns))["spec"]["replicas"] == 1  # changed, not yet restored
    result = await make_executor(verify_timeout_seconds=1).execute(request)
    assert outcome(result) == "ACTION_OUTCOME_ROLLED_BACK", result.stages
    assert "resume: attempt 2 continues from restoring" in result.stages
    assert "verification failed: timed out after 1s" in result.record.message
    assert (await admin.get(ns))["spec"] == before["spec"]
    assert (await stored(operator, request)).outcome == O.ACTION_OUTCOME_ROLLED_BACK


async def test_a_rollback_to_a_revision_that_cannot_schedule_is_undone(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    # Revision 1 never ran (no node matches); revision 2 fixed that.
    await admin.create(ns, image="registry.invalid/app:v1", node_selector=NOWHERE, wait=False)
    await admin.patch(
        ns,
        "web",
        [
            {"op": "remove", "path": "/spec/template/spec/nodeSelector"},
            {"op": "replace", "path": "/spec/template/spec/containers/0/image",
             "value": "registry.invalid/app:v2"},
        ],
    )  # fmt: skip
    before = await admin.rolled_out(ns)
    pods_before = {p["metadata"]["name"] for p in await admin.pods(ns)}
    request = action_request(ns, rollback_deployment={"to_revision": 1})
    result = await make_executor(verify_timeout_seconds=3).execute(request)
    assert outcome(result) == "ACTION_OUTCOME_ROLLED_BACK", result.stages
    after = await admin.rolled_out(ns)
    assert after["spec"] == before["spec"]
    assert image_of(after) == "registry.invalid/app:v2"
    pods = await admin.pods(ns)
    assert len(pods) == 2 and all(ready(p) for p in pods)
    assert {p["metadata"]["name"] for p in pods} == pods_before  # the old pods kept serving
    spec_before, spec_after = specs(await stored(operator, request))
    assert spec_before == spec_after == before["spec"]


# -- concurrency ------------------------------------------------------------------------------


async def test_a_change_between_snapshot_and_apply_is_detected_not_clobbered(
    admin: Admin, make_executor: ExecutorFactory, operator: StorageServiceStub
) -> None:
    ns = await admin.namespace()
    await admin.create(ns, replicas=2)

    async def someone_else_deploys(stage_name: str, row: ActionRow) -> None:
        if stage_name == "snapshot":
            await admin.patch(
                ns,
                "web",
                [
                    {"op": "replace", "path": "/spec/template/spec/containers/0/image",
                     "value": "registry.invalid/app:hotfix"},
                ],
            )  # fmt: skip

    request = action_request(ns, scale_deployment={"replicas": 3})
    result = await make_executor(checkpoint=someone_else_deploys).execute(request)
    assert outcome(result) == "ACTION_OUTCOME_FAILED", result.stages
    assert "changed concurrently" in stage(result, "apply:")
    assert "changed concurrently" in result.record.message
    after = await admin.rolled_out(ns)
    assert image_of(after) == "registry.invalid/app:hotfix"
    assert after["spec"]["replicas"] == 2
    record = await stored(operator, request)
    assert record.outcome == O.ACTION_OUTCOME_FAILED
    _, spec_after = specs(record)
    assert spec_after["template"]["spec"]["containers"][0]["image"] == "registry.invalid/app:hotfix"


async def test_a_change_to_status_or_annotations_only_does_not_stop_the_action(
    admin: Admin, make_executor: ExecutorFactory
) -> None:
    ns = await admin.namespace()
    await admin.create(ns, replicas=2)

    async def someone_annotates(stage_name: str, row: ActionRow) -> None:
        if stage_name == "snapshot":
            await admin.patch(
                ns,
                "web",
                [{"op": "add", "path": "/metadata/annotations/team", "value": "shop"}],
            )

    result = await make_executor(checkpoint=someone_annotates).execute(
        action_request(ns, scale_deployment={"replicas": 3})
    )
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    after = await admin.get(ns)
    assert after["spec"]["replicas"] == 3
    assert after["metadata"]["annotations"]["team"] == "shop"


# -- the gRPC service -------------------------------------------------------------------------


@pytest.fixture
def health_changes() -> Iterator[list[tuple[str, list[str]]]]:
    """The readiness loops' health changes logged during the test: (status, failing checks)."""
    changes: list[tuple[str, list[str]]] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "health changed":
                changes.append((getattr(record, "status", ""), getattr(record, "waiting_for", [])))

    handler = Handler()
    logger = logging.getLogger("kubernaut.server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield changes
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_the_service_executes_through_grpc_and_maps_failures_to_status_codes(
    admin: Admin,
    stack: InProcessStack,
    runtime_settings: RuntimeSettings,
    postgres_dsn: str,
    operator: StorageServiceStub,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    health_changes: list[tuple[str, list[str]]],
) -> None:
    settings = runtime_settings.model_copy(
        update={"grpc_port": 0, "storage_address": stack.addresses[ServiceName.STORAGE]}
    )
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", postgres_dsn)
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_VERIFY_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_POLL_INTERVAL_SECONDS", "0.1")
    monkeypatch.setenv("KUBECONFIG", str(admin.info.kubeconfig))
    # The rate guard has tests of its own: here the session's other actions on this
    # cluster (their executors share its database) would only couple the tests.
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_MAX_ACTIONS_PER_CLUSTER_PER_MINUTE", "0")
    ns = await admin.namespace()
    await admin.create(ns)

    running = await start_service(ServiceName.EXECUTOR, settings, serve_metrics=False)
    workflow = Clients(settings, "workflow", addresses={ServiceName.EXECUTOR: running.address})
    try:
        statuses = await wait_serving(workflow, [ServiceName.EXECUTOR], timeout=20)
        assert statuses == {ServiceName.EXECUTOR: "SERVING"}, statuses
        stub = workflow.stub(ExecutorServiceStub)
        request = action_request(ns, scale_deployment={"replicas": 3})
        response = await stub.ExecuteAction(request, timeout=60)
        assert response.record.outcome == O.ACTION_OUTCOME_SUCCEEDED, response.stages
        assert same_record(response.record, await stored(operator, request))
        assert (await admin.get(ns))["spec"]["replicas"] == 3
        assert (await stub.ExecuteAction(request, timeout=60)) == response

        malformed = action_request(ns, scale_deployment={"replicas": 3})
        malformed.action_id = "not-a-uuid"
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.ExecuteAction(malformed)
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await workflow.close()
        await running.shutdown()

    # The cluster unreachable: NOT_SERVING, and UNAVAILABLE (safe to retry).
    dead = dead_kubeconfig(admin.info, tmp_path / "dead.kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(dead))
    running = await start_service(ServiceName.EXECUTOR, settings, serve_metrics=False)
    workflow = Clients(settings, "workflow", addresses={ServiceName.EXECUTOR: running.address})
    try:
        # The readiness check itself fails (not only the NOT_SERVING every service starts
        # with), and only the cluster's.
        checks = dict(running.spec.readiness)
        assert sorted(checks) == ["kubernetes", "postgresql"]
        assert await checks["kubernetes"]() is False
        assert await checks["postgresql"]() is True
        # No pause: wait for the readiness loop's verdict, which stands while the check fails.
        await eventually(
            lambda: asyncio.sleep(0, ("NOT_SERVING", ["kubernetes"]) in health_changes),
            "the readiness loop to find the cluster failing",
            10,
        )
        assert await health_of(workflow, ServiceName.EXECUTOR) == "NOT_SERVING"
        with pytest.raises(grpc.aio.AioRpcError) as unavailable:
            await workflow.stub(ExecutorServiceStub).ExecuteAction(
                action_request(ns, scale_deployment={"replicas": 4}), timeout=30
            )
        assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "safe to retry" in (unavailable.value.details() or "")
    finally:
        await workflow.close()
        await running.shutdown()

    # No cluster configured at all: FAILED_PRECONDITION.
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    running = await start_service(ServiceName.EXECUTOR, settings, serve_metrics=False)
    workflow = Clients(settings, "workflow", addresses={ServiceName.EXECUTOR: running.address})
    try:
        with pytest.raises(grpc.aio.AioRpcError) as precondition:
            await workflow.stub(ExecutorServiceStub).ExecuteAction(
                action_request(ns, scale_deployment={"replicas": 4}), timeout=30
            )
        assert precondition.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await workflow.close()
        await running.shutdown()


async def test_an_unreachable_cluster_leaves_nothing_half_done(
    admin: Admin, make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    path = dead_kubeconfig(admin.info, tmp_path / "dead.kubeconfig")
    ns = await admin.namespace()
    await admin.create(ns)
    request = action_request(ns, scale_deployment={"replicas": 3})
    with pytest.raises(ClusterUnavailable):
        await make_executor(kubeconfig=path).execute(request)
    # The retry, with the cluster back, acts.
    result = await make_executor().execute(request)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    assert result.stages[0] == "resume: attempt 2 continues from started"
