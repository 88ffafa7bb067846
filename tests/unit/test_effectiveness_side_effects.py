"""Side effects: which alerts AlertManager holds are the action's doing, how sure that is,
and how they lower the verdict."""

from __future__ import annotations

import datetime as dt

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.services.effectiveness.assessment import ActiveAlert, Baseline, Judgement
from kubernaut.services.effectiveness.side_effects import (
    Confidence,
    SideEffect,
    SideEffectEvidence,
    alert_side_effects,
    by_confidence,
    event_side_effects,
    neighbour_side_effects,
    weigh_side_effects,
)
from kubernaut.services.signals import NeighbourChange

ACTED = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)
TARGET = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout")
ANSWERED = alert_pb2.Alert(
    name="KubePodCrashLooping", labels={"namespace": "shop", "pod": "checkout-a-1"}
)
PODS = {"checkout-a-1", "checkout-b-1"}


def held(name: str, minutes: float, **labels: str) -> ActiveAlert:
    started = (ACTED + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    return ActiveAlert({"alertname": name, **labels}, "active", started)


def test_alerts_after_the_action_within_its_reach_are_side_effects_by_confidence() -> None:
    found = alert_side_effects(
        [
            held("KubePodNotReady", 1, namespace="shop", pod="checkout-b-1"),
            held("KubeDeploymentReplicasMismatch", 2, namespace="shop", deployment="cart"),
            held("KubeNodeNotReady", 3, node="node-2"),
            # Before the action: not its doing.
            held("KubeDeploymentReplicasMismatch", -5, namespace="shop", deployment="search"),
            # Elsewhere: not within its reach.
            held("KubePodNotReady", 1, namespace="payments", pod="pay-1"),
            held("KubeNodeNotReady", 1, node="node-9"),
            # The alert the action answered, on a new pod: judged as that alert.
            held("KubePodCrashLooping", 1, namespace="shop", pod="checkout-b-1"),
        ],
        ANSWERED,
        TARGET,
        PODS,
        {"node-1", "node-2"},
        ACTED,
    )
    assert [(e.confidence, e.what.split(" ")[0]) for e in found] == [
        (Confidence.HIGH, "KubePodNotReady"),
        (Confidence.MEDIUM, "KubeDeploymentReplicasMismatch"),
        (Confidence.LOW, "KubeNodeNotReady"),
    ]
    assert "on the target (pod=checkout-b-1)" in found[0].what
    assert "on namespace shop (deployment=cart)" in found[1].what
    assert "node node-2" in found[2].what


def _judged(verdict: remediation_pb2.Verdict.ValueType) -> Judgement:
    return Judgement(verdict, "pods are healthy and the alert resolved", ("x", "pods: fine"))


def test_a_side_effect_keeps_a_fix_from_being_effective() -> None:
    serious = SideEffectEvidence((SideEffect(Confidence.MEDIUM, "KubePodNotReady on x"),))
    slight = SideEffectEvidence((SideEffect(Confidence.LOW, "KubeNodeNotReady on node-2"),))
    effective = remediation_pb2.VERDICT_EFFECTIVE
    final = weigh_side_effects(_judged(effective), serious, final=True)
    assert final.verdict == remediation_pb2.VERDICT_INEFFECTIVE
    assert final.reason.startswith("a side effect followed the action (medium")
    assert "side effect (medium): KubePodNotReady on x" in final.evidence
    assert weigh_side_effects(_judged(effective), serious, final=False).verdict == (
        remediation_pb2.VERDICT_UNKNOWN
    )
    # A low-confidence one never makes it ineffective, but it is not effective either.
    assert weigh_side_effects(_judged(effective), slight, final=True).verdict == (
        remediation_pb2.VERDICT_UNKNOWN
    )
    clean = weigh_side_effects(
        _judged(effective), SideEffectEvidence((), "no new alert in namespace shop"), final=True
    )
    assert clean.verdict == effective
    assert "side effects: none (no new alert in namespace shop)" in clean.evidence
    blind = SideEffectEvidence.none("AlertManager is not configured")
    assert blind.facts == ("side effects: not looked for: AlertManager is not configured",)


def _event(kind_name: str, minutes: float, kind: str = "Warning") -> context_api_pb2.EventSummary:
    event = context_api_pb2.EventSummary(
        type=kind,
        reason="BackOff",
        message="Back-off restarting failed container",
        object=kind_name,
        count=3,
    )
    event.last_seen.FromDatetime(ACTED + dt.timedelta(minutes=minutes))
    return event


def test_warnings_on_what_the_action_made_are_side_effects() -> None:
    context = context_api_pb2.ResourceContext(
        workload=TARGET,
        pods=[
            context_api_pb2.PodState(name="checkout-b-1"),
            context_api_pb2.PodState(name="checkout-a-1"),
        ],
        events=[
            _event("Pod/checkout-b-1", 1),  # a pod the rollback made
            _event("Pod/checkout-a-1", 1),  # there before: the problem itself
            _event("ReplicaSet/checkout-7f9d8", 2),  # the workload's own
            _event("Pod/checkout-b-1", -3),  # before the action
            _event("Pod/checkout-b-1", 1, kind="Normal"),
            _event("Deployment/cart", 1),  # someone else's
        ],
    )
    baseline = Baseline({"checkout-a-1": 4})
    found = event_side_effects(context, baseline, ACTED)
    assert [e.what.split(" since")[0] for e in found] == [
        "Warning BackOff on Pod/checkout-b-1",
        "Warning BackOff on ReplicaSet/checkout-7f9d8",
    ]
    assert all(e.confidence is Confidence.HIGH for e in found)
    # Without a baseline, no pod is known to be new.
    unknown = event_side_effects(context, Baseline(None, "not taken"), ACTED)
    assert [e.what.split(" since")[0] for e in unknown] == [
        "Warning BackOff on ReplicaSet/checkout-7f9d8"
    ]


def test_neighbours_gone_unready_behind_a_service_or_on_a_node_are_side_effects() -> None:
    found = neighbour_side_effects(
        [
            NeighbourChange("Service shop", 0, 2, ("shop/cart-a", "shop/cart-b")),
            NeighbourChange("node kwok-node-1", 1, 1, ("shop/search-a",)),  # as before
            NeighbourChange("node kwok-node-2", 2, 0, ()),  # better
        ]
    )
    (effect,) = found
    assert effect.confidence is Confidence.MEDIUM
    assert effect.what == (
        "2 more neighbour pod(s) not Ready behind Service shop than before the action"
        " (0 then, 2 now: shop/cart-a, shop/cart-b)"
    )
    mixed = by_confidence(
        [SideEffect(Confidence.LOW, "l"), effect, SideEffect(Confidence.HIGH, "h")]
    )
    assert [e.confidence for e in mixed] == [Confidence.HIGH, Confidence.MEDIUM, Confidence.LOW]
