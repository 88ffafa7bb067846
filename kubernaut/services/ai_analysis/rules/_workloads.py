"""Rules for pods, StatefulSets, DaemonSets, Jobs, autoscalers, volumes and CPU limits:
each acts only on what the evidence shows, and says what is missing when it does not act."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

# The `kubernetes` package's parser, as the executor uses (it ships no type information).
from kubernaut.services.ai_analysis.quantities import quantity
from kubernaut.services.ai_analysis.rules._common import (
    DAEMONSET,
    HPA,
    JOB,
    POD,
    PVC,
    STATEFULSET,
    WORKLOADS,
    Case,
    container_label,
    needs_kind,
    no_action,
    remediate,
)
from kubernaut.services.ai_analysis.rules._deployments import (
    CANNOT_START,
    cannot_start,
    crash_looping,
    diagnose_pods,
    no_room,
)

_CONFIDENCE_DELETE_STUCK = 0.55
_CONFIDENCE_RESTART_DAEMONSET = 0.55
_CONFIDENCE_RESTART_STUCK = 0.6
_CONFIDENCE_RERUN = 0.6
_CONFIDENCE_CPU = 0.5
_CONFIDENCE_HPA = 0.55
_CONFIDENCE_PVC = 0.55

# The executor names a rerun `<job>-rerun-<first 8 characters of the action id>`.
_RERUN = re.compile(r"-rerun-[0-9a-f]{8}$")


_REASON_BY_NAME = {
    "imagepullbackoff": "ImagePullBackOff",
    "kubepodimagepullbackoff": "ImagePullBackOff",
}


def container_waiting(case: Case) -> remediation_pb2.Analysis:
    """Crash loops follow the crash-loop rule; an image or config that cannot start rolls
    back the rollout that brought it; any other wait is left alone."""
    # An alert named after the reason (an alias) need not carry the label.
    reason = case.alert.labels.get("reason", "") or _REASON_BY_NAME.get(case.name.casefold(), "")
    if reason == "CrashLoopBackOff":
        return crash_looping(case)
    symptom = f"{case.name}: a container of {case.what} has been waiting for an hour."
    if reason in CANNOT_START:
        return cannot_start(case, symptom, reason)
    # Not echoed: an unknown reason is untrusted text.
    return no_action(
        f"{symptom} Its waiting reason is not one a catalogue action clears (a crash loop, "
        "or an image or config a rollback restores); a slow volume, secret or image pull "
        "is left to a person."
    )


def pod_not_ready(case: Case) -> remediation_pb2.Analysis:
    """Pending or Unknown pods of a workload: diagnosed by the workload's kind."""
    symptom = f"{case.name}: a pod of {case.what} has not been ready for 15 minutes."
    if case.subject.kind in (STATEFULSET, DAEMONSET):
        return stuck_pods(case, symptom)
    refusal = needs_kind(case, "restart_deployment")
    if refusal is not None:
        return refusal
    evidence = case.evidence
    if evidence is None:
        return no_action(f"{symptom} No evidence about its pods could be read: {_UNKNOWN_POD}")
    room = no_room(evidence)
    if room:
        return no_action(
            f"{symptom} The cluster has no room for it ({room}); capacity must be added "
            "by a person."
        )
    return diagnose_pods(case, symptom, evidence, _NO_CAUSE)


_UNKNOWN_POD = "which pod is stuck, and why, is unknown, so nothing is done automatically."
_NO_CAUSE = (
    "Its pods show no cause Kubernaut can fix (no unschedulable, stuck or crashing pod; a pod "
    "in phase Unknown is its node's problem), so nothing is done automatically."
)


def _ordinal(pod: context_api_pb2.PodState) -> tuple[int, str]:
    tail = pod.name.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 30, pod.name)


