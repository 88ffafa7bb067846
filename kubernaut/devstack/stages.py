"""KWOK Stages that make chosen pods and nodes misbehave, selected by one annotation.

KWOK plays every pod's and node's status from Stages (a selector and a status patch).
Its default Stages make nodes Ready and pods Running and Ready; the Stages here take over
for objects annotated `kubernaut.dev/simulate` (`SIMULATE_ANNOTATION`):

  pod  `crashloop`  Running; every container waiting with reason CrashLoopBackOff, its
                    restartCount rising by one every CRASHLOOP_RESTART_INTERVAL seconds,
                    lastState.terminated reason Error (exit code 1); Ready False
  pod  `oomkilled`  the same, with lastState.terminated reason OOMKilled (exit code 137)
  pod  `unready`    Running, containers running but not ready; Ready False
  pod  `pending`    stays Pending: scheduled (PodScheduled True), nothing else ever changes
  node `notready`   Ready condition False (reason KubeletNotReady), heartbeat kept fresh

Put the annotation on a pod template and every pod of that rollout misbehaves; roll back to
a template without it and the new pods are healthy. The annotation also works on a live
object: added to a Running pod, `crashloop`/`oomkilled` start at the next restart interval
and `unready` at once (`pending` only applies to pods not started yet); removed, a pod turns
Running and Ready (restart count and last state kept) and a node turns Ready again. Other
values mean nothing (the pod runs normally). Deleting any of these pods works as usual.

How KWOK picks a Stage (sigs.k8s.io/kwok v0.8.0, pkg/utils/lifecycle `Lifecycle.Match`):
every Stage whose selector matches the object is a candidate; one candidate wins outright;
among several, if every weight is 0 one is picked at random, otherwise one is picked at
random in proportion to weight and candidates of weight 0 are never picked. KWOK's default
Stages have weight 0 (`_check_default_weights` makes sure). So: each Stage here has weight
STAGE_WEIGHT > 0, and their selectors are mutually exclusive (each names one annotation
value, and Stages of the same value differ by phase or Ready status), so at most one of
them matches an object, and it always beats a default (for example `pod-ready`, which
would otherwise turn a Pending `crashloop` pod Running and Ready, or `node-initialize`,
which turns any node whose Ready is not True back to Ready). None of them matches an
object being deleted, so KWOK's `pod-delete` still removes pods.

Templates are Go templates with sprig functions (`add1`, `dig`, `toJson`) and KWOK's own
(`Now`, `Quote`, `NodeIPsWith`, `PodIPsWith`), rendered on the object as JSON; the result
is a strategic merge patch of `status` (conditions merge by type, containerStatuses is
replaced whole).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

import yaml

from kubernaut.devstack.monitoring import BlockDumper

__all__ = [
    "CRASHLOOP_RESTART_INTERVAL",
    "CRASHLOOP_START_DELAY",
    "NODE_HEARTBEAT_INTERVAL",
    "SIMULATE_ANNOTATION",
    "STAGE_WEIGHT",
    "NodeSimulation",
    "PodSimulation",
    "kwok_config",
    "simulate",
    "simulation_stages",
]

SIMULATE_ANNOTATION: Final = "kubernaut.dev/simulate"
"""The annotation (on a pod, a pod template, or a node) whose value picks a simulation."""


class PodSimulation(StrEnum):
    """Values of SIMULATE_ANNOTATION on a pod (or a pod template)."""

    CRASHLOOP = "crashloop"
    OOMKILLED = "oomkilled"
    UNREADY = "unready"
    PENDING = "pending"


class NodeSimulation(StrEnum):
    """Values of SIMULATE_ANNOTATION on a node."""

    NOTREADY = "notready"


def simulate(simulation: PodSimulation | NodeSimulation) -> dict[str, str]:
    """The annotations that select `simulation`: `{SIMULATE_ANNOTATION: value}`."""
    return {SIMULATE_ANNOTATION: simulation.value}


STAGE_WEIGHT: Final = 1000
"""Weight of every Stage here; KWOK's defaults have 0, so these always win."""
CRASHLOOP_START_DELAY: Final = 1.0
"""Seconds from a `crashloop`/`oomkilled` pod's scheduling to its first crash."""
CRASHLOOP_RESTART_INTERVAL: Final = 3.0
"""Seconds between two restarts (restartCount + 1) of a `crashloop`/`oomkilled` pod."""
NODE_HEARTBEAT_INTERVAL: Final = 30.0
"""Seconds between two heartbeats (lastHeartbeatTime) of a `notready` node."""

_ANNOTATION_KEY = f'.metadata.annotations["{SIMULATE_ANNOTATION}"]'
_POD_READY_STATUS = '.status.conditions.[] | select( .type == "Ready" ) | .status'
_NODE_READY_STATUS = _POD_READY_STATUS
_NOT_READY_POD_SIMULATIONS = (
    PodSimulation.CRASHLOOP,
    PodSimulation.OOMKILLED,
    PodSimulation.UNREADY,
)


def _jq(key: str, operator: str, *values: str) -> dict[str, Any]:
    selector: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        selector["values"] = list(values)
    return {"jq": selector}


