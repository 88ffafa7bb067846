"""The dev stack's local model (SmolLM2-135M on llama-cpp-python's server), called through
the real `openai` SDK the way ai_analysis' OpenAI-compatible provider calls it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from openai import AsyncOpenAI

from kubernaut.devstack.model import (
    MODEL_ALIAS,
    LlamaBuild,
    ModelServer,
    ModelServerError,
    provider_settings,
)
from kubernaut.devstack.stack import Component
from kubernaut.devstack.system import Tuning, service_env
from kubernaut.runtime.names import ServiceName
from kubernaut.services.ai_analysis.settings import AnalysisSettings
from tests.fixtures.devstack import recorded_stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Values no model would say unprompted: only constrained decoding yields one of them.
VERDICTS = ["kubernaut-a17", "kubernaut-b42"]
SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": VERDICTS},
        # Unbounded: llama.cpp's grammar for minLength/maxLength is slow (bench/local_model.py).
        "why": {"type": "string"},
    },
    "required": ["verdict", "why"],
}


def client(server: ModelServer) -> AsyncOpenAI:
    # The server checks no key; the SDK insists on one.
    return AsyncOpenAI(base_url=server.url, api_key="unused", timeout=60, max_retries=0)


async def test_a_constrained_answer_satisfies_the_schema(local_model: ModelServer) -> None:
    async with client(local_model) as openai:
        response = await openai.chat.completions.create(
            model=MODEL_ALIAS,
            messages=[
                {"role": "system", "content": "You answer in JSON."},
                # A question whose natural answer ("Paris") is none of the verdicts.
                {"role": "user", "content": "What is the capital of France?"},
            ],
            # llama.cpp's extension: the SDK's types know no "schema" key.
            response_format=cast(Any, {"type": "json_object", "schema": SCHEMA}),
            max_tokens=128,
            temperature=0,
        )
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice
    answer = json.loads(choice.message.content or "")
    assert isinstance(answer, dict), answer
    assert set(answer) == {"verdict", "why"}, answer
    assert answer["verdict"] in VERDICTS, answer
    assert isinstance(answer["why"], str), answer
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage


async def test_the_server_lists_the_model_by_its_alias(local_model: ModelServer) -> None:
    async with client(local_model) as openai:
        models = [model.id async for model in openai.models.list()]
    assert models == [MODEL_ALIAS]


def test_the_dev_stack_points_ai_analysis_at_its_model() -> None:
    url = "http://127.0.0.1:43210/v1"
    info = recorded_stack("/tmp/state", model=Component("model", 3, "llama_cpp.server", url, ""))
    _, per_service = service_env(info, Tuning())
    raw = per_service[ServiceName.AI_ANALYSIS]["KUBERNAUT_AI_PROVIDERS"]
    assert raw == provider_settings(url)
    # What ai_analysis itself makes of it.
    (provider,) = AnalysisSettings.model_validate({"providers": json.loads(raw)}).providers
    assert (provider.name, provider.kind, provider.model) == ("local", "openai", MODEL_ALIAS)
    assert provider.endpoint == url
    assert provider.structured_output == "llama_cpp_schema"
    assert provider.api_key_file == ""

    # Left out (--no-model): ai_analysis gets no provider and the rules decide alone.
    info.components["model"] = Component("model", None, "", "", "", {"state": "left out"})
    _, per_service = service_env(info, Tuning())
    assert ServiceName.AI_ANALYSIS not in per_service


def test_an_unbuilt_model_names_the_build(tmp_path: Path) -> None:
    server = ModelServer(tmp_path / "model.log", LlamaBuild.under(tmp_path))
    with pytest.raises(ModelServerError, match=r"build-llama\.sh"):
        server.start()
    assert server.pid is None


def test_the_bench_runs(local_model: ModelServer) -> None:
    done = subprocess.run(
        [sys.executable, "bench/local_model.py", "--url", local_model.url, "--answers", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "p50" in done.stdout and "p95" in done.stdout, done.stdout
    assert "3 of 3 answers valid" in done.stdout, done.stdout
