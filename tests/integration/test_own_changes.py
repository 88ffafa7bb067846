"""Kubernaut marks its own changes, and a rollout is blamed only with evidence: the real
executor acts on the session's control plane (KWOK pods), context_api reads the result,
and the rules decide on it.

The issue's repro (issue 15): a crash-looping Deployment with one revision is restarted;
the restart fails verification and is undone (revision 3 is revision 1's template again);
nothing may then roll "revision 3 back to revision 2", Kubernaut's own restart."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub

from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.scenario import BAD_IMAGE, BadRollout
from kubernaut.devstack.stages import SIMULATE_ANNOTATION, PodSimulation, simulate
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.kube import (
    ACTION_ID_ANNOTATION,
    CHANGE_CAUSE_ANNOTATION,
    MANAGED_LABEL,
    TEMPLATE_DIGEST_ANNOTATION,
    pod_spec_digest,
)
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.ai_analysis.rules import RulesSettings, analyze
from kubernaut.services.executor.changes import POD_TEMPLATE_HASH
from tests.fixtures.cluster import create_deployment, eventually
from tests.fixtures.executor import Admin, ExecutorFactory, action_request, outcome

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

Settled = Callable[[context_api_pb2.ResourceContext], bool]


@pytest.fixture
async def context_clients(
    runtime_settings: RuntimeSettings, cluster_context_api: str
) -> AsyncIterator[Clients]:
    """Calls the module's context_api (reading the cluster) as ai_analysis does."""
    clients = Clients(
        runtime_settings,
        ServiceName.AI_ANALYSIS.account,
        addresses={ServiceName.CONTEXT_API: cluster_context_api},
    )
    try:
        yield clients
    finally:
        await clients.close()


async def context_when(
    clients: Clients, subject: alert_pb2.ResourceRef, settled: Settled, what: str
) -> context_api_pb2.ResourceContext:
    stub = clients.stub(ContextAPIServiceStub)
    last: list[context_api_pb2.ResourceContext] = []

    async def read() -> context_api_pb2.ResourceContext | None:
        found = await stub.GetResourceContext(
            context_api_pb2.GetResourceContextRequest(resource=subject)
        )
        context: context_api_pb2.ResourceContext = found.context
        last[:] = [context]
        return context if settled(context) else None

    try:
        return await eventually(read, what, timeout=90)
    except AssertionError as error:
        seen = (last[0].rollout, list(last[0].pods)) if last else None
        raise AssertionError(f"{error}; last seen: {seen}") from None


def crash_looping(subject: alert_pb2.ResourceRef) -> alert_pb2.Alert:
    started = Timestamp()
    started.GetCurrentTime()
    return alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": subject.namespace, "pod": f"{subject.name}-x", "container": "web"},
        starts_at=started,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )


def by_number(context: context_api_pb2.ResourceContext) -> dict[int, context_api_pb2.Revision]:
    return {revision.number: revision for revision in context.rollout.revisions}


def crashing_on(context: context_api_pb2.ResourceContext, number: int, pods: int) -> bool:
    """Every pod crash-loops, and `pods` of them run revision `number`."""
    revision = by_number(context).get(number)
    return (
        revision is not None
        and all(p.waiting_reason == "CrashLoopBackOff" for p in context.pods)
        and sum(p.pod_template_hash == revision.pod_template_hash for p in context.pods) == pods
    )


