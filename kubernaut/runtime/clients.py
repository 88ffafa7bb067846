"""Typed clients: any service (or an operator) gets a ready stub for another service.

A channel per callee, opened by kubernaut-api's helper (kubernaut.api.client: the
transport's credentials, a default deadline for unary calls, retries for idempotent
methods), plus what the product adds: the caller's request id and W3C trace context, the
caller's name under transport insecure, a person's token. Under transport mtls the channels
follow the certificate files: when they change, new calls go over a new channel (see
_RotatingChannel).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from kubernaut.api.client import aio_channel
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from kubernaut.runtime.certs import CertPaths
from kubernaut.runtime.identity import INSECURE_CALLER_HEADER
from kubernaut.runtime.logs import request_id_var
from kubernaut.runtime.names import OPERATOR_ACCOUNT, ServiceName
from kubernaut.runtime.registry import protocol, service_of_stub
from kubernaut.runtime.rotation import (
    InvalidFiles,
    TlsFiles,
    WatchedFiles,
    channel_credentials_of,
    read_tls_files,
    tls_paths,
    watch_tls,
)
from kubernaut.runtime.settings import RuntimeSettings, Transport

log = logging.getLogger("kubernaut.clients")

StubT = TypeVar("StubT")


class TokenFile:
    """A person's OIDC ID token in a file (`kubernaut --token-file`), read on first use and
    again whenever the file changes (rotation.WatchedFiles, looking at every call: a
    refreshed token is used from the next call on)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._watched: WatchedFiles[str] | None = None

    def token(self) -> str:
        if self._watched is None:
            try:
                self._watched = WatchedFiles(
                    [self.path], _read_token, what=f"token file {self.path}", check_seconds=0
                )
            except OSError as error:
                raise FileNotFoundError(
                    f"the token file {self.path} cannot be read: {error}"
                ) from error
        else:
            self._watched.refresh()
        return self._watched.current


def _read_token(paths: Sequence[Path]) -> str:
    (path,) = paths
    token = path.read_text().strip()
    if not token:
        raise InvalidFiles(f"the token file {path} is empty")
    return token


