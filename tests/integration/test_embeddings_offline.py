"""The incident embedder's default model loads and runs offline in a fresh process (moved
out of tests/unit: it starts one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_OFFLINE_SCRIPT = """
import json, socket, sys, time

def no_network(*args, **kwargs):
    raise AssertionError(f"network use: {args!r}")

socket.socket.connect = no_network
socket.socket.connect_ex = no_network
socket.create_connection = no_network
socket.getaddrinfo = no_network

started = time.perf_counter()
from kubernaut.services.storage.embeddings import embedder_for
model = embedder_for()
model.load()
loaded = time.perf_counter() - started
texts = [f"KubePodCrashLooping on Deployment shop/checkout-{i}: back-off restarting"
         for i in range(50)]
model.embed(texts[:1])
started = time.perf_counter()
for text in texts:
    model.embed([text])
per_text = (time.perf_counter() - started) / len(texts)
started = time.perf_counter()
model.embed(texts)
per_text_batched = (time.perf_counter() - started) / len(texts)
print(json.dumps({"load_seconds": loaded, "per_text_seconds": per_text,
                  "per_text_batched_seconds": per_text_batched,
                  "dimensions": len(model.embed(["x"])[0])}))
"""


def test_the_model_loads_and_runs_offline_in_a_fresh_process() -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": "/nonexistent/hf-home",
    }
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["dimensions"] == 384
    # Generous bounds for a loaded 2-core CI machine; typical is 0.3 s and 5-10 ms.
    assert report["load_seconds"] < 20
    assert report["per_text_seconds"] < 0.5
    print(report)
