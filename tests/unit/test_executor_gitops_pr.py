"""GITOPS=pull_request without Git or GitHub: where a managed object's manifests are, which
document is the object's, and what the change does to its text."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubernaut.runtime.kube import ACTION_ID_ANNOTATION, TEMPLATE_DIGEST_ANNOTATION
from kubernaut.services.executor import rbac
from kubernaut.services.executor.changes import ABSENT, RESTARTED_AT, Change, Edit
from kubernaut.services.executor.gitops_pr import (
    APPLICATION,
    GIT_REPOSITORY,
    KUSTOMIZATION,
    GitSource,
    NoPullRequest,
    argo_application,
    argo_sources,
    authenticated_url,
    branch_name,
    commit_title,
    find_manifest,
    flux_source,
    manifest_edits,
    patch_manifest,
    repository_slug,
    shown_url,
)
from kubernaut.services.executor.settings import ExecutorSettings, GitOpsChanges

SOURCE = GitSource("Argo CD application shop", "file:///git/acme/shop.git", "apps/shop", "main")

MANIFEST = """\
# The shop's web front end.
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  ports:
    - port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web # who selects it
spec:
  replicas: 2  # the HPA's floor
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: sidecar
          image: "registry.invalid/proxy:v2"
        - name: app
          image: registry.invalid/app:v1
          resources:
            limits:
              memory: "256Mi"   # raised in March
              cpu: '500m'
            requests:
              memory: 64Mi
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
  namespace: shop
data:
  mode: fast
"""


def live_deployment() -> dict[str, Any]:
    """The Deployment as the API server holds it: defaulted fields, another container
    order than the manifest's."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "42"},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.invalid/app:v1",
                            "imagePullPolicy": "IfNotPresent",
                            "terminationMessagePath": "/dev/termination-log",
                            "resources": {
                                "limits": {"memory": "256Mi", "cpu": "500m"},
                                "requests": {"memory": "64Mi"},
                            },
                        },
                        {
                            "name": "sidecar",
                            "image": "registry.invalid/proxy:v2",
                            "imagePullPolicy": "IfNotPresent",
                        },
                    ],
                    "dnsPolicy": "ClusterFirst",
                },
            },
        },
    }


def template_change(change: Any) -> Change:
    """A whole-template change as the plan makes it, with Kubernaut's marks."""
    live = live_deployment()
    before = live["spec"]["template"]
    after = copy.deepcopy(before)
    change(after)
    after["metadata"]["annotations"] = {
        TEMPLATE_DIGEST_ANNOTATION: "sha256:abc",
        ACTION_ID_ANNOTATION: "a-1",
    }
    return Change("a change", (Edit("/spec/template", before, after),))


def raise_memory(template: dict[str, Any]) -> None:
    template["spec"]["containers"][0]["resources"]["limits"]["memory"] = "384Mi"


# -- the source ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"annotations": {"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:shop/web"}},
         ("argocd", "shop")),
        ({"annotations": {"argocd.argoproj.io/tracking-id": "team-a_shop:apps/Deployment:x/y"}},
         ("team-a", "shop")),
        ({"labels": {"argocd.argoproj.io/instance": "shop-prod"}}, ("argocd", "shop-prod")),
        ({"labels": {"app.kubernetes.io/instance": "web"}}, None),
        ({}, None),
    ],
)  # fmt: skip
def test_the_application_is_named_by_the_tracking_id_or_label(
    meta: dict[str, Any], expected: tuple[str, str] | None
) -> None:
    assert argo_application({"metadata": meta}, "argocd") == expected


