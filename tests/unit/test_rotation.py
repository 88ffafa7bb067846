"""Credential files re-read when they change (kubernaut/runtime/rotation.py), on a clock the
test moves: a change is taken at the next look and not before; files that are not usable
(half-written, a key of another certificate, missing) keep the last good value with one
warning per change; files that change while they are read are read again later; the edge's
webhook tokens file adds and removes tokens, and keeps them through an empty file."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from kubernaut.edge.security import Authenticator, Unauthorized, WebhookTokenFile
from kubernaut.runtime.certs import CertPaths, init_dev_pki
from kubernaut.runtime.rotation import (
    InvalidFiles,
    TlsFiles,
    WatchedFiles,
    read_tls_files,
    tls_paths,
)

CHECK_SECONDS = 1.0


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = CHECK_SECONDS) -> None:
        self.now += seconds


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` whole, as cert-manager or a Secret update does (a new file renamed)."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)


def read_text(paths: Sequence[Path]) -> str:
    return paths[0].read_text()


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_dev_pki(tmp_path, ["storage", "gateway"], trust_domain="t.local", namespace="n")
    return tmp_path


def test_a_change_is_taken_at_the_next_look_and_not_before(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "value"
    path.write_text("one")
    files = WatchedFiles([path], read_text, what="v", check_seconds=CHECK_SECONDS, clock=clock)
    assert (files.current, files.generation) == ("one", 0)

    replace_file(path, b"two")
    clock.advance(CHECK_SECONDS / 2)
    assert not files.refresh()
    assert files.current == "one"
    clock.advance(CHECK_SECONDS / 2)
    assert files.refresh()
    assert (files.current, files.generation) == ("two", 1)
    # Nothing changed: no new value, and the next look is a whole interval away.
    clock.advance()
    assert not files.refresh()
    assert files.next_check == clock.now + CHECK_SECONDS
    assert files.generation == 1


def test_unusable_certificate_files_keep_the_last_good_ones_with_one_warning_each(
    pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    storage, gateway = CertPaths(pki, "storage"), CertPaths(pki, "gateway")
    files: WatchedFiles[TlsFiles] = WatchedFiles(
        tls_paths(storage), read_tls_files, what="storage certs", clock=clock
    )
    good = files.current
    caplog.set_level(logging.WARNING, logger="kubernaut.rotation")

    def look() -> bool:
        clock.advance()
        return files.refresh()

    certificate = storage.cert.read_bytes()
    unusable = {
        "half-written": (certificate[: len(certificate) // 2], storage.key.read_bytes()),
        "another certificate's key": (certificate, gateway.key.read_bytes()),
    }
    for why, (cert, key) in unusable.items():
        caplog.clear()
        replace_file(storage.cert, cert)
        replace_file(storage.key, key)
        assert not look(), why
        assert not look(), why
        assert files.current is good, why
        warnings = [r for r in caplog.records if "not usable" in r.getMessage()]
        assert len(warnings) == 1, (why, caplog.records)
        assert "BEGIN" not in caplog.text  # no key or certificate in the logs

    caplog.clear()
    storage.key.unlink()
    assert not look()
    assert files.current is good
    assert "not usable" in caplog.text

    # A good pair again is taken.
    replace_file(storage.cert, gateway.cert.read_bytes())
    replace_file(storage.key, gateway.key.read_bytes())
    assert look()
    assert files.current.cert == gateway.cert.read_bytes()
    assert files.generation == 1


def test_unusable_files_at_start_are_the_start_error(pki: Path) -> None:
    paths = CertPaths(pki, "storage")
    paths.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB")
    with pytest.raises(InvalidFiles, match=r"storage\.crt"):
        WatchedFiles(tls_paths(paths), read_tls_files, what="storage certs")


def test_files_that_change_while_read_are_read_again_at_the_next_look(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    path = tmp_path / "value"
    path.write_text("one")
    writer_busy = False

    def parse(paths: Sequence[Path]) -> str:
        text = paths[0].read_text()
        if writer_busy:
            # A writer appends while this reads: what was read is not what is there.
            with paths[0].open("a") as file:
                file.write("+more")
            if text.endswith("+"):
                raise InvalidFiles("half a value")
        return text

    files = WatchedFiles([path], parse, what="v", clock=clock)
    writer_busy = True
    path.write_text("two+")
    clock.advance()
    assert not files.refresh()
    assert files.current == "one"
    assert "not usable" not in caplog.text  # being written is not an error
    writer_busy = False
    clock.advance()
    assert files.refresh()
    assert files.current == "two++more"


async def test_the_webhook_tokens_file_adds_and_removes_tokens_and_outlives_an_empty_file(
    tmp_path: Path,
) -> None:
    clock = Clock()
    path = tmp_path / "tokens"
    path.write_text("old-token\n")
    authenticator = Authenticator.of(
        ["fixed-token"], token_file=WebhookTokenFile(path, clock=clock)
    )

    async def accepted(token: str) -> bool:
        try:
            await authenticator.check({"authorization": f"Bearer {token}"}, b"{}")
        except Unauthorized:
            return False
        return True

    assert await accepted("old-token") and await accepted("fixed-token")
    assert not await accepted("new-token")

    replace_file(path, b"old-token\nnew-token\n")
    clock.advance()
    assert await accepted("new-token") and await accepted("old-token")

    replace_file(path, b"new-token\n")
    clock.advance()
    assert not await accepted("old-token")
    assert await accepted("new-token") and await accepted("fixed-token")

    # Being rewritten in place (truncated) or not text: the last tokens stay.
    for content in (b"", b"\xff\xfe-not-utf-8\n"):
        path.write_bytes(content)
        clock.advance()
        assert await accepted("new-token"), content
        assert not await accepted("old-token"), content
