"""The CustomResourceDefinitions that Kubernaut's Helm chart is checked against, on the
local control plane: Istio's, prometheus-operator's, cert-manager's and CloudNativePG's.

`scripts/build-helm.sh` (run by `make setup`) copies them unchanged out of the Go modules
pinned in `tools/helm/crds.txt` into `<state_dir>/crds/<name>-<version>/`, and builds
Helm beside them (`build_helm` runs it). `cached_crd_files` lists those files,
`load_crds` reads the definitions out of them, and `ApiServer.apply_crds` applies them to
a running API server (server-side apply) and waits until each is Established, so that
objects of their kinds can then be checked with `ApiServer.dry_run_apply`.

`gitops_crds` are minimal definitions of the three GitOps kinds the executor reads to find
a managed object's Git source (Argo CD's Application, Flux's Kustomization and
GitRepository): their group, version, names and scope as the projects define them, and a
schema that types the fields the executor reads and keeps the rest. Applied the same way,
they let the local control plane hold such objects without Argo CD or Flux installed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubernaut.runtime.settings import RuntimeSettings

__all__ = [
    "BUILD_SCRIPT",
    "FIELD_MANAGER",
    "PINS_FILE",
    "ApiServer",
    "CrdError",
    "CrdSource",
    "build_helm",
    "cached_crd_files",
    "crds_root",
    "gitops_crds",
    "load_crds",
    "read_pins",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-helm.sh"
PINS_FILE = REPO_ROOT / "tools" / "helm" / "crds.txt"
FIELD_MANAGER = "kubernaut-devstack"
_CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class CrdError(RuntimeError):
    """The CRDs are not cached, not valid, or the API server refused or did not establish
    them; the message says which and what to run."""


@dataclass(frozen=True)
class CrdSource:
    """One line of tools/helm/crds.txt: where a project's CRDs come from."""

    name: str
    module: str
    version: str
    paths: tuple[str, ...]
    """Inside the module; a directory stands for every *.yaml in it."""

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.version}"


def read_pins(path: Path = PINS_FILE) -> list[CrdSource]:
    """The CRD sources pinned in `path` (NAME MODULE VERSION PATH... per line, # comments)."""
    sources = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 4:
            raise CrdError(f"{path}:{number}: want NAME MODULE VERSION PATH..., got {raw!r}")
        name, module, version, *paths = fields
        sources.append(CrdSource(name, module, version, tuple(paths)))
    return sources


def crds_root(state_dir: Path | None = None) -> Path:
    """`<state_dir>/crds` (`$KUBERNAUT_STATE_DIR`, read now), where build-helm.sh puts them."""
    return (state_dir or RuntimeSettings().state_dir).expanduser() / "crds"


def build_helm(timeout: float | None = None) -> Path:
    """Run scripts/build-helm.sh (well under a second when built, ~5 minutes cold): Helm
    and the CRDs. Returns the directory holding `helm`; progress goes to stderr."""
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-bin-dir"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
            timeout=timeout,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        raise CrdError(f"{BUILD_SCRIPT} did not finish in {timeout}s") from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise CrdError(f"{BUILD_SCRIPT} failed (exit {result.returncode}); its errors are above")
    return Path(lines[-1])


def cached_crd_files(
    root: Path | None = None, sources: Sequence[CrdSource] | None = None
) -> list[Path]:
    """Every cached CRD file of the pinned sources, in pin order, then by name. Fails when
    a source was not gathered (or only half): scripts/build-helm.sh does that."""
    root = root or crds_root()
    files: list[Path] = []
    for source in read_pins() if sources is None else sources:
        directory = root / source.dir_name
        if not (directory / ".complete").is_file():
            raise CrdError(
                f"the {source.name} CRDs ({source.module} {source.version}) are not in "
                f"{directory}: run {BUILD_SCRIPT.relative_to(REPO_ROOT)} --crds-only"
            )
        found = sorted(directory.glob("*.yaml"))
        if not found:
            raise CrdError(f"{directory} holds no CRD file: run {BUILD_SCRIPT} --force")
        files.extend(found)
    return files