def test_an_applications_sources_are_those_of_plain_manifests() -> None:
    app = {
        "spec": {
            "source": {"repoURL": "https://github.com/acme/shop.git", "path": "apps/shop",
                       "targetRevision": "HEAD"},
            "destination": {"namespace": "shop"},
        }
    }  # fmt: skip
    assert argo_sources(app, "Argo CD application shop") == [
        GitSource(
            "Argo CD application shop", "https://github.com/acme/shop.git", "apps/shop", "HEAD",
            "shop",
        )
    ]  # fmt: skip
    multi = {
        "spec": {
            "sources": [
                {"repoURL": "https://charts.example/", "chart": "redis", "targetRevision": "1.0"},
                {"repoURL": "https://github.com/acme/shop.git", "path": "k8s"},
            ]
        }
    }
    assert [s.path for s in argo_sources(multi, "app")] == ["k8s"]
    chart = {"spec": {"source": {"repoURL": "https://charts.example/", "chart": "redis"}}}
    with pytest.raises(NoPullRequest, match="Helm chart"):
        argo_sources(chart, "Argo CD application cache")


def test_a_kustomizations_source_is_its_git_repository_branch() -> None:
    kustomization: dict[str, Any] = {
        "metadata": {"name": "apps", "namespace": "flux-system"},
        "spec": {"path": "./apps/shop", "sourceRef": {"kind": "GitRepository", "name": "fleet"}},
    }
    repository = {"spec": {"url": "https://github.com/acme/fleet", "ref": {"branch": "prod"}}}
    source = flux_source(kustomization, repository, "Flux Kustomization flux-system/apps")
    assert (source.url, source.path, source.revision) == (
        "https://github.com/acme/fleet",
        "./apps/shop",
        "prod",
    )
    assert not source.namespace_forced
    # No ref: Flux follows master. targetNamespace puts every object there.
    kustomization["spec"]["targetNamespace"] = "shop"
    source = flux_source(kustomization, {"spec": {"url": "ssh://git@host/a/b"}}, "ks")
    assert (source.revision, source.namespace, source.namespace_forced) == ("master", "shop", True)
    with pytest.raises(NoPullRequest, match=r"tag v1\.2\.0, not a branch"):
        flux_source(kustomization, {"spec": {"url": "x", "ref": {"tag": "v1.2.0"}}}, "ks")


@pytest.mark.parametrize(
    ("url", "slug"),
    [
        ("https://github.com/acme/shop-config.git", "acme/shop-config"),
        ("https://ghe.example.com/acme/shop-config", "acme/shop-config"),
        ("git@github.com:acme/shop-config.git", "acme/shop-config"),
        ("ssh://git@github.com/acme/shop-config.git", "acme/shop-config"),
        ("file:///tmp/pytest-1/repos/acme/shop-config.git", "acme/shop-config"),
    ],
)
def test_the_repository_is_the_urls_last_two_path_segments(url: str, slug: str) -> None:
    assert repository_slug(url) == slug


def test_a_url_without_owner_and_name_names_no_repository() -> None:
    with pytest.raises(NoPullRequest, match="owner/name"):
        repository_slug("https://git.example.com/shop.git")


def test_only_https_remotes_carry_the_token() -> None:
    assert (
        authenticated_url("https://github.com/acme/shop.git", "t/k")
        == "https://x-access-token:t%2Fk@github.com/acme/shop.git"
    )
    assert (
        authenticated_url("https://ghe:8443/a/b", "tok")
        == "https://x-access-token:tok@ghe:8443/a/b"
    )
    for url in ("git@github.com:a/b.git", "file:///srv/a/b.git", "https://me@github.com/a/b"):
        assert authenticated_url(url, "tok") == url


def test_messages_show_no_credentials_of_a_url() -> None:
    assert shown_url("https://bot:s3cret@git.example.com/a/b.git") == (
        "https://git.example.com/a/b.git"
    )
    assert shown_url("git@github.com:a/b.git") == "git@github.com:a/b.git"


def test_branch_and_commit_name_the_incident_and_action() -> None:
    incident = "5f0c9a7e-1111-2222-3333-444455556666"
    assert branch_name(incident, "scale_deployment") == "kubernaut/5f0c9a7e-scale_deployment"
    assert (
        commit_title("scale_deployment", "Deployment", "shop", "web", incident)
        == f"kubernaut: scale_deployment on Deployment shop/web (incident {incident})"
    )


