"""What a Kubernetes object looks like now: its owning workload, whether Kubernaut may
act on it, its pods, recent events and rollout history; an autoscaler's bounds and
replicas, a claim's size and whether its StorageClass lets it grow. Read-only, cached
briefly."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from kubernaut.runtime.cache import TtlCache
from kubernaut.runtime.kube import (
    ACTION_ID_ANNOTATION,
    CHANGE_CAUSE_ANNOTATION,
    MANAGED_LABEL,
    is_managed,
    is_own_template,
)
from kubernaut.runtime.redaction import Redactor
from kubernaut.runtime.workload_state import STATE_KINDS, workload_state

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
POD_TEMPLATE_HASH = "pod-template-hash"
MAX_CHANGE_CAUSE = 256
# The Deployment's Progressing condition's reason once its newest ReplicaSet was available.
ROLLOUT_COMPLETE_REASON = "NewReplicaSetAvailable"
MAX_EVENTS = 20
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
HPA = "HorizontalPodAutoscaler"
# Node conditions that, True, say the node is short of something.
PRESSURE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
MAX_NODES = 10
_REDACT = Redactor()
MAX_SERVICES = 5
MAX_CHANGES = 10
CHANGES_WINDOW = datetime.timedelta(hours=1)
PVC = "PersistentVolumeClaim"
# What an autoscaler's scaleTargetRef may name that context_api reads (apps/v1).
SCALE_TARGET_KINDS = {"Deployment", "StatefulSet", "ReplicaSet"}
# Claim conditions that say a resize is under way or failed.
RESIZE_CONDITIONS = (
    "Resizing",
    "FileSystemResizePending",
    "ControllerResizeError",
    "NodeResizeError",
)


class ResourceNotFound(LookupError):
    def __init__(self, ref: alert_pb2.ResourceRef) -> None:
        where = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
        super().__init__(f"{ref.kind} {where} does not exist")


class UnsupportedKind(ValueError):
    def __init__(self, kind: str) -> None:
        super().__init__(
            f"kind {kind!r} is not supported (Pod, Node, a workload kind, {HPA} or {PVC})"
        )


def _timestamp(value: datetime.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=datetime.UTC))
    return stamp


def _selector(match_labels: dict[str, str] | None) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted((match_labels or {}).items()))


def _controller_of(meta: Any) -> Any | None:
    for owner in meta.owner_references or []:
        if owner.controller:
            return owner
    return None


def pod_state(pod: Any) -> context_api_pb2.PodState:
    statuses = pod.status.container_statuses or []
    waiting = next((s.state.waiting.reason for s in statuses if s.state and s.state.waiting), "")
    terminated = next(
        (
            s.last_state.terminated.reason
            for s in statuses
            if s.last_state and s.last_state.terminated and s.last_state.terminated.reason
        ),
        "",
    )
    conditions = pod.status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    unschedulable = next(
        (
            c.message or c.reason or "unschedulable"
            for c in conditions
            if c.type == "PodScheduled" and c.status == "False"
        ),
        "",
    )
    return context_api_pb2.PodState(
        name=pod.metadata.name,
        phase=pod.status.phase or "",
        ready=ready,
        restarts=sum(s.restart_count or 0 for s in statuses),
        waiting_reason=waiting or "",
        last_terminated_reason=terminated,
        node=pod.spec.node_name or "",
        unschedulable=unschedulable[:1024],
        pod_template_hash=(pod.metadata.labels or {}).get(POD_TEMPLATE_HASH, ""),
    )


async def read_json(call: Callable[..., Any], *args: Any, **kwargs: Any) -> RESTResponse:
    """The API server's answer to `call` with its JSON body unparsed in `.data` (errors
    raise as usual): for the JSON itself, and for ApiClient.deserialize."""
    response = await call(*args, _preload_content=False, **kwargs)
    try:
        answer = RESTResponse(response, await response.read())
    finally:
        response.release()
    # Unparsed answers skip the client's status check: a 404 must still be an ApiException.
    if not 200 <= answer.status <= 299:
        error = ApiException(status=answer.status, reason=answer.reason)
        error.body = answer.data
        raise error
    return answer


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def revision_of(replica_set: dict[str, Any]) -> context_api_pb2.Revision:
    """One ReplicaSet (the API server's JSON: its template must digest exactly as the
    executor's did) as a Revision, with whether it is Kubernaut's own."""
    meta = replica_set.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    template = (replica_set.get("spec") or {}).get("template") or {}
    try:
        number = int(annotations.get(REVISION_ANNOTATION) or 0)
    except ValueError:
        number = 0
    own = ""
    if is_own_template(template):
        template_annotations = (template.get("metadata") or {}).get("annotations") or {}
        own = (
            template_annotations.get(ACTION_ID_ANNOTATION)
            or annotations.get(ACTION_ID_ANNOTATION)
            or "unknown"
        )
    containers = (template.get("spec") or {}).get("containers") or []
    return context_api_pb2.Revision(
        number=number,
        images=[str(c.get("image") or "") for c in containers],
        created_at=_timestamp(_parse_time(meta.get("creationTimestamp"))),
        ready_replicas=int((replica_set.get("status") or {}).get("readyReplicas") or 0),
        kubernaut_action_id=own,
        pod_template_hash=(meta.get("labels") or {}).get(POD_TEMPLATE_HASH, ""),
        change_cause=str(annotations.get(CHANGE_CAUSE_ANNOTATION) or "")[:MAX_CHANGE_CAUSE],
    )


def hpa_state(hpa: dict[str, Any], target_found: bool) -> context_api_pb2.HpaState:
    """An autoscaler (as the API server's JSON) as HpaState."""
    spec = hpa.get("spec") or {}
    status = hpa.get("status") or {}
    target = spec.get("scaleTargetRef") or {}
    limited = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "ScalingLimited" and c.get("status") == "True"
        ),
        None,
    )
    max_replicas = int(spec.get("maxReplicas") or 0)
    current = int(status.get("currentReplicas") or 0)
    return context_api_pb2.HpaState(
        min_replicas=int(spec.get("minReplicas") or 1),
        max_replicas=max_replicas,
        current_replicas=current,
        desired_replicas=int(status.get("desiredReplicas") or 0),
        target_api_version=str(target.get("apiVersion") or ""),
        target_kind=str(target.get("kind") or ""),
        target_name=str(target.get("name") or ""),
        target_found=target_found,
        at_max=max_replicas > 0 and current >= max_replicas,
        scaling_limited_reason=str((limited or {}).get("reason") or ""),
    )


