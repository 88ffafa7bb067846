"""A runbook plan whose runner process is killed with SIGKILL at each step boundary in turn:
the three-step plan with a parallel branch (a, then b and c together; c's check fails, so
b and a are compensated) runs in a process (tests/fixtures/graph_runner.py) that stops at
its N-th committed step change; the test kills it with -9 and a new process resumes the
workflow from PostgreSQL. Whatever N: no step acted twice, none was lost, and the
compensation was exact, in reverse order. The stand-in executor's state is a JSON file, so
it outlives the killed process as a cluster would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kubernaut.services.workflow.store import WorkflowDatabase, WorkflowStore
from tests.fixtures.graphs import Cluster, check_resumed_exactly

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture
async def store(database_dsn: str) -> AsyncIterator[WorkflowStore]:
    database = WorkflowDatabase(database_dsn)
    try:
        yield await database.store()
    finally:
        await database.close()


def runner(dsn: str, directory: Path, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fixtures.graph_runner",
            "--dsn",
            dsn,
            "--cluster",
            str(directory / "cluster.json"),
            "--workflow",
            str(directory / "workflow-id"),
            *flags,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "runner.log", "ab"),
    )


async def reached_or_exited(
    process: subprocess.Popen[bytes], marker: Path, timeout: float = 120.0
) -> bool:
    """True when the runner reached its boundary, False when it ended the workflow first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            return True
        if process.poll() is not None:
            assert process.returncode == 0, f"the runner failed ({process.returncode})"
            return marker.exists()
        await asyncio.sleep(0.02)
    raise AssertionError("the runner neither reached its boundary nor ended")


async def test_a_runner_killed_with_sigkill_at_each_step_boundary_resumes_exactly(
    store: WorkflowStore, database_dsn: str, tmp_path: Path
) -> None:
    boundary = 1
    while True:
        directory = tmp_path / f"boundary-{boundary}"
        directory.mkdir()
        Cluster(checks={"c": [False]}, seconds=0.02, path=directory / "cluster.json").persist()
        marker = directory / "reached"
        killed = runner(
            database_dsn,
            directory,
            "--create",
            "--boundary",
            str(boundary),
            "--reached",
            str(marker),
        )
        try:
            stopped = await reached_or_exited(killed, marker)
        finally:
            killed.kill()  # SIGKILL: no drain, no lease given up
            killed.wait(30)
        if not stopped:
            break  # fewer boundaries than this one: each was tried
        resumed = runner(database_dsn, directory)
        assert await asyncio.to_thread(resumed.wait, 120) == 0
        workflow = await store.get((directory / "workflow-id").read_text())
        assert workflow is not None
        cluster = Cluster.load(directory / "cluster.json")
        check_resumed_exactly(workflow, cluster, f"killed after boundary {boundary}")
        boundary += 1
    # The plan has a dozen and more boundaries; the runner was killed at each.
    assert boundary > 12