def test_the_executor_may_only_get_the_gitops_objects() -> None:
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in rbac.policy_rules()}
    for kind in (APPLICATION, KUSTOMIZATION, GIT_REPOSITORY):
        assert rules[(kind.group, kind.plural)] == ["get"]


def test_pull_request_is_a_gitops_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_GITOPS", "pull_request")
    monkeypatch.setenv("KUBERNAUT_EXECUTOR_GITOPS_GITHUB_API_URL", "https://ghe.example/api/v3")
    settings = ExecutorSettings()
    assert settings.gitops is GitOpsChanges.PULL_REQUEST
    assert settings.gitops_github_api_url == "https://ghe.example/api/v3"
    assert settings.gitops_argocd_namespace == "argocd"


# -- what the change is in a manifest -----------------------------------------------------


def test_a_template_change_is_the_fields_it_changes_without_kubernauts_marks() -> None:
    edits = manifest_edits(template_change(raise_memory))
    assert edits == [
        Edit("/spec/template/spec/containers/0/resources/limits/memory", "256Mi", "384Mi")
    ]


def test_a_restart_adds_its_annotation_and_a_scale_is_one_field() -> None:
    def restart(template: dict[str, Any]) -> None:
        template["metadata"]["annotations"] = {RESTARTED_AT: "2025-01-01T00:00:00Z"}

    change = template_change(restart)
    after = change.edits[0].after
    after["metadata"]["annotations"][RESTARTED_AT] = "2025-01-01T00:00:00Z"
    assert manifest_edits(change) == [
        Edit("/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt", ABSENT,
             "2025-01-01T00:00:00Z")
    ]  # fmt: skip
    scale = Change("replicas 2 -> 4", (Edit("/spec/replicas", 2, 4),))
    assert manifest_edits(scale) == [Edit("/spec/replicas", 2, 4)]


# -- finding the document -----------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_manifest_is_the_document_with_the_objects_kind_namespace_and_name(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        {
            "apps/shop/web.yaml": MANIFEST,
            "apps/shop/.old/web.yaml": MANIFEST,  # hidden: not synced
            "apps/shop/chart/templates/web.yaml": "name: {{ .Values.name }}\n{{- end }}",
            "apps/other/web.yaml": MANIFEST,  # outside the path
            "apps/shop/README.md": "not yaml",
        },
    )
    found = find_manifest(tmp_path, SOURCE, live_deployment())
    assert found.path == tmp_path / "apps/shop/web.yaml"
    assert found.index == 1
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "web", "namespace": "shop"},
    }
    assert find_manifest(tmp_path, SOURCE, config).index == 2


def test_a_manifest_without_namespace_is_found_in_the_destination_namespace(
    tmp_path: Path,
) -> None:
    text = MANIFEST.replace("  namespace: shop\n", "")
    write(tmp_path, {"apps/shop/web.yml": text})
    destination = GitSource("app", "file:///x/a/b", "apps/shop", "main", "shop")
    assert find_manifest(tmp_path, destination, live_deployment()).index == 1
    elsewhere = GitSource("app", "file:///x/a/b", "apps/shop", "main", "staging")
    with pytest.raises(NoPullRequest, match="no manifest of Deployment shop/web under apps/shop"):
        find_manifest(tmp_path, elsewhere, live_deployment())


def test_no_manifest_two_manifests_or_a_path_outside_the_repository_are_reasons(
    tmp_path: Path,
) -> None:
    with pytest.raises(NoPullRequest, match="no directory apps/shop"):
        find_manifest(tmp_path, SOURCE, live_deployment())
    write(tmp_path, {"apps/shop/a.yaml": MANIFEST, "apps/shop/b/c.yaml": MANIFEST})
    with pytest.raises(
        NoPullRequest, match=r"more than one manifest: apps/shop/a.yaml, apps/shop/b/c.yaml"
    ):
        find_manifest(tmp_path, SOURCE, live_deployment())
    outside = GitSource("app", "file:///x/a/b", "../", "main")
    with pytest.raises(NoPullRequest, match="no directory"):
        find_manifest(tmp_path / "apps", outside, live_deployment())