def load_crds(files: Iterable[Path]) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in `files` (multi-document YAML; other documents and
    empty ones are skipped)."""
    crds = []
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                if not (document.get("metadata") or {}).get("name"):
                    raise CrdError(f"{path}: a CustomResourceDefinition without a name")
                crds.append(document)
    return crds


def _gitops_crd(
    group: str,
    version: str,
    kind: str,
    plural: str,
    short_names: Sequence[str],
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    string = {"type": "string"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(short_names),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "apiVersion": string,
                                "kind": string,
                                "metadata": {"type": "object"},
                                "spec": {
                                    "type": "object",
                                    "properties": dict(spec),
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def gitops_crds() -> list[dict[str, Any]]:
    """Minimal CRDs of Argo CD's Application (argoproj.io/v1alpha1) and Flux's
    Kustomization (kustomize.toolkit.fluxcd.io/v1) and GitRepository
    (source.toolkit.fluxcd.io/v1), for `ApiServer.apply_crds`."""
    string = {"type": "string"}
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    source = {
        "type": "object",
        "properties": {
            "repoURL": string,
            "path": string,
            "targetRevision": string,
            "chart": string,
        },
        "x-kubernetes-preserve-unknown-fields": True,
    }
    application = {
        "project": string,
        "source": source,
        "sources": {"type": "array", "items": source},
        "destination": {
            "type": "object",
            "properties": {"server": string, "name": string, "namespace": string},
        },
        "syncPolicy": open_object,
    }
    kustomization = {
        "path": string,
        "interval": string,
        "prune": {"type": "boolean"},
        "targetNamespace": string,
        "sourceRef": {
            "type": "object",
            "required": ["kind", "name"],
            "properties": {
                "apiVersion": string,
                "kind": {"type": "string", "enum": ["OCIRepository", "GitRepository", "Bucket"]},
                "name": string,
                "namespace": string,
            },
        },
    }
    git_repository = {
        "url": {"type": "string", "pattern": "^(http|https|ssh)://.*$"},
        "interval": string,
        "ref": {
            "type": "object",
            "properties": {
                "branch": string,
                "tag": string,
                "semver": string,
                "name": string,
                "commit": string,
            },
        },
        "secretRef": open_object,
    }
    return [
        _gitops_crd(
            "argoproj.io", "v1alpha1", "Application", "applications", ("app", "apps"), application
        ),
        _gitops_crd(
            "kustomize.toolkit.fluxcd.io",
            "v1",
            "Kustomization",
            "kustomizations",
            ("ks",),
            kustomization,
        ),
        _gitops_crd(
            "source.toolkit.fluxcd.io",
            "v1",
            "GitRepository",
            "gitrepositories",
            ("gitrepo",),
            git_repository,
        ),
    ]


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in (obj.get("status") or {}).get("conditions") or [] if c}


def _established(crd: Mapping[str, Any]) -> bool:
    conditions = _conditions(crd)
    return all(
        (conditions.get(kind) or {}).get("status") == "True"
        for kind in ("Established", "NamesAccepted")
    )


class ApiServer:
    """A few admin calls to one API server through a kubernetes_asyncio client (whose
    owner closes it): server-side apply, with or without dry-run, resolving an object's
    kind to its path by discovery."""

    def __init__(self, api: client.ApiClient, *, timeout: float = 30.0) -> None:
        self.api = api
        self.timeout = timeout
        # (apiVersion, kind) -> (plural, namespaced); refreshed when a kind is missing,
        # since applying CRDs adds kinds.
        self._discovered: dict[tuple[str, str], tuple[str, bool]] = {}

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """One request: (HTTP status, decoded JSON answer or text). Raises CrdError when
        no answer came."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            async with asyncio.timeout(self.timeout):
                response: Any = await self.api.call_api(
                    path,
                    method,
                    query_params=list((query or {}).items()),
                    header_params=headers,
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=self.timeout,
                )
                try:
                    status, raw = int(response.status), await response.read()
                finally:
                    response.release()
        except ApiException as error:
            status, raw = int(error.status or 0), (error.body or b"")
            if not status:
                raise CrdError(
                    f"{method} {path}: no answer from the API server: {error}"
                ) from error
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise CrdError(
                f"{method} {path}: no answer from the API server: {error or type(error).__name__}"
            ) from error
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    async def _apply(self, path: str, obj: Mapping[str, Any], *, dry_run: bool) -> dict[str, Any]:
        query = {"fieldManager": FIELD_MANAGER, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        status, answer = await self.call(
            "PATCH", path, query=query, body=obj, content_type="application/apply-patch+yaml"
        )
        if not 200 <= status <= 299:
            message = answer.get("message") if isinstance(answer, dict) else str(answer)[:500]
            raise CrdError(
                f"{'dry-run ' if dry_run else ''}apply of {_describe(obj)} was refused "
                f"({status}): {message}"
            )
        result: dict[str, Any] = answer
        return result

    async def apply_crds(
        self, crds: Sequence[Mapping[str, Any]], *, timeout: float = 120.0
    ) -> list[str]:
        """Apply every CRD (server-side, taking their fields over from any other manager)
        and wait until each is Established with its names accepted; their names."""
        names = []
        for crd in crds:
            name = crd["metadata"]["name"]
            await self._apply(f"{_CRD_PATH}/{quote(name)}", crd, dry_run=False)
            names.append(name)
        await self.wait_established(names, timeout=timeout)
        # New kinds: the next discovery must look again.
        self._discovered.clear()
        return names

    async def wait_established(self, names: Sequence[str], *, timeout: float = 120.0) -> None:
        """Wait until every named CRD is Established and NamesAccepted; on timeout the
        error lists those that are not, with what their conditions say."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        last: dict[str, Any] = {}
        while True:
            still = []
            for name in pending:
                status, answer = await self.call("GET", f"{_CRD_PATH}/{quote(name)}")
                if status == 200 and isinstance(answer, dict) and _established(answer):
                    continue
                still.append(name)
                last[name] = _conditions(answer) if isinstance(answer, dict) else answer
            pending = still
            if not pending:
                return
            if time.monotonic() >= deadline:
                details = "; ".join(
                    f"{name}: "
                    + (
                        ", ".join(
                            f"{kind}={c.get('status')} {c.get('message') or ''}".strip()
                            for kind, c in last[name].items()
                        )
                        if isinstance(last[name], dict)
                        else str(last[name])[:200]
                    )
                    for name in pending
                )
                raise CrdError(f"not Established after {timeout:g}s: {details or pending}")
            await asyncio.sleep(0.2)

    async def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        key = (api_version, kind)
        if key not in self._discovered:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            status, answer = await self.call("GET", base)
            if status == 200 and isinstance(answer, dict):
                for resource in answer.get("resources") or []:
                    if "/" not in resource.get("name", ""):  # not a subresource
                        self._discovered[(api_version, resource["kind"])] = (
                            resource["name"],
                            bool(resource.get("namespaced")),
                        )
        if key not in self._discovered:
            raise CrdError(f"the API server serves no {kind} in {api_version}")
        return self._discovered[key]

    async def path_of(self, obj: Mapping[str, Any], namespace: str | None = None) -> str:
        """The API path of `obj` (by its apiVersion and kind, discovered); a namespaced
        object goes to its own namespace, else `namespace`, else `default`."""
        api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
        name = (obj.get("metadata") or {}).get("name")
        if not api_version or not kind or not name:
            raise CrdError(f"{_describe(obj)} needs apiVersion, kind and metadata.name")
        plural, namespaced = await self._resource(api_version, kind)
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespaced:
            ns = (obj.get("metadata") or {}).get("namespace") or namespace or "default"
            prefix += f"/namespaces/{quote(ns)}"
        return f"{prefix}/{plural}/{quote(name)}"

    async def dry_run_apply(
        self, obj: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply of `obj` with dryRun=All: the API server validates it fully
        (schema, admission) and stores nothing. The object as it would be; CrdError with
        the server's message when it is refused."""
        return await self._apply(await self.path_of(obj, namespace), obj, dry_run=True)


def _describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')} {where}{meta.get('name', '?')} ({obj.get('apiVersion', '?')})"
