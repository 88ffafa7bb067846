"""Unit tests start nothing: no process, no server, no database (`make test-fast` runs them
on a bare machine). A test that needs one of those belongs in tests/integration; these guards
fail it here instead of letting it start a server or find the developer's database."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any, NoReturn

import asyncpg
import pytest

# The shared fixtures (tests/fixtures) that start a process or a server. Fixtures built on
# them (database_dsn, store, executor_database, operator, ...) bring them into a test's
# fixture closure, so naming the roots catches those too.
PROCESS_FIXTURES = frozenset(
    {
        "postgres_dsn",  # embedded PostgreSQL, or the server KUBERNAUT_DATABASE_URL names
        "redis_url",  # redis-server
        "kube",  # the local Kubernetes control plane with KWOK
        "second_kube",
        "dev_stack",  # the whole dev stack
        "webhook_receiver",  # an HTTP server
        "stack",  # the ten services, in process, on PostgreSQL
        "session_mail",  # SMTP servers
        "mail_sink",
    }
)

MOVE = "it belongs in tests/integration (tests/unit starts nothing)"


def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if wanted:
        pytest.fail(f"{item.nodeid} uses {', '.join(sorted(wanted))}: {MOVE}", pytrace=False)


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"a unit test {what}: {MOVE}")

    return refuse


@pytest.fixture(autouse=True)
def _no_processes_or_databases(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # asyncio's subprocesses are subprocess.Popen underneath, so this covers both.
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("started a process"))
    # Every database the code opens goes through asyncpg.
    monkeypatch.setattr(asyncpg, "connect", _refuse("connected to a database"))
    monkeypatch.setattr(asyncpg, "create_pool", _refuse("connected to a database"))
    yield