_NOT_DELETING = _jq(".metadata.deletionTimestamp", "DoesNotExist")


def _stage(
    name: str,
    kind: str,
    *,
    annotation: str | None,
    expressions: list[dict[str, Any]],
    template: str | None,
    delay: float = 0.0,
) -> dict[str, Any]:
    selector: dict[str, Any] = {"matchExpressions": expressions}
    if annotation is not None:
        selector["matchAnnotations"] = {SIMULATE_ANNOTATION: annotation}
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": selector,
        "weight": STAGE_WEIGHT,
    }
    if delay:
        spec["delay"] = {"durationMilliseconds": round(delay * 1000)}
    # No steps: the Stage only claims the object (so that no default Stage moves it).
    spec["steps"] = (
        []
        if template is None
        else [{"patch": {"subresource": "status", "root": "status", "template": template}}]
    )
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": spec,
    }


# -- status templates ---------------------------------------------------------------------

# hostIP/podIP once (a pod simulated from Pending has none yet), and the start time.
_POD_ADDRESSES = """\
{{ if not .status.hostIP }}
{{ with NodeIPsWith .spec.nodeName }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ end }}
{{ if not .status.podIP }}
{{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ end }}
startTime: {{ or .status.startTime $now | Quote }}
phase: Running
"""

# Ready and ContainersReady False as the kubelet reports them; Initialized True.
_POD_NOT_READY_CONDITIONS = """\
{{ $names := list }}
{{ range .spec.containers }}{{ $names = append $names .name }}{{ end }}
{{ $unready := printf "containers with unready status: [%s]" ( join " " $names ) }}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "False"
  reason: ContainersNotReady
  message: {{ $unready | Quote }}
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: ContainersNotReady
  message: {{ $unready | Quote }}
  lastTransitionTime: {{ $now | Quote }}
"""

# The previous status of container $i (an empty dict when there is none), for `dig`.
_PREVIOUS = """\
{{ $old := dict }}
{{ if lt $i ( len $previous ) }}{{ $old = index $previous $i }}{{ end }}
"""


