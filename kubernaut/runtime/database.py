"""How a service reaches its own PostgreSQL schema: a connection pool whose failures to reach
the database become the service's "unavailable, retry" error (naming the server, never the
password), and a database that connects and migrates lazily so that the service starts
NOT_SERVING while PostgreSQL is down and turns SERVING once it answers.

A service's store subclasses `PooledStore`, naming its error, its schema and its migrations;
the service holds a `LazyDatabase` of that store and asks it for the store on each use.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar
from urllib.parse import urlsplit

import asyncpg
import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from kubernaut.runtime.migrations import UNREACHABLE, apply_migrations, load_migrations


def redact_dsn(dsn: str) -> str:
    """`dsn` (a PostgreSQL or Redis URL) without its password, for messages and logs: the
    one in the user part, and a `password=` query option, which libpq and redis-py read
    too."""
    try:
        parts = urlsplit(dsn)
        redacted = dsn
        if parts.query:
            # Replaced as text: rebuilding would drop an empty host (unix:///run/redis.sock).
            query = _QUERY_PASSWORD.sub(r"\1\2***", parts.query)
            redacted = redacted.replace("?" + parts.query, "?" + query, 1)
        if parts.password is not None:
            parts = urlsplit(redacted)
            host = parts.netloc.rsplit("@", 1)[1]
            user = f"{parts.username}:***@" if parts.username else ":***@"
            redacted = parts._replace(netloc=user + host).geturl()
        return redacted
    except ValueError:
        return "<unparsable URL>"


_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*")


async def connect_pool(
    dsn: str,
    *,
    unavailable: type[Exception],
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = 10.0,
    reset_on_release: bool = True,
) -> asyncpg.Pool:
    """A pool to `dsn`; `unavailable` (naming the server, never the password) when it cannot
    connect. min_size >= 1 makes a dead server fail here, not on first use. `timeout` bounds
    each connection attempt. `reset_on_release` False skips asyncpg's reset query (unlock
    advisory locks, close cursors, unlisten, reset settings) when a connection goes back:
    one round trip less per use, for stores that never leave session state behind."""
    options: dict[str, Any] = {} if reset_on_release else {"reset": _keep_session}
    try:
        return await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, timeout=timeout, **options
        )
    except (*UNREACHABLE, asyncpg.PostgresError) as exc:
        # PostgresError too: a missing database or a refused login is "not reachable" here.
        raise unavailable(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {exc or type(exc).__name__}"
        ) from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A reset that leaves the session as it is."""


async def ping(pool: asyncpg.Pool, timeout: float) -> bool:
    """True when the database answers a query within `timeout`; never raises for a database
    that is down, dropped or closed (readiness asks this)."""
    try:
        async with asyncio.timeout(timeout), pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1") == 1)
    except (*UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


@asynccontextmanager
async def unreachable_as(
    unavailable: type[Exception],
    label: str = "database",
    *,
    also: tuple[type[Exception], ...] = (),
) -> AsyncIterator[None]:
    """Raise `unavailable`, "<label> unavailable: ...", for an error of UNREACHABLE (or of
    `also`) from the block; other errors (a statement's own) pass as they are."""
    errors: tuple[type[Exception], ...] = (*UNREACHABLE, *also)
    try:
        yield
    except errors as exc:
        raise unavailable(f"{label} unavailable: {exc or type(exc).__name__}") from exc


@asynccontextmanager
async def unavailable_as_status(
    context: grpc.aio.ServicerContext[Any, Any], error_type: type[Exception]
) -> AsyncIterator[None]:
    """`error_type` (a store's "unavailable") from the block as gRPC UNAVAILABLE, with the
    error's message; other errors pass as they are."""
    try:
        yield
    except error_type as error:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))


MessageT = TypeVar("MessageT", bound=Message)


def proto_to_json(message: Message) -> str:
    """`message` as JSON for a jsonb column (proto field names, one line)."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


def proto_from_json(text: str, message: MessageT) -> MessageT:
    """`message` filled from a jsonb column's text (fields it does not know are ignored)."""
    return json_format.Parse(text, message, ignore_unknown_fields=True)