def stuck_pods(case: Case, symptom: str) -> remediation_pb2.Analysis:
    """A StatefulSet's or DaemonSet's pods that run but are not Ready: delete the stuck one
    (the lowest ordinal: an ordered StatefulSet waits on it), or restart a DaemonSet whose
    pods are stuck on several nodes. Unschedulable, crashing and unstartable pods are not
    fixed by a new pod, so they are left to a person."""
    kinds = (STATEFULSET, DAEMONSET)
    refusal = needs_kind(case, "delete_pod", kinds)
    if refusal is not None:
        return refusal
    evidence = case.evidence
    if evidence is None:
        return no_action(f"{symptom} No evidence about its pods could be read: {_UNKNOWN_POD}")
    room = no_room(evidence)
    if room:
        return no_action(
            f"{symptom} The cluster has no room for its pods ({room}); capacity (or a "
            "toleration) must be added by a person."
        )
    waiting = {pod.waiting_reason for pod in evidence.pods if pod.waiting_reason}
    if waiting & CANNOT_START or "CrashLoopBackOff" in waiting:
        reasons = ", ".join(sorted(waiting & (CANNOT_START | {"CrashLoopBackOff"})))
        return no_action(
            f"{symptom} Its pods fail to start ({reasons}): a new pod would fail alike, and "
            f"no catalogue action rolls back a {case.subject.kind}'s template, so nothing "
            "is done automatically."
        )
    stuck = sorted(
        (pod for pod in evidence.pods if pod.phase == "Running" and not pod.ready),
        key=_ordinal,
    )
    if not stuck:
        return no_action(f"{symptom} {_NO_CAUSE}")
    if case.subject.kind == DAEMONSET and len(stuck) > 1:
        return remediate(
            remediation_pb2.ActionParams(
                restart_daemonset=remediation_pb2.RestartDaemonSetParams()
            ),
            case.subject,
            _CONFIDENCE_RESTART_DAEMONSET,
            [
                symptom,
                f"{len(stuck)} of its pods run but are not Ready "
                f"({', '.join(p.name for p in stuck[:5])}).",
                "A rolling restart replaces them node by node.",
            ],
        )
    pod = stuck[0]
    target = alert_pb2.ResourceRef(
        cluster=case.subject.cluster, namespace=case.subject.namespace, kind=POD, name=pod.name
    )
    why = (
        "an ordered StatefulSet waits on its lowest stuck ordinal"
        if case.subject.kind == STATEFULSET
        else "it is the only stuck pod"
    )
    return remediate(
        remediation_pb2.ActionParams(delete_pod=remediation_pb2.DeletePodParams()),
        target,
        _CONFIDENCE_DELETE_STUCK,
        [
            symptom,
            f"Pod {pod.name} runs but is not Ready, with no crash or start failure "
            f"({len(stuck)} stuck pod(s); {why}).",
            f"Deleting it lets the {case.subject.kind} controller start it afresh; its "
            "volumes and identity stay.",
        ],
    )


def statefulset_replicas(case: Case) -> remediation_pb2.Analysis:
    return stuck_pods(
        case, f"{case.name}: {case.what} has had fewer ready replicas than desired for 15 minutes."
    )


def statefulset_update(case: Case) -> remediation_pb2.Analysis:
    return stuck_pods(case, f"{case.name}: the update of {case.what} has not rolled out.")


def daemonset_rollout(case: Case) -> remediation_pb2.Analysis:
    return stuck_pods(case, f"{case.name}: the rollout of {case.what} has not progressed.")


def job_failed(case: Case) -> remediation_pb2.Analysis:
    """Rerun a failed Job once: never a rerun of Kubernaut's own, never without evidence
    that it is there, and never when its pods could not even start."""
    refusal = needs_kind(case, "rerun_failed_job", (JOB,))
    if refusal is not None:
        return refusal
    symptom = f"{case.name}: {case.what} failed."
    if _RERUN.search(case.subject.name):
        return no_action(
            f"{symptom} It is Kubernaut's own rerun of a failed Job; a Job is rerun once "
            "only, so it is left to a person."
        )
    evidence = case.evidence
    if evidence is None:
        return no_action(
            f"{symptom} The Job could not be read, so whether it is still there and failed "
            "is unknown; nothing is done automatically."
        )
    waiting = {pod.waiting_reason for pod in evidence.pods if pod.waiting_reason}
    if waiting & CANNOT_START:
        return no_action(
            f"{symptom} Its pods cannot start ({', '.join(sorted(waiting & CANNOT_START))}); "
            "a rerun would fail alike, so nothing is done automatically."
        )
    return remediate(
        remediation_pb2.ActionParams(rerun_failed_job=remediation_pb2.RerunFailedJobParams()),
        case.subject,
        _CONFIDENCE_RERUN,
        [
            symptom,
            "Its pods started (no image or config error), so the failure may be transient "
            "(a dependency that was down).",
            "A rerun from its template is tried once; the failed Job stays for inspection, "
            "and a failing rerun is not rerun again.",
        ],
    )


