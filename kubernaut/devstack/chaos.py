"""Faults for the chaos suite (tests/chaos, `python -m bench.chaos`): a seeded plan of
faults, the means of injecting each on the dev stack, and a stalling TCP proxy in front of
every service, so that the network to any one of them can be black-holed.

Faults, one at a time, each healed before the next:

    kill         kill -9 of one service, started again by the harness (as a kubelet would)
    postgres     PostgreSQL stopped (fast shutdown) and started again on its port
    apiserver    the kube-apiserver stopped for 20 s, then started again
    smtp         the SMTP server down for a while
    blackhole    the network to one service stalls (connections accepted, nothing passes)

Plain logic and blocking helpers; `Injector` runs them from async code through threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.postgres import EmbeddedPostgres
from kubernaut.devstack.processes import pid_alive, stop_pid
from kubernaut.devstack.smtp import MailSinkProcess
from kubernaut.devstack.stack import StackInfo
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import Fleet, ManagedProcess, health_of
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import RuntimeSettings

LOOPBACK = "127.0.0.1"
# The figure: long enough for every client's deadline and retry budget to run out.
APISERVER_DOWN_SECONDS = 20.0


class FaultKind(enum.StrEnum):
    KILL = "kill"
    POSTGRES = "postgres"
    APISERVER = "apiserver"
    SMTP = "smtp"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True)
class Fault:
    """One fault: when it starts (seconds after the stream began), what, on what, how long."""

    at: float
    kind: FaultKind
    target: str = ""
    duration: float = 0.0

    def describe(self) -> str:
        what = f"{self.kind.value}" + (f" {self.target}" if self.target else "")
        return what + (f" for {self.duration:.0f}s" if self.duration else "")


def plan_faults(
    seed: int,
    duration: float,
    *,
    kinds: Sequence[FaultKind] = tuple(FaultKind),
    services: Sequence[ServiceName] = tuple(ServiceName),
    first_at: tuple[float, float] = (3.0, 8.0),
    gap: tuple[float, float] = (4.0, 15.0),
    outage: tuple[float, float] = (5.0, 12.0),
    apiserver_seconds: float = APISERVER_DOWN_SECONDS,
) -> list[Fault]:
    """Faults within `duration` seconds, from `seed` alone (so a failing run replays).

    Every kind comes once, in a seeded order, before any comes twice, and the first round
    is planned whole even past `duration`: a short run still meets them all. `at` is the
    planned start; a fault also takes its own duration plus about `gap` for the system to
    recover, so the plan spaces them by that."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = rng.uniform(*first_at)
    order: list[FaultKind] = list(kinds)
    rng.shuffle(order)
    first_round = len(order)
    while len(faults) < first_round or t < duration:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop()
        target = ""
        length = 0.0
        if kind in (FaultKind.KILL, FaultKind.BLACKHOLE):
            target = rng.choice(list(services)).value
        if kind is FaultKind.APISERVER:
            length = apiserver_seconds
        elif kind in (FaultKind.SMTP, FaultKind.BLACKHOLE):
            length = round(rng.uniform(*outage), 1)
        faults.append(Fault(round(t, 1), kind, target, length))
        t += length + rng.uniform(*gap)
    return faults


# -- the stalling proxy ------------------------------------------------------------------------


