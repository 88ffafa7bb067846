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
    printed = run(
        "-m", "bench.rpc_overhead", "--calls", "200", "--concurrency", "2", "--rounds", "1"
    )
    assert "server CPU per call kubernaut/bare" in printed
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
    assert "throughput ratio edge/durable floor" in printed
    assert "throughput ratio edge/bare (parse-only floor)" in printed
    assert "edge p99 at 50 alerts/s" in printed
    assert "durable floor" in printed.split("latency:")[1]  # measured in the open loop too
    # Nothing refused or unanswered in any measurement.
    assert "errors of" not in printed, printed


def test_the_gateway_calls_bench_runs() -> None:
    printed = run(
        "-m", "bench.gateway_calls", "--calls", "20", "--sizes", "1,8", "--fingerprints", "50"
    )
    assert "fitted: CPU ms = fixed per call + per alert x alerts" in printed
    assert "a webhook of one alert in a call of 16" in printed


def test_the_vector_search_bench_runs() -> None:
    """pgvector only (Weaviate's server takes longer to start than this whole run)."""
    printed = run(
        "-m",
        "bench.vector_search",
        "--count",
        "2000",
        "--queries",
        "50",
        "--backends",
        "pgvector",
        "--ef-search",
        "16,64",
        "--builds",
        "16:64",
        "--shared-buffers",
        "128MB",
        "--maintenance-work-mem",
        "64MB",
    )
    assert "HNSW m=16, ef_construction=64 (the defaults)" in printed
    assert "ef_search 64 (default)" in printed
    assert "alert filter, ef_search 64" in printed
    assert "namespace filter, ef_search 64" in printed
    assert "bare SQL" in printed
    assert "recall@10" in printed
    assert "goal: pgvector p99 < 10 ms" in printed
    assert "pinecone: not measured" in printed


def test_bench_all_prints_one_row_per_figure_and_names_a_missing_module() -> None:
    """The table of `python -m bench.all`, made from a quick bench and a module that is not
    there (the full table's benches take minutes: they are run above, or by hand)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.all",
            "--quick",
            "--modules",
            "bench.rpc_overhead,bench.not_a_bench",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the missing module
    table = done.stdout.split("figure", 1)[1]
    assert "shared runtime CPU per call vs bare grpc.aio" in table
    assert "<= 1.5x" in table
    assert "bench.not_a_bench" in table and "missing" in table
    assert "goals met (quick run)" in done.stdout