# -- changing the text --------------------------------------------------------------------


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_a_value_is_replaced_in_place_keeping_comments_quotes_and_the_other_documents() -> None:
    edits = manifest_edits(template_change(raise_memory))
    patched = patch_manifest(MANIFEST, 1, edits, live_deployment())
    # The live object's container 0 is the manifest's second: found by name.
    assert changed_lines(MANIFEST, patched) == [
        ('              memory: "256Mi"   # raised in March',
         '              memory: "384Mi"   # raised in March'),
    ]  # fmt: skip
    scale = patch_manifest(MANIFEST, 1, [Edit("/spec/replicas", 2, 4)], live_deployment())
    assert changed_lines(MANIFEST, scale) == [
        ("  replicas: 2  # the HPA's floor", "  replicas: 4  # the HPA's floor")
    ]
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"},
              "data": {"mode": "fast"}}  # fmt: skip
    quoted = patch_manifest(MANIFEST, 2, [Edit("/data/mode", "fast", "1.5")], config)
    assert changed_lines(MANIFEST, quoted) == [("  mode: fast", "  mode: '1.5'")]


def test_a_new_key_is_added_at_its_mappings_indentation() -> None:
    live = live_deployment()
    edits = [
        Edit("/spec/template/metadata/annotations", ABSENT, {RESTARTED_AT: "2025-01-01T00:00:00Z"}),
        Edit("/spec/template/spec/containers/0/resources/requests/cpu", ABSENT, "250m"),
    ]
    patched = patch_manifest(MANIFEST, 1, edits, live)
    added = [line for line in patched.splitlines() if line not in MANIFEST.splitlines()]
    assert added == [
        "      annotations:",
        "        kubectl.kubernetes.io/restartedAt: '2025-01-01T00:00:00Z'",
        "              cpu: 250m",
    ]
    document = list(yaml.safe_load_all(patched))[1]
    assert document["spec"]["template"]["spec"]["containers"][1]["resources"]["requests"] == {
        "cpu": "250m",
        "memory": "64Mi",
    }
    # A key of a list item's first line: added before the item's next key.
    edits = [Edit("/spec/template/spec/containers/0/workingDir", ABSENT, "/srv")]
    patched = patch_manifest(MANIFEST, 1, edits, live)
    assert "          workingDir: /srv\n          image: registry.invalid/app:v1" in patched


def test_what_cannot_be_edited_in_place_rewrites_only_that_document() -> None:
    text = "kind: Service\nmetadata: {name: web}\n---\n" + (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n"
        "spec: {replicas: 2, template: {spec: {containers: [{name: app, image: a}]}}}\n"
    )
    containers = [{"name": "app", "image": "a"}]
    live = {"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": {"containers": containers}}}}  # fmt: skip
    edits = [Edit("/spec/template/spec/containers/0/env", ABSENT, [{"name": "A", "value": "1"}])]
    patched = patch_manifest(text, 1, edits, live)
    assert patched.startswith("kind: Service\nmetadata: {name: web}\n---\n")
    document = list(yaml.safe_load_all(patched))[1]
    assert document["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "A", "value": "1"}
    ]
    assert document["spec"]["replicas"] == 2


def test_a_container_the_manifest_lacks_is_a_reason() -> None:
    text = MANIFEST.replace("name: sidecar", "name: proxy").replace("- name: app", "- name: main")
    with pytest.raises(NoPullRequest, match="no item named 'app'"):
        patch_manifest(text, 1, manifest_edits(template_change(raise_memory)), live_deployment())


def test_a_manifest_holding_the_change_already_is_unchanged() -> None:
    edits = [Edit("/spec/replicas", 4, 2)]
    assert patch_manifest(MANIFEST, 1, edits, live_deployment()) == MANIFEST
