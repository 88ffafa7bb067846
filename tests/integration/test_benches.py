"""The benchmarks under bench/ still run: each, cut short, finishes and prints its figures
(what they measure is read from their output by people, never asserted here: this
machine is shared and noisy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, timeout: float = 240) -> str:
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_rpc_overhead_bench_runs() -> None:
    printed = run("bench/rpc_overhead.py", "--calls", "40", "--concurrency", "2")
    assert "throughput ratio kubernaut/bare" in printed


def test_the_validation_bench_runs() -> None:
    printed = run("-m", "bench.validation", "--seconds", "0.2")
    assert "fast" in printed.lower()


def test_the_edge_bench_runs_and_every_request_is_answered() -> None:
    printed = run(
        "-m",
        "bench.edge_throughput",
        "--throughput-seconds",
        "1",
        "--latency-seconds",
        "1",
        "--warmup-seconds",
        "0.3",
        "--rate",
        "50",
        "--connections",
        "4",
    )
    assert "throughput ratio edge/bare" in printed
    assert "edge p99 at 50 alerts/s" in printed
    # Nothing refused or unanswered in any measurement.
    assert "errors of" not in printed, printed


def test_the_gateway_calls_bench_runs() -> None:
    printed = run(
        "-m", "bench.gateway_calls", "--calls", "20", "--sizes", "1,8", "--fingerprints", "50"
    )
    assert "fitted: CPU ms = fixed per call + per alert x alerts" in printed
    assert "a webhook of one alert in a call of 16" in printed
