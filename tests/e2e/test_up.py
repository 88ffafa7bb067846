"""`kubernaut up` runs the ten services and the edge until it is told to stop (Ctrl-C,
SIGTERM, SIGHUP, or `kubernaut down` from another shell), and then stops them too, even
when a shell started it in the background with SIGINT ignored (as non-interactive shells
do)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from tests.fixtures.kubernaut import cli_env

pytestmark = pytest.mark.e2e


def _service_pids(state: Path) -> set[int]:
    """The pids of `kubernaut serve` processes whose environment names this state dir."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"serve" in cmdline and f"KUBERNAUT_STATE_DIR={state}".encode() in environ:
            found.add(int(proc.name))
    return found


@pytest.mark.parametrize("how", ["SIGTERM", "kubernaut down"])
async def test_up_stops_with_its_services(tmp_path: Path, how: str) -> None:
    state = tmp_path / "state"
    env = cli_env(state)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubernaut.cli.main",
        "up",
        "--no-model",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # As a background job of a non-interactive shell: SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert process.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(300):
            while not seen or "all services SERVING" not in seen[-1]:
                line = (await process.stdout.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
        services = _service_pids(state)
        assert len(services) == 11, (services, "".join(seen))
        if how == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:
            down = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kubernaut.cli.main",
                "down",
                env=env,
                stdout=asyncio.subprocess.PIPE,
            )
            said, _ = await asyncio.wait_for(down.communicate(), 90)
            assert down.returncode == 0 and b"stopped kubernaut up" in said, said
            assert not (state / "up.pid").exists()
        rest, _ = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, "".join(seen) + rest.decode()
        assert "stopping the services" in rest.decode()
        assert not _service_pids(state)
    finally:
        if process.returncode is None:
            process.kill()
        down = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubernaut.cli.main", "dev-stack", "down", env=env
        )
        await down.wait()
