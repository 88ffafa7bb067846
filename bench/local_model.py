"""How long the dev stack's local model (SmolLM2-135M on llama-cpp-python's server) takes
per short constrained decision, through the real `openai` SDK, one answer at a time (the
server answers one request at a time anyway).

    .venv/bin/python bench/local_model.py [--answers 20] [--max-tokens 96] [--url URL]

Without --url it starts the server from what `make setup` built (scripts/build-llama.sh)
and stops it afterwards. Prints the latency p50/p95/max, tokens per answer and how many
answers parsed and satisfied the schema. This machine is shared and noisy: read the
figures, compare runs on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from openai import AsyncOpenAI

from kubernaut.devstack.model import MODEL_ALIAS, ModelServer

ACTIONS = ["rollback_deployment", "restart_pods", "scale_deployment", "not_actionable"]
SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ACTIONS},
        # No minLength/maxLength: llama.cpp turns a bounded string into a grammar that
        # costs ~1 s per token here (measured); max_tokens bounds the answer instead.
        "reason": {"type": "string"},
    },
    "required": ["action", "reason"],
}
SYSTEM = (
    "You are Kubernaut's analyst. Choose one action for the incident and say why in one "
    "sentence. Answer in JSON."
)


def prompt(index: int) -> str:
    # A different workload each time, so that no answer is a replay of the previous one.
    return (
        f"Alert KubePodCrashLooping on deployment shop-{index}/checkout-{index}: "
        f"pods restart every 30 s since a rollout {index + 2} minutes ago changed the image "
        "from checkout:1.4 to checkout:1.5."
    )


def valid(content: str | None) -> bool:
    try:
        answer = json.loads(content or "")
    except json.JSONDecodeError:
        return False
    return (
        isinstance(answer, dict)
        and set(answer) == {"action", "reason"}
        and answer["action"] in ACTIONS
        and isinstance(answer["reason"], str)
        and answer["reason"].strip() != ""
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(url: str, answers: int, max_tokens: int, verbose: bool) -> int:
    latencies: list[float] = []
    tokens_in: list[int] = []
    tokens_out: list[int] = []
    good = 0
    async with AsyncOpenAI(base_url=url, api_key="unused", timeout=120, max_retries=0) as openai:
        for index in range(answers + 1):
            started = time.perf_counter()
            response = await openai.chat.completions.create(
                model=MODEL_ALIAS,
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": prompt(index)},
                ],
                # llama.cpp's extension: the SDK's types know no "schema" key.
                response_format=cast(Any, {"type": "json_object", "schema": SCHEMA}),
                max_tokens=max_tokens,
                temperature=0,
            )
            elapsed = time.perf_counter() - started
            if index == 0:
                continue  # the first answer warms the server's caches: not counted
            latencies.append(elapsed)
            if verbose:
                print(f"  {elapsed * 1000:6.0f} ms  {response.choices[0].message.content}")
            good += valid(response.choices[0].message.content)
            if response.usage is not None:
                tokens_in.append(response.usage.prompt_tokens)
                tokens_out.append(response.usage.completion_tokens)
    ms = [seconds * 1000 for seconds in latencies]
    print(f"local model {MODEL_ALIAS} at {url}, {answers} constrained answers, one at a time")
    print(
        f"  latency ms: p50 {percentile(ms, 0.5):.0f}  p95 {percentile(ms, 0.95):.0f}  "
        f"max {max(ms):.0f}  mean {statistics.fmean(ms):.0f}"
    )
    if tokens_out:
        print(
            f"  tokens per answer: {statistics.fmean(tokens_in):.0f} in, "
            f"{statistics.fmean(tokens_out):.0f} out"
        )
    print(f"  {good} of {answers} answers valid (JSON, action in the enum, a reason)")
    return 0 if good == answers else 1


@contextlib.contextmanager
def started_server(threads: int | None) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="kubernaut-model-bench-") as tmp:
        server = ModelServer(Path(tmp) / "model.log", threads=threads)
        began = time.perf_counter()
        with server:
            print(f"model server ready in {time.perf_counter() - began:.1f}s")
            yield server.url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=20, help="answers measured (default 20)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--verbose", action="store_true", help="print each answer and its time")
    parser.add_argument("--url", help="a running server's OpenAI base URL (…/v1)")
    parser.add_argument("--threads", type=int, help="the server's threads (default: its own)")
    args = parser.parse_args()
    if args.answers < 1:
        parser.error("--answers must be at least 1")
    if args.url:
        return asyncio.run(measure(args.url, args.answers, args.max_tokens, args.verbose))
    with started_server(args.threads) as url:
        return asyncio.run(measure(url, args.answers, args.max_tokens, args.verbose))


if __name__ == "__main__":
    raise SystemExit(main())
