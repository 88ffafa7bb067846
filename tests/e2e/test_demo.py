"""The README's first command: `kubernaut demo` brings everything up as separate
processes and walks an alert through them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from kubernaut.devstack.model import LlamaBuild
from kubernaut.runtime.names import ServiceName
from tests.fixtures.kubernaut import cli_env

pytestmark = pytest.mark.e2e


async def test_the_demo_fixes_a_bad_rollout_live(tmp_path: Path) -> None:
    # The demo's own state, but the local model `make setup` built (as the k8s binaries).
    built = LlamaBuild.default()
    state = tmp_path / "state"
    (state / "llama").mkdir(parents=True)
    (state / "llama" / "current").symlink_to(built.python.parents[2])
    (state / "models").symlink_to(built.model.parent)
    env = cli_env(state)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubernaut.cli.main",
        "demo",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 420)
    text = output.decode()
    assert process.returncode == 0, text
    lines = text.splitlines()
    for service in ServiceName:
        assert any(line.startswith(service.value) and "SERVING" in line for line in lines), text
    for expected in (
        "Prometheus: KubePodCrashLooping firing",
        "alert received from AlertManager: incident opened",
        "model local: asked after the plan",
        ", after the plan",
        "ai_analysis decided: rollback_deployment",
        "executor recorded rollback_deployment: ACTION_OUTCOME_SUCCEEDED",
        "recovered:",
        "effectiveness +",
        "email sent to sre@example.com",
        "[kubernaut] New incident: KubePodCrashLooping",
        "[kubernaut] Remediated: KubePodCrashLooping",
        "kubernaut incidents show",
        "web console: http://127.0.0.1:",
        "sign in as one of oncall@example.com (approver)",
        "fixed.",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    # The demo stopped what it started.
    assert "did not exit cleanly" not in text
