"""Credentials rotate without a restart, under load, and no call fails:

- a service's certificate is renewed: the client's new calls go over a new channel with its
  new certificate, the server presents its new one on new handshakes;
- the CA is replaced through a bundle of both CAs (old + new, leaves re-issued by the new
  one, then the old one dropped): a leaf of the old CA is refused at the end;
- half-written certificate files keep the last good configuration;
- the edge's webhook tokens file: a token added works at once, a removed one stops working,
  the old one works until removed;
- the edge's own TLS certificate.

The certificates live in a directory updated the way the kubelet updates a mounted Secret
(files are symlinks into `..data`, swapped in one rename); the services are real in-process
grpc.aio servers with the mtls transport, the edge a real uvicorn in front of the real
gateway."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from cryptography import x509
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from kubernaut.storage.v1 import storage_pb2, storage_pb2_grpc
from pydantic import SecretStr

from kubernaut.devstack.processes import free_port
from kubernaut.edge.app import ALERTMANAGER_PATH, create_app
from kubernaut.edge.main import server_config
from kubernaut.edge.settings import EdgeSettings
from kubernaut.runtime.certs import create_ca, issue_certificate
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import EDGE_ACCOUNT, ServiceName
from kubernaut.runtime.server import (
    Context,
    RunningService,
    ServiceContext,
    ServiceSpec,
    start_service,
)
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.kubernaut import NAMESPACE, TRUST_DOMAIN, InProcessStack
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

# Looked at this often here (1 s by default): the tests wait a few of these per step.
CHECK_SECONDS = 0.2
STEP_SECONDS = 3 * CHECK_SECONDS
# The echo's calls last this long, so that a rotation always finds calls in flight.
CALL_SECONDS = 0.05
CALLER = ServiceName.GATEWAY.account  # gateway -> storage.CountIncidentAlerts: no retries


class MountedSecret:
    """A certs directory updated as the kubelet updates a mounted Secret: each file is a
    symlink into `..data`, and `..data` is swapped to a new version in one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0

    def publish(self, files: Mapping[str, bytes]) -> None:
        self.versions += 1
        version = self.root / f"..v{self.versions}"
        version.mkdir(parents=True)
        for name, data in files.items():
            (version / name).write_bytes(data)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)


@dataclass
class Authority:
    """A CA in its own directory, issuing the test's leaves (PEM bytes)."""

    directory: Path

    def __post_init__(self) -> None:
        create_ca(self.directory, common_name=f"test CA {self.directory.name}")

    @property
    def ca(self) -> bytes:
        return (self.directory / "ca.crt").read_bytes()

    def issue(self, account: str) -> tuple[bytes, bytes]:
        paths = issue_certificate(
            self.directory, account, trust_domain=TRUST_DOMAIN, namespace=NAMESPACE
        )
        return paths.cert.read_bytes(), paths.key.read_bytes()


def identity_files(bundle: bytes, leaves: Mapping[str, tuple[bytes, bytes]]) -> dict[str, bytes]:
    files = {"ca.crt": bundle}
    for account, (cert, key) in leaves.items():
        files |= {f"{account}.crt": cert, f"{account}.key": key}
    return files


def serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


