"""Bounded log tails of the incident's own pods, through the pods/log subresource.

What an SRE reads first in a crash loop: the last lines a container printed, or those of
its previous (crashed) run. Only pods of the scope's workload are read, and never more than
MAX_LINES lines and MAX_BYTES bytes: a log is written by whatever runs in the pod, so its
size is not ours to trust.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernetes_asyncio.client.exceptions import ApiException

from kubernaut.services.context_api.resources import (
    ResourceContextReader,
    ResourceNotFound,
    read_json,
)

MAX_LINES = 200
MAX_BYTES = 16 * 1024
# What one read from the API server may bring at most: the kubelet applies limitBytes from
# the start of the tail, so a cap of exactly MAX_BYTES would keep the tail's oldest lines.
# Reading more and keeping the end keeps the newest.
READ_FACTOR = 4
MAX_READS = 3
# The scope's pods listed in the answer, at most.
MAX_PODS = 20


class OutOfScope(ValueError):
    """The request names something outside the incident's pods: `field` says what."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NoPods(LookupError):
    """The scope's workload has no pods now."""


class LogsUnavailable(RuntimeError):
    """The cluster cannot serve these logs (no previous run, a pod not placed yet, a node
    that serves no logs); the API server's message says why."""


def _restarts(status: Any) -> int:
    return int(getattr(status, "restart_count", 0) or 0)


def _pod_restarts(pod: Any) -> int:
    return sum(_restarts(s) for s in pod.status.container_statuses or [])


def pick_container(pod: Any) -> str:
    """The container with the most restarts, then the first in the spec."""
    names: list[str] = [str(c.name) for c in pod.spec.containers]
    restarts = {s.name: _restarts(s) for s in pod.status.container_statuses or []}
    return min(names, key=lambda name: (-restarts.get(name, 0), names.index(name)))


