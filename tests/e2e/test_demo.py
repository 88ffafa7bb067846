"""The README's first command: `kubernaut demo` brings everything up as separate
processes and walks an alert through them."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from services.runtime.names import METRICS_PORT_OFFSET, ServiceName
from tests.fixtures.kubernaut import free_port

pytestmark = pytest.mark.e2e


def _free_port_base() -> int:
    """A base whose gRPC and metrics ports are all free right now."""
    for base in range(21000, 60000, 250):
        ports = [base + s.position for s in ServiceName]
        ports += [p + METRICS_PORT_OFFSET for p in ports]
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


async def test_the_demo_walks_an_alert_through_all_services(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    env |= {
        "KUBERNAUT_STATE_DIR": str(tmp_path / "state"),
        "KUBERNAUT_PORT_BASE": str(_free_port_base()),
        "KUBERNAUT_HTTP_PORT": str(free_port()),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "demo",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 180)
    text = output.decode()
    assert process.returncode == 0, text
    for service in ServiceName:
        assert any(
            line.startswith(service.value) and "SERVING" in line for line in text.splitlines()
        ), text
    assert "ALERT_DISPOSITION_ANALYZED" in text
    assert "planned by workflow against the executor's catalogue: rollback_deployment" in text
    assert "email: delivered=True" in text
    assert "ALERT_DISPOSITION_IGNORED_RESOLVED" in text
    assert "did not exit cleanly" not in text
    mail = list((tmp_path / "state" / "mail").glob("*.eml"))
    assert len(mail) == 1
    assert "rollback_deployment planned" in mail[0].read_text()
