"""The executor's calls to the Kubernetes API, on plain JSON.

Objects are read and written as the API server sends them (not through the client's
models), so that a snapshot holds every field, including ones newer than the client, and a
restore puts back exactly what was read. Errors come out as two kinds: `ClusterUnavailable`
(no answer, 5xx, 429: safe to retry) and `ApiError` (the API server answered no).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["KINDS", "ApiError", "Cluster", "ClusterUnavailable", "Kind", "UnknownKind"]

_RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 504})
FIELD_MANAGER: Final = "kubernaut-executor"


@dataclass(frozen=True)
class Kind:
    """Where the API server serves a kind: `/apis/<group>/<version>` (core: `/api/v1`)."""

    name: str
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str = "", name: str = "", subresource: str = "") -> str:
        parts = [self.base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


KINDS: Final[Mapping[str, Kind]] = {
    k.name: k
    for k in (
        Kind("Deployment", "apps", "v1", "deployments"),
        Kind("StatefulSet", "apps", "v1", "statefulsets"),
        Kind("DaemonSet", "apps", "v1", "daemonsets"),
        Kind("ReplicaSet", "apps", "v1", "replicasets"),
        Kind("Pod", "", "v1", "pods"),
        Kind("Node", "", "v1", "nodes", namespaced=False),
        Kind("Namespace", "", "v1", "namespaces", namespaced=False),
        Kind("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims"),
        Kind("PersistentVolume", "", "v1", "persistentvolumes", namespaced=False),
        Kind("StorageClass", "storage.k8s.io", "v1", "storageclasses", namespaced=False),
        Kind("ConfigMap", "", "v1", "configmaps"),
        Kind("Service", "", "v1", "services"),
        Kind("Event", "", "v1", "events"),
        Kind("Job", "batch", "v1", "jobs"),
        Kind("CronJob", "batch", "v1", "cronjobs"),
        Kind("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers"),
    )
}


class UnknownKind(LookupError):
    """The executor does not know where the API server serves this kind."""


def kind_of(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"the executor does not handle objects of kind {name!r}") from None


class ClusterUnavailable(Exception):
    """The API server did not answer, or answered that it cannot now; safe to retry."""


class ApiError(Exception):
    """The API server refused the request: `status` (403, 404, 409, 422, ...), its reason
    and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def forbidden(self) -> bool:
        return self.status == 403

    @property
    def conflict(self) -> bool:
        return self.status == 409


def _delete_options(*, dry_run: bool, uid: str, grace_period_seconds: int | None) -> dict[str, Any]:
    """DeleteOptions (of a delete or an eviction): dry-run, a uid precondition (only this
    object, not a newer one of the same name), a grace period."""
    options: dict[str, Any] = {}
    if dry_run:
        options["dryRun"] = ["All"]
    if uid:
        options["preconditions"] = {"uid": uid}
    if grace_period_seconds is not None:
        options["gracePeriodSeconds"] = grace_period_seconds
    return options


def _error_of(status: int, body: bytes) -> ApiError:
    try:
        data = json.loads(body)
        return ApiError(status, str(data.get("reason") or ""), str(data.get("message") or ""))
    except (ValueError, AttributeError):
        return ApiError(status, "", body.decode("utf-8", "replace")[:1024])


