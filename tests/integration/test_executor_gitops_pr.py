"""KUBERNAUT_EXECUTOR_GITOPS=pull_request on the local control plane: the executor, as its
own least-privilege identity, reads the Argo CD Application (or Flux Kustomization and
GitRepository) of a managed Deployment, pushes the change to a branch of a real bare Git
repository (a file:// remote) and opens the pull request through PyGithub against a
loopback speaking GitHub's REST API; the Deployment in the cluster is left as it is.
When no pull request can be opened, the action is refused as with notify, saying why.

The CRDs are the devstack's minimal ones (kubernaut.devstack.crds.gitops_crds)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import git
import pytest
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.devstack.crds import ApiServer, gitops_crds
from kubernaut.devstack.identities import write_token_kubeconfig
from kubernaut.services.executor import rbac
from kubernaut.services.executor.changes import Change, Edit
from kubernaut.services.executor.gitops_pr import (
    _DIFF_MARK,
    ACTION_ID_TRAILER,
    GitSource,
    NoPullRequest,
    Proposal,
    _propose,
    manifest_edits,
)
from tests.fixtures.executor import (
    Admin,
    ExecutorFactory,
    action_request,
    as_model,
    outcome,
    stage,
    stored,
)
from tests.fixtures.github_loopback import TOKEN, GitHubLoopback, server_error

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SLUG = "acme/shop-config"
AUTHOR = git.Actor("Shop Team", "shop@example.com")
TRACKING = "argocd.argoproj.io~1tracking-id"


def manifest(namespace: str) -> str:
    """The shop's manifests, as the live Deployment was made (tests/fixtures/executor.py's
    Admin.create), with a Service before it and comments a person wrote."""
    return f"""\
# The shop's web front end; owned by the shop team.
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {namespace}
spec:
  selector:
    app: web
  ports:
    - port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {namespace}
  labels:
    app: web
    kubernaut.ai/managed: "true"
spec:
  replicas: 2 # two is enough off-season
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: app
          image: registry.invalid/app:v1
          resources:
            limits:
              memory: 256Mi # raise with care
            requests:
              memory: 64Mi
"""


def bare_repository(root: Path, files: dict[str, str]) -> Path:
    """A bare repository `<root>/acme/shop-config.git` whose main holds `files`, pushed
    from a clone as a person would."""
    bare = root / "acme" / "shop-config.git"
    git.Repo.init(bare, bare=True, initial_branch="main").close()
    work = git.Repo.clone_from(bare.as_uri(), root / "work")
    for name, text in files.items():
        path = root / "work" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    work.index.add(list(files))
    work.index.commit("shop manifests", author=AUTHOR, committer=AUTHOR)
    work.git.push("origin", "HEAD:refs/heads/main")
    work.close()
    return bare


def show(bare: Path, revision: str, path: str = "") -> str:
    repo = git.Repo(bare)
    try:
        spec = f"{revision}:{path}" if path else revision
        return str(repo.git.show(spec, strip_newline_in_stdout=False))
    finally:
        repo.close()


def branches(bare: Path) -> list[str]:
    repo = git.Repo(bare)
    try:
        return sorted(head.name for head in repo.heads)
    finally:
        repo.close()


@pytest.fixture
def github() -> Iterator[GitHubLoopback]:
    with GitHubLoopback() as server:
        yield server


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "github-token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
async def crds(admin: Admin) -> AsyncIterator[None]:
    await ApiServer(admin.api).apply_crds(gitops_crds())
    yield


async def executor_identity(admin: Admin, ns: str, path: Path) -> Path:
    """A ServiceAccount bound to exactly the executor's ClusterRole (rbac.policy_rules())."""
    name = f"{ns}-executor"
    await admin.core.create_namespaced_service_account(
        ns, as_model({"metadata": {"name": "executor"}})
    )
    await admin.rbac.create_cluster_role(
        as_model({"metadata": {"name": name}, "rules": rbac.policy_rules()})
    )
    admin.created_cluster_roles.append(name)
    await admin.rbac.create_cluster_role_binding(
        as_model(
            {
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [{"kind": "ServiceAccount", "name": "executor", "namespace": ns}],
            }
        )
    )
    token = await admin.core.create_namespaced_service_account_token(
        "executor", ns, as_model({"spec": {"expirationSeconds": 3600}})
    )
    return write_token_kubeconfig(
        path, admin.info.apiserver_url, admin.info.ca_file, "executor", token.status.token
    )


