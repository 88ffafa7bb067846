"""The assessment scheduler: gathers evidence for due checkpoints and records verdicts.

Each replica runs one loop. Every `poll_interval_seconds` it claims up to `batch_size` due
checkpoints (a lease; FOR UPDATE SKIP LOCKED, so replicas never assess the same one twice)
and, for each:

1. unless a verdict is stored already (a replica crashed after assessing), gathers the
   evidence (context_api.GetResourceContext of the target, AlertManager's active alerts),
   judges it (`assessment.judge`) and stores the verdict with its evidence;
2. records the stored verdict through storage.RecordAssessment under the checkpoint's
   deterministic assessment_id: a repeat after a crash sends the same content, a no-op;
3. marks the checkpoint done.

When storage cannot be reached the checkpoint is tried again later (doubling backoff); when
storage refuses the record for good, the checkpoint is marked failed with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from typing import Final

import grpc
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from prometheus_client import Counter

from kubernaut.runtime.interceptors import RETRYABLE
from kubernaut.runtime.leases import ClaimLoop, owner_id
from kubernaut.runtime.logs import incident_id_var
from kubernaut.runtime.prometheus import PrometheusUnavailable, label_matcher
from kubernaut.services.alerts import alert_expression
from kubernaut.services.effectiveness.alertmanager import (
    AlertmanagerClient,
    AlertmanagerUnavailable,
)
from kubernaut.services.effectiveness.assessment import (
    AlertEvidence,
    Baseline,
    PodEvidence,
    alert_evidence,
    evidence_lines,
    format_delay,
    judge,
    pod_evidence,
)
from kubernaut.services.effectiveness.metrics import weigh_metrics
from kubernaut.services.effectiveness.settings import AssessmentSettings
from kubernaut.services.effectiveness.side_effects import (
    SideEffect,
    SideEffectEvidence,
    alert_side_effects,
    by_confidence,
    event_side_effects,
    neighbour_side_effects,
    weigh_side_effects,
)
from kubernaut.services.effectiveness.store import (
    Checkpoint,
    LeaseLost,
    Result,
    ScheduleDatabase,
    ScheduleError,
    StoreUnavailable,
)
from kubernaut.services.signals import MetricEvidence, MetricReader, NeighbourReader

log = logging.getLogger(__name__)

ASSESSMENTS_RECORDED: Final = Counter(
    "kubernaut_effectiveness_assessments_recorded_total",
    "Assessments recorded through storage (a re-record after a crash counts again).",
    ["verdict"],
)

# Storage answers after which the record is tried again later.
_TRANSIENT: Final = RETRYABLE | {grpc.StatusCode.ABORTED}
# NOT_FOUND (the action is not recorded) is retried this many attempts: the executor
# records an action before the workflow schedules its assessment, so it should not last.
NOT_FOUND_ATTEMPTS: Final = 5
# A checkpoint whose assessment fails unexpectedly this many times is marked failed.
MAX_ATTEMPTS: Final = 10
STOP_GRACE_SECONDS: Final = 10.0


class EvidenceSources:
    """Where the evidence comes from: context_api for the pods, AlertManager for the alert
    (None when not configured: that evidence is then missing, and the verdicts say so)."""

    def __init__(
        self,
        context_api: ContextAPIServiceStub,
        alertmanager: AlertmanagerClient | None,
        settings: AssessmentSettings,
        metrics: MetricReader | None = None,
    ) -> None:
        self.context_api = context_api
        self.alertmanager = alertmanager
        self.settings = settings
        self.metrics = metrics

    async def resource_context(
        self, target: alert_pb2.ResourceRef, timeout: float
    ) -> tuple[context_api_pb2.ResourceContext | None, str]:
        """The target's context, or None and why there is none."""
        try:
            response: context_api_pb2.GetResourceContextResponse = (
                await self.context_api.GetResourceContext(
                    context_api_pb2.GetResourceContextRequest(resource=target), timeout=timeout
                )
            )
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
            if code is grpc.StatusCode.FAILED_PRECONDITION:
                reason = f"context_api cannot look at the cluster: {details}"
            elif code is grpc.StatusCode.NOT_FOUND:
                reason = f"context_api did not find the target: {details}"
            elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                reason = f"context_api could not be reached ({code.name}): {details}"
            else:
                reason = f"context_api answered {code.name}: {details}"
            return None, reason
        return response.context, ""

    async def baseline(self, target: alert_pb2.ResourceRef) -> Baseline:
        """The workload's pods and restart counts now, for comparing later."""
        context, reason = await self.resource_context(
            target, self.settings.baseline_timeout_seconds
        )
        if context is None:
            return Baseline(None, f"no baseline was taken at schedule time: {reason}")
        return Baseline({pod.name: pod.restarts for pod in context.pods})

    async def pods(
        self, checkpoint: Checkpoint
    ) -> tuple[PodEvidence, set[str], context_api_pb2.ResourceContext | None]:
        """The pod evidence, the names of the workload's pods (now and at schedule time),
        and the context they were read from (None when it could not be)."""
        names = set(checkpoint.baseline.restarts or {})
        context, reason = await self.resource_context(
            checkpoint.target, self.settings.call_timeout_seconds
        )
        if context is None:
            return PodEvidence.missing(reason), names, None
        names.update(pod.name for pod in context.pods)
        return pod_evidence(context, checkpoint.baseline), names, context

    async def alert(self, checkpoint: Checkpoint, pod_names: set[str]) -> AlertEvidence:
        if self.alertmanager is None:
            return AlertEvidence.missing(
                "AlertManager is not configured (KUBERNAUT_EFFECTIVENESS_ALERTMANAGER_URL)"
            )
        try:
            held = await self.alertmanager.firing(checkpoint.alert.name)
        except AlertmanagerUnavailable as error:
            return AlertEvidence.missing(f"{error}; not assumed resolved")
        return alert_evidence(
            held,
            checkpoint.alert,
            checkpoint.target,
            pod_names,
            source=f"AlertManager at {self.alertmanager.display_url}",
        )

    async def side_effects(
        self,
        checkpoint: Checkpoint,
        pod_names: set[str],
        context: context_api_pb2.ResourceContext | None,
    ) -> SideEffectEvidence:
        """Alerts that started after the action in the target's namespace or on its pods'
        nodes (AlertManager), Warning events on what the action made (context_api), and
        neighbours that went unready (Prometheus)."""
        nodes = {pod.node for pod in context.pods if pod.node} if context is not None else set()
        others = (
            event_side_effects(context, checkpoint.baseline, checkpoint.acted_at)
            if context is not None
            else ()
        )
        others += await self._neighbours(checkpoint, context, nodes)
        looked_too = "Warning events on what the action made, neighbours' readiness"
        if self.alertmanager is None:
            if others:
                return SideEffectEvidence(by_confidence(others), looked_too)
            return SideEffectEvidence.none("AlertManager is not configured")
        target = checkpoint.target
        wheres = []
        if target.namespace:
            wheres.append([label_matcher("namespace", target.namespace)])
        if nodes:
            pattern = "|".join(re.escape(node) for node in sorted(nodes))
            wheres.append([label_matcher("node", pattern, regex=True)])
        if not wheres:
            return SideEffectEvidence.none("the target has no namespace and no pods on nodes")
        try:
            held = [a for where in wheres for a in await self.alertmanager.firing_where(*where)]
        except AlertmanagerUnavailable as error:
            if others:
                return SideEffectEvidence(by_confidence(others), f"{looked_too}; not {error}")
            return SideEffectEvidence.none(str(error))
        looked = " and ".join(
            [f"namespace {target.namespace}"] * bool(target.namespace)
            + [f"node(s) {', '.join(sorted(nodes))}"] * bool(nodes)
        )
        effects = alert_side_effects(
            held, checkpoint.alert, target, pod_names, nodes, checkpoint.acted_at
        )
        return SideEffectEvidence(
            by_confidence((*effects, *others)),
            f"no new alert in {looked}, no Warning event on what the action made and no"
            " neighbour gone unready since it",
        )

    async def _neighbours(
        self,
        checkpoint: Checkpoint,
        context: context_api_pb2.ResourceContext | None,
        nodes: set[str],
    ) -> tuple[SideEffect, ...]:
        """Neighbours behind the target's Services or on its nodes that went unready since
        the action (Prometheus; nothing without it or while it cannot be read)."""
        if self.metrics is None or context is None:
            return ()
        services = [service.name for service in context.services]
        try:
            changes = await NeighbourReader(self.metrics.prometheus).changes(
                checkpoint.target,
                services,
                sorted(nodes),
                checkpoint.acted_at,
                dt.datetime.now(dt.UTC),
            )
        except PrometheusUnavailable as error:
            log.info("neighbours not read", extra={"why": str(error)})
            return ()
        return neighbour_side_effects(changes)

    async def metric_evidence(self, checkpoint: Checkpoint, now: dt.datetime) -> MetricEvidence:
        if self.metrics is None:
            return MetricEvidence.none(
                "Prometheus is not configured (KUBERNAUT_EFFECTIVENESS_PROMETHEUS_URL)"
            )
        return await self.metrics.evidence(
            alert_expression(checkpoint.alert),
            checkpoint.target,
            checkpoint.acted_at,
            now,
        )


