"""Kubernetes API clients for the services that talk to clusters (executor, context_api).

Each service reads its own kubeconfig (`KUBECONFIG`), so each gets only the RBAC of its
own identity: the executor its least-privilege role, context_api read-only access.
In a pod without a kubeconfig the in-cluster ServiceAccount is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernaut.runtime.settings import KubeSettings

if TYPE_CHECKING:
    from kubernetes_asyncio import client

# kubernetes_asyncio is imported where a connection is made: the helpers below (template
# digests, annotations) serve services that never talk to a cluster (storage), and the
# client costs some 40 MiB of RSS in each process that loads it.

# The opt-in label: Kubernaut acts only on objects (or namespaces) that carry it.
MANAGED_LABEL = "kubernaut.ai/managed"
# Kubernaut's marks on what it writes. On the object: the action that last changed it,
# and (workloads whose pod template it changes) kubernetes.io/change-cause. In a pod
# template it writes: the action, and the digest of the template's spec as the API server
# stores it, which tells a ReplicaSet of Kubernaut's own making from one that merely
# inherited these sticky annotations (is_own_template).
ACTION_ID_ANNOTATION = "kubernaut.ai/action-id"
CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"
TEMPLATE_DIGEST_ANNOTATION = "kubernaut.ai/template-digest"


def _kubeconfig_path(settings: KubeSettings) -> Path | None:
    if settings.in_cluster:
        return None
    for candidate in (settings.kubeconfig, os.environ.get("KUBECONFIG", "")):
        if candidate:
            return Path(candidate).expanduser()
    default = Path("~/.kube/config").expanduser()
    return default if default.exists() else None


class ClusterNotConfigured(RuntimeError):
    """No kubeconfig and not in a pod: the service runs without a cluster."""


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


class KubeConnection:
    """One API client per service, made on first use, so that a service starts (and
    says NOT_SERVING) while its cluster is unreachable, and runs without one at all when
    none is configured (its cluster RPCs then answer FAILED_PRECONDITION)."""

    def __init__(self, settings: KubeSettings) -> None:
        self.settings = settings
        # Where the cluster is, read once (as every setting): KUBECONFIG changing later in
        # this process (a test's, or an embedding program's) must not move the service.
        self._path = _kubeconfig_path(settings)
        self._in_pod = _in_cluster()
        self._client: client.ApiClient | None = None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return self._path is not None or self._in_pod

    async def api(self) -> client.ApiClient:
        async with self._lock:
            if self._client is None:
                self._client = await self._connect()
            return self._client

    async def _connect(self) -> client.ApiClient:
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        path = self._path
        if path is not None:
            await config.load_kube_config(
                config_file=str(path),
                context=self.settings.context or None,
                client_configuration=configuration,
            )
        elif self._in_pod:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        elif self.settings.in_cluster:
            raise ClusterNotConfigured(
                "the cluster is configured in-cluster, but this process does not run in a pod"
                " (KUBERNETES_SERVICE_HOST is unset)"
            )
        else:
            raise ClusterNotConfigured(
                "no Kubernetes cluster configured: set KUBECONFIG (or KUBERNAUT_KUBE_KUBECONFIG)"
            )
        return client.ApiClient(configuration)

    async def ready(self) -> bool:
        """The API server answers (a readiness check)."""
        from kubernetes_asyncio import client

        try:
            await client.VersionApi(await self.api()).get_code(_request_timeout=5)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def is_managed(labels: dict[str, str] | None) -> bool:
    return (labels or {}).get(MANAGED_LABEL) == "true"


def without_nulls(value: Any) -> Any:
    """`value` with None dropped from every mapping, recursively (the API server and the
    client models differ in whether they send absent fields as null)."""
    if isinstance(value, Mapping):
        return {str(k): without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [without_nulls(v) for v in value]
    return value


def pod_spec_digest(spec: Mapping[str, Any] | None) -> str:
    """sha256 (hex) of a pod template's `spec` as canonical JSON: keys sorted, null
    values dropped recursively. The same for the API server's JSON (the executor) and for
    kubernetes_asyncio models turned into JSON by `ApiClient().sanitize_for_serialization`
    (context_api), which write absent fields as null. Field names must be the API's
    (camelCase) in both."""
    text = json.dumps(
        without_nulls(spec or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


def is_own_template(template: Mapping[str, Any] | None) -> bool:
    """Whether a pod template (API JSON) is as Kubernaut wrote it: it carries the digest
    annotation and the digest still equals its spec's."""
    template = template or {}
    digest = ((template.get("metadata") or {}).get("annotations") or {}).get(
        TEMPLATE_DIGEST_ANNOTATION
    )
    return bool(digest) and digest == pod_spec_digest(template.get("spec"))
