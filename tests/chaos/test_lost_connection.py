"""What the chaos run found (bench/chaos.py): PostgreSQL restarting while the executor held
an action's connection. asyncpg then detaches the pool's connection proxy, whose every
method (is_closed() too) raises InterfaceError; the executor's clean-up called is_closed()
and that error replaced the store's UNAVAILABLE (which the workflow retries, resuming the
action and undoing a change that failed verification) with INTERNAL (which it does not):
the change stayed, unrecorded. Here on the real PostgreSQL fixture, without the stack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from kubernaut.services.executor import guards
from kubernaut.services.executor.guards import TargetKey
from kubernaut.services.executor.store import (
    ActionStore,
    ExecutorDatabase,
    ExecutorStoreUnavailable,
    unavailable,
)
from tests.fixtures.postgres import fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
async def store(postgres_dsn: str) -> AsyncIterator[ActionStore]:
    async with fresh_database(postgres_dsn) as dsn:
        database = ExecutorDatabase(dsn)
        try:
            yield await database.store()
        finally:
            await database.close()


async def _lose(conn: asyncpg.pool.PoolConnectionProxy, dsn: str) -> None:
    """The server ends the session, as a restart does; wait until asyncpg noticed."""
    pid = conn.get_server_pid()
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    for _ in range(100):
        try:
            if conn.is_closed():
                return
        except asyncpg.InterfaceError:
            return
        await asyncio.sleep(0.05)


async def test_a_connection_lost_mid_action_answers_unavailable_not_internal(
    store: ActionStore, postgres_dsn: str
) -> None:
    action_id = str(uuid.uuid4())
    target = TargetKey(cluster="c", kind="Deployment", namespace="shop", name="web")
    with pytest.raises(ExecutorStoreUnavailable):
        async with store.claim(action_id) as session:
            conn = session.connection
            await _lose(conn, postgres_dsn)
            # What the engine does: a write that meets the lost session, and on the way
            # out the target lock's release.
            try:
                async with unavailable():
                    await conn.execute("SELECT 1")
            finally:
                await guards.release(conn, target)
    # The store works again for the next call (a new connection from the pool).
    async with store.claim(action_id) as session:
        assert await session.connection.fetchval("SELECT 1") == 1
