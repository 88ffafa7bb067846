"""A workload's state as the quiet period compares it: which version of the workload runs
(generation, pod template digest, images) and how its pods fare (restarts).

One function for every reader: the executor reads plain JSON, context_api reads
kubernetes_asyncio models (convert them with `ApiClient().sanitize_for_serialization`), so
both compute the same digest of the same template. Storage compares two states with
`changes_since`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Final

from kubernaut.common.v1 import remediation_pb2

from kubernaut.runtime.kube import pod_spec_digest, without_nulls

# Kubernaut's own marks on what it writes (e.g. kubernaut.ai/restartedAt, the template
# digest annotation) are not a change of the workload by someone else.
KUBERNAUT_ANNOTATION_PREFIX: Final = "kubernaut.ai/"
# The kinds whose state is read: they have a pod template and pods of their own.
STATE_KINDS: Final = frozenset({"Deployment", "StatefulSet", "DaemonSet"})


def canonical_template(template: Mapping[str, Any] | None) -> dict[str, Any]:
    """The pod template as compared: nulls dropped, Kubernaut's annotations removed."""
    cleaned: dict[str, Any] = without_nulls(dict(template or {}))
    metadata = cleaned.get("metadata")
    if isinstance(metadata, dict):
        annotations = {
            k: v
            for k, v in (metadata.get("annotations") or {}).items()
            if not k.startswith(KUBERNAUT_ANNOTATION_PREFIX)
        }
        if annotations:
            metadata["annotations"] = annotations
        else:
            metadata.pop("annotations", None)
        if not metadata:
            cleaned.pop("metadata")
    return cleaned


def template_digest(template: Mapping[str, Any] | None) -> str:
    """sha256 (hex) of the canonical template as JSON with sorted keys (the canonical-JSON
    digest Kubernaut marks its own templates with, over the whole template here: a label
    or someone else's annotation is a new version too)."""
    return pod_spec_digest(canonical_template(template))


def _template_images(template: Mapping[str, Any]) -> list[str]:
    spec = template.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return [str(c.get("image") or "") for c in containers]


def _pod_restarts(pod: Mapping[str, Any]) -> int:
    status = pod.get("status") or {}
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def workload_state(
    workload: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    observed_at: dt.datetime | None = None,
) -> remediation_pb2.WorkloadState:
    """The state of a workload (as the API server's JSON) and its pods. Pods being deleted
    do not count: an old ReplicaSet's crash-looping pods on their way out would otherwise
    make the fixed workload look as bad as before, and their leaving look like a fix."""
    template = (workload.get("spec") or {}).get("template") or {}
    restarts = sum(
        _pod_restarts(pod)
        for pod in pods
        if not (pod.get("metadata") or {}).get("deletionTimestamp")
    )
    state = remediation_pb2.WorkloadState(
        generation=int((workload.get("metadata") or {}).get("generation") or 0),
        template_digest=template_digest(template),
        images=_template_images(template),
        restarts=min(restarts, 2**31 - 1),
    )
    state.observed_at.FromDatetime(observed_at or dt.datetime.now(dt.UTC))
    return state


def changes_since(
    baseline: remediation_pb2.WorkloadState, current: remediation_pb2.WorkloadState
) -> list[str]:
    """What changed from `baseline` (the state verified after a fix) to `current`, one
    phrase each; empty when nothing that matters did. The template digest decides when
    both have one; the generation only when either has none (it also rises on a scale,
    which is not a new version). Images are compared as lists. Fewer restarts (pods
    replaced) is no change."""
    changes: list[str] = []
    if baseline.template_digest and current.template_digest:
        if baseline.template_digest != current.template_digest:
            changes.append(
                f"template {baseline.template_digest[:12]}→{current.template_digest[:12]}"
            )
    elif baseline.generation != current.generation:
        changes.append(f"generation {baseline.generation}→{current.generation}")
    if list(baseline.images) != list(current.images):
        changes.append(
            f"images {', '.join(baseline.images) or 'none'}→{', '.join(current.images) or 'none'}"
        )
    if current.restarts > baseline.restarts:
        changes.append(f"restarts {baseline.restarts}→{current.restarts}")
    return changes