class Cluster:
    """Typed-enough access to what the executor reads and writes, through one ApiClient."""

    def __init__(self, api: client.ApiClient, *, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout

    async def _read(self, call: Awaitable[Any]) -> bytes:
        """Run a generated client call made with _preload_content=False; its body, once
        the status says it succeeded."""
        try:
            async with asyncio.timeout(self.timeout * 2):
                response: Any = await call
                try:
                    body: bytes = await response.read()
                finally:
                    response.release()
        except ApiException as error:  # raised by the client itself (status 0: no answer)
            if error.status in _RETRYABLE_STATUS or not error.status:
                raise ClusterUnavailable(f"the API server did not answer: {error}") from error
            raise ApiError(
                int(error.status), str(error.reason or ""), str(error.body or "")
            ) from error
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ClusterUnavailable(
                f"the API server did not answer: {error or type(error).__name__}"
            ) from error
        status = int(response.status)
        if status == 401:
            # Expired or rotated credentials: an operator's fix, then a retry.
            raise ClusterUnavailable(
                f"the API server rejected the executor's credentials: {_error_of(status, body)}"
            )
        if status in _RETRYABLE_STATUS:
            answer = _error_of(status, body)
            raise ClusterUnavailable(f"the API server answered {answer}") from answer
        if not 200 <= status <= 299:
            raise _error_of(status, body)
        return body

    async def _json(self, call: Awaitable[Any]) -> Any:
        return json.loads(await self._read(call))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
        """One request to the API server on `path`; its JSON answer (its text with `raw`)."""
        headers = {"Accept": "text/plain" if raw else "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        call = self.api.call_api(
            path,
            method,
            query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=self.timeout,
        )
        if raw:
            return (await self._read(call)).decode("utf-8", "replace")
        return await self._json(call)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", kind_of(kind).path(namespace, name))
        return result

    async def list_objects(
        self,
        kind: str,
        namespace: str = "",
        *,
        labels: str | None = None,
        fields: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        result = await self._call(
            "GET",
            kind_of(kind).path(namespace),
            query={
                "labelSelector": labels or None,
                "fieldSelector": fields or None,
                "limit": limit,
            },
        )
        return list(result.get("items") or [])

    async def patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        patch: list[dict[str, Any]],
        *,
        dry_run: bool,
        subresource: str = "",
    ) -> dict[str, Any]:
        """A JSON patch; with `dry_run`, dryRun=All: admission and validation run, nothing
        is stored."""
        result: dict[str, Any] = await self._call(
            "PATCH",
            kind_of(kind).path(namespace, name, subresource),
            query={"dryRun": "All" if dry_run else None, "fieldManager": FIELD_MANAGER},
            body=patch,
            content_type="application/json-patch+json",
        )
        return result

    async def create(
        self, kind: str, namespace: str, body: Mapping[str, Any], *, dry_run: bool
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST",
            kind_of(kind).path(namespace),
            query={"dryRun": "All" if dry_run else None, "fieldManager": FIELD_MANAGER},
            body=dict(body),
        )
        return result

    async def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        dry_run: bool,
        uid: str = "",
        grace_period_seconds: int | None = None,
        propagation: str = "Background",
    ) -> dict[str, Any]:
        """Delete, only if the object still has `uid` (a precondition: a recreated
        object of the same name is not deleted)."""
        options = {
            "propagationPolicy": propagation,
            **_delete_options(dry_run=dry_run, uid=uid, grace_period_seconds=grace_period_seconds),
        }
        result: dict[str, Any] = await self._call(
            "DELETE", kind_of(kind).path(namespace, name), body=options
        )
        return result

    async def evict(
        self,
        namespace: str,
        name: str,
        *,
        dry_run: bool,
        uid: str = "",
        grace_period_seconds: int | None = None,
    ) -> None:
        """Evict a pod through the Eviction API, which honours PodDisruptionBudgets: an
        ApiError with status 429 when a budget does not allow it now."""
        options = _delete_options(
            dry_run=dry_run, uid=uid, grace_period_seconds=grace_period_seconds
        )
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": options,
        }
        try:
            await self._call("POST", KINDS["Pod"].path(namespace, name, "eviction"), body=body)
        except ClusterUnavailable as error:
            # 429 here is a PodDisruptionBudget's answer, not an overloaded server.
            cause = error.__cause__
            if isinstance(cause, ApiError) and cause.status == 429:
                raise cause from None
            raise

    async def logs(
        self, namespace: str, pod: str, container: str, *, tail_lines: int, limit_bytes: int
    ) -> str:
        text: str = await self._call(
            "GET",
            KINDS["Pod"].path(namespace, pod, "log"),
            query={"container": container, "tailLines": tail_lines, "limitBytes": limit_bytes},
            raw=True,
        )
        return text

    async def namespace(self, name: str) -> dict[str, Any]:
        return await self.get("Namespace", "", name)

    async def replica_sets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return await self.list_objects("ReplicaSet", namespace, labels=selector)

    async def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return await self.list_objects("Pod", namespace, labels=selector)

    async def allowed(
        self,
        *,
        namespace: str,
        group: str,
        resource: str,
        verb: str,
        subresource: str = "",
        name: str = "",
    ) -> tuple[bool, str]:
        """Whether this client's identity may do `verb` (a SelfSubjectAccessReview), and
        the authorizer's reason."""
        attributes = {
            "namespace": namespace,
            "group": group,
            "resource": resource,
            "verb": verb,
            "subresource": subresource,
            "name": name,
        }
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {k: v for k, v in attributes.items() if v}},
        }
        result = await self._call(
            "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review
        )
        status = result.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")