def _checkpoint_line(checkpoint: Checkpoint, assessed_at: dt.datetime) -> str:
    after = max((assessed_at - checkpoint.acted_at).total_seconds(), 0.0)
    looked = format_delay(dt.timedelta(seconds=round(after, 1) if after < 60 else round(after)))
    final = "final checkpoint" if checkpoint.final else "checkpoint"
    return f"{final} {format_delay(checkpoint.delay)} after the action, looked {looked} after it"


async def assess(checkpoint: Checkpoint, sources: EvidenceSources) -> Result:
    """Gather the evidence of one checkpoint now and judge it."""
    pods, pod_names, context = await sources.pods(checkpoint)
    alert, side_effects = await asyncio.gather(
        sources.alert(checkpoint, pod_names), sources.side_effects(checkpoint, pod_names, context)
    )
    assessed_at = dt.datetime.now(dt.UTC)
    metrics = await sources.metric_evidence(checkpoint, assessed_at)
    final = checkpoint.final
    judgement = judge(pods, alert, final=final)
    judgement = weigh_metrics(judgement, metrics, final=final, required=sources.metrics is not None)
    judgement = weigh_side_effects(judgement, side_effects, final=final)
    reason, *facts = judgement.evidence
    lines = evidence_lines([reason, _checkpoint_line(checkpoint, assessed_at), *facts])
    return Result(judgement.verdict, tuple(lines), assessed_at)