class _Gate:
    """Open: bytes flow. Closed: the proxy holds them (and new connections) until it opens."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()


class ProxyMesh:
    """A TCP proxy per service, on loopback, in a thread of its own (its event loop must
    not wait on the harness's). `stall(service)` black-holes that service's network: its
    connections stay up but carry nothing, new ones connect but carry nothing, as when a
    link drops packets; `heal` lets the held bytes through again (TCP would retransmit)."""

    def __init__(self, targets: dict[ServiceName, tuple[str, int]]) -> None:
        self.targets = targets
        self.ports: dict[ServiceName, int] = {}
        self._gates: dict[ServiceName, _Gate] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def for_services(cls, settings: RuntimeSettings) -> ProxyMesh:
        """A proxy in front of each service where `settings` (without proxies) reach it."""
        return cls({s: (LOOPBACK, settings.grpc_port_of(s)) for s in ServiceName})

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    async def _start(self) -> None:
        for service, target in self.targets.items():
            gate = _Gate()
            self._gates[service] = gate
            server = await asyncio.start_server(self._handler(target, gate), LOOPBACK, 0)
            self._servers.append(server)
            self.ports[service] = server.sockets[0].getsockname()[1]

    def addresses_env(self) -> dict[str, str]:
        """The settings that route every client of a service through its proxy."""
        return {
            f"KUBERNAUT_{service.value.upper()}_ADDRESS": f"{LOOPBACK}:{port}"
            for service, port in self.ports.items()
        }

    def stall(self, service: ServiceName) -> None:
        self._loop.call_soon_threadsafe(self._gates[service].open.clear)

    def heal(self, service: ServiceName) -> None:
        self._loop.call_soon_threadsafe(self._gates[service].open.set)

    def stalled(self) -> list[ServiceName]:
        return [s for s, gate in self._gates.items() if not gate.open.is_set()]

    def _handler(
        self, target: tuple[str, int], gate: _Gate
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._connection(reader, writer, target, gate)

        return handle

    async def _connection(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        target: tuple[str, int],
        gate: _Gate,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await gate.open.wait()
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*target)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer, gate),
                self._pipe(upstream_reader, client_writer, gate),
                return_exceptions=True,
            )
        finally:
            self._tasks.discard(task)
            client_writer.close()

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: _Gate
    ) -> None:
        try:
            while data := await reader.read(65536):
                await gate.open.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side ended: end the other, as the peer would see it.
            writer.close()

    def stop(self) -> None:
        async def _stop() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


# -- injecting faults ------------------------------------------------------------------------


@dataclass
class Injected:
    fault: Fault
    started: float
    healed: float
    # Seconds from healing until every service answered SERVING again.
    recovered_after: float
    note: str = ""


@dataclass
class Injector:
    """Injects faults into a running system on a dev stack it started in `state_dir`."""

    state_dir: Path
    dev: StackInfo
    fleet: Fleet
    settings: RuntimeSettings
    # The extra environment each service was started with (system.service_env).
    per_service_env: dict[ServiceName, dict[str, str]]
    proxies: ProxyMesh | None
    nodes: int = 3
    k8s_bin_dir: Path | None = None
    say: Callable[[str], None] = print
    recover_timeout: float = 120.0
    injected: list[Injected] = field(default_factory=list)
    _smtp: MailSinkProcess | None = None
    _postgres: EmbeddedPostgres | None = None

    @property
    def root(self) -> Path:
        return self.state_dir / "devstack"

    async def inject(self, fault: Fault) -> Injected:
        began = time.monotonic()
        note = ""
        if fault.kind is FaultKind.KILL:
            note = await self.kill(ServiceName(fault.target))
        elif fault.kind is FaultKind.POSTGRES:
            await asyncio.to_thread(self.restart_postgres)
        elif fault.kind is FaultKind.APISERVER:
            await asyncio.to_thread(self.stop_apiserver)
            await asyncio.sleep(fault.duration)
            await asyncio.to_thread(self.start_apiserver)
        elif fault.kind is FaultKind.SMTP:
            await asyncio.to_thread(self.stop_smtp)
            await asyncio.sleep(fault.duration)
            await asyncio.to_thread(self.start_smtp)
        elif fault.kind is FaultKind.BLACKHOLE:
            if self.proxies is None:
                raise RuntimeError("black-holing needs the services behind proxies")
            service = ServiceName(fault.target)
            self.proxies.stall(service)
            try:
                await asyncio.sleep(fault.duration)
            finally:
                self.proxies.heal(service)
        healed = time.monotonic()
        await self.wait_serving()
        done = Injected(fault, began, healed, time.monotonic() - healed, note)
        self.injected.append(done)
        return done

    async def kill(self, service: ServiceName) -> str:
        """kill -9, then start it again as the fleet did."""
        process: ManagedProcess = self.fleet.processes[service.value]
        pid = process.popen.pid
        process.popen.kill()
        await asyncio.to_thread(process.popen.wait)
        self.fleet.start_service(service, env=self.per_service_env.get(service))
        return f"pid {pid}"

    def restart_postgres(self) -> None:
        dsn_port = int(self.dev.url("postgres").rsplit(":", 1)[1].split("/", 1)[0])
        postgres = EmbeddedPostgres(self.root / "postgres", port=dsn_port)
        postgres.stop_running(timeout=20)
        postgres.start()
        # Ours now; `dev-stack down` stops it by its pid file like the first one.
        self._postgres = postgres

    def _cluster(self) -> LocalCluster:
        return LocalCluster(self.root / "kubernetes", nodes=self.nodes, bin_dir=self.k8s_bin_dir)

    def stop_apiserver(self) -> None:
        # LocalCluster stops components only as a whole; one alone by its pid file here.
        # SIGTERM waits for its clients to go; the outage is the point, so not for long.
        self._cluster()._processes.stop_group(["kube-apiserver"], timeout=3.0)

    def start_apiserver(self) -> None:
        # start() launches what is not running and waits until it is ready.
        self._cluster().start()

    def _smtp_port(self) -> int:
        return int(self.dev.detail("smtp", "port"))

    def stop_smtp(self) -> None:
        if self._smtp is not None:
            self._smtp.stop()
            return
        pid = self.dev.components["smtp"].pid
        if pid is not None and pid_alive(pid):
            stop_pid(pid, ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)), lambda: pid_alive(pid))

    def start_smtp(self) -> None:
        self._smtp = MailSinkProcess(
            Path(self.dev.detail("smtp", "mail_dir")),
            self.root / "smtp.log",
            port=self._smtp_port(),
        )
        self._smtp.start()

    async def wait_serving(self, services: Iterable[ServiceName] = tuple(ServiceName)) -> None:
        """Until every service says SERVING (a restarted one, and those that waited on a
        dependency); raises TimeoutError naming those that did not."""
        pending = list(services)
        clients = Clients(self.settings)
        deadline = time.monotonic() + self.recover_timeout
        try:
            while pending:
                statuses = await asyncio.gather(*(health_of(clients, s) for s in pending))
                pending = [s for s, st in zip(pending, statuses, strict=True) if st != "SERVING"]
                if pending and time.monotonic() > deadline:
                    raise TimeoutError(f"not SERVING again: {', '.join(pending)}")
                if pending:
                    await asyncio.sleep(0.5)
        finally:
            await clients.close()

    def close(self) -> None:
        """Stop what the injector started that the dev stack's record does not name (the
        restarted SMTP server; PostgreSQL and the API server are found by their pid files)."""
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {kind.value: 0 for kind in FaultKind}
        for done in self.injected:
            out[done.fault.kind.value] += 1
        return out
