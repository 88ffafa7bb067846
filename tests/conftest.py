"""Shared fixtures (the plugins below) and a diagnostic for tests that hang."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

# Tests call the services with the shared operator certificate, as the dev stack does; the
# tests of people's access (and of the production default, off) set it themselves.
os.environ.setdefault("KUBERNAUT_ACCESS_SHARED_OPERATOR", "true")

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.smtp",
    "tests.fixtures.kubernaut",
    "tests.fixtures.devstack",
    "tests.fixtures.model",
    "tests.fixtures.cluster",
    "tests.fixtures.executor",
    "tests.fixtures.anthropic_loopback",
    "tests.fixtures.bedrock_loopback",
]


def _await_chain(awaitable: Any) -> list[str]:
    """The frames a coroutine is suspended in, outermost first (its `await`s, followed)."""
    lines = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return lines


def _asyncio_task_stacks() -> str:
    """Where every task of the (session) event loop is waiting, for a test that hung."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        tasks = asyncio.all_tasks(loop)
    except RuntimeError as error:
        return f"no event loop to inspect: {error}"
    out = []
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.append(f"{task.get_name()}:")
        out.extend(_await_chain(task.get_coro()))
    return "\n".join(out) or "no tasks"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # pytest-timeout interrupts the event loop while it waits; the thread dump it prints
    # shows only the selector, so say which awaits never returned.
    outcome: Any = yield
    if call.excinfo is not None and "Timeout" in str(call.excinfo.value):
        outcome.get_result().sections.append(
            ("asyncio tasks at the timeout", _asyncio_task_stacks())
        )
