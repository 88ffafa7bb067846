"""Process and port helpers the dev stack's components share: loopback ports, /proc
lookups, starting a child with its output in a log, stopping a pid or a child with signal
escalation, and the tail of a log for error messages."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

LOOPBACK = "127.0.0.1"
_TAIL_BYTES = 64 * 1024


# -- ports ---------------------------------------------------------------------------------


# Ports chosen here are bound later, by a child once it starts: they come from below Linux's
# ephemeral range (32768-60999), where no outgoing connection can take one in between.
# Single ports and the blocks of a KUBERNAUT_PORT_BASE come from ranges of their own.
_SINGLE_PORTS = range(10000, 21000)
_PORT_BASES = range(21000, 32500, 250)
# A chosen base's block also holds the edge's HTTP port, at this offset.
HTTP_PORT_OFFSET = 200


# A port handed out is claimed here for a while (a file per port naming the process): two
# processes choosing at once (test workers, a bench beside the tests) never get the same one
# before either binds it. A claim lapses after CLAIM_SECONDS or when its process is gone.
CLAIMS_DIR = Path(tempfile.gettempdir()) / "kubernaut-port-claims"
CLAIM_SECONDS = 600.0


def _claimed_by_another(port: int) -> bool:
    """Claim `port` for this process; True when another live process claimed it lately."""
    CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
    claim = CLAIMS_DIR / str(port)
    mine = f"{os.getpid()} {time.time():.0f}\n"
    try:
        descriptor = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            pid_text, stamp = claim.read_text().split()
            pid, at = int(pid_text), float(stamp)
        except (OSError, ValueError):
            pid, at = 0, 0.0
        alive = pid > 0 and Path(f"/proc/{pid}").exists()
        if pid != os.getpid() and alive and time.time() - at < CLAIM_SECONDS:
            return True
        claim.write_text(mine)  # lapsed: take it over
        return False
    with os.fdopen(descriptor, "w") as file:
        file.write(mine)
    return False


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _available(port: int) -> bool:
    """Free now, and not handed out to another process lately."""
    return _bindable(port) and not _claimed_by_another(port)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now."""
    chosen: list[int] = []
    for _ in range(100 * count + 1000):
        if len(chosen) == count:
            return chosen
        port = random.choice(_SINGLE_PORTS)
        if port not in chosen and _available(port):
            chosen.append(port)
    if len(chosen) == count:
        return chosen
    raise RuntimeError(f"no {count} free ports in {_SINGLE_PORTS}")


def free_port() -> int:
    """A free loopback port."""
    return free_ports(1)[0]


def free_port_base() -> int:
    """A KUBERNAUT_PORT_BASE whose services' gRPC and metrics ports, the edge's metrics port
    and its HTTP port (base + HTTP_PORT_OFFSET) are all free right now (for a second system
    beside a running one: tests, benches)."""
    from kubernaut.runtime.names import METRICS_PORT_OFFSET, ServiceName

    # From a random start: two runs choosing at once (each binds only later) rarely meet.
    bases = list(_PORT_BASES)
    start = random.randrange(len(bases))
    for base in bases[start:] + bases[:start]:
        ports = [base + s.position for s in ServiceName]
        ports += [p + METRICS_PORT_OFFSET for p in ports]
        ports += [base + METRICS_PORT_OFFSET + len(ServiceName), base + HTTP_PORT_OFFSET]
        if all(_bindable(port) for port in ports) and not _claimed_by_another(base):
            return base
    raise RuntimeError("no free port range")


def port_open(port: int, timeout: float = 1.0) -> bool:
    """Something accepts connections on the loopback `port`."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float) -> bool:
    """Poll until the loopback `port` accepts connections; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return True
        time.sleep(0.05)
    return False


# -- /proc ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None when
    unreadable (no such process, or no procfs)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


def is_zombie(pid: int) -> bool:
    """The process is gone or has exited (a zombie not yet reaped)."""
    fields = proc_stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def cmdline(pid: int) -> str:
    """The process's arguments joined by spaces ("" when unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (without procfs, as far as kill() tells)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    fields = proc_stat(pid)
    return fields is None or fields[0] not in ("Z", "X")


def stop_pid(
    pid: int,
    steps: Sequence[tuple[signal.Signals, float]],
    alive: Callable[[], bool],
    *,
    on_ignored: Callable[[signal.Signals], None] | None = None,
) -> bool:
    """Send each signal of `steps` in turn while `alive()`, waiting up to its seconds for
    the process to go; `on_ignored` hears of each signal it outlived. True when it went."""
    for sig, wait in steps:
        if not alive():
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive():
                return True
            time.sleep(0.05)
        if on_ignored is not None:
            on_ignored(sig)
    return not alive()


def end_child(
    process: subprocess.Popen[bytes],
    steps: Sequence[tuple[signal.Signals, float | None]],
    *,
    on_ignored: Callable[[signal.Signals, float | None], None] | None = None,
) -> None:
    """Send our own child each signal of `steps` in turn, waiting up to its seconds (None:
    until it exits) for it to exit, which reaps it (so its pid cannot be recycled under
    us); `on_ignored` hears of each signal it outlived."""
    for sig, wait in steps:
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            if on_ignored is not None:
                on_ignored(sig, wait)
            continue
        return


def stop_child(
    process: subprocess.Popen[bytes],
    timeout: float,
    *,
    on_ignored: Callable[[], None] | None = None,
) -> None:
    """SIGTERM our child, wait up to `timeout`, then SIGKILL; reaped either way (so
    its pid cannot be recycled under us). `on_ignored` hears that it outlived SIGTERM."""
    end_child(
        process,
        ((signal.SIGTERM, timeout), (signal.SIGKILL, None)),
        on_ignored=None if on_ignored is None else lambda _sig, _wait: on_ignored(),
    )


def spawn_logged(
    command: Sequence[str],
    log: BinaryIO,
    header: str | None,
    *,
    cwd: Path | None = None,
    **options: Any,
) -> subprocess.Popen[bytes]:
    """Start `command` as our child with its output appended to `log` (after `header`),
    no stdin, in its own session (a Ctrl-C in the terminal does not reach it)."""
    if header is not None:
        log.write(header.encode())
        log.flush()
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
        **options,
    )


# -- logs ----------------------------------------------------------------------------------


def tail(path: Path, lines: int, *, indent: str = "", missing: str = "") -> str:
    """The last `lines` lines of `path` (from its last 64 KiB), each prefixed by `indent`;
    `missing` when it cannot be read."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - _TAIL_BYTES))
            text = file.read().decode(errors="replace")
    except OSError:
        return missing
    return "\n".join(indent + line for line in text.splitlines()[-lines:])