def _crash_template(reason: str, exit_code: int) -> str:
    """Every container crashed (again): restartCount + 1, waiting in CrashLoopBackOff."""
    return (
        (
            """\
{{ $now := Now }}
{{ $pod := . }}
{{ $previous := or .status.containerStatuses list }}
"""
            + _POD_NOT_READY_CONDITIONS
            + """\
containerStatuses:
{{ range $i, $c := .spec.containers }}
"""
            + _PREVIOUS
            + """\
- name: {{ $c.name | Quote }}
  image: {{ $c.image | Quote }}
  ready: false
  started: false
  restartCount: {{ add1 ( dig "restartCount" 0 $old ) }}
  state:
    waiting:
      reason: CrashLoopBackOff
      message: {{ printf "back-off restarting failed container %s in pod %s_%s(%s)" \
$c.name $pod.metadata.name $pod.metadata.namespace $pod.metadata.uid | Quote }}
  lastState:
    terminated:
      exitCode: EXIT_CODE
      reason: REASON
      startedAt: {{ dig "lastState" "terminated" "finishedAt" $now $old | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""
            + _POD_ADDRESSES
        )
        .replace("EXIT_CODE", str(exit_code))
        .replace("REASON", reason)
    )


# Ready and ContainersReady True, as for a healthy pod.
_POD_READY_CONDITIONS = """\
conditions:
- type: Initialized
  status: "True"
  reason: ""
  message: ""
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  reason: ""
  message: ""
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "True"
  reason: ""
  message: ""
  lastTransitionTime: {{ $now | Quote }}
"""


def _running_template(*, ready: bool) -> str:
    """Every container running (restart count and last state kept), ready or not."""
    return (
        """\
{{ $now := Now }}
{{ $previous := or .status.containerStatuses list }}
"""
        + (_POD_READY_CONDITIONS if ready else _POD_NOT_READY_CONDITIONS)
        + """\
containerStatuses:
{{ range $i, $c := .spec.containers }}
"""
        + _PREVIOUS
        + """\
- name: {{ $c.name | Quote }}
  image: {{ $c.image | Quote }}
  ready: CONTAINER_READY
  started: true
  restartCount: {{ dig "restartCount" 0 $old }}
  {{ with dig "lastState" "" $old }}
  lastState: {{ toJson . }}
  {{ end }}
  state:
    running:
      startedAt: {{ dig "state" "running" "startedAt" $now $old | Quote }}
{{ end }}
"""
        + _POD_ADDRESSES
    ).replace("CONTAINER_READY", "true" if ready else "false")


_UNREADY_TEMPLATE = _running_template(ready=False)
# A pod whose annotation went away: running and ready, restart count and last state kept.
_RECOVER_TEMPLATE = _running_template(ready=True)

_NODE_NOT_READY_TEMPLATE = f"""\
{{{{ $now := Now }}}}
conditions:
- type: Ready
  status: "False"
  reason: KubeletNotReady
  message: "container runtime is down ({SIMULATE_ANNOTATION}={NodeSimulation.NOTREADY.value})"
  lastHeartbeatTime: {{{{ $now | Quote }}}}
  lastTransitionTime: {{{{ $now | Quote }}}}
"""

# Conditions merge by type: this only moves every condition's heartbeat.
_NODE_HEARTBEAT_TEMPLATE = """\
{{ $now := Now }}
conditions:
{{ range .status.conditions }}
- type: {{ .type | Quote }}
  lastHeartbeatTime: {{ $now | Quote }}
{{ end }}
"""


# -- the Stages -----------------------------------------------------------------------------


def simulation_stages() -> list[dict[str, Any]]:
    """The Stage objects (as dicts) behind SIMULATE_ANNOTATION, in the order KWOK gets them."""
    stages: list[dict[str, Any]] = []
    for simulation, reason, exit_code in (
        (PodSimulation.CRASHLOOP, "Error", 1),
        (PodSimulation.OOMKILLED, "OOMKilled", 137),
    ):
        template = _crash_template(reason, exit_code)
        # First crash soon after scheduling; then one restart per interval, for ever.
        # A Running pod annotated later starts crash-looping at its next interval.
        for suffix, phase, delay in (
            ("start", "Pending", CRASHLOOP_START_DELAY),
            ("restart", "Running", CRASHLOOP_RESTART_INTERVAL),
        ):
            stages.append(
                _stage(
                    f"kubernaut-pod-{simulation.value}-{suffix}",
                    "Pod",
                    annotation=simulation.value,
                    expressions=[_NOT_DELETING, _jq(".status.phase", "In", phase)],
                    template=template,
                    delay=delay,
                )
            )
    # Pending (scheduled), or Running and Ready (annotated later): Running, not ready. Once
    # Ready is False nothing matches, so the pod stays so.
    stages.append(
        _stage(
            f"kubernaut-pod-{PodSimulation.UNREADY.value}",
            "Pod",
            annotation=PodSimulation.UNREADY.value,
            expressions=[
                _NOT_DELETING,
                _jq(".status.phase", "In", "Pending", "Running"),
                _jq(_POD_READY_STATUS, "NotIn", "False"),
            ],
            template=_UNREADY_TEMPLATE,
        )
    )
    # Claims a Pending pod and changes nothing, so `pod-ready` never runs on it.
    stages.append(
        _stage(
            f"kubernaut-pod-{PodSimulation.PENDING.value}",
            "Pod",
            annotation=PodSimulation.PENDING.value,
            expressions=[_NOT_DELETING, _jq(".status.phase", "In", "Pending")],
            template=None,
        )
    )
    # Heals a Running pod whose containers are not ready once the annotation no longer asks
    # for that. Pods a NotReady node's controller marked unready keep ready containers, so
    # this never fights the node lifecycle controller; Job pods are left to `pod-complete`.
    stages.append(
        _stage(
            "kubernaut-pod-recover",
            "Pod",
            annotation=None,
            expressions=[
                _NOT_DELETING,
                _jq(_ANNOTATION_KEY, "NotIn", *(s.value for s in _NOT_READY_POD_SIMULATIONS)),
                _jq(".status.phase", "In", "Running"),
                _jq(".status.containerStatuses.[].ready", "In", "false"),
                _jq(".metadata.ownerReferences.[].kind", "NotIn", "Job"),
            ],
            template=_RECOVER_TEMPLATE,
        )
    )
    # Nodes: an initialized node (it has a Ready condition) whose Ready is not False turns
    # NotReady at once; then a heartbeat keeps it so (and keeps `node-initialize` away).
    notready = NodeSimulation.NOTREADY.value
    stages.append(
        _stage(
            f"kubernaut-node-{notready}",
            "Node",
            annotation=notready,
            expressions=[_jq(_NODE_READY_STATUS, "In", "True", "Unknown")],
            template=_NODE_NOT_READY_TEMPLATE,
        )
    )
    stages.append(
        _stage(
            f"kubernaut-node-{notready}-heartbeat",
            "Node",
            annotation=notready,
            expressions=[_jq(_NODE_READY_STATUS, "In", "False")],
            template=_NODE_HEARTBEAT_TEMPLATE,
            delay=NODE_HEARTBEAT_INTERVAL,
        )
    )
    return stages


def _check_default_weights(default_stages: str) -> None:
    """Raise ValueError when a default Stage has a weight (ours would no longer always win)."""
    for document in yaml.safe_load_all(default_stages):
        if not isinstance(document, dict) or document.get("kind") != "Stage":
            continue
        spec = document.get("spec") or {}
        if spec.get("weight") or spec.get("weightFrom"):
            name = (document.get("metadata") or {}).get("name")
            raise ValueError(f"KWOK's default Stage {name!r} has a weight; see {__name__}")


def kwok_config(default_stages: str) -> str:
    """KWOK's `--config` file: its default Stages (YAML documents) followed by ours."""
    _check_default_weights(default_stages)
    ours = yaml.dump_all(simulation_stages(), Dumper=BlockDumper, sort_keys=False, width=100_000)
    header = f"# Stages for {SIMULATE_ANNOTATION} (kubernaut/devstack/stages.py)\n"
    return default_stages.rstrip("\n") + "\n---\n" + header + ours
