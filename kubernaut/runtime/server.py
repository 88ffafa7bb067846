"""The server factory every service uses: gRPC server with the shared interceptors,
health, reflection, metrics, transport security and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubernaut.runtime.audit import AuditSettings, AuditTrail, StorageAuditSink
from kubernaut.runtime.certs import CertPaths
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.edges import check_table
from kubernaut.runtime.identity import warn_if_insecure
from kubernaut.runtime.interceptors import KubernautServerInterceptor
from kubernaut.runtime.logs import configure_logging
from kubernaut.runtime.names import LIVENESS_HEALTH_SERVICE, ServiceName
from kubernaut.runtime.registry import protocol
from kubernaut.runtime.rotation import rotating_server_credentials
from kubernaut.runtime.settings import RuntimeSettings, Transport
from kubernaut.runtime.telemetry import configure_tracing, start_metrics_server

log = logging.getLogger("kubernaut.server")
# The least time a readiness check is given before it counts as failing (seconds).
READINESS_DEADLINE_FLOOR: Final = 1.0

ReadinessCheck = Callable[[], Awaitable[bool]]

# What every servicer method (and a helper that aborts on its behalf) gets as `context`.
# grpc's class is generic in request and response types; one alias keeps the servicers'
# signatures short, and nothing here depends on those types. The runtime modules below this
# one (identity, interceptors, database) spell the type out rather than import the server.
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


@dataclass
class ServiceContext:
    """What a service's build function gets."""

    name: ServiceName
    settings: RuntimeSettings
    clients: Clients
    # Records the service's audited calls; storage points it at its own store.
    audit: AuditTrail


@dataclass
class ServiceSpec:
    """What a service's build function returns."""

    servicer: Any
    # Named dependency checks; the service is SERVING only while all pass.
    readiness: Sequence[tuple[str, ReadinessCheck]] = ()
    # Called after the server stopped, to release what build() acquired.
    on_stop: Sequence[Callable[[], Awaitable[None]]] = ()


Builder = Callable[[ServiceContext], Awaitable[ServiceSpec]]


def builder_of(name: ServiceName) -> Builder:
    """Each service package has `server.py` with `async def build(ctx) -> ServiceSpec`."""
    module = importlib.import_module(f"kubernaut.services.{name.value}.server")
    build: Builder = module.build
    return build


def server_credentials(settings: RuntimeSettings, name: ServiceName) -> grpc.ServerCredentials:
    paths = CertPaths(settings.resolved_certs_dir, name.account)
    missing = [p for p in (paths.ca, paths.cert, paths.key) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"transport mtls needs {', '.join(map(str, missing))}; run `kubernaut certs init`"
        )
    # Each new handshake uses the files as they are then: certificates rotate without a
    # restart (kubernaut/runtime/rotation.py).
    return rotating_server_credentials(paths, settings.credentials_check_seconds)


@dataclass
class RunningService:
    name: ServiceName
    settings: RuntimeSettings
    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    health: health.aio.HealthServicer
    spec: ServiceSpec
    clients: Clients
    audit: AuditTrail
    interceptor: KubernautServerInterceptor | None = None
    _readiness_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for service in ("", protocol(self.name).full_name):
            await self.health.set(service, status)

    async def _watch_readiness(self) -> None:
        serving = None
        # A slow answer is still an answer: a database that takes half a second on a busy
        # machine is ready (checks often, as tests set them, must not mean a hair trigger).
        deadline = max(self.settings.health_interval_seconds * 2, READINESS_DEADLINE_FLOOR)
        while True:
            failing = []
            for check_name, check in self.spec.readiness:
                try:
                    ok = await asyncio.wait_for(check(), deadline)
                except Exception:  # a failing check is a NOT_SERVING, not a crash
                    ok = False
                if not ok:
                    failing.append(check_name)
            now_serving = not failing
            if now_serving != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if now_serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self._set_health(status)
                log.info(
                    "health changed",
                    extra={
                        "status": "SERVING" if now_serving else "NOT_SERVING",
                        "waiting_for": failing,
                    },
                )
                serving = now_serving
            await asyncio.sleep(self.settings.health_interval_seconds)

    async def shutdown(self) -> None:
        """NOT_SERVING, a drain pause, then in-flight calls get the grace period."""
        log.info("shutting down", extra={"grace_seconds": self.settings.shutdown_grace_seconds})
        if self._readiness_task:
            # A check may be deep in a client library that ignores cancellation: give it
            # the grace period, never more.
            self._readiness_task.cancel()
            await _bounded(self._readiness_task, self.settings.shutdown_grace_seconds, "readiness")
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.settings.shutdown_drain_seconds)
        stopping = asyncio.ensure_future(self.server.stop(self.settings.shutdown_grace_seconds))
        await asyncio.sleep(0)  # no new calls from here on
        if self.interceptor is not None:
            # Streams (WatchWorkflow) may never end by themselves: they end now, UNAVAILABLE,
            # and their clients reconnect; unary calls get the grace period.
            ended = self.interceptor.end_streams()
            if ended:
                log.info("streams ended for the shutdown", extra={"streams": ended})
        await stopping
        # Each clean-up gets the grace period too: a stuck one must not keep the
        # process from exiting.
        # The audit trail after the service's own hooks (which may still record), before
        # the clients it appends with close.
        for hook in (*self.spec.on_stop, self._close_audit, self.clients.close):
            clean_up: asyncio.Future[None] = asyncio.ensure_future(hook())
            await _bounded(clean_up, self.settings.shutdown_grace_seconds, repr(hook))
        log.info("stopped")

    async def _close_audit(self) -> None:
        await self.audit.close(self.audit.settings.shutdown_seconds)


