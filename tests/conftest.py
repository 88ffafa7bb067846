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
    "tests.fixtures.workflows",
    "tests.fixtures.anthropic_loopback",
    "tests.fixtures.bedrock_loopback",
    "tests.fixtures.pinecone_loopback",
    "tests.fixtures.weaviate",
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


# The slowest modules, slowest first (seconds of one warm CI run on 2 cores, from
# `--durations`). CI runs two workers, each taking whole modules from the front of the
# queue (--dist loadfile); pytest-randomly shuffles that queue, and a slow module drawn last
# kept one worker busy minutes after the other had finished. Started first, they overlap
# the rest. Update from a run's --durations when one grows.
SLOW_MODULES_FIRST: dict[str, float] = {
    "tests/chaos/test_chaos.py": 250,
    "tests/integration/test_local_model_analysis.py": 155,
    "tests/e2e/test_main_loop.py": 115,
    "tests/integration/test_image.py": 110,
    "tests/e2e/test_up.py": 90,
    "tests/integration/test_chart_settings.py": 90,
    "tests/integration/test_benches.py": 90,
    "tests/e2e/test_demo.py": 80,
    "tests/integration/test_devstack_scenarios.py": 70,
    "tests/unit/test_fast_validation.py": 65,
    "tests/integration/test_executor_actions.py": 60,
    "tests/integration/test_insights.py": 50,
}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow modules first, in that order; the rest keep their (shuffled) order. A
    stable sort, so each module's tests stay together and in their order."""
    items.sort(key=lambda item: -SLOW_MODULES_FIRST.get(item.nodeid.split("::", 1)[0], 0))
