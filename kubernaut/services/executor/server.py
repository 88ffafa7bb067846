"""executor: the only service that changes clusters. Its catalogue, ExecuteAction
(kubernaut.services.executor.engine does the work; this maps it to gRPC) and RunCheck
(kubernaut.services.executor.checks)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import grpc
from kubernaut.executor.v1 import executor_pb2, executor_pb2_grpc
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.database import redact_dsn
from kubernaut.runtime.interceptors import abort_invalid, bad_request_status
from kubernaut.runtime.server import Context, ReadinessCheck, ServiceContext, ServiceSpec
from kubernaut.runtime.settings import KubeSettings
from kubernaut.services.executor import catalogue
from kubernaut.services.executor.checks import Checks, InvalidCheck, OutOfScope, TargetNotFound
from kubernaut.services.executor.clusters import ExecutorClusters
from kubernaut.services.executor.engine import (
    ActionNotFound,
    ClusterNotConfigured,
    ClusterUnavailable,
    ExecuteResult,
    Executor,
    ExecutorStoreUnavailable,
    RecordRejected,
    RollbackRefused,
    StorageRecorder,
    StorageUnavailable,
    UnknownCluster,
)
from kubernaut.services.executor.requests import execute_problems, rollback_problems
from kubernaut.services.executor.settings import ExecutorSettings
from kubernaut.services.executor.store import ExecutorDatabase

log = logging.getLogger(__name__)


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    """`executor` None: ExecuteAction answers FAILED_PRECONDITION (no database configured);
    `checks` None: RunCheck does (no clusters)."""

    def __init__(self, executor: Executor | None = None, checks: Checks | None = None) -> None:
        self.executor = executor
        self.checks = checks

    async def ListActions(
        self, request: executor_pb2.ListActionsRequest, context: Context
    ) -> executor_pb2.ListActionsResponse:
        return executor_pb2.ListActionsResponse(actions=catalogue.list_actions())

    async def DescribeAction(
        self, request: executor_pb2.DescribeActionRequest, context: Context
    ) -> executor_pb2.DescribeActionResponse:
        try:
            return executor_pb2.DescribeActionResponse(
                action=catalogue.describe_action(request.name)
            )
        except catalogue.UnknownAction as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            raise

    async def ExecuteAction(
        self, request: executor_pb2.ExecuteActionRequest, context: Context
    ) -> executor_pb2.ExecuteActionResponse:
        # The interceptor validated each field (protovalidate); these relate two fields.
        await _refuse_problems(context, execute_problems(request))
        executor = await self._executor(context)
        result = await self._run(
            context, request.action_id, "action_id", lambda: executor.execute(request)
        )
        return executor_pb2.ExecuteActionResponse(record=result.record, stages=result.stages)

    async def RollbackAction(
        self, request: executor_pb2.RollbackActionRequest, context: Context
    ) -> executor_pb2.RollbackActionResponse:
        await _refuse_problems(context, rollback_problems(request))
        executor = await self._executor(context)
        result = await self._run(
            context, request.rollback_id, "rollback_id", lambda: executor.rollback(request)
        )
        return executor_pb2.RollbackActionResponse(record=result.record, stages=result.stages)

    async def GetActionProgress(
        self, request: executor_pb2.GetActionProgressRequest, context: Context
    ) -> executor_pb2.GetActionProgressResponse:
        executor = await self._executor(context)
        try:
            progress = await executor.progress(request.action_id)
        except ExecutorStoreUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{error} (safe to retry)")
            raise
        if progress is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"the executor has no action {request.action_id}"
            )
            raise AssertionError("unreachable")  # abort raises
        return progress

    async def RunCheck(
        self, request: executor_pb2.RunCheckRequest, context: Context
    ) -> executor_pb2.RunCheckResponse:
        if self.checks is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the executor has no clusters to check"
            )
            raise AssertionError("unreachable")  # abort raises
        try:
            result = await self.checks.run(request)
        except InvalidCheck as error:
            await _refuse_problems(context, error.problems)
            raise
        except UnknownCluster as error:
            await abort_invalid(context, "target.cluster", str(error))
            raise
        except TargetNotFound as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            raise
        except (ClusterNotConfigured, OutOfScope) as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise
        except (ClusterUnavailable, ExecutorStoreUnavailable) as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{error} (safe to retry)")
            raise
        return result.to_proto()

    async def DescribeTarget(
        self, request: executor_pb2.DescribeTargetRequest, context: Context
    ) -> executor_pb2.DescribeTargetResponse:
        if self.checks is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the executor has no clusters to read"
            )
            raise AssertionError("unreachable")  # abort raises
        try:
            return await self.checks.describe(request.target)
        except InvalidCheck as error:
            await _refuse_problems(context, error.problems)
            raise
        except UnknownCluster as error:
            await abort_invalid(context, "target.cluster", str(error))
            raise
        except (ClusterNotConfigured, OutOfScope) as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise
        except ClusterUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{error} (safe to retry)")
            raise

    async def _executor(self, context: Context) -> Executor:
        if self.executor is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the executor has no database (set KUBERNAUT_DATABASE_URL): it keeps its "
                "snapshots there and does not act without them",
            )
            raise AssertionError("unreachable")  # abort raises
        return self.executor

    async def _run(
        self,
        context: Context,
        key: str,
        key_name: str,
        work: Callable[[], Awaitable[ExecuteResult]],
    ) -> ExecuteResult:
        """Map the engine's errors to status codes; `key` is the call's idempotency key."""
        try:
            return await work()
        except UnknownCluster as error:
            await abort_invalid(context, "target.cluster", str(error))
            raise
        except ActionNotFound as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            raise
        except (ClusterNotConfigured, RollbackRefused) as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise
        except (ClusterUnavailable, ExecutorStoreUnavailable, StorageUnavailable) as error:
            log.warning(
                "action interrupted; a retry with the same id continues it",
                extra={key_name: key, "error": str(error)},
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"{error} (safe to retry with the same {key_name})"
            )
            raise
        except RecordRejected as error:
            log.error("storage refused the record", extra={key_name: key})
            await context.abort(grpc.StatusCode.INTERNAL, str(error))
            raise


async def _refuse_problems(context: Context, problems: list[tuple[str, str]]) -> None:
    if problems:
        await context.abort_with_status(bad_request_status(problems))


async def build(ctx: ServiceContext) -> ServiceSpec:
    settings = ExecutorSettings()
    clusters = ExecutorClusters(KubeSettings(), settings)
    readiness: list[tuple[str, ReadinessCheck]] = []
    on_stop: list[Callable[[], Awaitable[None]]] = [clusters.close]
    executor: Executor | None = None
    database: ExecutorDatabase | None = None
    if settings.database_url:
        # Connects lazily: the service starts NOT_SERVING while PostgreSQL is down.
        database = ExecutorDatabase(
            settings.database_url,
            # One connection per action in progress, and two for readiness and reads.
            max_size=settings.max_concurrent_actions + 2,
            lock_timeout=settings.lock_wait,
        )
        readiness.append(("postgresql", database.ready))
        on_stop.append(database.close)
        recorder = StorageRecorder(
            ctx.clients.stub(StorageServiceStub),
            attempts=settings.record_attempts,
            backoff_seconds=settings.record_backoff_seconds,
        )
        executor = Executor(clusters, database, recorder, settings)
        # Before the database closes: actions still running get the shutdown grace period.
        on_stop.insert(0, functools.partial(executor.drain, ctx.settings.shutdown_grace_seconds))
        log.info("executor database configured", extra={"dsn": redact_dsn(database.dsn)})
    else:
        log.warning(
            "no database configured: ExecuteAction is refused until KUBERNAUT_DATABASE_URL is set"
        )
    if clusters.configured:
        readiness.append(("kubernetes", clusters.ready))
        log.info("clusters configured", extra={"clusters": list(clusters.names)})
    else:
        log.warning("no Kubernetes cluster configured; ExecuteAction will refuse")
    # RunCheck reads the action records too (what a drain evicted), when there are any.
    servicer = ExecutorServicer(executor, Checks(clusters, settings, database))
    return ServiceSpec(servicer, readiness=readiness, on_stop=on_stop)
