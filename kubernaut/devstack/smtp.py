"""A real SMTP server that keeps what it receives: for the local dev stack and tests.

`MailSink` runs an aiosmtpd `Controller` (its own thread and event loop) on
loopback, keeps each message in memory and writes it as an `.eml` file, so a
process that did not start the sink can still read the mail (`read_mailbox`).
The envelope is kept in the message as `X-MailFrom` / `X-RcptTo` headers (the
aiosmtpd `Message` handler's convention) so it survives the trip through a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from kubernaut.devstack.daemon import Daemon, Lifecycle
from kubernaut.devstack.processes import LOOPBACK, port_open

__all__ = ["MAILBOX_SUFFIX", "MailSink", "MailSinkProcess", "ReceivedMail", "read_mailbox"]

MAILBOX_SUFFIX = ".eml"


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    # Includes the X-MailFrom / X-RcptTo headers, exactly as written to `path`.
    message: EmailMessage
    path: Path


def _parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    # policy.default always yields EmailMessage; the stubs say Message.
    assert isinstance(parsed, EmailMessage)
    return parsed


def read_mailbox(directory: str | os.PathLike[str]) -> list[EmailMessage]:
    """The messages a sink wrote into `directory`, oldest first."""
    paths = sorted(Path(directory).glob(f"*{MAILBOX_SUFFIX}"))
    return [_parse(path.read_bytes()) for path in paths]


class _SinkController(Controller):
    """A Controller that works with port 0.

    Stock `Controller.start()` connects to `self.port` to check the server is up,
    which fails for port 0; learn the bound port first.
    """

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class _Refusal:
    reply: str
    remaining: int | None


class MailSink(Lifecycle):
    """An SMTP server on loopback that accepts everything unless told to refuse."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._directory = Path(directory)
        self._host = host
        self._requested_port = port
        self._controller: _SinkController | None = None
        # The server thread appends; the test's (or dev stack's) loop reads.
        self._lock = threading.Lock()
        self._received: list[ReceivedMail] = []
        self._refusals: dict[str, _Refusal] = {}
        self._refused: list[str] = []
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._sequence = itertools.count(1)

    # Lifecycle

    def start(self) -> None:
        """Bind and serve. Blocks briefly until the server answers."""
        if self._controller is not None:
            raise RuntimeError("mail sink already started")
        self._directory.mkdir(parents=True, exist_ok=True)
        controller = _SinkController(
            _Handler(self),
            hostname=self._host,
            port=self._requested_port,
            # A fixed name: the default, socket.getfqdn(), can stall on DNS.
            server_hostname="mailsink.localhost",
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop serving. Received messages and files are kept."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    # Where it listens and writes

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the picked one when started with port 0)."""
        if self._controller is None:
            raise RuntimeError("mail sink is not running")
        port: int = self._controller.port
        return port

    @property
    def directory(self) -> Path:
        return self._directory

    # What it received

    def messages(self) -> list[ReceivedMail]:
        """Every message received so far, in arrival order."""
        with self._lock:
            return list(self._received)

    # A timeout parameter (not asyncio.timeout) so a timeout can say how many arrived.
    async def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMail]:
        """Wait until at least `count` messages have arrived; return them all.

        Raises TimeoutError (saying how many did arrive) after `timeout` seconds.
        """
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        deadline = loop.time() + timeout
        with self._lock:
            self._waiters.add(waiter)
        try:
            while True:
                event.clear()
                received = self.messages()
                if len(received) >= count:
                    return received
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(
                        f"mail sink received {len(received)} message(s), "
                        f"expected {count} within {timeout}s"
                    )
                # On timeout, check once more at the top of the loop.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    # Failure injection, so retries can be tested against a real server

    def refuse_recipient(
        self,
        address: str,
        reply: str = "550 5.1.1 Mailbox unavailable",
        *,
        times: int | None = None,
    ) -> None:
        """Answer RCPT TO:<address> with `reply` (`times` times, or always when None)."""
        code = reply[:3]
        if not (code.isdigit() and code[0] in "45"):
            raise ValueError(f"a refusal needs a 4xx or 5xx reply, got {reply!r}")
        with self._lock:
            self._refusals[address.lower()] = _Refusal(reply, times)

    def refused_recipients(self) -> list[str]:
        """Every RCPT the sink refused, one entry per refusal, in order."""
        with self._lock:
            return list(self._refused)

    # Called on the server thread

    def _check_recipient(self, address: str) -> str | None:
        with self._lock:
            refusal = self._refusals.get(address.lower())
            if refusal is None:
                return None
            if refusal.remaining is not None:
                if refusal.remaining <= 0:
                    return None
                refusal.remaining -= 1
            self._refused.append(address)
            return refusal.reply

    def _store(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> None:
        headers = f"X-MailFrom: {mail_from}\nX-RcptTo: {', '.join(rcpt_tos)}\n"
        # SMTP's CRLF line ends become "\n", as in Python strings and most .eml
        # files; otherwise every body line read back would end in "\r\n".
        data = headers.encode("utf-8") + content.replace(b"\r\n", b"\n")
        # Time first so files from several sinks sharing a directory sort by arrival;
        # pid and sequence keep names unique.
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):06d}{MAILBOX_SUFFIX}"
        path = self._directory / name
        # Write then rename, so a reader in another process never sees half a file.
        partial = self._directory / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(path)
        mail = ReceivedMail(
            mail_from=mail_from, rcpt_tos=tuple(rcpt_tos), message=_parse(data), path=path
        )
        with self._lock:
            self._received.append(mail)
            waiters = list(self._waiters)
        for loop, event in waiters:
            # RuntimeError: that loop has closed, so nobody is waiting there.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)


class _Handler:
    """aiosmtpd handler hooks; aiosmtpd calls them on the controller's thread."""

    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self._sink._check_recipient(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        self._sink._store(envelope.mail_from or "", list(envelope.rcpt_tos), content)
        return "250 OK: queued in mail sink"


class MailSinkProcess(Daemon):
    """`main()` below as our child: the dev stack's SMTP sink, which outlives the
    `kubernaut dev-stack up` that starts it (`down` stops it by the recorded pid)."""

    name = "smtp"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        log_file: Path,
        *,
        port: int = 0,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(log_file, port, start_timeout)
        self.directory = Path(directory)

    def _command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kubernaut.devstack.smtp",
            "--dir",
            str(self.directory),
            "--port",
            str(port),
        ]

    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        return port_open(port)

    def _log_header(self, command: Sequence[str], port: int) -> None:
        return None  # the log holds the sink's own output only

    def _not_ready_message(self, port: int) -> str:
        return f"smtp did not listen on {LOOPBACK}:{port}; see {self.log_file}"


def main(argv: list[str] | None = None) -> int:
    """Run a mail sink in the foreground until SIGTERM/SIGINT (the dev stack's SMTP)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="Kubernaut's local SMTP sink")
    parser.add_argument("--dir", required=True, type=Path, help="where received mail is written")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with MailSink(args.dir, host=args.host, port=args.port) as sink:
        print(f"smtp listening on {sink.host}:{sink.port}, mail in {sink.directory}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
