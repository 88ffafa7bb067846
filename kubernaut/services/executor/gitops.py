"""GitOps awareness: an object Argo CD or Flux manages is not patched by default.

Their controllers sync the object back to what Git says, so a patch made in the cluster
is undone minutes later (with self-heal) or leaves the application OutOfSync and fighting
the next sync: the fix does not hold, and it hides the drift from the people who own the
manifests. By default (KUBERNAUT_EXECUTOR_GITOPS=notify) the executor plans and dry-runs the
change as for any action, then refuses to apply it and returns the proposed change as a
ready-to-apply patch, which the refusal's notification carries; `apply` patches anyway
(for applications without self-heal whose owners accept the drift).

Managed means what the tools themselves write on what they apply:
- Argo CD: the annotation `argocd.argoproj.io/tracking-id` (annotation tracking, the
  default since Argo CD 3.0) or the label `argocd.argoproj.io/instance` (label tracking
  configured with that key). The older default label, `app.kubernetes.io/instance`, is not
  taken as a sign: Helm charts set it on everything, Argo CD or not.
- Flux: the labels `kustomize.toolkit.fluxcd.io/name` (+ `/namespace`) and
  `helm.toolkit.fluxcd.io/name` (+ `/namespace`).

The third way, `pull_request`, makes the change in Git: kubernaut.services.executor.gitops_pr.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubernaut.common.v1 import alert_pb2

from kubernaut.services.executor.changes import Change

ARGO_TRACKING_ANNOTATION: Final = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE_LABEL: Final = "argocd.argoproj.io/instance"
FLUX_KUSTOMIZATION_LABEL: Final = "kustomize.toolkit.fluxcd.io/name"
FLUX_HELMRELEASE_LABEL: Final = "helm.toolkit.fluxcd.io/name"

# What the executor reads to find a managed object's Git source (GITOPS=pull_request), as
# (API group, resource): `get` only, no list or watch (kubernaut.services.executor.rbac).
SOURCE_READ_RESOURCES: Final = (
    ("argoproj.io", "applications"),
    ("kustomize.toolkit.fluxcd.io", "kustomizations"),
    ("source.toolkit.fluxcd.io", "gitrepositories"),
)


@dataclass(frozen=True)
class GitOpsOwner:
    # "Argo CD" or "Flux".
    tool: str
    # The application, Kustomization or HelmRelease, as the object names it.
    source: str
    # The label or annotation that says so.
    evidence: str

    def describe(self) -> str:
        return f"{self.tool} ({self.source}; {self.evidence})"


def gitops_owner(obj: Mapping[str, Any]) -> GitOpsOwner | None:
    """Who syncs `obj` from Git, from its own labels and annotations; None for nobody."""
    meta = obj.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    if tracking := annotations.get(ARGO_TRACKING_ANNOTATION):
        # <app>:<group>/<kind>:<namespace>/<name>; the app may be <namespace>_<app>.
        app = tracking.split(":", 1)[0]
        return GitOpsOwner(
            "Argo CD", f"application {app}", f"annotation {ARGO_TRACKING_ANNOTATION}"
        )
    if instance := labels.get(ARGO_INSTANCE_LABEL):
        return GitOpsOwner("Argo CD", f"application {instance}", f"label {ARGO_INSTANCE_LABEL}")
    for label, kind in (
        (FLUX_KUSTOMIZATION_LABEL, "Kustomization"),
        (FLUX_HELMRELEASE_LABEL, "HelmRelease"),
    ):
        if name := labels.get(label):
            namespace = labels.get(label.replace("/name", "/namespace"), "")
            source = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
            return GitOpsOwner("Flux", source, f"label {label}")
    return None


def proposed_patch(ref: alert_pb2.ResourceRef, change: Change) -> str:
    """The change as a kubectl command a person can run, or turn into a manifest edit."""
    ops = json.dumps([edit.forward() for edit in change.edits], separators=(",", ":"))
    words = ["kubectl", "patch", ref.kind.lower(), ref.name]
    if ref.namespace:
        words += ["-n", ref.namespace]
    words += ["--type=json", "-p", ops]
    return shlex.join(words)
