"""Credentials that rotate without a restart: files (certificates, keys, the CA bundle, the
edge's webhook tokens) re-read when they change.

Looking is cheap: at most one round of stat() calls every `check_seconds`, and the files
are read again only when one's inode, size or modification time changed. A set of files
that is being written (it changed while it was read) is read again at the next look; one
that is not valid (a half-written PEM, a key that does not match its certificate, a missing
file) keeps the last good value, with one warning per change. Kubernetes updates a mounted
Secret by swapping a symlink, so its files change all at once; cert-manager, Vault agents
and `kubernaut certs init` write them one by one, which the checks above absorb.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import grpc

from kubernaut.runtime.certs import CertPaths

log = logging.getLogger("kubernaut.rotation")

T = TypeVar("T")

DEFAULT_CHECK_SECONDS = 1.0
# At start the files must be read whole; a writer busy for longer than this is an error.
_START_ATTEMPTS = 20
_START_PAUSE_SECONDS = 0.05

# What stat() says of a file that tells a new version from the old: device and inode (a
# replaced file, a swapped Secret symlink), size and the change times. None: missing.
FileStamp = tuple[int, int, int, int, int] | None


def stamp_of(paths: Sequence[Path]) -> tuple[FileStamp, ...]:
    stamps: list[FileStamp] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


class InvalidFiles(ValueError):
    """The files do not hold a usable value (the message says why; never their content)."""


class WatchedFiles(Generic[T]):
    """The value `parse` makes of some files, made again when the files change.

    `current` is the last good value and `generation` counts the values taken. Callers on
    a hot path compare `clock()` with `next_check` themselves and call `refresh()` only
    when it is due, so that a call costs one clock comparison. Safe to call from several
    threads (grpc's handshakes): one refreshes, the others keep the current value.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        parse: Callable[[Sequence[Path]], T],
        *,
        what: str,
        check_seconds: float = DEFAULT_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = tuple(paths)
        self.what = what
        self.check_seconds = check_seconds
        self.clock = clock
        self._parse = parse
        self._lock = threading.Lock()
        # A parse error is the start's error (InvalidFiles, OSError): no value to keep.
        read = self._read()
        for _ in range(_START_ATTEMPTS):
            if read is not None:
                break
            time.sleep(_START_PAUSE_SECONDS)
            read = self._read()
        if read is None:
            raise InvalidFiles(f"{what}: the files kept changing while they were read")
        self._seen, self.current = read
        self.generation = 0
        self.next_check = clock() + check_seconds

    def _read(self) -> tuple[tuple[FileStamp, ...], T] | None:
        """The files' stamp and value; None when they changed while being read."""
        before = stamp_of(self.paths)
        value = self._parse(self.paths)
        return (before, value) if stamp_of(self.paths) == before else None

    def refresh(self) -> bool:
        """Look at the files if it is time; True when a new value was taken."""
        now = self.clock()
        if now < self.next_check or not self._lock.acquire(blocking=False):
            return False
        try:
            self.next_check = now + self.check_seconds
            stamp = stamp_of(self.paths)
            if stamp == self._seen:
                return False
            try:
                read = self._read()
            except (ValueError, OSError) as error:
                # OSError: a missing or unreadable file, and ssl.SSLError. If the files
                # changed meanwhile they were being written: look again, warn then.
                if stamp_of(self.paths) == stamp:
                    self._seen = stamp
                    log.warning(
                        "%s changed but are not usable; keeping the last good ones",
                        self.what,
                        extra={"files": [str(p) for p in self.paths], "error": str(error)},
                    )
                return False
            if read is None:
                return False
            self._seen, self.current = read
            self.generation += 1
            log.info("%s re-read", self.what, extra={"generation": self.generation})
            return True
        finally:
            self._lock.release()


@dataclass(frozen=True)
class TlsFiles:
    """One identity's PEM files as read together: CA bundle, certificate chain, key."""

    ca: bytes = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)


def tls_paths(paths: CertPaths) -> tuple[Path, Path, Path]:
    return (paths.ca, paths.cert, paths.key)


def read_tls_files(paths: Sequence[Path]) -> TlsFiles:
    """The CA bundle, certificate and key at `paths`; InvalidFiles unless the bundle holds
    whole certificates and the key is the certificate's (checked by the standard library's
    OpenSSL: cryptography is not loaded in the services)."""
    ca_path, cert_path, key_path = paths
    ca, cert, key = ca_path.read_bytes(), cert_path.read_bytes(), key_path.read_bytes()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=ca.decode("ascii"))
        # A password, so that an encrypted key fails here instead of prompting a terminal.
        context.load_cert_chain(cert_path, key_path, password=b"")
    except (ssl.SSLError, ValueError) as error:
        raise InvalidFiles(f"{ca_path.name}, {cert_path.name}, {key_path.name}: {error}") from None
    return TlsFiles(ca, cert, key)


def watch_tls(paths: CertPaths, check_seconds: float) -> WatchedFiles[TlsFiles]:
    return WatchedFiles(
        tls_paths(paths),
        read_tls_files,
        what=f"certificate files of {paths.account}",
        check_seconds=check_seconds,
    )


def server_certificate_configuration(tls: TlsFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(tls.key, tls.cert)], tls.ca)


def rotating_server_credentials(paths: CertPaths, check_seconds: float) -> grpc.ServerCredentials:
    """mTLS server credentials whose every new handshake uses the files as they are now
    (at most check_seconds old). grpc asks the fetcher at each handshake, never per call."""
    tls = watch_tls(paths, check_seconds)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # None: keep the configuration grpc has.
        if tls.refresh():
            return server_certificate_configuration(tls.current)
        return None

    return grpc.dynamic_ssl_server_credentials(
        server_certificate_configuration(tls.current), fetch, require_client_authentication=True
    )


def channel_credentials_of(tls: TlsFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )


def rotating_ssl_context(
    make: Callable[[], ssl.SSLContext],
    paths: Sequence[Path],
    check_seconds: float,
    *,
    what: str,
) -> ssl.SSLContext:
    """A server SSLContext (from `make`, which reads `paths`) whose new handshakes use a
    context made again from the files when they changed. An SSLContext cannot drop its
    certificate for another safely while it serves, but its SNI callback, which OpenSSL
    calls on every handshake, may hand the connection to another context."""

    def parse(_: Sequence[Path]) -> ssl.SSLContext:
        return make()

    contexts = WatchedFiles(paths, parse, what=what, check_seconds=check_seconds)
    serving = contexts.current

    def pick(connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if contexts.clock() >= contexts.next_check:
            contexts.refresh()
        if contexts.current is not serving:
            connection.context = contexts.current

    serving.sni_callback = pick
    return serving
