"""The one base for the dev stack's daemons.

`Lifecycle` gives anything with `start()` / `stop()` its `with` block (the mail sink, the
Kubernetes control plane). `Daemon` is one program run as our own child on loopback:
its output appended to a log file, in its own session (a Ctrl-C in the terminal does not
reach it), waited for until ready, retried on another port when a picked free port was
taken meanwhile, and stopped by the pid we hold (which cannot be recycled before we reap
it). PostgreSQL, Prometheus, AlertManager and the SMTP sink's process are `Daemon`s; each
says only its command line, its readiness check and its messages.

`start()` and `stop()` block (for seconds at most); from async code call them through
`asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, ClassVar, Self

from kubernaut.devstack.processes import end_child, free_port, spawn_logged, tail

__all__ = ["Daemon", "Lifecycle"]

_log = logging.getLogger(__name__)


class Lifecycle(ABC):
    """`with x:` starts `x` and stops it on the way out."""

    @abstractmethod
    def start(self) -> object: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Daemon(Lifecycle):
    """One program run as our child, listening on a loopback port, its output in `log_file`.

    A subclass gives `_command(port)` and `_ready(process, port)`, and may change the rest:
    `_prepare()` before the first launch, `_started()` after it is ready, the log header,
    the Popen options, the messages and the signals `stop()` sends.
    """

    name: ClassVar[str] = "daemon"
    """In messages and log lines."""
    error: ClassVar[type[Exception]] = RuntimeError
    """What start() raises when the program exits or does not become ready."""
    port_taken: ClassVar[str | None] = None
    """Text the program logs when its port is taken: then, if we picked the port, another
    one is tried (3 attempts). None: no retry."""
    log_tail_lines: ClassVar[int] = 30

    def __init__(
        self, log_file: Path, port: int, start_timeout: float, *, cwd: Path | None = None
    ) -> None:
        """`port` 0 picks a free loopback port at each launch; `cwd` None: ours."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        self.log_file = log_file
        self._requested_port = port
        self._start_timeout = start_timeout
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- what a subclass says ---------------------------------------------------------------

    @abstractmethod
    def _command(self, port: int) -> list[str]: ...

    @abstractmethod
    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        """The program, still running, answers on `port` (polled every 50 ms)."""

    def _prepare(self) -> None:
        """Before the launch: check and write the config."""

    def _started(self) -> None:
        """After it is ready: anything more to wait for before start() returns (on an
        error it is stopped)."""

    def _log_header(self, command: Sequence[str], port: int) -> str | None:
        """The line written to the log before each launch (None: none)."""
        return f"--- {' '.join(command)}\n"

    def _open_log(self) -> BinaryIO:
        return self.log_file.open("ab")

    def _popen_options(self) -> dict[str, Any]:
        """More Popen arguments (env, user, ...)."""
        return {}

    def _exited_message(self, code: int) -> str:
        return (
            f"{self.name} exited with code {code} while starting; "
            f"see {self.log_file}:\n{self._log_tail()}"
        )

    def _not_ready_message(self, port: int) -> str:
        return (
            f"{self.name} did not become ready within {self._start_timeout:.0f}s; "
            f"see {self.log_file}:\n{self._log_tail()}"
        )

    def _stop_steps(self, timeout: float) -> Sequence[tuple[signal.Signals, float | None]]:
        """The signals stop() sends in turn, each with how long to wait (None: until it
        exits)."""
        return ((signal.SIGTERM, timeout), (signal.SIGKILL, None))

    # -- running it ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Prepare, launch and wait until ready; raises `error`, naming the log file, when
        the program exits or is not ready within `start_timeout`."""
        if self._process is not None:
            raise RuntimeError(f"{self.name} already started")
        self._prepare()
        self._launch()
        try:
            self._started()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Signal our child by pid (`_stop_steps`: by default SIGTERM, then SIGKILL after
        `timeout`) and reap it."""
        process, self._process, self._port = self._process, None, None
        if process is None:
            return
        end_child(
            process,
            self._stop_steps(timeout),
            on_ignored=lambda sig, wait: _log.warning(
                "%s pid %d ignored %s for %.0fs", self.name, process.pid, sig.name, wait or 0
            ),
        )

    def _launch(self) -> int:
        """Spawn and wait until ready; the port it listens on."""
        # A picked free port can be taken before the program binds it: then try another one.
        attempts = 3 if self._requested_port == 0 and self.port_taken else 1
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port()
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            try:
                self._spawn(port)
                return port
            except self.error:
                taken = self.port_taken is not None and self.port_taken in _read_from(
                    self.log_file, offset
                )
                if attempt < attempts and taken:
                    _log.info("%s: port %d was taken, retrying with another", self.name, port)
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self, port: int) -> None:
        command = self._command(port)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self._open_log() as log:
            process = spawn_logged(
                command,
                log,
                self._log_header(command, port),
                cwd=self._cwd,
                **self._popen_options(),
            )
        deadline = time.monotonic() + self._start_timeout
        while True:
            code = process.poll()
            if code is not None:
                raise self.error(self._exited_message(code))
            if self._ready(process, port):
                self._process, self._port = process, port
                return
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise self.error(self._not_ready_message(port))
            time.sleep(0.05)

    def _log_tail(self) -> str:
        return tail(self.log_file, self.log_tail_lines, missing="(no log)")


def _read_from(path: Path, offset: int) -> str:
    """What `path` holds after byte `offset` ("" when unreadable)."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except OSError:
        return ""