class _CallMetadata(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Carries the request id across hops; names the caller under transport insecure;
    presents a person's token."""

    def __init__(self, insecure_caller: str | None, token_file: TokenFile | None = None) -> None:
        self.insecure_caller = insecure_caller
        self.token_file = token_file

    def with_metadata(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if (request_id := request_id_var.get()) and "x-request-id" not in metadata:
            metadata.add("x-request-id", request_id)
        if self.insecure_caller:
            metadata.add(INSECURE_CALLER_HEADER, self.insecure_caller)
        if self.token_file is not None:
            metadata.add("authorization", f"Bearer {self.token_file.token()}")
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.with_metadata(details), request)


class _StreamCallMetadata(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """_CallMetadata's for server-streaming calls (grpc takes one interceptor object per
    kind of call)."""

    def __init__(self, metadata: _CallMetadata) -> None:
        self.metadata = metadata

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.metadata.with_metadata(details), request)


def channel_credentials(settings: RuntimeSettings, account: str) -> grpc.ChannelCredentials:
    """The account's credentials as its files are now (a channel that does not rotate)."""
    paths = CertPaths(settings.resolved_certs_dir, account)
    return channel_credentials_of(read_tls_files(tls_paths(paths)))


class _RotatingChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A channel to one service whose calls go over a channel made with the newest
    certificate files. When they changed, the next call opens a new channel and the old
    one closes once its calls are done (`retire`), so no call fails for a rotation.

    Generated stubs take their method callables from the channel once, when made; those
    callables (_RebindingCallable) look for a rotation at each call, which costs a clock
    comparison, and a stat() round at most every credentials_check_seconds for the whole
    Clients. No thread, no task per channel."""

    def __init__(
        self,
        tls: WatchedFiles[TlsFiles],
        credentials: Callable[[], tuple[int, grpc.ChannelCredentials]],
        open_channel: Callable[[grpc.ChannelCredentials], grpc.aio.Channel],
        retire: Callable[[grpc.aio.Channel], None],
    ) -> None:
        self.tls = tls
        self._credentials = credentials
        self._open_channel = open_channel
        self._retire = retire
        self._generation, current = credentials()
        self._inner = open_channel(current)

    def current(self) -> tuple[int, grpc.aio.Channel]:
        """The channel new calls take, and the generation of its files."""
        tls = self.tls
        if tls.clock() >= tls.next_check:
            tls.refresh()
        if self._generation != tls.generation:
            old = self._inner
            self._generation, current = self._credentials()
            self._inner = self._open_channel(current)
            self._retire(old)
        return self._generation, self._inner

    def _callable(self, kind: str, method: str, options: dict[str, Any]) -> Any:
        return _RebindingCallable(self, kind, method, options)

    def unary_unary(self, method: str, **options: Any) -> Any:
        return self._callable("unary_unary", method, options)

    def unary_stream(self, method: str, **options: Any) -> Any:
        return self._callable("unary_stream", method, options)

    def stream_unary(self, method: str, **options: Any) -> Any:
        return self._callable("stream_unary", method, options)

    def stream_stream(self, method: str, **options: Any) -> Any:
        return self._callable("stream_stream", method, options)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current()[1].get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.current()[1].wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current()[1].channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self._inner.close(grace)

    async def __aenter__(self) -> _RotatingChannel:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class _RebindingCallable:
    """A stub's method on a _RotatingChannel: each call goes over the channel's current
    inner channel; the inner callable is made again only after a rotation."""

    __slots__ = ("_channel", "_generation", "_inner", "_kind", "_method", "_options")

    def __init__(
        self, channel: _RotatingChannel, kind: str, method: str, options: dict[str, Any]
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._options = options
        self._generation = -1
        self._inner: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tls = self._channel.tls
        # The one cost per call: a clock comparison (and an int one).
        if tls.clock() >= tls.next_check:
            tls.refresh()
        if self._generation != tls.generation:
            self._generation, inner = self._channel.current()
            self._inner = getattr(inner, self._kind)(self._method, **self._options)
        return self._inner(*args, **kwargs)


class Clients:
    """Stubs for calling Kubernaut services as `account` (a service's, or an operator's)."""

    def __init__(
        self,
        settings: RuntimeSettings,
        account: str = OPERATOR_ACCOUNT,
        *,
        addresses: dict[ServiceName, str] | None = None,
        token_file: Path | None = None,
    ) -> None:
        self.settings = settings
        # `account`: the certificate the connection presents; `token_file`: the person the
        # calls are for (their OIDC ID token), when a person calls.
        self.account = account
        self.token_file = TokenFile(token_file) if token_file is not None else None
        self.addresses = dict(addresses or {})
        self._channels: dict[ServiceName, grpc.aio.Channel] = {}
        # Transport mtls: the account's certificate files, read when the first channel
        # opens; the credentials made of their current generation.
        self._tls: WatchedFiles[TlsFiles] | None = None
        self._credentials: tuple[int, grpc.ChannelCredentials] | None = None
        # Channels replaced by a rotation, closing once their calls are done.
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    def address(self, service: ServiceName) -> str:
        return self.addresses.get(service) or self.settings.address_of(service)

    def channel(self, service: ServiceName) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = self._open(service)
        return self._channels[service]

    def stub(self, stub_class: Callable[[grpc.aio.Channel], StubT]) -> StubT:
        """A stub of the generated class, e.g. clients.stub(AlertProcessorServiceStub)."""
        return stub_class(self.channel(service_of_stub(stub_class)))

    def _open(self, service: ServiceName) -> grpc.aio.Channel:
        insecure_caller = self.account if self.settings.transport is Transport.INSECURE else None
        call_metadata = _CallMetadata(insecure_caller, self.token_file)
        interceptors = [
            *aio_client_interceptors(),  # type: ignore[no-untyped-call]
            call_metadata,
            _StreamCallMetadata(call_metadata),
        ]
        target = self.address(service)
        descriptor = protocol(service).descriptor

        def open_channel(credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
            return aio_channel(
                target,
                descriptor,
                tls=credentials,
                timeout=self.settings.call_timeout_seconds,
                interceptors=interceptors,
            )

        if self.settings.transport is Transport.MTLS:
            return _RotatingChannel(
                self._watched_tls(), self._current_credentials, open_channel, self._retire
            )
        # Under a mesh the sidecar upgrades this plaintext connection to mutual TLS.
        return open_channel(None)

    def _watched_tls(self) -> WatchedFiles[TlsFiles]:
        if self._tls is None:
            paths = CertPaths(self.settings.resolved_certs_dir, self.account)
            self._tls = watch_tls(paths, self.settings.credentials_check_seconds)
        return self._tls

    def _current_credentials(self) -> tuple[int, grpc.ChannelCredentials]:
        """One credentials object per generation of the files, shared by the channels."""
        tls = self._watched_tls()
        if self._credentials is None or self._credentials[0] != tls.generation:
            self._credentials = (tls.generation, channel_credentials_of(tls.current))
        return self._credentials

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Close a channel replaced by a rotation once its calls are done (grpc waits for
        them up to the grace period, then cancels what is left)."""
        grace = self.settings.credentials_retire_grace_seconds
        task = asyncio.ensure_future(channel.close(grace))
        self._retiring[task] = channel
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
        log.info("new channel for rotated certificates", extra={"account": self.account})

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        for task, channel in list(self._retiring.items()):
            task.cancel()
            await channel.close()
        self._retiring.clear()