async def managed_deployment(
    admin: Admin, ns: str, *, tracking: str = "", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The Deployment `web` (rolled out: it has annotations), marked as Argo CD (its
    tracking id) or Flux (its labels) mark what they apply."""
    await admin.create(ns)
    patch = [
        {"op": "add", "path": f"/metadata/labels/{key.replace('/', '~1')}", "value": value}
        for key, value in (labels or {}).items()
    ]
    if tracking:
        patch.append({"op": "add", "path": f"/metadata/annotations/{TRACKING}", "value": tracking})
    await admin.patch(ns, "web", patch)
    return await admin.get(ns)


async def create_object(admin: Admin, obj: dict[str, Any]) -> None:
    api = ApiServer(admin.api)
    status, answer = await api.call("POST", (await api.path_of(obj)).rsplit("/", 1)[0], body=obj)
    assert status == 201, answer


def application(
    namespace: str, name: str, repo_url: str, path: str, destination: str
) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "project": "default",
            "source": {"repoURL": repo_url, "path": path, "targetRevision": "HEAD"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": destination},
            "syncPolicy": {"automated": {"selfHeal": True}},
        },
    }


@pytest.mark.usefixtures("cleanup")
async def test_a_managed_deployments_change_becomes_a_pull_request_and_the_cluster_is_untouched(
    admin: Admin,
    make_executor: ExecutorFactory,
    operator: StorageServiceStub,
    github: GitHubLoopback,
    token_file: Path,
    tmp_path: Path,
    crds: None,
) -> None:
    ns = await admin.namespace(managed=True)
    argocd = await admin.namespace()
    original = manifest(ns)
    bare = bare_repository(tmp_path / "git", {"apps/shop/web.yaml": original, "README.md": "x\n"})
    github.add_repository(SLUG, bare)
    before = await managed_deployment(admin, ns, tracking=f"shop:apps/Deployment:{ns}/web")
    await create_object(admin, application(argocd, "shop", bare.as_uri(), "apps/shop", ns))
    executor = make_executor(
        kubeconfig=await executor_identity(admin, ns, tmp_path / "executor.kubeconfig"),
        gitops="pull_request",
        gitops_argocd_namespace=argocd,
        gitops_github_api_url=github.api_url,
        gitops_github_token_file=token_file,
    )
    request = action_request(
        ns, increase_memory_limit={"container": "app", "factor": 1.5, "max_limit": "1Gi"}
    )
    result = await executor.execute(request)

    # Refused in the cluster, with the pull request as the way taken, and why.
    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    [pull] = github.pulls
    url = f"{github.url}/{SLUG}/pull/{pull.number}"
    branch = f"kubernaut/{request.incident_id[:8]}-increase_memory_limit"
    line = stage(result, "gitops:")
    assert line.startswith(
        f"gitops: pull request: opened pull request {url} on {bare.as_uri()} "
        f"(Argo CD application shop), branch {branch} into main, apps/shop/web.yaml; "
        "not patched in the cluster because Argo CD (application shop; annotation "
        f"argocd.argoproj.io/tracking-id) manages Deployment {ns}/web and would revert a patch"
    ), line
    assert any(s.startswith("dry-run") for s in result.stages)
    assert not any(s.startswith(("snapshot", "apply", "verify")) for s in result.stages)
    record = await stored(operator, request)
    assert record.outcome == storage_pb2.ACTION_OUTCOME_REFUSED
    assert record.message.startswith(
        f"increase_memory_limit on Deployment {ns}/web not applied in the cluster. GitOps: "
        f"opened pull request {url} on {bare.as_uri()} (Argo CD application shop); not "
        "patched in the cluster because Argo CD (application shop; annotation "
        f"argocd.argoproj.io/tracking-id) manages Deployment {ns}/web and would revert a patch"
    ), record.message
    assert "container 'app' memory limit 256Mi -> 384Mi" in record.message

    # The branch holds the one changed line, in a commit named as asked.
    assert branches(bare) == sorted(["main", branch])
    changed = show(bare, branch, "apps/shop/web.yaml")
    assert changed == original.replace(
        "memory: 256Mi # raise with care", "memory: 384Mi # raise with care"
    )
    commit = show(bare, branch, "").splitlines()
    title = (
        f"kubernaut: increase_memory_limit on Deployment {ns}/web (incident {request.incident_id})"
    )
    assert title in [line.strip() for line in commit]
    assert f"{ACTION_ID_TRAILER}: {request.action_id}" in [line.strip() for line in commit]
    assert show(bare, "main", "apps/shop/web.yaml") == original

    # One pull request, from the branch into main, saying what, why and how.
    assert (pull.head, pull.base, pull.title) == (branch, "main", title)
    for words in (
        f"`{request.incident_id}`",
        f"`{request.alert_name}`",
        "### Why",
        "container 'app' memory limit 256Mi -> 384Mi",
        "`apps/shop/web.yaml`",
        "```diff\n--- a/apps/shop/web.yaml\n+++ b/apps/shop/web.yaml\n",
        "\n-              memory: 256Mi # raise with care\n"
        "+              memory: 384Mi # raise with care\n",
        '- `/spec/template/spec/containers/0/resources/limits/memory`: `"384Mi"`',
        "would revert a patch made there",
    ):
        assert words in pull.body, (words, pull.body)
    posts = [r for r in github.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].path == f"/api/v3/repos/{SLUG}/pulls"

    # The Deployment is as it was.
    after = await admin.get(ns)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]

    # The same incident's action again: the branch and its pull request are found.
    repeat = action_request(
        ns, increase_memory_limit={"container": "app", "factor": 1.5, "max_limit": "1Gi"}
    )
    repeat.incident_id, repeat.alert_name = request.incident_id, request.alert_name
    again = await executor.execute(repeat)
    assert outcome(again) == "ACTION_OUTCOME_REFUSED", again.stages
    assert stage(again, "gitops:").startswith(
        f"gitops: pull request: found pull request {url} on {bare.as_uri()}"
    )
    assert len(github.pulls) == 1
    assert len([r for r in github.requests if r.method == "POST"]) == 1
    assert branches(bare) == sorted(["main", branch])


@pytest.mark.usefixtures("cleanup")
async def test_without_an_application_the_change_is_refused_as_with_notify_saying_why(
    admin: Admin,
    make_executor: ExecutorFactory,
    operator: StorageServiceStub,
    github: GitHubLoopback,
    token_file: Path,
    tmp_path: Path,
    crds: None,
) -> None:
    ns = await admin.namespace(managed=True)
    argocd = await admin.namespace()
    before = await managed_deployment(admin, ns, tracking=f"ghost:apps/Deployment:{ns}/web")
    executor = make_executor(
        kubeconfig=await executor_identity(admin, ns, tmp_path / "executor.kubeconfig"),
        gitops="pull_request",
        gitops_argocd_namespace=argocd,
        gitops_github_api_url=github.api_url,
        gitops_github_token_file=token_file,
    )
    request = action_request(ns, scale_deployment={"replicas": 4})
    result = await executor.execute(request)

    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    patch = (
        f"kubectl patch deployment web -n {ns} --type=json -p "
        f"""'[{{"op":"replace","path":"/spec/replicas","value":4}}]'"""
    )
    line = stage(result, "gitops:")
    assert line.startswith(
        "gitops: refused: Argo CD (application ghost; annotation argocd.argoproj.io/tracking-id) "
        f"manages Deployment {ns}/web and would revert a patch; no pull request (the cluster "
        f"has no Argo CD Application {argocd}/ghost"
    ), line
    assert "so as with notify (KUBERNAUT_EXECUTOR_GITOPS=pull_request)" in line
    assert line.endswith(patch)
    record = await stored(operator, request)
    assert record.outcome == storage_pb2.ACTION_OUTCOME_REFUSED
    assert f"no pull request was opened (the cluster has no Argo CD Application {argocd}/ghost" in (
        record.message
    )
    assert "change it in Git instead" in record.message and patch in record.message
    assert github.requests == []
    after = await admin.get(ns)
    assert after["spec"] == before["spec"]


@pytest.mark.usefixtures("cleanup")
async def test_an_unreachable_flux_repository_is_refused_as_with_notify_without_the_token(
    admin: Admin,
    make_executor: ExecutorFactory,
    github: GitHubLoopback,
    token_file: Path,
    tmp_path: Path,
    crds: None,
) -> None:
    ns = await admin.namespace(managed=True)
    flux = await admin.namespace()
    await managed_deployment(
        admin,
        ns,
        labels={
            "kustomize.toolkit.fluxcd.io/name": "apps",
            "kustomize.toolkit.fluxcd.io/namespace": flux,
        },
    )
    unreachable = "https://127.0.0.1:9/acme/fleet.git"
    await create_object(
        admin,
        {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "fleet", "namespace": flux},
            "spec": {"url": unreachable, "interval": "1m", "ref": {"branch": "main"}},
        },
    )
    await create_object(
        admin,
        {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": "apps", "namespace": flux},
            "spec": {
                "interval": "5m",
                "path": "./apps",
                "prune": True,
                "sourceRef": {"kind": "GitRepository", "name": "fleet"},
            },
        },
    )
    executor = make_executor(
        kubeconfig=await executor_identity(admin, ns, tmp_path / "executor.kubeconfig"),
        gitops="pull_request",
        gitops_github_api_url=github.api_url,
        gitops_github_token_file=token_file,
        gitops_timeout_seconds=20,
    )
    result = await executor.execute(action_request(ns, scale_deployment={"replicas": 3}))

    assert outcome(result) == "ACTION_OUTCOME_REFUSED", result.stages
    line = stage(result, "gitops:")
    assert line.startswith(
        f"gitops: refused: Flux (Kustomization {flux}/apps; label "
        f"kustomize.toolkit.fluxcd.io/name) manages Deployment {ns}/web and would revert a "
        f"patch; no pull request (git could not work with {unreachable}: "
    ), line
    assert TOKEN not in line and TOKEN not in result.record.message
    assert github.requests == []


def proposal(source: GitSource, action_id: str) -> Proposal:
    live = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2},
    }
    change = Change("replicas 2 -> 5", (Edit("/spec/replicas", 2, 5),))
    return Proposal(
        sources=(source,),
        target=live,
        edits=tuple(manifest_edits(change)),
        branch="kubernaut/0a1b2c3d-scale_deployment",
        title="kubernaut: scale_deployment on Deployment shop/web (incident 0a1b2c3d)",
        body=f"why and what\n{_DIFF_MARK}",
        action_id=action_id,
        token=TOKEN,
        api_url="",
        author=("Kubernaut", "kubernaut@example.com"),
        timeout=30,
    )


def test_a_repeat_finds_the_branch_and_opens_the_pull_request_once(
    github: GitHubLoopback, tmp_path: Path
) -> None:
    """A repeat of the same action (after a crash, or GitHub failing once) pushes nothing
    again and opens the one pull request."""
    bare = bare_repository(tmp_path / "git", {"shop/web.yaml": manifest("shop")})
    github.add_repository(SLUG, bare)
    source = GitSource("Argo CD application shop", bare.as_uri(), "shop", "main")
    action_id = str(uuid.uuid4())
    first = dataclasses.replace(proposal(source, action_id), api_url=github.api_url)
    github.fail_next_create(server_error())
    with pytest.raises(NoPullRequest, match="answered 502"):
        _propose(first)
    branch = "kubernaut/0a1b2c3d-scale_deployment"
    assert branches(bare) == sorted(["main", branch])
    tip = show(bare, branch, "")

    opened = _propose(first)
    assert not opened.existing and opened.number == 1
    assert (opened.branch, opened.base) == (branch, "main")
    again = _propose(first)
    assert again.existing and again.url == opened.url
    assert len(github.pulls) == 1
    assert show(bare, branch, "") == tip  # nothing pushed again
    assert "replicas: 5 # two is enough off-season" in show(bare, branch, "shop/web.yaml")
    # The branch was pushed by the first attempt: the diff is its commit's.
    assert "```diff\ndiff --git a/shop/web.yaml b/shop/web.yaml\n" in github.pulls[0].body

    # Closed by people: not opened again.
    github.pulls[0].state = "closed"
    with pytest.raises(NoPullRequest, match=rf"{opened.url}, was closed; it is not opened again"):
        _propose(first)
    assert len(github.pulls) == 1
