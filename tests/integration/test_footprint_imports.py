"""The mesh's memory (bench/footprint.py, goal under 1 GiB for the ten services and the
edge): each process loads only the heavy libraries it uses. Each is some 8 to 40 MiB of
RSS, in every process that imports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubernaut.runtime.names import ServiceName

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("kubernetes", "kubernetes_asyncio", "cryptography", "protovalidate", "redis")
# Who talks to a cluster needs its client; nobody needs the rest to serve.
NEEDED = {
    ServiceName.EXECUTOR.value: {"kubernetes_asyncio"},
    ServiceName.CONTEXT_API.value: {"kubernetes_asyncio"},
}
EDGE = "gateway-http"
PROBE = """
import json, sys
import kubernaut.runtime.server  # what every service runs on
__import__(sys.argv[1])
print(json.dumps(sorted(m for m in sys.argv[2:] if m in sys.modules)))
"""


def test_each_service_and_the_edge_load_only_the_heavy_libraries_they_use() -> None:
    modules = {s.value: f"kubernaut.services.{s.value}.server" for s in ServiceName}
    modules[EDGE] = "kubernaut.edge.main"
    probes = {
        name: subprocess.Popen(
            [sys.executable, "-c", PROBE, module, *HEAVY],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, module in modules.items()
    }
    loaded = {}
    for name, probe in probes.items():
        out, err = probe.communicate(timeout=120)
        assert probe.returncode == 0, err
        loaded[name] = set(json.loads(out))
    expected = {name: NEEDED.get(name, set()) for name in modules}
    assert loaded == expected