class PeerEcho(storage_pb2_grpc.StorageServiceServicer):
    """A storage servicer that notes the serial of each caller's certificate (what its
    handshake presented) and takes CALL_SECONDS a call. It serves CountIncidentAlerts
    only (the others answer UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.serials: list[int] = []

    async def CountIncidentAlerts(
        self, request: storage_pb2.CountIncidentAlertsRequest, context: Context
    ) -> storage_pb2.CountIncidentAlertsResponse:
        self.serials.append(serial(context.auth_context()["x509_pem_cert"][0]))
        await asyncio.sleep(CALL_SECONDS)
        return storage_pb2.CountIncidentAlertsResponse()


@dataclass
class Load:
    """`workers` tasks calling `call` in a loop until stopped; every failure is kept."""

    call: Callable[[], Awaitable[Any]]
    workers: int = 4
    calls: int = 0
    failures: list[BaseException] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _work(self) -> None:
        while not self._stop.is_set():
            try:
                await self.call()
            # Kept for the assertion, whatever it is; a call cancelled by its channel's
            # closing raises CancelledError (the workers themselves are never cancelled).
            except (Exception, asyncio.CancelledError) as error:
                self.failures.append(error)
                await asyncio.sleep(CALL_SECONDS)  # a failing call may fail at once
            self.calls += 1

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@dataclass
class EchoStorage:
    secret: MountedSecret
    running: RunningService
    echo: PeerEcho
    clients: Clients

    def stub(self) -> storage_pb2_grpc.StorageServiceStub:
        return self.clients.stub(storage_pb2_grpc.StorageServiceStub)

    def load(self) -> Load:
        stub = self.stub()
        request = storage_pb2.CountIncidentAlertsRequest(incident_id=str(uuid.uuid4()), count=1)
        return Load(lambda: stub.CountIncidentAlerts(request, timeout=10))

    async def caller_serial_becomes(self, expected: int) -> None:
        await eventually(
            lambda: asyncio.sleep(0, self.echo.serials and self.echo.serials[-1] == expected),
            "calls with the caller's new certificate",
            timeout=10 * STEP_SECONDS,
            interval=CHECK_SECONDS / 4,
        )


@contextlib.asynccontextmanager
async def echo_storage(
    runtime_settings: RuntimeSettings, root: Path, files: Mapping[str, bytes]
) -> AsyncIterator[EchoStorage]:
    """The storage service (the echo servicer behind the real runtime) and a gateway's
    Clients, both reading their certificates from a MountedSecret at `root`."""
    secret = MountedSecret(root)
    secret.publish(files)
    settings = runtime_settings.model_copy(
        update={"certs_dir": root, "credentials_check_seconds": CHECK_SECONDS}
    )
    echo = PeerEcho()  # type: ignore[abstract]  # one method is enough here

    async def build(_: ServiceContext) -> ServiceSpec:
        return ServiceSpec(echo)

    running = await start_service(ServiceName.STORAGE, settings, builder=build, serve_metrics=False)
    clients = Clients(settings, CALLER, addresses={ServiceName.STORAGE: running.address})
    try:
        yield EchoStorage(secret, running, echo, clients)
    finally:
        await clients.close()
        await running.shutdown()


async def presented_serial(
    port: int, ca: bytes, scratch: Path, leaf: tuple[bytes, bytes] | None = None
) -> int:
    """The serial of the certificate a server presents on a new handshake, which must
    verify against `ca`; the probe presents `leaf` when given (mTLS servers require one)."""
    probe = scratch / f"probe-{uuid.uuid4()}"
    probe.mkdir(parents=True)
    if leaf:
        (probe / "leaf.crt").write_bytes(leaf[0])
        (probe / "leaf.key").write_bytes(leaf[1])

    def handshake() -> bytes | None:
        context = ssl.create_default_context(cadata=ca.decode())
        if leaf:
            context.load_cert_chain(probe / "leaf.crt", probe / "leaf.key")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            return tls.getpeercert(binary_form=True)

    der = await asyncio.to_thread(handshake)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def call_with(port: int, ca: bytes, leaf: tuple[bytes, bytes]) -> grpc.StatusCode:
    """One call to the echo over a fresh channel that presents `leaf` and trusts `ca`."""
    credentials = grpc.ssl_channel_credentials(ca, private_key=leaf[1], certificate_chain=leaf[0])
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        request = storage_pb2.CountIncidentAlertsRequest(incident_id=str(uuid.uuid4()), count=1)
        try:
            await stub.CountIncidentAlerts(request, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_renewed_certificates_are_used_on_new_handshakes_and_no_call_fails(
    runtime_settings: RuntimeSettings, tmp_path: Path
) -> None:
    ca = Authority(tmp_path / "ca")
    first = {"storage": ca.issue("storage"), CALLER: ca.issue(CALLER)}
    mounted = tmp_path / "mounted"
    async with echo_storage(runtime_settings, mounted, identity_files(ca.ca, first)) as s:
        port = s.running.port
        async with s.load() as load:
            await s.caller_serial_becomes(serial(first[CALLER][0]))
            assert await presented_serial(port, ca.ca, tmp_path, first[CALLER]) == serial(
                first["storage"][0]
            )

            renewed = {"storage": ca.issue("storage"), CALLER: ca.issue(CALLER)}
            s.secret.publish(identity_files(ca.ca, renewed))
            published = time.monotonic()
            # The client's new calls present its new certificate (a new channel) ...
            await s.caller_serial_becomes(serial(renewed[CALLER][0]))
            # ... and the server's new handshakes present its new one: within a look or two.
            assert await presented_serial(port, ca.ca, tmp_path, renewed[CALLER]) == serial(
                renewed["storage"][0]
            )
            assert time.monotonic() - published < 2 * CHECK_SECONDS + 1
            calls_at_rotation = load.calls
            await asyncio.sleep(STEP_SECONDS)

    # Calls were in flight on the old channel when it was replaced (each takes
    # CALL_SECONDS): it was closed only once they were done.
    assert load.calls > calls_at_rotation > 0
    assert load.failures == []


async def test_the_ca_is_replaced_through_a_bundle_of_both_and_no_call_fails(
    runtime_settings: RuntimeSettings, tmp_path: Path
) -> None:
    old_ca, new_ca = Authority(tmp_path / "old-ca"), Authority(tmp_path / "new-ca")
    old = {"storage": old_ca.issue("storage"), CALLER: old_ca.issue(CALLER)}
    new = {"storage": new_ca.issue("storage"), CALLER: new_ca.issue(CALLER)}
    both = old_ca.ca + new_ca.ca
    mounted = tmp_path / "mounted"
    async with echo_storage(runtime_settings, mounted, identity_files(old_ca.ca, old)) as s:
        port = s.running.port
        async with s.load() as load:
            await s.caller_serial_becomes(serial(old[CALLER][0]))
            # Before: a leaf of the new CA is a stranger.
            assert await call_with(port, both, new[CALLER]) == grpc.StatusCode.UNAVAILABLE

            # Each step waits a few looks, as an operator waits for every pod to take one.
            for files in (
                identity_files(both, old),  # 1. trust both CAs
                identity_files(both, new),  # 2. leaves of the new CA
                identity_files(new_ca.ca, new),  # 3. drop the old CA
            ):
                s.secret.publish(files)
                await asyncio.sleep(STEP_SECONDS)
            await s.caller_serial_becomes(serial(new[CALLER][0]))
            calls_at_end = load.calls
            await asyncio.sleep(STEP_SECONDS)

        # After: the server presents its new leaf (it verifies against the new CA alone)
        # and refuses a leaf of the old CA; one of the new CA gets in.
        assert await presented_serial(port, new_ca.ca, tmp_path, new[CALLER]) == serial(
            new["storage"][0]
        )
        assert await call_with(port, new_ca.ca, old[CALLER]) == grpc.StatusCode.UNAVAILABLE
        assert await call_with(port, new_ca.ca, new[CALLER]) == grpc.StatusCode.OK

    assert load.calls > calls_at_end > 0
    assert load.failures == []


async def test_half_written_certificate_files_keep_the_last_good_configuration(
    runtime_settings: RuntimeSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kubernaut.rotation")
    ca = Authority(tmp_path / "ca")
    first = {"storage": ca.issue("storage"), CALLER: ca.issue(CALLER)}
    mounted = tmp_path / "mounted"
    async with echo_storage(runtime_settings, mounted, identity_files(ca.ca, first)) as s:
        port = s.running.port
        async with s.load() as load:
            await s.caller_serial_becomes(serial(first[CALLER][0]))

            # Written in place and cut short, as a writer that has not finished leaves them;
            # the CA bundle ends in garbage.
            for account in ("storage", CALLER):
                certificate = first[account][0]
                (mounted / f"{account}.crt").write_bytes(certificate[: len(certificate) // 2])
            (mounted / "ca.crt").write_bytes(ca.ca + b"-----BEGIN CERTIFICATE-----\nMIIB")
            await asyncio.sleep(STEP_SECONDS)
            # New handshakes on both sides still use the last good files.
            assert await presented_serial(port, ca.ca, tmp_path, first[CALLER]) == serial(
                first["storage"][0]
            )
            assert await call_with(port, ca.ca, first[CALLER]) == grpc.StatusCode.OK
            warned = {
                r.getMessage().partition(" changed but are not usable")[0]
                for r in caplog.records
                if "not usable" in r.getMessage()
            }
            assert warned == {f"certificate files of {a}" for a in ("storage", CALLER)}
            assert s.echo.serials[-1] == serial(first[CALLER][0])

            # Good files again are taken.
            renewed = {"storage": ca.issue("storage"), CALLER: ca.issue(CALLER)}
            s.secret.publish(identity_files(ca.ca, renewed))
            await s.caller_serial_becomes(serial(renewed[CALLER][0]))
            assert await presented_serial(port, ca.ca, tmp_path, renewed[CALLER]) == serial(
                renewed["storage"][0]
            )

    assert load.calls > 0
    assert load.failures == []


# -- the HTTP edge ------------------------------------------------------------------------------

TOKEN = "edge-rotation-token"


@contextlib.asynccontextmanager
async def edge_server(stack: InProcessStack, edge: EdgeSettings) -> AsyncIterator[str]:
    """The edge (uvicorn, as `serve_edge` configures it) in front of the real gateway;
    yields its webhook URL."""
    clients = stack.clients(EDGE_ACCOUNT)
    authenticator = edge.authenticator(check_seconds=CHECK_SECONDS)
    app = create_app(clients.stub(GatewayServiceStub).SubmitAlerts, authenticator)
    server = uvicorn.Server(server_config(app, edge, check_seconds=CHECK_SECONDS))
    task = asyncio.create_task(server.serve())
    scheme = "https" if edge.tls_cert_file else "http"
    try:
        await eventually(lambda: asyncio.sleep(0, server.started), "the edge to listen", 10)
        yield f"{scheme}://127.0.0.1:{edge.port}{ALERTMANAGER_PATH}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        await clients.close()


def resolved_webhook() -> dict[str, Any]:
    """A webhook the gateway answers without handing work on (a resolved alert)."""
    now = datetime.datetime.now(datetime.UTC).isoformat()
    labels = {"alertname": "KubePodCrashLooping", "namespace": "rotation", "pod": "p"}
    alert = {"status": "resolved", "labels": labels, "startsAt": now, "endsAt": now}
    return {"version": "4", "status": "resolved", "receiver": "kubernaut", "alerts": [alert]}


@dataclass(frozen=True)
class Post:
    started: float
    finished: float
    outcome: int | str  # the status code, or the error's name


@dataclass
class Posting:
    """`workers` tasks posting webhooks with `token` until stopped; every outcome kept."""

    http: httpx.AsyncClient
    url: str
    token: str
    workers: int = 2
    posts: list[Post] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def post(self) -> int | str:
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            reply = await self.http.post(self.url, json=resolved_webhook(), headers=headers)
        except httpx.HTTPError as error:
            return type(error).__name__
        return reply.status_code

    async def _work(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            outcome = await self.post()
            self.posts.append(Post(started, time.monotonic(), outcome))
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Posting:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def outcomes(self, when: Callable[[Post], bool] = lambda _: True) -> set[int | str]:
        return {post.outcome for post in self.posts if when(post)}


async def first_time(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """The monotonic time at which `check` first holds."""
    await eventually(check, what, timeout=10 * STEP_SECONDS, interval=CHECK_SECONDS / 4)
    return time.monotonic()


async def test_webhook_tokens_rotate_under_load(stack: InProcessStack, tmp_path: Path) -> None:
    secret = MountedSecret(tmp_path / "tokens")
    secret.publish({"tokens": b"old-token\n"})
    edge = EdgeSettings(port=free_port(), tokens_file=secret.root / "tokens")
    async with edge_server(stack, edge) as url, httpx.AsyncClient(timeout=10) as http:
        old, new = Posting(http, url, "old-token"), Posting(http, url, "new-token")
        async with old:
            await asyncio.sleep(STEP_SECONDS)
            assert await new.post() == 401

            secret.publish({"tokens": b"old-token\nnew-token\n"})
            added = time.monotonic()
            accepted = await first_time(lambda: _is(new.post(), 200), "the new token to work")
            assert accepted - added < CHECK_SECONDS + 1
            async with new:
                await asyncio.sleep(STEP_SECONDS)
                secret.publish({"tokens": b"new-token\n"})
                removed = time.monotonic()
                refused = await first_time(lambda: _is(old.post(), 401), "the old token to go")
                assert refused - removed < CHECK_SECONDS + 1
                await asyncio.sleep(STEP_SECONDS)

    # The old token worked until it left the file, and not after; the new one from when it
    # was added on; nothing else happened to any request (no 5xx, no broken connection).
    assert old.outcomes(lambda p: p.finished < removed) == {200}
    assert old.outcomes(lambda p: p.started > refused) == {401}
    assert old.outcomes() == {200, 401}
    assert new.outcomes() == {200}
    assert len(new.posts) > 2 and sum(p.finished < added for p in old.posts) > 2


async def _is(outcome: Awaitable[int | str], expected: int) -> bool:
    return await outcome == expected


async def test_the_edge_tls_certificate_rotates_under_load(
    stack: InProcessStack, tmp_path: Path
) -> None:
    ca = Authority(tmp_path / "ca")
    first = ca.issue(EDGE_ACCOUNT)
    secret = MountedSecret(tmp_path / "tls")
    secret.publish({"tls.crt": first[0], "tls.key": first[1]})
    edge = EdgeSettings(
        port=free_port(),
        tls_cert_file=secret.root / "tls.crt",
        tls_key_file=secret.root / "tls.key",
        tokens=(SecretStr(TOKEN),),
    )
    trusting = ssl.create_default_context(cadata=ca.ca.decode())
    async with (
        edge_server(stack, edge) as url,
        httpx.AsyncClient(verify=trusting, timeout=10) as http,
        Posting(http, url, TOKEN) as load,
    ):
        port = edge.port
        assert await presented_serial(port, ca.ca, tmp_path) == serial(first[0])

        second = ca.issue(EDGE_ACCOUNT)
        secret.publish({"tls.crt": second[0], "tls.key": second[1]})
        published = time.monotonic()

        async def presents(expected: tuple[bytes, bytes]) -> bool:
            return await presented_serial(port, ca.ca, tmp_path) == serial(expected[0])

        renewed = await first_time(lambda: presents(second), "the renewed certificate")
        assert renewed - published < CHECK_SECONDS + 1

        # Cut short in place: new connections still get the last good certificate.
        (secret.root / "tls.crt").write_bytes(first[0][: len(first[0]) // 2])
        await asyncio.sleep(STEP_SECONDS)
        assert await presents(second)

        third = ca.issue(EDGE_ACCOUNT)
        secret.publish({"tls.crt": third[0], "tls.key": third[1]})
        await first_time(lambda: presents(third), "the next certificate")

    assert len(load.posts) > 2
    assert load.outcomes() == {200}