async def _bounded(task: asyncio.Future[Any], seconds: float, what: str) -> None:
    """Wait at most `seconds` for `task` to end, then cancel it and go on without waiting:
    asyncio.wait_for would wait for as long as a task that ignores cancellation runs."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning("clean-up did not finish in the grace period", extra={"hook": what})
    elif not task.cancelled() and task.exception() is not None:
        log.warning("clean-up failed", extra={"hook": what, "error": repr(task.exception())})


async def start_service(
    name: ServiceName,
    settings: RuntimeSettings,
    *,
    builder: Builder | None = None,
    serve_metrics: bool = True,
) -> RunningService:
    """Build and start one service; returns once it listens (health starts NOT_SERVING
    and turns SERVING when the service's readiness checks pass)."""
    check_table()
    warn_if_insecure(settings)
    configure_tracing(name.value, settings.otlp_endpoint)
    clients = Clients(settings, name.account)
    audit = AuditTrail(name, StorageAuditSink(clients), AuditSettings())
    spec = await (builder or builder_of(name))(ServiceContext(name, settings, clients, audit))
    # The one interceptor starts each call's span too (see interceptors.py).
    interceptor = KubernautServerInterceptor(name, settings, audit=audit)
    server = grpc.aio.server(interceptors=[interceptor], options=[("grpc.so_reuseport", 0)])
    proto = protocol(name)
    proto.add_servicer(spec.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            proto.full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{settings.grpc_host}:{settings.grpc_port_of(name)}"
    if settings.transport is Transport.MTLS:
        port = server.add_secure_port(address, server_credentials(settings, name))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"{name}: cannot listen on {address}")
    await server.start()
    metrics_port = (
        start_metrics_server(settings.metrics_host, settings.metrics_port_of(name))
        if serve_metrics
        else None
    )
    running = RunningService(
        name,
        settings,
        server,
        port,
        metrics_port,
        health_servicer,
        spec,
        clients,
        audit,
        interceptor,
    )
    await running._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    running._readiness_task = asyncio.create_task(running._watch_readiness())
    log.info(
        "listening",
        extra={
            "address": f"{settings.grpc_host}:{port}",
            "transport": settings.transport.value,
            "metrics_port": metrics_port,
        },
    )
    return running


def freeze_startup_heap() -> None:
    """Everything built while starting lives as long as the process: keep the garbage
    collector from walking it again and again under load (its full collections were the
    longest pauses of a busy service)."""
    gc.collect()
    gc.freeze()


class CannotStart(Exception):
    """A service's configuration is wrong (a setting, a routing file ...): the message says
    where, and the process exits 2 instead of printing a traceback."""


async def serve(name: ServiceName, settings: RuntimeSettings) -> int:
    """Run one service until SIGTERM or SIGINT; returns the process exit code."""
    configure_logging(name.value, settings.log_level)
    try:
        running = await start_service(name, settings)
    except ValueError as error:  # pydantic's settings errors are ValueErrors too
        raise CannotStart(f"{name.value} cannot start: {error}") from error
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await running.shutdown()
    return 0
