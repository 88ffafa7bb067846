"""How long an analysis takes on this machine: the rules alone, in-process (the target is
under 50 ms p99), and the model path (the rules, then a model's investigation through the
real OpenAI-compatible provider, then the guard) against a model server.

    .venv/bin/python -m bench.analysis_latency [--rounds 200] [--model-url URL] [--model-rounds 10]

Without --model-url it starts the dev stack's local model (SmolLM2-135M on llama.cpp) when
`make setup` built it, and reports the rules only otherwise. Prints p50/p95/p99 in ms and
tokens per analysis. Compare ratios, not absolute numbers: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.devstack.model import LlamaBuild, ModelServer
from kubernaut.services.ai_analysis import reasoning
from kubernaut.services.ai_analysis.providers.openai_compat import OpenAICompatibleProvider
from kubernaut.services.ai_analysis.rules import RULES, RulesSettings, analyze
from kubernaut.services.ai_analysis.settings import AnalysisSettings, ProviderSettings
from kubernaut.services.executor.catalogue import list_actions

SUBJECT = alert_pb2.ResourceRef(kind="Deployment", namespace="shop", name="web")
EVIDENCE = context_api_pb2.ResourceContext(
    resource=SUBJECT,
    workload=SUBJECT,
    managed=True,
    pods=[
        context_api_pb2.PodState(
            name=f"web-7d4-{i}",
            phase="Running",
            node="node-1",
            restarts=7,
            waiting_reason="CrashLoopBackOff",
        )
        for i in range(3)
    ],
    events=[context_api_pb2.EventSummary(type="Warning", reason="BackOff", message="Back-off")],
)


def alerts() -> list[alert_pb2.Alert]:
    """One firing alert per rule of the table."""
    return [
        alert_pb2.Alert(
            name=rule.alert,
            status=alert_pb2.ALERT_STATUS_FIRING,
            labels={
                "namespace": "shop",
                "deployment": "web",
                "pod": "web-7d4-0",
                "severity": "warning",
            },
        )
        for rule in RULES
    ]


def percentiles(samples: Sequence[float]) -> str:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return (
        f"p50 {cuts[49] * 1000:8.3f} ms   p95 {cuts[94] * 1000:8.3f} ms   "
        f"p99 {cuts[98] * 1000:8.3f} ms   max {ordered[-1] * 1000:8.3f} ms"
    )


def rules_only(rounds: int) -> list[float]:
    settings = RulesSettings()
    samples = []
    for _ in range(rounds):
        for alert in alerts():
            began = time.perf_counter()
            analyze(alert, SUBJECT, None, settings, EVIDENCE)
            samples.append(time.perf_counter() - began)
    return samples


async def model_path(url: str, rounds: int) -> tuple[list[float], list[int], list[str]]:
    provider = ProviderSettings(
        name="local",
        kind="openai",
        model="smollm2-135m",
        endpoint=url,
        structured_output="llama_cpp_schema",
        timeout_seconds=60,
        max_tokens=256,
    )
    analyst = reasoning.ModelAnalyst(
        [(provider, OpenAICompatibleProvider(provider))],
        AnalysisSettings(answer_timeout_seconds=120, max_tokens_per_hour=100_000_000),
    )
    catalogue = list_actions()
    crash = next(a for a in alerts() if a.name == "KubePodCrashLooping")
    incident = reasoning.Incident(crash, SUBJECT, EVIDENCE, None)
    samples, tokens, outcomes = [], [], []
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            rules = analyze(crash, SUBJECT, None, RulesSettings(), EVIDENCE)
            analysis = await analyst.analyse(incident, rules, catalogue)
            samples.append(time.perf_counter() - began)
            record = analysis.reasoning
            tokens.append(record.input_tokens + record.output_tokens)
            outcomes.append(record.guard or "?")
    finally:
        await analyst.close()
    return samples, tokens, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--model-url", default="")
    parser.add_argument("--model-rounds", type=int, default=10)
    args = parser.parse_args()
    rules_samples = rules_only(args.rounds)
    print(f"rules only, in-process ({len(rules_samples)} analyses over {len(RULES)} alerts):")
    print(f"    {percentiles(rules_samples)}")
    url = args.model_url
    server = None
    if not url:
        server = _start_local_model()
        url = server.url if server is not None else ""
    if not url:
        print("model path: skipped (no --model-url, and the local model is not built: make setup)")
        return
    try:
        samples, tokens, outcomes = asyncio.run(model_path(url, args.model_rounds))
    finally:
        if server is not None:
            server.stop()
    print(f"rules + model + guard ({len(samples)} analyses, {url}):")
    print(f"    {percentiles(samples) if len(samples) > 1 else samples}")
    print(f"    tokens per analysis: mean {statistics.mean(tokens):.0f}, max {max(tokens)}")
    print(f"    guard outcomes: {sorted(set(outcomes))}")
    ratio = statistics.median(samples) / statistics.median(rules_samples)
    print(f"    model path / rules only (medians): {ratio:,.0f}x")


def _start_local_model() -> ModelServer | None:
    """The dev stack's model part on a free port, when `make setup` built it."""
    build = LlamaBuild.default()
    if build.missing():
        return None
    server = ModelServer(Path(tempfile.mkdtemp(prefix="kubernaut-bench-")) / "model.log", build)
    server.start()
    return server


if __name__ == "__main__":
    main()