def node_state(node: Any) -> context_api_pb2.NodeState:
    conditions = {c.type: c for c in (node.status.conditions or [])} if node.status else {}
    ready = conditions.get("Ready")
    is_ready = ready is not None and ready.status == "True"
    return context_api_pb2.NodeState(
        name=node.metadata.name,
        ready=is_ready,
        not_ready_reason="" if is_ready else str((ready.reason if ready else "") or "Unknown"),
        pressure=[
            kind
            for kind in PRESSURE_CONDITIONS
            if kind in conditions and conditions[kind].status == "True"
        ],
        unschedulable=bool(node.spec and node.spec.unschedulable),
    )


def selects(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """A Service's selector picks pods with `labels` (an empty selector picks none here:
    such a Service's endpoints are managed by hand)."""
    return bool(selector) and all((labels or {}).get(k) == v for k, v in (selector or {}).items())


def secrets_used(pod_spec: dict[str, Any]) -> list[str]:
    """The names of the Secrets a pod spec uses (env, envFrom, volumes, projected volumes,
    image pull secrets), sorted; nothing of them is read."""
    names: set[str] = set()
    containers = [*(pod_spec.get("containers") or []), *(pod_spec.get("initContainers") or [])]
    for container in containers:
        for env in container.get("env") or []:
            ref = ((env.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            if ref:
                names.add(str(ref))
        for source in container.get("envFrom") or []:
            ref = (source.get("secretRef") or {}).get("name")
            if ref:
                names.add(str(ref))
    for volume in pod_spec.get("volumes") or []:
        ref = (volume.get("secret") or {}).get("secretName")
        if ref:
            names.add(str(ref))
        for projected in (volume.get("projected") or {}).get("sources") or []:
            ref = (projected.get("secret") or {}).get("name")
            if ref:
                names.add(str(ref))
    for pull in pod_spec.get("imagePullSecrets") or []:
        if pull.get("name"):
            names.add(str(pull["name"]))
    return sorted(names)


def missing_because(error: BaseException) -> str:
    if isinstance(error, ApiException):
        if error.status in (401, 403):
            return f"forbidden ({error.status}): context_api's identity may not read it"
        return f"the API server answered {error.status}"
    return f"not read ({type(error).__name__}: {error})"


class ResourceContextReader:
    """Reads one cluster through its API client; answers are cached for `ttl` seconds per
    object, keyed by the cluster too: the same namespace/kind/name in two clusters is two
    objects."""

    def __init__(
        self,
        api: client.ApiClient,
        ttl: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        timeout: float = 10.0,
    ) -> None:
        """`timeout` bounds one context read (its several API calls together); a hung API
        server then raises TimeoutError instead of holding the caller until its deadline."""
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.storage = client.StorageV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.timeout = timeout
        self.cache: TtlCache[tuple[str, str, str, str], context_api_pb2.ResourceContext] = TtlCache(
            ttl, clock
        )

    async def context(self, ref: alert_pb2.ResourceRef) -> context_api_pb2.ResourceContext:
        key = (ref.cluster, ref.namespace, ref.kind, ref.name)
        return await self.cache.get(key, lambda: self._load(ref))

    async def _load(self, ref: alert_pb2.ResourceRef) -> context_api_pb2.ResourceContext:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._read(ref)
        except ApiException as error:
            if error.status == 404:
                raise ResourceNotFound(ref) from error
            raise

    async def _read(self, ref: alert_pb2.ResourceRef) -> context_api_pb2.ResourceContext:
        context = context_api_pb2.ResourceContext(resource=ref)
        context.observed_at.GetCurrentTime()
        if ref.kind == "Node":
            node = await self.core.read_node(ref.name)
            context.workload.CopyFrom(ref)
            context.managed = is_managed(node.metadata.labels)
            context.managed_reason = self._managed_reason(context.managed, "node", None)
            context.nodes.append(node_state(node))
            context.completeness.CopyFrom(context_api_pb2.Completeness(score=1.0, read=["node"]))
            return context
        if ref.kind == HPA:
            await self._read_hpa(ref, context)
            return context
        if ref.kind == PVC:
            await self._read_pvc(ref, context)
            return context
        if ref.kind != "Pod" and ref.kind not in WORKLOAD_KINDS:
            raise UnsupportedKind(ref.kind)
        workload_kind, workload_name = await self._owner(ref)
        workload_ref = alert_pb2.ResourceRef(
            cluster=ref.cluster, namespace=ref.namespace, kind=workload_kind, name=workload_name
        )
        context.workload.CopyFrom(workload_ref)
        workload, raw_workload = (
            await self._read_workload(workload_ref) if workload_kind != "Pod" else (None, None)
        )
        namespace = await self.core.read_namespace(ref.namespace)
        workload_labels = workload.metadata.labels if workload is not None else None
        context.managed = is_managed(workload_labels) or is_managed(namespace.metadata.labels)
        context.managed_reason = self._managed_reason(
            context.managed,
            f"{workload_kind} {ref.namespace}/{workload_name}",
            is_managed(namespace.metadata.labels),
        )
        pods = await self._pods(ref, workload)
        context.pods.extend(pod_state(pod) for pod in pods)
        if workload_kind in STATE_KINDS and raw_workload is not None:
            serialize = self.api.sanitize_for_serialization
            context.state.CopyFrom(workload_state(raw_workload, [serialize(p) for p in pods]))
        names = {workload_name, *(pod.metadata.name for pod in pods)}
        if workload_kind == "Deployment" and workload is not None:
            rollout, replica_sets = await self._rollout(workload)
            context.rollout.CopyFrom(rollout)
            # A ReplicaSet's events say why pods were not even created (e.g. quota).
            names.update(replica_sets)
        context.events.extend(await self._events(ref.namespace, names))
        template = getattr(getattr(workload, "spec", None), "template", None)
        labels = (
            template.metadata.labels
            if template is not None and template.metadata is not None
            else (pods[0].metadata.labels if pods else None)
        )
        if template is not None and raw_workload is not None:
            pod_spec = (((raw_workload.get("spec") or {}).get("template") or {}).get("spec")) or {}
            context.secrets_used.extend(secrets_used(pod_spec))
        read = ["workload", "pods", "events"] + (["rollout"] if context.HasField("rollout") else [])
        await self._depth(context, ref.namespace, workload_kind, workload_name, pods, labels, read)
        return context

    async def _depth(
        self,
        context: context_api_pb2.ResourceContext,
        namespace: str,
        kind: str,
        name: str,
        pods: list[Any],
        labels: dict[str, str] | None,
        read: list[str],
    ) -> None:
        """The parts around the workload (its pods' nodes, its Services and endpoints, its
        autoscaler), each read or said missing and why: a context with a part missing is
        still an answer, with its completeness."""
        missing: list[str] = []

        async def part(what: str, fill: Callable[[], Any]) -> None:
            try:
                await fill()
            except (ApiException, aiohttp.ClientError, OSError) as error:
                missing.append(f"{what}: {missing_because(error)}")
            else:
                read.append(what)

        node_names = sorted({p.spec.node_name for p in pods if p.spec and p.spec.node_name})

        async def nodes() -> None:
            found = await asyncio.gather(
                *(self.core.read_node(node) for node in node_names[:MAX_NODES])
            )
            context.nodes.extend(node_state(node) for node in found)

        async def services() -> None:
            listed = await self.core.list_namespaced_service(namespace)
            chosen = sorted(
                (svc for svc in listed.items if selects(svc.spec.selector, labels)),
                key=lambda svc: svc.metadata.name,
            )[:MAX_SERVICES]
            for svc in chosen:
                slices = await self.discovery.list_namespaced_endpoint_slice(
                    namespace, label_selector=f"kubernetes.io/service-name={svc.metadata.name}"
                )
                endpoints = [e for sl in slices.items for e in (sl.endpoints or [])]
                ready = sum(1 for e in endpoints if e.conditions is None or e.conditions.ready)
                context.services.append(
                    context_api_pb2.ServiceState(
                        name=svc.metadata.name,
                        type=svc.spec.type or "ClusterIP",
                        ready_endpoints=ready,
                        not_ready_endpoints=len(endpoints) - ready,
                    )
                )

        async def autoscaler() -> None:
            response = await read_json(
                self.autoscaling.list_namespaced_horizontal_pod_autoscaler, namespace
            )
            for hpa in json.loads(response.data).get("items") or []:
                target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
                if target.get("kind") == kind and target.get("name") == name:
                    context.autoscaler.CopyFrom(hpa_state(hpa, True))
                    return

        async def changes() -> None:
            context.recent_changes.extend(await self._recent_changes(namespace))

        parts: list[tuple[str, Callable[[], Any]]] = [
            ("services", services),
            ("recent changes", changes),
        ]
        if node_names:
            parts.append(("nodes", nodes))
        if kind in SCALE_TARGET_KINDS | {"StatefulSet"}:
            parts.append(("autoscaler", autoscaler))
        await asyncio.gather(*(part(what, fill) for what, fill in parts))
        context.completeness.CopyFrom(
            context_api_pb2.Completeness(
                score=len(read) / (len(read) + len(missing)), read=read, missing=missing
            )
        )

    async def _read_object(
        self,
        ref: alert_pb2.ResourceRef,
        context: context_api_pb2.ResourceContext,
        read: Callable[..., Any],
    ) -> dict[str, Any]:
        """An object that is its own workload (an autoscaler, a claim), as the API
        server's JSON: fills in the context's workload, opt-in and events."""
        obj: dict[str, Any] = json.loads((await read_json(read, ref.name, ref.namespace)).data)
        context.workload.CopyFrom(ref)
        namespace = await self.core.read_namespace(ref.namespace)
        own = is_managed((obj.get("metadata") or {}).get("labels"))
        by_namespace = is_managed(namespace.metadata.labels)
        context.managed = own or by_namespace
        context.managed_reason = self._managed_reason(
            context.managed, f"{ref.kind} {ref.namespace}/{ref.name}", by_namespace
        )
        context.events.extend(await self._events(ref.namespace, {ref.name}))
        return obj

    async def _read_hpa(
        self, ref: alert_pb2.ResourceRef, context: context_api_pb2.ResourceContext
    ) -> None:
        hpa = await self._read_object(
            ref, context, self.autoscaling.read_namespaced_horizontal_pod_autoscaler
        )
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        found = await self._scale_target_exists(ref.namespace, target)
        context.hpa.CopyFrom(hpa_state(hpa, found))

    async def _scale_target_exists(self, namespace: str, target: dict[str, Any]) -> bool:
        """Whether the autoscaler's target is there; False for kinds not read here."""
        kind, name = target.get("kind"), target.get("name")
        group = str(target.get("apiVersion") or "").split("/")[0]
        if kind not in SCALE_TARGET_KINDS or group != "apps" or not name:
            return False
        read = {
            "Deployment": self.apps.read_namespaced_deployment,
            "StatefulSet": self.apps.read_namespaced_stateful_set,
            "ReplicaSet": self.apps.read_namespaced_replica_set,
        }[kind]
        try:
            await read_json(read, name, namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def _read_pvc(
        self, ref: alert_pb2.ResourceRef, context: context_api_pb2.ResourceContext
    ) -> None:
        claim = await self._read_object(
            ref, context, self.core.read_namespaced_persistent_volume_claim
        )
        spec = claim.get("spec") or {}
        status = claim.get("status") or {}
        storage_class = str(spec.get("storageClassName") or "")
        resizing = next(
            (
                str(c.get("type"))
                for c in status.get("conditions") or []
                if c.get("type") in RESIZE_CONDITIONS and c.get("status") == "True"
            ),
            "",
        )
        context.pvc.CopyFrom(
            context_api_pb2.PvcState(
                requested=str(
                    ((spec.get("resources") or {}).get("requests") or {}).get("storage") or ""
                ),
                capacity=str((status.get("capacity") or {}).get("storage") or ""),
                storage_class=storage_class,
                expansion_allowed=await self._expansion_allowed(storage_class),
                phase=str(status.get("phase") or ""),
                resize_condition=resizing,
            )
        )

    async def _expansion_allowed(self, storage_class: str) -> bool:
        """The StorageClass exists and allows volume expansion; False with no class."""
        if not storage_class:
            return False
        try:
            response = await read_json(self.storage.read_storage_class, storage_class)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return json.loads(response.data).get("allowVolumeExpansion") is True

    @staticmethod
    def _managed_reason(managed: bool, what: str, by_namespace: bool | None) -> str:
        if not managed:
            return f"{what} and its namespace do not carry {MANAGED_LABEL}=true"
        where = "its namespace" if by_namespace else what
        return f"{where} carries {MANAGED_LABEL}=true"

    async def _owner(self, ref: alert_pb2.ResourceRef) -> tuple[str, str]:
        """The workload that controls the object: Pod -> ReplicaSet -> Deployment etc."""
        if ref.kind != "Pod":
            return ref.kind, ref.name
        try:
            pod = await self.core.read_namespaced_pod(ref.name, ref.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            # The pod is gone (a rollout or rollback replaced it) while alerts about it
            # still arrive; its ReplicaSet, named by the pod's prefix, usually remains.
            return await self._owner_of_gone_pod(ref, error)
        return await self.owner_of_pod(pod)

    async def owner_of_pod(self, pod: Any) -> tuple[str, str]:
        """The workload (kind, name) that controls a pod read from the API; ("Pod", its
        name) for a bare pod."""
        owner = _controller_of(pod.metadata)
        namespace = pod.metadata.namespace
        if owner is None:
            return "Pod", pod.metadata.name
        if owner.kind == "ReplicaSet":
            replica_set = await self.apps.read_namespaced_replica_set(owner.name, namespace)
            parent = _controller_of(replica_set.metadata)
            if parent is not None and parent.kind == "Deployment":
                return "Deployment", parent.name
            return "ReplicaSet", owner.name
        if owner.kind == "Job":
            job = await self.batch.read_namespaced_job(owner.name, namespace)
            parent = _controller_of(job.metadata)
            if parent is not None and parent.kind == "CronJob":
                return "CronJob", parent.name
        return owner.kind, owner.name

    async def _owner_of_gone_pod(
        self, ref: alert_pb2.ResourceRef, gone: ApiException
    ) -> tuple[str, str]:
        replica_set_name = ref.name.rsplit("-", 1)[0]
        try:
            replica_set = await self.apps.read_namespaced_replica_set(
                replica_set_name, ref.namespace
            )
        except ApiException as error:
            if error.status == 404:
                raise gone from None
            raise
        parent = _controller_of(replica_set.metadata)
        if parent is not None and parent.kind == "Deployment":
            return "Deployment", parent.name
        raise gone

    async def _read_workload(self, ref: alert_pb2.ResourceRef) -> tuple[Any, dict[str, Any]]:
        """The workload as the client's model and as the API server's JSON, from one read.
        The JSON is what the workload's state digests: a model drops fields newer than the
        client, and its template would then never digest as the executor's (which reads
        JSON) does."""
        readers = {
            "Deployment": (self.apps.read_namespaced_deployment, "V1Deployment"),
            "StatefulSet": (self.apps.read_namespaced_stateful_set, "V1StatefulSet"),
            "DaemonSet": (self.apps.read_namespaced_daemon_set, "V1DaemonSet"),
            "ReplicaSet": (self.apps.read_namespaced_replica_set, "V1ReplicaSet"),
            "Job": (self.batch.read_namespaced_job, "V1Job"),
            "CronJob": (self.batch.read_namespaced_cron_job, "V1CronJob"),
        }
        read, model = readers[ref.kind]
        response = await read_json(read, ref.name, ref.namespace)
        return self.api.deserialize(response, model), json.loads(response.data)

    async def scope(self, ref: alert_pb2.ResourceRef) -> tuple[str, str, list[Any]]:
        """The workload (kind, name) that `ref` (a Pod or a workload) belongs to, and the
        pods its selector finds (by name). Raises ResourceNotFound, UnsupportedKind."""
        if ref.kind != "Pod" and ref.kind not in WORKLOAD_KINDS:
            raise UnsupportedKind(ref.kind)
        try:
            async with asyncio.timeout(self.timeout):
                kind, name = await self._owner(ref)
                if kind == "Pod":
                    return kind, name, [await self.core.read_namespaced_pod(name, ref.namespace)]
                workload_ref = alert_pb2.ResourceRef(
                    cluster=ref.cluster, namespace=ref.namespace, kind=kind, name=name
                )
                workload, _ = await self._read_workload(workload_ref)
                return kind, name, await self._pods(workload_ref, workload)
        except ApiException as error:
            if error.status == 404:
                raise ResourceNotFound(ref) from error
            raise

    async def _pods(self, ref: alert_pb2.ResourceRef, workload: Any) -> list[Any]:
        if workload is None:
            return [await self.core.read_namespaced_pod(ref.name, ref.namespace)]
        selector = getattr(workload.spec, "selector", None)
        match_labels = getattr(selector, "match_labels", None) if selector else None
        if not match_labels:
            return []
        pods = await self.core.list_namespaced_pod(
            ref.namespace, label_selector=_selector(match_labels)
        )
        return sorted(pods.items, key=lambda pod: pod.metadata.name)

    async def _recent_changes(self, namespace: str) -> list[context_api_pb2.RecentChange]:
        """Rollouts (ReplicaSets made) and ConfigMap changes in the namespace within
        CHANGES_WINDOW, newest first. Read as the API server's JSON; of a ConfigMap only its
        name, version and when it last changed are kept."""
        since = datetime.datetime.now(datetime.UTC) - CHANGES_WINDOW
        replica_sets, config_maps = await asyncio.gather(
            read_json(self.apps.list_namespaced_replica_set, namespace),
            read_json(self.core.list_namespaced_config_map, namespace),
        )
        found: list[tuple[datetime.datetime, context_api_pb2.RecentChange]] = []
        for rs in json.loads(replica_sets.data).get("items") or []:
            meta = rs.get("metadata") or {}
            made = _parse_time(meta.get("creationTimestamp"))
            owner = next(
                (o for o in meta.get("ownerReferences") or [] if o.get("controller")), None
            )
            if made is None or made < since or owner is None:
                continue
            revision = revision_of(rs)
            images = ", ".join(revision.images)
            found.append(
                (
                    made,
                    context_api_pb2.RecentChange(
                        kind=str(owner.get("kind") or ""),
                        name=str(owner.get("name") or ""),
                        what=f"revision {revision.number}" + (f" ({images})" if images else ""),
                        at=_timestamp(made),
                    ),
                )
            )
        for cm in json.loads(config_maps.data).get("items") or []:
            meta = cm.get("metadata") or {}
            stamps = [_parse_time(m.get("time")) for m in meta.get("managedFields") or []]
            stamps.append(_parse_time(meta.get("creationTimestamp")))
            changed = max((t for t in stamps if t is not None), default=None)
            if changed is None or changed < since:
                continue
            found.append(
                (
                    changed,
                    context_api_pb2.RecentChange(
                        kind="ConfigMap",
                        name=str(meta.get("name") or ""),
                        what=f"resourceVersion {meta.get('resourceVersion', '')}",
                        at=_timestamp(changed),
                    ),
                )
            )
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [change for _, change in found[:MAX_CHANGES]]

    async def _events(self, namespace: str, names: set[str]) -> list[context_api_pb2.EventSummary]:
        events = await self.core.list_namespaced_event(namespace)
        relevant = [
            e for e in events.items if e.involved_object and e.involved_object.name in names
        ]

        def last_seen(event: Any) -> datetime.datetime:
            stamp = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
            return stamp or datetime.datetime.min.replace(tzinfo=datetime.UTC)

        relevant.sort(key=last_seen, reverse=True)
        return [
            context_api_pb2.EventSummary(
                type=event.type or "",
                reason=event.reason or "",
                # A message can quote what it failed on (an env value, a URL with a token).
                message=_REDACT((event.message or "")[:1024]),
                object=f"{event.involved_object.kind}/{event.involved_object.name}",
                count=event.count or 1,
                last_seen=_timestamp(last_seen(event)),
            )
            for event in relevant[:MAX_EVENTS]
        ]

    async def _rollout(self, deployment: Any) -> tuple[context_api_pb2.RolloutState, list[str]]:
        """The Deployment's rollout state and the names of its ReplicaSets. They are read
        as the API server's JSON, not through the client's models: a model drops fields
        newer than the client, and a template would then not digest as the executor's did
        (Revision.kubernaut_action_id)."""
        namespace = deployment.metadata.namespace
        response = await read_json(
            self.apps.list_namespaced_replica_set,
            namespace,
            label_selector=_selector(deployment.spec.selector.match_labels),
        )
        replica_sets = json.loads(response.data).get("items") or []
        owned = [
            rs
            for rs in replica_sets
            if any(
                o.get("uid") == deployment.metadata.uid
                for o in (rs.get("metadata") or {}).get("ownerReferences") or []
            )
        ]
        revisions = sorted(
            (revision_of(rs) for rs in owned), key=lambda revision: revision.number, reverse=True
        )
        status = deployment.status
        progressing = next((c for c in status.conditions or [] if c.type == "Progressing"), None)
        reason = (progressing.reason or "") if progressing is not None else ""
        state = context_api_pb2.RolloutState(
            revisions=revisions,
            desired_replicas=deployment.spec.replicas or 0,
            ready_replicas=status.ready_replicas or 0,
            updated_replicas=status.updated_replicas or 0,
            available_replicas=status.available_replicas or 0,
            rollout_completed=reason == ROLLOUT_COMPLETE_REASON,
            progressing_reason=reason,
        )
        return state, [str(rs["metadata"]["name"]) for rs in owned]