def hpa_maxed_out(case: Case) -> remediation_pb2.Analysis:
    """Raise a maxed-out autoscaler's maxReplicas by hpa_max_factor (at least one more),
    never above hpa_max_replicas_cap; its minReplicas stays. Only when the evidence shows
    it at its maximum, scaling a target that exists."""
    refusal = needs_kind(case, "update_hpa", (HPA,))
    if refusal is not None:
        return refusal
    settings = case.settings
    symptom = f"{case.name}: {case.what} has run at its maxReplicas for 15 minutes."
    evidence = case.evidence
    if evidence is None or not evidence.HasField("hpa"):
        return no_action(
            f"{symptom} The autoscaler could not be read, so its maxReplicas (and whether "
            "it is still at it) is unknown; nothing is done automatically."
        )
    hpa = evidence.hpa
    target = f"{hpa.target_kind} {case.subject.namespace}/{hpa.target_name}"
    if not hpa.target_found:
        return no_action(
            f"{symptom} Its scale target {target} does not exist (or is not a Deployment, "
            "StatefulSet or ReplicaSet Kubernaut reads), so more replicas of it would not "
            "help; nothing is done automatically."
        )
    if not hpa.at_max:
        return no_action(
            f"{symptom} It runs {hpa.current_replicas} of at most {hpa.max_replicas} "
            "replicas now, so it is no longer at its maximum; nothing is done automatically."
        )
    if hpa.min_replicas >= hpa.max_replicas:
        return no_action(
            f"{symptom} Its minReplicas equals its maxReplicas ({hpa.max_replicas}): the "
            "replica count is pinned on purpose, so it is left to its owners."
        )
    cap = settings.hpa_max_replicas_cap
    if hpa.max_replicas >= cap:
        return no_action(
            f"{symptom} Its maxReplicas {hpa.max_replicas} is already at or above the cap "
            f"of {cap} (hpa_max_replicas_cap), so it is left to a person."
        )
    raised = min(
        cap, max(hpa.max_replicas + 1, math.ceil(hpa.max_replicas * settings.hpa_max_factor))
    )
    limited = (
        f" (ScalingLimited: {hpa.scaling_limited_reason})" if hpa.scaling_limited_reason else ""
    )
    return remediate(
        remediation_pb2.ActionParams(
            # min_replicas 0: the executor keeps the autoscaler's own.
            update_hpa=remediation_pb2.UpdateHpaParams(max_replicas=raised)
        ),
        case.subject,
        _CONFIDENCE_HPA,
        [
            symptom,
            f"It runs {hpa.current_replicas} replicas of {target}, its maxReplicas "
            f"{hpa.max_replicas}{limited}.",
            f"Raising maxReplicas to {raised} (x{settings.hpa_max_factor:g}, capped at {cap}) "
            f"lets it add replicas as load asks; minReplicas stays {hpa.min_replicas}.",
            "Confidence is moderate: whether the cluster and quota have room for more "
            "replicas is not in the evidence.",
        ],
    )