def tail_of(data: bytes, limit_bytes: int, complete: bool) -> tuple[list[str], bool]:
    """The newest whole lines of `data` within `limit_bytes`, and whether older ones were
    left out. `complete`: `data` reaches the log's end (else its last line may be cut)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final line end
    elif not complete and lines:
        lines.pop()  # cut by the read's byte cap
    kept: list[bytes] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 1 > limit_bytes:
            break
        kept.append(line)
        size += len(line) + 1
    truncated = len(kept) < len(lines) or not complete
    if not kept and lines:
        # One line longer than the cap: its end, which is what a stack trace ends with.
        kept = [lines[-1][-(limit_bytes - 1) :]]
    kept.reverse()
    return [line.decode(errors="replace").rstrip("\r") for line in kept], truncated


class PodLogReader:
    """Reads through a ResourceContextReader's API client (context_api's identity)."""

    def __init__(self, resources: ResourceContextReader) -> None:
        self.resources = resources
        self.core = resources.core
        self.timeout = resources.timeout

    async def logs(self, request: context_api_pb2.GetPodLogsRequest) -> context_api_pb2.PodLogs:
        scope = request.scope
        tail_lines = request.tail_lines or MAX_LINES
        limit_bytes = request.limit_bytes or MAX_BYTES
        # The request's rules say so too; the caps hold whatever a caller skipped.
        if not 0 < tail_lines <= MAX_LINES:
            raise OutOfScope("tail_lines", f"at most {MAX_LINES} lines")
        if not 0 < limit_bytes <= MAX_BYTES:
            raise OutOfScope("limit_bytes", f"at most {MAX_BYTES} bytes")
        kind, name, pods = await self.resources.scope(scope)
        where = f"{kind} {scope.namespace}/{name}"
        pod = await self._pod(scope, request.pod, kind, name, pods, where)
        containers = [c.name for c in pod.spec.containers]
        init_containers = [c.name for c in pod.spec.init_containers or []]
        container = request.container or pick_container(pod)
        if container not in containers and container not in init_containers:
            raise OutOfScope(
                "container",
                f"pod {pod.metadata.name} has no container {container!r} "
                f"(it has {', '.join(containers + init_containers)})",
            )
        try:
            async with asyncio.timeout(self.timeout):
                lines, truncated = await self._tail(
                    pod.metadata.name,
                    scope.namespace,
                    container,
                    request.previous,
                    tail_lines,
                    limit_bytes,
                )
        except ApiException as error:
            if error.status == 404:
                raise ResourceNotFound(
                    alert_pb2.ResourceRef(
                        cluster=scope.cluster,
                        namespace=scope.namespace,
                        kind="Pod",
                        name=pod.metadata.name,
                    )
                ) from error
            if error.status in (400, 500):
                raise LogsUnavailable(_message(error)) from error
            raise
        found = context_api_pb2.PodLogs(
            pod=alert_pb2.ResourceRef(
                cluster=scope.cluster, namespace=scope.namespace, kind="Pod", name=pod.metadata.name
            ),
            container=container,
            previous=request.previous,
            lines=lines,
            truncated=truncated,
            tail_lines=tail_lines,
            limit_bytes=limit_bytes,
            pods=[p.metadata.name for p in pods][:MAX_PODS],
            containers=containers + init_containers,
        )
        found.observed_at.GetCurrentTime()
        return found

    async def _pod(
        self,
        scope: alert_pb2.ResourceRef,
        asked: str,
        kind: str,
        name: str,
        pods: list[Any],
        where: str,
    ) -> Any:
        """The pod to read: the one asked for, if the scope's workload controls it (its own
        controller chain, not the workload's selector, which can match another's pods)."""
        if asked:
            try:
                pod = await self.core.read_namespaced_pod(asked, scope.namespace)
            except ApiException as error:
                if error.status == 404:
                    raise ResourceNotFound(
                        alert_pb2.ResourceRef(
                            cluster=scope.cluster, namespace=scope.namespace, kind="Pod", name=asked
                        )
                    ) from error
                raise
            if (await self.resources.owner_of_pod(pod)) != (kind, name):
                raise OutOfScope(
                    "pod", f"pod {scope.namespace}/{asked} is not one of {where}'s pods"
                )
            return pod
        if scope.kind == "Pod":
            named = [p for p in pods if p.metadata.name == scope.name]
            if named:
                return named[0]
        candidates = sorted(pods, key=lambda p: (-_pod_restarts(p), p.metadata.name))
        for pod in candidates:
            if (await self.resources.owner_of_pod(pod)) == (kind, name):
                return pod
        raise NoPods(f"{where} has no pods")

    async def _tail(
        self,
        pod: str,
        namespace: str,
        container: str,
        previous: bool,
        tail_lines: int,
        limit_bytes: int,
    ) -> tuple[list[str], bool]:
        read_cap = limit_bytes * READ_FACTOR
        lines = tail_lines
        data = b""
        for _ in range(MAX_READS):
            response = await read_json(
                self.core.read_namespaced_pod_log,
                pod,
                namespace,
                container=container,
                previous=previous,
                tail_lines=lines,
                limit_bytes=read_cap,
            )
            data = response.data
            if len(data) < read_cap or lines == 1:
                break
            # The tail is longer than a read may bring, and a read brings its oldest part:
            # ask for as many lines as fit, by the lines' size so far.
            seen = max(data.count(b"\n"), 1)
            lines = max(1, min(lines - 1, limit_bytes * seen // len(data)))
        kept, truncated = tail_of(data, limit_bytes, complete=len(data) < read_cap)
        # Fewer lines asked than the caller's: the byte cap left the older ones out.
        return kept, truncated or lines < tail_lines


def _message(error: ApiException) -> str:
    """The API server's own words (its Status message), briefly."""
    try:
        body = json.loads(error.body or b"{}")
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or error.reason or f"HTTP {error.status}")[:512]
