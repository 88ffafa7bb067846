"""Rules for nodes: a node that misbehaves is cordoned, so that no new pod lands on it; its
pods are not moved by the rules alone."""

from __future__ import annotations

from kubernaut.common.v1 import remediation_pb2

from kubernaut.services.ai_analysis.rules._common import (
    NODE,
    Case,
    needs_kind,
    no_action,
    remediate,
)

_CONFIDENCE_NOT_READY = 0.6
_CONFIDENCE_UNHEALTHY = 0.5

_NO_DRAIN = (
    "Its pods are not moved: drain_node (which evicts within PodDisruptionBudgets) is left "
    "to a person, since whether the other nodes can hold them is not in the evidence."
)


def _cordon(case: Case, symptom: str, why: str, confidence: float) -> remediation_pb2.Analysis:
    refusal = needs_kind(case, "cordon_node", (NODE,))
    if refusal is not None:
        return refusal
    if case.evidence is None:
        return no_action(
            f"{symptom} The node could not be read, so whether it still misbehaves is "
            "unknown; nothing is done automatically."
        )
    return remediate(
        remediation_pb2.ActionParams(cordon_node=remediation_pb2.CordonNodeParams()),
        case.subject,
        confidence,
        [symptom, why, _NO_DRAIN],
    )


def node_not_ready(case: Case) -> remediation_pb2.Analysis:
    return _cordon(
        case,
        f"{case.name}: {case.what} has been NotReady for 15 minutes and is not cordoned.",
        "Cordoning it keeps new pods off it while it is looked at; uncordon_node undoes it.",
        _CONFIDENCE_NOT_READY,
    )


def readiness_flapping(case: Case) -> remediation_pb2.Analysis:
    return _cordon(
        case,
        f"{case.name}: {case.what} has turned Ready and NotReady more than twice in 15 minutes.",
        "Cordoning it keeps new pods off a node that keeps dropping out; uncordon_node undoes it.",
        _CONFIDENCE_UNHEALTHY,
    )


def pleg_slow(case: Case) -> remediation_pb2.Analysis:
    return _cordon(
        case,
        f"{case.name}: the kubelet of {case.what} takes 10 s or more to relist its containers.",
        "A slow pod lifecycle event generator means a struggling container runtime, which "
        "often turns the node NotReady; cordoning keeps new pods off it meanwhile.",
        _CONFIDENCE_UNHEALTHY,
    )


__all__ = ["node_not_ready", "pleg_slow", "readiness_flapping"]