def pvc_filling_up(case: Case) -> remediation_pb2.Analysis:
    """Expand a filling claim by pvc_growth_factor, rounded up to whole Gi and never above
    pvc_size_cap, when it is bound, not already resizing, and its StorageClass allows
    expansion."""
    refusal = needs_kind(case, "expand_pvc", (PVC,))
    if refusal is not None:
        return refusal
    settings = case.settings
    symptom = f"{case.name}: the volume of {case.what} is filling up."
    evidence = case.evidence
    if evidence is None or not evidence.HasField("pvc"):
        return no_action(
            f"{symptom} The claim could not be read, so its size and whether its "
            "StorageClass allows expansion are unknown; nothing is done automatically."
        )
    pvc = evidence.pvc
    if pvc.phase != "Bound":
        return no_action(
            f"{symptom} The claim is {pvc.phase or 'in no phase'}, not Bound, so there is "
            "no volume to expand; nothing is done automatically."
        )
    if not pvc.storage_class:
        return no_action(
            f"{symptom} The claim names no StorageClass, so nothing allows it to expand; "
            "it is left to a person."
        )
    if not pvc.expansion_allowed:
        return no_action(
            f"{symptom} Its StorageClass {pvc.storage_class} does not allow volume "
            "expansion (allowVolumeExpansion), so the claim cannot grow; the data must be "
            "cleaned up or moved by a person."
        )
    if pvc.resize_condition:
        return no_action(
            f"{symptom} The claim shows {pvc.resize_condition}: a resize is under way or "
            "failed, so another is not started; it is left to a person."
        )
    try:
        requested = quantity(pvc.requested)
        size = max(requested, quantity(pvc.capacity)) if pvc.capacity else requested
        cap = quantity(settings.pvc_size_cap)
    except ValueError:
        return no_action(
            f"{symptom} The claim's size ({pvc.requested or 'none requested'}) is not a "
            "quantity Kubernaut reads, so nothing is done automatically."
        )
    if pvc.capacity and requested > quantity(pvc.capacity):
        return no_action(
            f"{symptom} It requests {pvc.requested} but has {pvc.capacity}: an earlier "
            "expansion has not finished, so another is not started."
        )
    if size >= cap:
        return no_action(
            f"{symptom} It has {pvc.capacity or pvc.requested} (requests {pvc.requested}), "
            f"already at or above the cap of {settings.pvc_size_cap} (pvc_size_cap), so it "
            "is left to a person."
        )
    grown = math.ceil(size * Decimal(str(settings.pvc_growth_factor)) / _GI)
    new_size = f"{grown}Gi" if grown * _GI <= cap else settings.pvc_size_cap
    capped = " (the cap)" if new_size == settings.pvc_size_cap else ""
    return remediate(
        remediation_pb2.ActionParams(expand_pvc=remediation_pb2.ExpandPvcParams(size=new_size)),
        case.subject,
        _CONFIDENCE_PVC,
        [
            symptom,
            f"It is Bound with {pvc.capacity or pvc.requested} (requests {pvc.requested}); "
            f"its StorageClass {pvc.storage_class} allows volume expansion.",
            f"Expanding it to {new_size}{capped} (x{settings.pvc_growth_factor:g}, rounded "
            f"up to whole Gi, at most {settings.pvc_size_cap}) buys room.",
            "Confidence is moderate: a volume cannot shrink, and whether something writes "
            "without bound (a bigger disk only buys time) is not in the evidence.",
        ],
    )


_GI = Decimal(1024**3)


def cpu_throttling(case: Case) -> remediation_pb2.Analysis:
    refusal = needs_kind(case, "increase_cpu_limit", WORKLOADS)
    if refusal is not None:
        return refusal
    container, bad = container_label(case)
    if bad is not None:
        return bad
    settings = case.settings
    which = f"container {container!r}" if container else "the only container"
    return remediate(
        remediation_pb2.ActionParams(
            increase_cpu_limit=remediation_pb2.IncreaseCpuLimitParams(
                container=container, factor=settings.cpu_factor, max_limit=settings.cpu_cap
            )
        ),
        case.subject,
        _CONFIDENCE_CPU,
        [
            f"{case.name}: {which} of {case.what} is CPU-throttled for more than a quarter "
            "of its periods.",
            f"Raising its CPU limit x{settings.cpu_factor:g}, capped at {settings.cpu_cap}, "
            "lets it use the CPU it asks for.",
            "Confidence is low: whether its node has spare CPU is not in the evidence; the "
            "executor refuses a limit already at the cap.",
        ],
    )


__all__ = [
    "container_waiting",
    "cpu_throttling",
    "daemonset_rollout",
    "hpa_maxed_out",
    "job_failed",
    "pod_not_ready",
    "pvc_filling_up",
    "statefulset_replicas",
    "statefulset_update",
    "stuck_pods",
]
