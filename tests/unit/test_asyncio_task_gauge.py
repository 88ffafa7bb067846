"""Every process's metrics count the asyncio tasks on its event loop (kubernaut_asyncio_tasks),
so that a soak can tell a task leak from load."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from kubernaut.runtime.telemetry import start_metrics_server


def _tasks() -> float | None:
    return REGISTRY.get_sample_value("kubernaut_asyncio_tasks")


def test_the_metrics_count_the_loops_unfinished_tasks() -> None:
    # A loop of its own: the session's loop also runs other tests' background tasks, which
    # may end while this one counts.
    async def count() -> None:
        start_metrics_server("127.0.0.1", 0)
        before = _tasks()
        assert before == 1  # this coroutine's own task
        release = asyncio.Event()
        waiting = [asyncio.create_task(release.wait()) for _ in range(25)]
        await asyncio.sleep(0)
        assert _tasks() == before + 25
        release.set()
        await asyncio.gather(*waiting)
        assert _tasks() == before

    asyncio.run(count())
