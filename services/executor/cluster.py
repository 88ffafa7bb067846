"""The executor's calls to the Kubernetes API, on plain JSON.

Objects are read and written as the API server sends them (not through the client's
models), so that a snapshot holds every field, including ones newer than the client, and a
restore puts back exactly what was read. Errors come out as two kinds: `ClusterUnavailable`
(no answer, 5xx, 429: safe to retry) and `ApiError` (the API server answered no).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["ApiError", "Cluster", "ClusterUnavailable"]

_RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 504})


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
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.authorization = client.AuthorizationV1Api(api)

    async def _json(self, call: Awaitable[Any]) -> Any:
        """Run a generated client call made with _preload_content=False; its JSON body."""
        try:
            async with asyncio.timeout(self.timeout * 2):
                response: Any = await call
                try:
                    body = await response.read()
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
            raise ClusterUnavailable(f"the API server answered {_error_of(status, body)}")
        if not 200 <= status <= 299:
            raise _error_of(status, body)
        return json.loads(body)

    async def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            self.apps.read_namespaced_deployment(
                name, namespace, _preload_content=False, _request_timeout=self.timeout
            )
        )
        return result

    async def namespace(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            self.core.read_namespace(name, _preload_content=False, _request_timeout=self.timeout)
        )
        return result

    async def replica_sets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = await self._json(
            self.apps.list_namespaced_replica_set(
                namespace,
                label_selector=selector,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )
        return list(result.get("items") or [])

    async def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = await self._json(
            self.core.list_namespaced_pod(
                namespace,
                label_selector=selector,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )
        return list(result.get("items") or [])

    async def patch_deployment(
        self, namespace: str, name: str, patch: list[dict[str, Any]], *, dry_run: bool
    ) -> dict[str, Any]:
        """A JSON patch (a list body is sent as application/json-patch+json); with
        `dry_run`, dryRun=All: admission and validation run, nothing is stored."""
        kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        result: dict[str, Any] = await self._json(
            self.apps.patch_namespaced_deployment(
                name,
                namespace,
                patch,
                field_manager="kubernaut-executor",
                _preload_content=False,
                _request_timeout=self.timeout,
                **kwargs,
            )
        )
        return result

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
        result = await self._json(
            self.authorization.create_self_subject_access_review(
                review,  # type: ignore[arg-type]  # a plain dict is serialized as is
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )
        status = result.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")
