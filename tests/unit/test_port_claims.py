"""Ports handed out for children to bind later are claimed across processes: a port another
live process took lately is not handed out again (two test workers once picked the same
one, and a service failed to bind)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kubernaut.devstack import processes


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(processes, "CLAIMS_DIR", tmp_path)
    return tmp_path


def test_a_port_another_live_process_claimed_lately_is_not_handed_out(claims: Path) -> None:
    (claims / "15001").write_text(f"1 {time.time():.0f}\n")  # pid 1 lives
    assert processes._claimed_by_another(15001)
    # Lapsed, or its process gone: taken over.
    (claims / "15002").write_text(f"1 {time.time() - processes.CLAIM_SECONDS - 1:.0f}\n")
    assert not processes._claimed_by_another(15002)
    (claims / "15003").write_text(f"{2**22 + 12345} {time.time():.0f}\n")
    assert not processes._claimed_by_another(15003)
    # Our own claim is ours; a fresh one is made ours.
    assert not processes._claimed_by_another(15004)
    assert (claims / "15004").read_text().split()[0] == str(os.getpid())
    assert not processes._claimed_by_another(15004)


def test_free_ports_skip_claimed_ones(claims: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "_SINGLE_PORTS", range(15000, 15010))
    for port in processes._SINGLE_PORTS:
        if port != 15005:
            (claims / str(port)).write_text(f"1 {time.time():.0f}\n")
    monkeypatch.setattr(processes, "_bindable", lambda port: True)
    assert processes.free_ports(1) == [15005]
