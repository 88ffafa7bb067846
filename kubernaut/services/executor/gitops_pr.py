"""KUBERNAUT_EXECUTOR_GITOPS=pull_request: a change to an object Argo CD or Flux manages is
made in Git, where its controller syncs it from, instead of in the cluster.

After the plan and the dry-run (kubernaut.services.executor.apply), the executor
- finds the object's source: for Argo CD the Application its tracking id or label names
  (argoproj.io/v1alpha1, in the id's namespace or KUBERNAUT_EXECUTOR_GITOPS_ARGOCD_NAMESPACE):
  spec.source's repoURL, path and targetRevision (with spec.sources, each one with a path);
  for Flux the Kustomization its labels name (kustomize.toolkit.fluxcd.io/v1): its
  sourceRef GitRepository's (source.toolkit.fluxcd.io/v1) url and ref.branch, and its
  spec.path. The executor's role may `get` those three kinds, nothing more.
- fetches the branch (the remote's default for a targetRevision of HEAD), finds the YAML
  document under the path with the object's API group, kind, namespace and name, and
  changes in it only the fields the action changes (`manifest_edits`: the planned change
  less what the API server defaulted and Kubernaut's own marks). Values are replaced, and
  keys added, in the text itself, so that comments and layout stay; only where that cannot
  be done is the one document written again (PyYAML), the file's other documents untouched.
- commits it as "kubernaut: <action> on <kind> <namespace>/<name> (incident <id>)" on
  branch `kubernaut/<first 8 of the incident id>-<action>`, pushes it, and opens a pull
  request through GitHub's REST API (PyGithub; KUBERNAUT_EXECUTOR_GITOPS_GITHUB_API_URL, a
  GitHub Enterprise Server's /api/v3 too) whose body has the incident, the alert, why, and
  the patch. The token (KUBERNAUT_EXECUTOR_GITOPS_GITHUB_TOKEN_FILE) opens the pull request
  and pushes over https; other remotes (ssh, file://) are used as they are.

A repeat finds the branch on the remote and the pull request open for it, and opens no
second one. The action is REFUSED either way (nothing changed in the cluster), its stages
and message saying which way it took and why; when no pull request can be opened (no
source found, the repository unreachable, no manifest of the object, GitHub refusing)
it is refused as with `notify`, with the reason.

Git and GitHub are imported when a pull request is made: the executor loads neither
otherwise.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import difflib
import itertools
import json
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from google.protobuf.json_format import MessageToDict

from kubernaut.runtime.kube import ACTION_ID_ANNOTATION, TEMPLATE_DIGEST_ANNOTATION
from kubernaut.services.executor.changes import (
    ABSENT,
    Change,
    Edit,
    equivalent,
    pointer_join,
    pointer_parts,
)
from kubernaut.services.executor.cluster import ApiError, Cluster, Kind
from kubernaut.services.executor.gitops import (
    ARGO_INSTANCE_LABEL,
    ARGO_TRACKING_ANNOTATION,
    FLUX_HELMRELEASE_LABEL,
    FLUX_KUSTOMIZATION_LABEL,
    GitOpsOwner,
    proposed_patch,
)
from kubernaut.services.executor.run import Run, where

if TYPE_CHECKING:
    import git

__all__ = [
    "APPLICATION",
    "GIT_REPOSITORY",
    "KUSTOMIZATION",
    "GitSource",
    "Manifest",
    "NoPullRequest",
    "Proposal",
    "PullRequest",
    "argo_application",
    "argo_sources",
    "authenticated_url",
    "branch_name",
    "commit_title",
    "find_manifest",
    "flux_source",
    "manifest_edits",
    "patch_manifest",
    "propose",
    "refuse_with_pull_request",
    "repository_slug",
    "shown_url",
]

APPLICATION: Final = Kind("Application", "argoproj.io", "v1alpha1", "applications")
KUSTOMIZATION: Final = Kind("Kustomization", "kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
GIT_REPOSITORY: Final = Kind("GitRepository", "source.toolkit.fluxcd.io", "v1", "gitrepositories")
FLUX_NAMESPACE: Final = "flux-system"
# Kubernaut's own marks on a template it writes: they say which revision is Kubernaut's in
# the cluster, and mean nothing in Git.
_MARKS: Final = frozenset({ACTION_ID_ANNOTATION, TEMPLATE_DIGEST_ANNOTATION})
_MANIFEST_SUFFIXES: Final = (".yaml", ".yml")
# Bounds of the search for the manifest.
_MAX_FILES: Final = 5000
_MAX_FILE_BYTES: Final = 2 * 1024 * 1024
_DOCUMENT_START: Final = re.compile(r"^(?:---|\.\.\.)(?:[ \t].*)?$", re.MULTILINE)
ACTION_ID_TRAILER: Final = "Kubernaut-Action-Id"
# Where the pull request's body names the manifest's file and shows its diff, once known.
_FILE_MARK: Final = "\x00file\x00"
_DIFF_MARK: Final = "\x00diff\x00"
# GitHub takes bodies of up to 65536 characters.
_MAX_DIFF: Final = 40_000
# The remotes git may use: not ext:: (a command), nor others a repoURL might name.
_GIT_PROTOCOLS: Final = "https:http:ssh:git:file"


class NoPullRequest(Exception):
    """No pull request could be opened; the message says why (it becomes the notify
    refusal's reason)."""


# -- where the manifests are --------------------------------------------------------------------


@dataclass(frozen=True)
class GitSource:
    """Where a GitOps controller reads an object's manifest from."""

    # "Argo CD application shop", "Flux Kustomization flux-system/apps".
    describe: str
    url: str
    # The directory of the manifests in the repository ("" or "." for its root).
    path: str
    # The branch the controller follows; "" or "HEAD": the remote's default branch.
    revision: str
    # The namespace of the manifests that name none ("" when not known), and whether the
    # controller puts every object there whatever its manifest says (Flux targetNamespace).
    namespace: str = ""
    namespace_forced: bool = False


def argo_application(obj: Mapping[str, Any], default_namespace: str) -> tuple[str, str] | None:
    """The (namespace, name) of the Argo CD Application that tracks `obj`, from its tracking
    id (`<app>:<group>/<kind>:<namespace>/<name>`) or instance label, where the app may be
    `<namespace>_<name>` (applications in any namespace); None when Argo CD does not."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    app = str(annotations.get(ARGO_TRACKING_ANNOTATION) or "").split(":", 1)[0]
    app = app or str((meta.get("labels") or {}).get(ARGO_INSTANCE_LABEL) or "")
    if not app:
        return None
    namespace, _, name = app.rpartition("_")
    return namespace or default_namespace, name


def argo_sources(application: Mapping[str, Any], describe: str) -> list[GitSource]:
    """The Git sources of an Application that hold plain manifests (a path, no chart)."""
    spec = application.get("spec") or {}
    destination = str((spec.get("destination") or {}).get("namespace") or "")
    sources = [spec["source"]] if spec.get("source") else list(spec.get("sources") or [])
    found = [
        GitSource(
            describe,
            str(source["repoURL"]),
            str(source.get("path") or ""),
            str(source.get("targetRevision") or ""),
            destination,
        )
        for source in sources
        if isinstance(source, Mapping) and source.get("repoURL") and not source.get("chart")
        if source.get("path") is not None or len(sources) == 1
    ]
    if not found:
        raise NoPullRequest(
            f"{describe} has no Git source of plain manifests (a Helm chart's objects "
            "change through its values)"
        )
    return found


def flux_source(
    kustomization: Mapping[str, Any], repository: Mapping[str, Any], describe: str
) -> GitSource:
    """The Git source of a Flux Kustomization, from it and its GitRepository."""
    spec, repo_spec = kustomization.get("spec") or {}, repository.get("spec") or {}
    ref = repo_spec.get("ref") or {}
    if ref and not ref.get("branch"):
        pinned = next(
            (f"{k} {ref[k]}" for k in ("tag", "semver", "commit", "name") if ref.get(k)),
            "no branch",
        )
        raise NoPullRequest(
            f"the GitRepository of {describe} follows {pinned}, not a branch a pull request "
            "could be merged into"
        )
    target_namespace = str(spec.get("targetNamespace") or "")
    return GitSource(
        describe,
        str(repo_spec.get("url") or ""),
        str(spec.get("path") or ""),
        # Flux follows master when the GitRepository names no ref.
        str(ref.get("branch") or "master"),
        target_namespace or str((kustomization.get("metadata") or {}).get("namespace") or ""),
        bool(target_namespace),
    )


async def _get(cluster: Cluster, kind: Kind, namespace: str, name: str, what: str) -> Any:
    try:
        # Cluster.get knows only the kinds actions act on; these three are read here only.
        return await cluster._call("GET", kind.path(namespace, name))
    except ApiError as error:
        if error.not_found:
            served = (
                "" if str(error).endswith("not found") else f"; no {kind.plural}.{kind.group} API"
            )
            raise NoPullRequest(f"the cluster has no {what}: {error}{served}") from error
        if error.forbidden:
            raise NoPullRequest(f"the executor may not read {what}: {error}") from error
        raise NoPullRequest(f"reading {what} failed: {error}") from error


async def find_sources(
    cluster: Cluster, obj: Mapping[str, Any], argocd_namespace: str
) -> list[GitSource]:
    """The Git sources the GitOps controller managing `obj` syncs it from, read from the
    cluster. Raises NoPullRequest; ClusterUnavailable when the cluster does not answer."""
    if (app := argo_application(obj, argocd_namespace)) is not None:
        namespace, name = app
        shown = name if namespace == argocd_namespace else f"{namespace}/{name}"
        application = await _get(
            cluster, APPLICATION, namespace, name, f"Argo CD Application {namespace}/{name}"
        )
        return argo_sources(application, f"Argo CD application {shown}")
    labels: Mapping[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    if name := labels.get(FLUX_KUSTOMIZATION_LABEL, ""):
        namespace = labels.get(FLUX_KUSTOMIZATION_LABEL.replace("/name", "/namespace"), "")
        namespace = namespace or FLUX_NAMESPACE
        describe = f"Flux Kustomization {namespace}/{name}"
        kustomization = await _get(cluster, KUSTOMIZATION, namespace, name, describe)
        ref = (kustomization.get("spec") or {}).get("sourceRef") or {}
        if ref.get("kind") != "GitRepository":
            raise NoPullRequest(
                f"{describe} syncs from a {ref.get('kind') or 'source of no kind'}, not a "
                "GitRepository"
            )
        ref_namespace = str(ref.get("namespace") or namespace)
        repository = await _get(
            cluster,
            GIT_REPOSITORY,
            ref_namespace,
            str(ref.get("name") or ""),
            f"Flux GitRepository {ref_namespace}/{ref.get('name')}",
        )
        return [flux_source(kustomization, repository, describe)]
    if name := labels.get(FLUX_HELMRELEASE_LABEL, ""):
        raise NoPullRequest(
            f"Flux HelmRelease {name} renders it from a Helm chart: the change belongs in the "
            "release's values"
        )
    raise NoPullRequest("no Argo CD or Flux source is named on the object")


# -- what changes in the manifest ---------------------------------------------------------------


def _diff(path: str, before: Any, after: Any) -> Iterator[Edit]:
    """The edits, as deep as they go, that turn `before` into `after`."""
    if isinstance(after, Mapping) and (before is ABSENT or isinstance(before, Mapping)):
        old: Mapping[str, Any] = before if isinstance(before, Mapping) else {}
        for key in after:
            yield from _diff(path + pointer_join([key]), old.get(key, ABSENT), after[key])
        for key in old:
            if key not in after:
                yield Edit(path + pointer_join([key]), old[key], ABSENT)
        return
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (a, b) in enumerate(zip(before, after, strict=True)):
            yield from _diff(f"{path}/{index}", a, b)
        return
    if before is ABSENT or after is ABSENT or not equivalent(before, after):
        yield Edit(path, before, after)


def manifest_edits(change: Change) -> list[Edit]:
    """What a change sets, field by field, as a manifest would write it: the planned
    change (a whole pod template, as the API server holds it) less the fields it keeps as
    they are and Kubernaut's own marks."""
    edits = [edit for e in change.edits for edit in _diff(e.path, e.before, e.after)]
    return [
        e
        for e in edits
        if not (
            len(parts := pointer_parts(e.path)) >= 2
            and parts[-2] == "annotations"
            and parts[-1] in _MARKS
        )
    ]


@dataclass(frozen=True)
class Manifest:
    """The document of one file that holds the object."""

    path: Path
    # Which document of the file (0 for the first).
    index: int


def _group(api_version: Any) -> str:
    text = str(api_version or "")
    return text.split("/", 1)[0] if "/" in text else ""


def _rank(document: Any, target: Mapping[str, Any], source: GitSource) -> int:
    """2 for the object's manifest, 1 for one that names no namespace but would be
    deployed to the object's, 0 for another object's."""
    if not isinstance(document, Mapping):
        return 0
    meta, want = document.get("metadata") or {}, target.get("metadata") or {}
    if not isinstance(meta, Mapping):
        return 0
    if (
        document.get("kind") != target.get("kind")
        or _group(document.get("apiVersion")) != _group(target.get("apiVersion"))
        or meta.get("name") != want.get("name")
    ):
        return 0
    namespace, wanted = str(meta.get("namespace") or ""), str(want.get("namespace") or "")
    if source.namespace_forced:
        return 2 if source.namespace == wanted else 0
    if namespace:
        return 2 if namespace == wanted else 0
    return 1 if source.namespace in ("", wanted) else 0


def find_manifest(root: Path, source: GitSource, target: Mapping[str, Any]) -> Manifest:
    """The YAML document under `source.path` in the checkout `root` that is `target`'s
    manifest (its API group, kind, name and namespace). Raises NoPullRequest."""
    top = root.resolve()
    base = (top / source.path.strip("/")).resolve()
    if not base.is_relative_to(top) or not base.is_dir():
        raise NoPullRequest(f"the repository has no directory {source.path or '/'}")
    found: list[tuple[int, Manifest]] = []
    count = 0
    for path in sorted(base.rglob("*")):
        relative = path.relative_to(base)
        if path.suffix not in _MANIFEST_SUFFIXES or any(p.startswith(".") for p in relative.parts):
            continue
        count += 1
        if count > _MAX_FILES:
            break
        if (
            not path.is_file()
            or not path.resolve().is_relative_to(top)  # a link out of the checkout
            or path.stat().st_size > _MAX_FILE_BYTES
        ):
            continue
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # a template (Helm's {{ }}), not a manifest
        for index, document in enumerate(documents):
            if rank := _rank(document, target, source):
                found.append((rank, Manifest(path, index)))
    meta = target.get("metadata") or {}
    what = f"{target.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}".replace(" /", " ")
    if not found:
        raise NoPullRequest(
            f"no manifest of {what} under {source.path or '/'} (rendered by Kustomize or Helm, "
            "or from another path)"
        )
    best = max(rank for rank, _ in found)
    manifests = [m for rank, m in found if rank == best]
    if len(manifests) > 1:
        files = ", ".join(sorted({str(m.path.relative_to(top)) for m in manifests}))
        raise NoPullRequest(f"{what} has more than one manifest: {files}")
    return manifests[0]


def _resolve(document: Any, live: Any, parts: Sequence[str], what: str) -> list[str | int]:
    """The path in the manifest of a path in the live object: list items with a name
    (containers, env, ports, volumes) are found by name, as the manifest may order them
    otherwise; other list items by position."""
    resolved: list[str | int] = []
    for part in parts:
        if isinstance(live, list):
            index = int(part)
            item = live[index] if index < len(live) else None
            name = item.get("name") if isinstance(item, Mapping) else None
            if not isinstance(document, list):
                raise NoPullRequest(f"the manifest has no list at {what}")
            if name is not None:
                index = next(
                    (
                        i
                        for i, x in enumerate(document)
                        if isinstance(x, Mapping) and x.get("name") == name
                    ),
                    -1,
                )
                if index < 0:
                    raise NoPullRequest(f"the manifest has no item named {name!r} at {what}")
            elif len(document) != len(live):
                raise NoPullRequest(f"the manifest's list at {what} differs from the object's")
            resolved.append(index)
            live, document = item, document[index]
            continue
        resolved.append(part)
        live = live.get(part, ABSENT) if isinstance(live, Mapping) else ABSENT
        document = document.get(part, ABSENT) if isinstance(document, Mapping) else ABSENT
    return resolved


def _set(document: Any, path: Sequence[str | int], value: Any) -> None:
    node = document
    for part in path[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise NoPullRequest(
                f"the manifest has no object at {pointer_join([str(p) for p in path])}"
            )
        node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        if value is ABSENT:
            del node[int(last)]
        else:
            node[int(last)] = copy.deepcopy(value)
    elif not isinstance(node, dict):
        raise NoPullRequest(f"the manifest has no object at {pointer_join([str(p) for p in path])}")
    elif value is ABSENT:
        node.pop(last, None)
    else:
        node[last] = copy.deepcopy(value)


def _plain(value: Any) -> str:
    dumped = yaml.safe_dump(value, default_flow_style=True, width=2**31, allow_unicode=True)
    return dumped.removesuffix("\n").removesuffix("\n...").removesuffix("\n")


def _scalar_text(value: Any, style: str | None) -> str:
    """`value` written where a scalar of `style` was (quotes kept)."""
    if isinstance(value, str) and style == '"':
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and style == "'":
        return "'" + value.replace("'", "''") + "'"
    return _plain(value)


def _block(key: str, value: Any, indent: str) -> str:
    dumped = yaml.safe_dump(
        {key: value}, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
    )
    return "".join(indent + line + "\n" for line in dumped.splitlines())


def _text_edit(
    text: str, root: yaml.Node, path: Sequence[str | int], value: Any
) -> tuple[int, int, str] | None:
    """(start, end, replacement) that makes the edit in the text itself, keeping its
    comments and layout: a scalar replaced in place, or a key added to a block mapping;
    None when it cannot be done so."""
    node = root
    for depth, part in enumerate(path):
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next((v for k, v in node.value if k.value == part), None)
            if child is None:
                rest = path[depth + 1 :]
                if value is ABSENT or any(isinstance(p, int) for p in rest) or node.flow_style:
                    return None
                nested = value
                for inner in reversed(rest):
                    nested = {inner: nested}
                # Before a key that starts its own line: its indentation is the mapping's.
                for key, _ in node.value:
                    start = text.rfind("\n", 0, key.start_mark.index) + 1
                    indent = text[start : key.start_mark.index]
                    if not indent.strip():
                        return start, start, _block(str(part), nested, indent)
                return None
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return None
            node = node.value[part]
        else:
            return None
    if (
        isinstance(node, yaml.ScalarNode)
        and node.style in (None, "'", '"')
        and node.start_mark.line == node.end_mark.line
        and value is not ABSENT
        and not isinstance(value, Mapping | list)
    ):
        return node.start_mark.index, node.end_mark.index, _scalar_text(value, node.style)
    return None


def patch_manifest(text: str, index: int, edits: Sequence[Edit], live: Mapping[str, Any]) -> str:
    """The file `text` with document `index` changed by `edits` (manifest_edits, whose
    paths are of the `live` object). Edits are made in the text where they can be (the
    rest of the file stays byte for byte); otherwise the document is written again.
    Raises NoPullRequest when the manifest cannot take them."""
    documents = list(yaml.safe_load_all(text))
    nodes = list(yaml.compose_all(text))
    if len(nodes) != len(documents) or not 0 <= index < len(documents):
        raise NoPullRequest("the manifest file could not be read back")
    expected = copy.deepcopy(documents)
    wanted = expected[index]
    paths = []
    for edit in edits:
        path = _resolve(documents[index], live, pointer_parts(edit.path), edit.path)
        _set(wanted, path, edit.after)
        paths.append((path, edit.after))
    root = nodes[index]
    assert root is not None
    replacements = [_text_edit(text, root, path, after) for path, after in paths]
    if replacements and all(r is not None for r in replacements):
        patched = text
        spans = sorted((r for r in replacements if r is not None), reverse=True)
        if all(a[0] >= b[1] or a == b for a, b in itertools.pairwise(spans)):
            for start, end, replacement in spans:
                patched = patched[:start] + replacement + patched[end:]
            if _loads(patched) == expected:
                return patched
    # The document again, as PyYAML writes it; the others as they were.
    start = root.start_mark.index
    following = _DOCUMENT_START.search(text, start)
    end = following.start() if following else len(text)
    dumped = yaml.safe_dump(wanted, sort_keys=False, default_flow_style=False, width=100)
    patched = text[:start] + dumped + text[end:]
    if _loads(patched) != expected:
        raise NoPullRequest("the changed manifest would not read back as intended")
    return patched


def _loads(text: str) -> list[Any] | None:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return None


# -- names and words ----------------------------------------------------------------------------


def branch_name(incident_id: str, action: str) -> str:
    """kubernaut/<first 8 characters of the incident id>-<action>."""
    incident = re.sub(r"[^A-Za-z0-9._-]", "-", incident_id[:8]) or "none"
    return f"kubernaut/{incident}-{action}"


def commit_title(action: str, kind: str, namespace: str, name: str, incident_id: str) -> str:
    target = f"{namespace}/{name}" if namespace else name
    return f"kubernaut: {action} on {kind} {target} (incident {incident_id})"


def repository_slug(url: str) -> str:
    """ "owner/repository" of a Git URL (https, ssh, scp-like or file): its path's last two
    segments, without ".git"."""
    if re.match(r"^[\w.-]+@[\w.-]+:", url) and "://" not in url:  # git@github.com:o/r.git
        path = url.split(":", 1)[1]
    else:
        path = urlsplit(url).path
    segments = [s for s in path.removesuffix("/").removesuffix(".git").split("/") if s]
    if len(segments) < 2:
        raise NoPullRequest(f"{url} does not name a repository as owner/name")
    return "/".join(segments[-2:])


def authenticated_url(url: str, token: str) -> str:
    """The remote with the token as its credentials (https only: GitHub takes a token as
    the password of any user); other remotes as they are."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not token or parts.username:
        return url
    netloc = f"x-access-token:{quote(token, safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def shown_url(url: str) -> str:
    """The URL without the credentials it may carry, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _redact(text: str, token: str) -> str:
    return text.replace(quote(token, safe=""), "***").replace(token, "***") if token else text


# -- the repository and the pull request --------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """Everything the Git and GitHub work needs (it runs in a thread of its own)."""

    sources: tuple[GitSource, ...]
    target: dict[str, Any]
    edits: tuple[Edit, ...]
    branch: str
    title: str
    body: str
    action_id: str
    token: str
    api_url: str
    author: tuple[str, str]
    timeout: float


@dataclass(frozen=True)
class PullRequest:
    url: str
    number: int
    # The repository's URL, as the source names it (less a password).
    repository: str
    source: GitSource
    branch: str
    base: str
    # The manifest's path in the repository, and the change to it as a unified diff ("" when
    # they cannot be told).
    file: str
    diff: str
    # The pull request was open already (a repeat), not opened now.
    existing: bool


def _git_error(error: Exception, token: str) -> str:
    import git

    if isinstance(error, git.GitCommandError):
        detail = str(error.stderr or error.stdout or "").strip().replace("\n", " ")
        detail = re.sub(r"^stderr: ", "", detail).strip("' ")
        return _redact(detail or f"git exited {error.status}", token)
    return _redact(str(error), token)


class _Checkout:
    """A scratch repository whose `origin` is the source's remote."""

    def __init__(self, directory: str, remote: str, proposal: Proposal) -> None:
        import git

        self.proposal = proposal
        self.root = Path(directory)
        self.repo: git.Repo = git.Repo.init(directory)
        name, email = proposal.author
        self.repo.git.update_environment(
            GIT_TERMINAL_PROMPT="0",
            GIT_ALLOW_PROTOCOL=_GIT_PROTOCOLS,
            GIT_SSH_COMMAND="ssh -o BatchMode=yes",
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=email,
            GIT_COMMITTER_NAME=name,
            GIT_COMMITTER_EMAIL=email,
        )
        self.repo.git.config("commit.gpgsign", "false")
        self.repo.git.remote("add", "origin", remote)

    def git(self, *args: str) -> str:
        output = self.repo.git.execute(["git", *args], kill_after_timeout=self.proposal.timeout)
        return str(output)

    def default_branch(self) -> str:
        answer = self.git("ls-remote", "--symref", "origin", "HEAD")
        match = re.search(r"^ref: refs/heads/(\S+)\tHEAD", answer, re.MULTILINE)
        if not match:
            raise NoPullRequest("the remote names no default branch")
        return match.group(1)

    def heads(self, *names: str) -> set[str]:
        answer = self.git("ls-remote", "--heads", "origin", *(f"refs/heads/{n}" for n in names))
        return {line.split("\trefs/heads/", 1)[1] for line in answer.splitlines() if "\t" in line}

    def changed(self, branch: str) -> tuple[str, str]:
        """The files the branch's last commit changed, and its diff ("" when that cannot
        be told: a branch of one commit)."""
        import git

        try:
            self.fetch(branch, 2)
            tip = f"refs/remotes/origin/{branch}"
            files = ", ".join(self.git("diff", "--name-only", f"{tip}~1", tip).split())
            return files, self.git("diff", f"{tip}~1", tip)
        except git.GitCommandError:
            return "", ""

    def fetch(self, branch: str, depth: int) -> None:
        self.git(
            "fetch",
            "--no-tags",
            f"--depth={depth}",
            "origin",
            f"+refs/heads/{branch}:refs/remotes/origin/{branch}",
        )


def _in_repository(proposal: Proposal, source: GitSource) -> PullRequest | None:
    """The branch pushed to `source`'s repository (or found there); None when the
    manifest is not in this source (another of the application's may hold it)."""
    import git

    if not source.url or source.url.startswith("-"):
        raise NoPullRequest(f"{source.describe} names no repository URL")
    branch, url = proposal.branch, shown_url(source.url)
    try:
        with tempfile.TemporaryDirectory(prefix="kubernaut-gitops-") as directory:
            checkout = _Checkout(directory, authenticated_url(source.url, proposal.token), proposal)
            base = source.revision
            if base in ("", "HEAD"):
                base = checkout.default_branch()
            heads = checkout.heads(base, branch)
            if base not in heads:
                raise NoPullRequest(
                    f"{url} has no branch {base} (a pull request needs a branch to be "
                    "merged into, not a tag or commit)"
                )
            if branch in heads:  # pushed by an earlier attempt: its pull request is wanted
                file, diff = checkout.changed(branch)
                return PullRequest("", 0, url, source, branch, base, file, diff, True)
            checkout.fetch(base, 1)
            checkout.git("checkout", "-q", "-B", branch, f"refs/remotes/origin/{base}")
            try:
                manifest = find_manifest(checkout.root, source, proposal.target)
            except NoPullRequest:
                if len(proposal.sources) > 1:
                    return None
                raise
            text = manifest.path.read_text(encoding="utf-8")
            patched = patch_manifest(text, manifest.index, proposal.edits, proposal.target)
            file = str(manifest.path.resolve().relative_to(checkout.root.resolve()))
            if patched == text:
                raise NoPullRequest(
                    f"{file} on {base} holds the change already ({source.describe} has not "
                    "synced it yet)"
                )
            diff = "".join(
                difflib.unified_diff(
                    text.splitlines(keepends=True),
                    patched.splitlines(keepends=True),
                    f"a/{file}",
                    f"b/{file}",
                )
            )
            manifest.path.write_text(patched, encoding="utf-8")
            checkout.git("add", "--", file)
            message = f"{proposal.title}\n\n{ACTION_ID_TRAILER}: {proposal.action_id}\n"
            checkout.git("commit", "-q", "--no-verify", "-m", message)
            checkout.git("push", "-q", "--no-verify", "origin", f"HEAD:refs/heads/{branch}")
            return PullRequest("", 0, url, source, branch, base, file, diff, False)
    except git.GitCommandError as error:
        raise NoPullRequest(
            f"git could not work with {url}: {_git_error(error, proposal.token)}"
        ) from error
    except OSError as error:
        raise NoPullRequest(f"git could not be run: {error}") from error


def _github_message(error: Exception) -> str:
    data = getattr(error, "data", None)
    if isinstance(data, Mapping):
        message = str(data.get("message") or "")
        details = [
            str(e.get("message") or e.get("code") or "")
            for e in data.get("errors") or []
            if isinstance(e, Mapping)
        ]
        return "; ".join(x for x in (message, *details) if x) or str(error)
    return str(error)


def _open_pull_request(proposal: Proposal, pushed: PullRequest, body: str) -> PullRequest:
    """The pull request open for the branch, or a new one."""
    from github import Auth, Github, GithubException

    slug = repository_slug(pushed.repository)
    owner = slug.split("/", 1)[0]
    client = Github(
        base_url=proposal.api_url.rstrip("/"),
        auth=Auth.Token(proposal.token),
        timeout=max(1, round(proposal.timeout)),
        retry=None,
    )
    where = f"GitHub ({proposal.api_url})"
    try:
        repository = client.get_repo(slug)

        def open_one() -> PullRequest | None:
            """The branch's open pull request; NoPullRequest when one was closed (people
            decided against it: it is not opened again)."""
            closed = None
            for pull in repository.get_pulls(
                state="all", head=f"{owner}:{pushed.branch}", base=pushed.base
            ):
                if pull.state == "open":
                    return _with(pushed, pull.html_url, pull.number, existing=True)
                closed = closed or pull
            if closed is not None:
                raise NoPullRequest(
                    f"the pull request for branch {pushed.branch}, {closed.html_url}, was "
                    "closed; it is not opened again"
                )
            return None

        if (found := open_one()) is not None:
            return found
        try:
            pull = repository.create_pull(
                base=pushed.base, head=pushed.branch, title=proposal.title, body=body
            )
        except GithubException as error:
            # Opened meanwhile by another attempt: that one is this one.
            already = error.status == 422 and "already exists" in _github_message(error)
            if already and (found := open_one()) is not None:
                return found
            raise
        return _with(pushed, pull.html_url, pull.number, existing=False)
    except GithubException as error:
        raise NoPullRequest(
            f"{where} answered {error.status} for {slug}: {_github_message(error)}"
        ) from error
    except OSError as error:  # requests' errors too
        raise NoPullRequest(f"{where} did not answer: {_redact(str(error), proposal.token)}") from (
            error
        )
    finally:
        client.close()


def _with(pushed: PullRequest, url: str, number: int, *, existing: bool) -> PullRequest:
    return dataclasses.replace(pushed, url=url, number=number, existing=existing)


def _propose(proposal: Proposal) -> PullRequest:
    for source in proposal.sources:
        pushed = _in_repository(proposal, source)
        if pushed is not None:
            diff = pushed.diff
            if len(diff) > _MAX_DIFF:
                diff = diff[:_MAX_DIFF] + "\n... (cut; the branch has it all)\n"
            diff = f"```diff\n{diff.rstrip()}\n```" if diff else "(see the branch)"
            body = proposal.body.replace(_FILE_MARK, pushed.file or "(see the branch)")
            body = body.replace(_DIFF_MARK, diff)
            return _open_pull_request(proposal, pushed, body)
    raise NoPullRequest(
        f"no manifest of the object in any source of {proposal.sources[0].describe}"
    )


def _token(path: Path | None) -> str:
    if path is None:
        raise NoPullRequest("no GitHub token (KUBERNAUT_EXECUTOR_GITOPS_GITHUB_TOKEN_FILE)")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise NoPullRequest(f"the GitHub token file cannot be read: {error}") from error
    if not token:
        raise NoPullRequest(f"the GitHub token file {path} is empty")
    return token


def _body(run: Run, change: Change, owner: GitOpsOwner, edits: Sequence[Edit]) -> str:
    """The pull request's description; the manifest's file and diff are filled in once
    known (_FILE_MARK, _DIFF_MARK)."""
    request = run.request
    params = getattr(request.action, run.action)
    arguments = json.dumps(MessageToDict(params, preserving_proto_field_name=True))
    fields = "\n".join(
        f"- `{e.path}`: " + ("removed" if e.after is ABSENT else f"`{json.dumps(e.after)}`")
        for e in edits
    )
    lines = [
        f"Kubernaut proposes this change for incident `{request.incident_id}` instead of "
        "patching the cluster. Merging it lets the GitOps controller sync it.",
        "",
        f"- **Incident:** `{request.incident_id}`",
        f"- **Alert:** `{request.alert_name}`",
        f"- **Target:** {where(run.ref)} (cluster {run.cluster_name})",
        f"- **Action:** `{run.action}` `{arguments}`",
        f"- **Change:** {change.summary}",
        f"- **Manifest:** `{_FILE_MARK}`",
        "",
        "### Why",
        "",
        f"The alert `{request.alert_name}` fired for {where(run.ref)}, and the remediation "
        f"chosen for incident `{request.incident_id}` is `{run.action}`: {change.summary}. "
        "The API server accepted the change in a dry-run. It is not patched in the cluster "
        f"because {owner.describe()} manages the object and would revert a patch made there "
        "(KUBERNAUT_EXECUTOR_GITOPS=pull_request).",
        "",
        "### The patch",
        "",
        _DIFF_MARK,
        "",
        "The fields it sets, as JSON pointers into the live object:",
        "",
        fields,
        "",
        f"{ACTION_ID_TRAILER}: {run.row.action_id}",
    ]
    return "\n".join(lines)


async def propose(
    run: Run, target: dict[str, Any], change: Change, owner: GitOpsOwner
) -> PullRequest:
    """Push the change to a branch of the object's Git source and open (or find) its pull
    request. Raises NoPullRequest with the reason; ClusterUnavailable when the cluster
    does not answer."""
    settings = run.settings
    if settings.dry_run:
        raise NoPullRequest("dry-run mode (KUBERNAUT_EXECUTOR_DRY_RUN) opens no pull request")
    edits = manifest_edits(change)
    if not edits:
        raise NoPullRequest("the change sets no field a manifest holds")
    token = _token(settings.gitops_github_token_file)
    sources = await find_sources(await run.cluster(), target, settings.gitops_argocd_namespace)
    name, email = parseaddr(settings.gitops_commit_author)
    ref = run.ref
    proposal = Proposal(
        sources=tuple(sources),
        target=target,
        edits=tuple(edits),
        branch=branch_name(run.request.incident_id, run.action),
        title=commit_title(run.action, ref.kind, ref.namespace, ref.name, run.request.incident_id),
        body=_body(run, change, owner, edits),
        action_id=run.row.action_id,
        token=token,
        api_url=settings.gitops_github_api_url,
        author=(name or "Kubernaut", email or "kubernaut@users.noreply.github.com"),
        timeout=settings.gitops_timeout_seconds,
    )
    return await asyncio.to_thread(_propose, proposal)


async def refuse_with_pull_request(
    run: Run, target: dict[str, Any], change: Change, owner: GitOpsOwner
) -> NoReturn:
    """GITOPS=pull_request: the change as a pull request, or as with notify when none can
    be opened; either way REFUSED, since nothing changes in the cluster."""
    patch = proposed_patch(run.ref, change)
    managed = f"{owner.describe()} manages {where(run.ref)} and would revert a patch"
    try:
        pull = await propose(run, target, change, owner)
    except NoPullRequest as error:
        reason = str(error)
        run.refuse(
            f"gitops: refused: {managed}; no pull request ({reason}), so as with notify "
            f"(KUBERNAUT_EXECUTOR_GITOPS=pull_request); proposed change: {patch}",
            f"{run.what()} not applied: {where(run.ref)} is managed by {owner.describe()}, "
            f"which would revert it; no pull request was opened ({reason}); change it in Git "
            f"instead. Proposed change ({change.summary}): {patch}",
        )
    opened = "found pull request" if pull.existing else "opened pull request"
    what = f"{opened} {pull.url} on {pull.repository} ({pull.source.describe})"
    why = f"not patched in the cluster because {managed} (KUBERNAUT_EXECUTOR_GITOPS=pull_request)"
    file = f", {pull.file}" if pull.file else ""
    run.refuse(
        f"gitops: pull request: {what}, branch {pull.branch} into {pull.base}{file}; {why}",
        f"{run.what()} not applied in the cluster. GitOps: {what}; {why}; merging the pull "
        f"request makes the change ({change.summary}).",
    )