async def test_an_undone_restart_of_a_single_revision_is_never_rolled_back_to(
    kube: LocalCluster,
    admin: Admin,
    make_executor: ExecutorFactory,
    context_clients: Clients,
) -> None:
    namespace = f"own-{uuid.uuid4().hex[:8]}"
    admin.created_namespaces.append(namespace)
    await create_deployment(
        kube,
        namespace,
        "web",
        replicas=2,
        namespace_labels={MANAGED_LABEL: "true"},
        pod_annotations=simulate(PodSimulation.CRASHLOOP),
    )
    subject = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")
    await context_when(
        context_clients,
        subject,
        lambda c: crashing_on(c, 1, 2),
        "the single revision's pods to crash-loop",
    )

    restart = action_request(namespace, restart_deployment={})
    result = await make_executor().execute(restart)
    assert outcome(result) == "ACTION_OUTCOME_ROLLED_BACK", result.stages

    context = await context_when(
        context_clients,
        subject,
        lambda c: set(by_number(c)) == {2, 3} and crashing_on(c, 3, 2),
        "revision 3 (revision 1's template again) to run its two pods",
    )
    revisions = by_number(context)
    assert revisions[2].kubernaut_action_id == restart.action_id
    assert revisions[2].change_cause == (
        f"kubernaut: restart_deployment (action {restart.action_id})"
    )
    # The undo wrote revision 1's template back exactly: its ReplicaSet (and pods) were
    # re-used, so revision 3 is the person's template, not Kubernaut's; the Deployment's
    # annotations say who wrote last.
    assert revisions[3].kubernaut_action_id == ""
    assert revisions[3].change_cause.startswith("kubernaut: undo of restart_deployment")
    assert revisions[3].pod_template_hash and revisions[2].pod_template_hash
    # The restart's one surge pod stays (the controller scales an old ReplicaSet down only
    # while enough pods are available, and none is): it is still Kubernaut's revision.
    assert {p.pod_template_hash for p in context.pods} <= {
        revisions[3].pod_template_hash,
        revisions[2].pod_template_hash,
    }
    assert not context.rollout.rollout_completed

    analysis = analyze(crash_looping(subject), subject, None, RulesSettings(), context)
    assert analysis.recommendation.action.WhichOneof("params") != "rollback_deployment"
    assert any(
        "Rollback not chosen" in reason
        and f"revision 2 is Kubernaut's own restart_deployment (action {restart.action_id})"
        in reason
        for reason in analysis.reasons
    ), analysis.reasons


async def test_a_persons_rollout_after_kubernauts_restart_is_theirs_and_rolled_back(
    admin: Admin, make_executor: ExecutorFactory, context_clients: Clients
) -> None:
    namespace = await admin.namespace(managed=True)
    await admin.create(namespace, replicas=2)
    subject = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")

    restart = action_request(namespace, restart_deployment={})
    result = await make_executor().execute(restart)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    deployment = await admin.get(namespace)
    template = deployment["spec"]["template"]
    marks = template["metadata"]["annotations"]
    assert marks[TEMPLATE_DIGEST_ANNOTATION] == pod_spec_digest(template["spec"])
    assert marks[ACTION_ID_ANNOTATION] == restart.action_id
    assert deployment["metadata"]["annotations"][ACTION_ID_ANNOTATION] == restart.action_id
    assert deployment["metadata"]["annotations"][CHANGE_CAUSE_ANNOTATION] == (
        f"kubernaut: restart_deployment (action {restart.action_id})"
    )
    context = await context_when(
        context_clients,
        subject,
        lambda c: set(by_number(c)) == {1, 2} and c.rollout.rollout_completed,
        "the restart's revision to be complete",
    )
    revisions = by_number(context)
    assert revisions[2].kubernaut_action_id == restart.action_id
    assert revisions[1].kubernaut_action_id == ""
    assert context.rollout.progressing_reason == "NewReplicaSetAvailable"
    assert {p.pod_template_hash for p in context.pods} == {revisions[2].pod_template_hash}

    # A person rolls out a new image that crash-loops. The Deployment's annotations and the
    # template's marks are sticky and come along; the changed spec breaks the digest.
    await admin.patch(
        namespace,
        "web",
        [
            {
                "op": "replace",
                "path": "/spec/template/spec/containers/0/image",
                "value": "registry.invalid/app:v2",
            },
            {
                "op": "add",
                "path": "/spec/template/metadata/annotations/"
                + SIMULATE_ANNOTATION.replace("/", "~1"),
                "value": PodSimulation.CRASHLOOP.value,
            },
        ],
    )
    context = await context_when(
        context_clients,
        subject,
        lambda c: (
            3 in by_number(c)
            and any(p.waiting_reason == "CrashLoopBackOff" for p in c.pods)
            and by_number(c)[2].ready_replicas > 0
        ),
        "the person's revision to crash-loop next to the restart's Ready pods",
    )
    revisions = by_number(context)
    assert revisions[3].kubernaut_action_id == ""
    assert revisions[3].change_cause == (
        f"kubernaut: restart_deployment (action {restart.action_id})"
    )
    replica_sets = {
        rs["metadata"]["labels"][POD_TEMPLATE_HASH]: rs
        for rs in await admin.replica_sets(namespace)
    }
    persons = replica_sets[revisions[3].pod_template_hash]["spec"]["template"]
    assert (
        persons["metadata"]["annotations"][TEMPLATE_DIGEST_ANNOTATION]
        == (marks[TEMPLATE_DIGEST_ANNOTATION])
    )
    assert not context.rollout.rollout_completed

    analysis = analyze(crash_looping(subject), subject, None, RulesSettings(), context)
    assert analysis.recommendation.action.WhichOneof("params") == "rollback_deployment", (
        analysis.reasons
    )
    assert analysis.recommendation.action.rollback_deployment.to_revision == 1