def assessment_of(checkpoint: Checkpoint, result: Result) -> storage_pb2.Assessment:
    record = storage_pb2.Assessment(
        assessment_id=checkpoint.assessment_id,
        action_id=checkpoint.action_id,
        verdict=result.verdict,
        evidence=list(result.evidence),
    )
    record.delay.FromTimedelta(checkpoint.delay)
    record.assessed_at.FromDatetime(result.assessed_at)
    return record


class Assessor:
    """The loop of one replica (see the module's docstring)."""

    def __init__(
        self,
        database: ScheduleDatabase,
        sources: EvidenceSources,
        storage: StorageServiceStub,
        settings: AssessmentSettings,
        owner: str | None = None,
    ) -> None:
        self.database = database
        self.sources = sources
        self.storage = storage
        self.settings = settings
        self.owner = owner or owner_id()
        self._loop = ClaimLoop(
            f"assessor {self.owner}",
            self._round,
            log=log,
            store="assessment schedule",
            poll_seconds=settings.poll_interval_seconds,
            unavailable=StoreUnavailable,
            release=self._release,
        )

    def start(self) -> None:
        self._loop.start()

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Let the assessments in progress finish (up to `grace_seconds`, then cancel them),
        then release this replica's leases so that another one takes them at once."""
        await self._loop.stop(grace_seconds)

    async def _release(self) -> int:
        # Never connects: a database that never came up holds no leases of ours.
        store = self.database.current
        return 0 if store is None else await store.release_all(self.owner)

    async def _round(self) -> bool:
        # A full batch: more may be due, go on at once.
        return await self.run_once() >= self.settings.batch_size

    async def run_once(self) -> int:
        """Claim the due checkpoints (up to batch_size) and handle them; returns how many."""
        store = await self.database.store()
        claimed = await store.claim(
            self.owner, self.settings.lease_seconds, self.settings.batch_size
        )
        if claimed:
            await asyncio.gather(*(self._handle(checkpoint) for checkpoint in claimed))
        return len(claimed)

    async def _handle(self, checkpoint: Checkpoint) -> None:
        token = incident_id_var.set(checkpoint.incident_id)
        extra = {
            "action_id": checkpoint.action_id,
            "assessment_id": checkpoint.assessment_id,
            "delay": format_delay(checkpoint.delay),
        }
        try:
            await self._assess_and_record(checkpoint, extra)
        except LeaseLost as error:
            log.info("lease lost; another replica took the assessment over", extra=extra)
            log.debug("%s", error)
        except StoreUnavailable as error:
            # The lease runs out and the checkpoint is claimed again.
            log.warning("assessment not finished", extra={**extra, "error": str(error)})
        except Exception as error:
            log.exception("assessment failed", extra=extra)
            await self._failed(checkpoint, f"{type(error).__name__}: {error}")
        finally:
            incident_id_var.reset(token)

    def _backoff(self, checkpoint: Checkpoint) -> float:
        doublings = min(max(checkpoint.attempts - 1, 0), 30)
        backoff: float = self.settings.retry_initial_seconds * 2.0**doublings
        return min(self.settings.retry_max_seconds, backoff)

    async def _failed(self, checkpoint: Checkpoint, error: str) -> None:
        """An unexpected error: try again later, and give up after MAX_ATTEMPTS."""
        with contextlib.suppress(ScheduleError):
            store = await self.database.store()
            if checkpoint.attempts >= MAX_ATTEMPTS:
                await store.give_up(checkpoint, self.owner, error)
            else:
                await store.retry_later(checkpoint, self.owner, self._backoff(checkpoint), error)

    async def _assess_and_record(self, checkpoint: Checkpoint, extra: dict[str, str]) -> None:
        store = await self.database.store()
        result = checkpoint.result
        if result is None:
            result = await store.save_result(
                checkpoint, self.owner, await assess(checkpoint, self.sources)
            )
            log.info(
                "assessed",
                extra={
                    **extra,
                    "verdict": remediation_pb2.Verdict.Name(result.verdict),
                    "reason": result.evidence[0] if result.evidence else "",
                },
            )
        try:
            response: storage_pb2.RecordAssessmentResponse = await self.storage.RecordAssessment(
                storage_pb2.RecordAssessmentRequest(assessment=assessment_of(checkpoint, result)),
                timeout=self.settings.call_timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            await self._record_failed(checkpoint, error, extra)
            return
        await store.mark_done(checkpoint, self.owner)
        ASSESSMENTS_RECORDED.labels(
            remediation_pb2.Verdict.Name(result.verdict).removeprefix("VERDICT_").lower()
        ).inc()
        log.info("assessment recorded", extra={**extra, "created": response.created})

    async def _record_failed(
        self, checkpoint: Checkpoint, error: grpc.aio.AioRpcError, extra: dict[str, str]
    ) -> None:
        store = await self.database.store()
        code = error.code()
        message = f"RecordAssessment: {code.name}: {error.details() or ''}"
        retry = code in _TRANSIENT or (
            code is grpc.StatusCode.NOT_FOUND and checkpoint.attempts < NOT_FOUND_ATTEMPTS
        )
        if retry:
            backoff = self._backoff(checkpoint)
            await store.retry_later(checkpoint, self.owner, backoff, message)
            log.warning(
                "assessment not recorded; retrying",
                extra={**extra, "error": message, "retry_in_seconds": backoff},
            )
        else:
            await store.give_up(checkpoint, self.owner, message)
            log.error("assessment refused by storage", extra={**extra, "error": message})
