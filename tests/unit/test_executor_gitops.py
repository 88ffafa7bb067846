"""Which objects a GitOps controller owns, and the patch proposed instead of applying."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
from kubernaut.common.v1 import alert_pb2

from kubernaut.services.executor.changes import Change, Edit
from kubernaut.services.executor.gitops import GitOpsOwner, gitops_owner, proposed_patch


def obj(
    labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {"metadata": {"name": "web", "labels": labels or {}, "annotations": annotations or {}}}


@pytest.mark.parametrize(
    ("meta", "owner"),
    [
        (
            obj(annotations={"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:shop/web"}),
            GitOpsOwner("Argo CD", "application shop", "annotation argocd.argoproj.io/tracking-id"),
        ),
        (
            obj(labels={"argocd.argoproj.io/instance": "shop-prod"}),
            GitOpsOwner("Argo CD", "application shop-prod", "label argocd.argoproj.io/instance"),
        ),
        (
            obj(
                labels={
                    "kustomize.toolkit.fluxcd.io/name": "apps",
                    "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
                }
            ),
            GitOpsOwner(
                "Flux", "Kustomization flux-system/apps", "label kustomize.toolkit.fluxcd.io/name"
            ),
        ),
        (
            obj(labels={"helm.toolkit.fluxcd.io/name": "podinfo"}),
            GitOpsOwner("Flux", "HelmRelease podinfo", "label helm.toolkit.fluxcd.io/name"),
        ),
        # Helm sets app.kubernetes.io/instance on everything: not a sign of Argo CD.
        (obj(labels={"app.kubernetes.io/instance": "web", "helm.sh/chart": "web-1.0"}), None),
        (obj(), None),
        ({}, None),
    ],
)
def test_the_tools_own_labels_and_annotations_say_who_syncs_an_object(
    meta: dict[str, Any], owner: GitOpsOwner | None
) -> None:
    assert gitops_owner(meta) == owner


def test_the_proposed_change_is_a_patch_a_person_can_run() -> None:
    ref = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="web's")
    change = Change("replicas 2 -> 4", (Edit("/spec/replicas", 2, 4),))
    command = proposed_patch(ref, change)
    words = shlex.split(command)
    assert words[:6] == ["kubectl", "patch", "deployment", "web's", "-n", "shop"]
    assert words[6] == "--type=json"
    assert json.loads(words[8]) == [{"op": "replace", "path": "/spec/replicas", "value": 4}]