async def test_the_demos_bad_rollout_carries_the_evidence_for_its_rollback(
    kube: LocalCluster, admin: Admin, context_clients: Clients
) -> None:
    """kubernaut/devstack/scenario.py's BadRollout, as `make demo` runs it: the new pods crash-loop
    while the previous revision's stay Ready, and the rollout never completes."""
    namespace = f"demo-{uuid.uuid4().hex[:8]}"
    admin.created_namespaces.append(namespace)
    scenario = BadRollout(kube.kubeconfig, namespace)
    try:
        await scenario.deploy()
        await scenario.break_it()
    finally:
        await scenario.close()
    subject = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="checkout")
    context = await context_when(
        context_clients,
        subject,
        lambda c: (
            set(by_number(c)) == {1, 2}
            and any(p.waiting_reason == "CrashLoopBackOff" for p in c.pods)
        ),
        "the bad rollout's pods to crash-loop",
    )
    revisions = by_number(context)
    assert revisions[2].images == [BAD_IMAGE]
    assert revisions[1].ready_replicas >= 1
    assert not context.rollout.rollout_completed, context.rollout.progressing_reason
    failing = [p for p in context.pods if p.waiting_reason or not p.ready]
    assert failing and all(p.pod_template_hash == revisions[2].pod_template_hash for p in failing)
    assert not any(r.kubernaut_action_id for r in context.rollout.revisions)

    analysis = analyze(crash_looping(subject), subject, None, RulesSettings(), context)
    assert analysis.recommendation.action.WhichOneof("params") == "rollback_deployment", (
        analysis.reasons
    )
    assert analysis.recommendation.action.rollback_deployment.to_revision == 1


async def test_a_changed_spec_is_digested_as_the_api_server_stores_it(
    admin: Admin, make_executor: ExecutorFactory, context_clients: Clients
) -> None:
    """The API server stores a CPU of "0.5" as "500m" and "0.125Gi" as "128Mi": the digest
    is of the stored spec (a dry-run shows it), or the new revision would not be known as
    Kubernaut's."""
    namespace = await admin.namespace(managed=True)
    await admin.create(namespace, replicas=1)
    subject = alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web")
    request = action_request(
        namespace, update_resource_requests={"cpu": "0.5", "memory": "0.125Gi"}
    )
    result = await make_executor().execute(request)
    assert outcome(result) == "ACTION_OUTCOME_SUCCEEDED", result.stages
    template = (await admin.get(namespace))["spec"]["template"]
    assert template["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "500m",
        "memory": "128Mi",
    }
    context = await context_when(
        context_clients,
        subject,
        lambda c: set(by_number(c)) == {1, 2},
        "the new revision",
    )
    assert by_number(context)[2].kubernaut_action_id == request.action_id
    assert by_number(context)[1].kubernaut_action_id == ""