class PooledStore:
    """Base of a service's store: its schema through an asyncpg pool. Subclasses set the
    class attributes below and add their queries; use `connect()`."""

    # Raised when the database cannot be reached; safe to retry.
    unavailable: ClassVar[type[Exception]]
    # Names the database in those errors: "<label> unavailable: ...".
    label: ClassVar[str] = "database"
    # The store's own schema, created by `migrate()`; None for storage's unqualified tables.
    schema: ClassVar[str | None] = None
    migrations_dir: ClassVar[Path]
    # Errors that also mean "unavailable" in `_connection()`, beyond UNREACHABLE.
    unreachable_also: ClassVar[tuple[type[Exception], ...]] = ()
    # The pool's size when `connect()` is not given one.
    pool_max_size: ClassVar[int] = 10
    # False for a store that never leaves session state on a connection (see connect_pool).
    reset_on_release: ClassVar[bool] = True

    def __init__(self, pool: asyncpg.Pool, *, timeout: float) -> None:
        """`timeout` bounds waiting for a pooled connection and `ping()`."""
        self._pool = pool
        self._timeout = timeout

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int | None = None,
        connect_timeout: float = 10.0,
        **options: Any,
    ) -> Self:
        """Open a pool to `dsn`; `unavailable` (naming the server, never the password) when
        it cannot connect: min_size >= 1 makes that fail here, not later. `max_size` None
        means the class's `pool_max_size`. `connect_timeout` also bounds waiting for a
        pooled connection and `ping()`. `options` go to the constructor."""
        pool = await connect_pool(
            dsn,
            unavailable=cls.unavailable,
            min_size=min_size,
            max_size=cls.pool_max_size if max_size is None else max_size,
            timeout=connect_timeout,
            reset_on_release=cls.reset_on_release,
        )
        return cls(pool, timeout=connect_timeout, **options)

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> bool:
        """True when the database answers a query within the timeout."""
        return await ping(self._pool, self._timeout)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection; the database becoming unreachable while taking it or in the
        block raises `unavailable`."""
        async with (
            unreachable_as(self.unavailable, self.label, also=self.unreachable_also),
            self._pool.acquire(timeout=self._timeout) as conn,
        ):
            try:
                yield conn
            except asyncpg.InternalClientError:
                # Its protocol state is lost: the pool must not hand it out again.
                conn.terminate()
                raise

    async def migrate(self, directory: Path | None = None) -> list[int]:
        """Apply the migrations (of `directory`, by default the store's) not yet applied, in
        order, each in its own transaction, creating the schema first; return the versions
        applied now. Concurrent callers (replicas starting at once) queue on an advisory
        lock, so each migration runs once."""
        async with self._connection() as conn:
            migrations = load_migrations(directory or self.migrations_dir)
            return await apply_migrations(conn, migrations, schema=self.schema)


StoreT = TypeVar("StoreT", bound=PooledStore)


class LazyDatabase(Generic[StoreT]):
    """Connects and migrates on first success, so the service starts (NOT_SERVING) while
    PostgreSQL is still down and turns SERVING once it answers."""

    def __init__(self, dsn: str, store_type: type[StoreT], **connect_options: Any) -> None:
        """`connect_options` go to `store_type.connect()` with the DSN."""
        self.dsn = dsn
        self._store_type = store_type
        self._connect_options = connect_options
        self._store: StoreT | None = None
        # One connect at a time: concurrent first calls share one pool and one migrate.
        self._lock = asyncio.Lock()
        self._log = logging.getLogger(store_type.__module__)

    async def store(self) -> StoreT:
        """The migrated store; the store's `unavailable` while the database cannot be
        reached (the next call tries again)."""
        async with self._lock:
            if self._store is None:
                store = await self._store_type.connect(self.dsn, **self._connect_options)
                try:
                    applied = await store.migrate()
                except BaseException:
                    await store.close()
                    raise
                extra: dict[str, Any] = {"dsn": redact_dsn(self.dsn), "migrated": applied}
                if store.schema is not None:
                    extra["schema"] = store.schema
                self._log.info("%s ready", store.label, extra=extra)
                self._store = store
            return self._store

    @property
    def current(self) -> StoreT | None:
        """The store when connected already (never connects)."""
        return self._store

    async def ready(self) -> bool:
        """Connected, migrated and answering; False (never an error) while it cannot be."""
        try:
            return await (await self.store()).ping()
        except self._store_type.unavailable:
            return False

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
