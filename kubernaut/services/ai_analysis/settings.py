"""ai_analysis's settings, from KUBERNAUT_AI_* variables: the chain of model providers
(empty: the rules decide alone), the investigation's bounds, the budgets, and where a plan
the rules do not back may run without a person's approval."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderKind = Literal["openai", "azure_openai", "bedrock", "anthropic"]
# How an OpenAI-compatible server is made to call a tool: its tool calling ("tools":
# OpenAI, Azure, vLLM, Ollama), OpenAI's response_format json_schema ("json_schema"), or
# llama.cpp's constrained decoding extension ({"type": "json_object", "schema": ...}).
StructuredOutput = Literal["tools", "json_schema", "llama_cpp_schema"]


class ProviderSettings(BaseModel):
    """One model in the chain. Its key is read from `api_key_file` (a mounted Secret) when
    the provider starts, never from the settings themselves, and is never logged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Names the provider in metrics, logs and the record, e.g. "local" or "bedrock-claude".
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")
    kind: ProviderKind
    # The vendor's model id (Azure: the deployment name; Bedrock: the model or inference
    # profile id).
    model: str = Field(min_length=1, max_length=256)
    # The API's base URL (OpenAI-compatible servers, Azure's resource endpoint, Anthropic's
    # base_url, Bedrock's endpoint_url). Empty: the vendor's default.
    endpoint: str = ""
    api_key_file: str = ""
    # Azure OpenAI's api-version.
    api_version: str = ""
    # Bedrock's AWS region.
    region: str = ""
    structured_output: StructuredOutput = "tools"
    # One turn's time-out, and the most tokens one answer may use.
    timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    max_tokens: int = Field(default=512, ge=16, le=8192)
    # USD per 1,000 tokens, for the cost budget and kubernaut_ai_cost_usd_total.
    price_in_per_1k: float = Field(default=0.0, ge=0)
    price_out_per_1k: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> ProviderSettings:
        if self.kind == "azure_openai" and not (self.endpoint and self.api_version):
            raise ValueError(f"provider {self.name}: azure_openai needs endpoint and api_version")
        if self.kind == "bedrock" and not self.region:
            raise ValueError(f"provider {self.name}: bedrock needs region")
        if self.structured_output != "tools" and self.kind not in ("openai", "azure_openai"):
            raise ValueError(
                f"provider {self.name}: structured_output {self.structured_output!r} is for "
                "OpenAI-compatible servers only"
            )
        return self

    def api_key(self) -> str:
        """The key from its file (stripped), or "" when none is configured."""
        if not self.api_key_file:
            return ""
        return Path(self.api_key_file).read_text().strip()


class AnalysisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_AI_", frozen=True, extra="ignore")

    # KUBERNAUT_AI_PROVIDERS: the models to ask, in order, as a JSON list of objects with
    # the fields of docs/settings.md's provider table (name, kind, model, endpoint,
    # api_key_file, api_version, region, structured_output, timeout_seconds, max_tokens,
    # price_in_per_1k, price_out_per_1k). The next is asked when one fails or its circuit
    # is open; the rules decide when none answers. Empty: the rules decide alone.
    providers: tuple[ProviderSettings, ...] = ()
    # The model path's whole wall time for one incident (every turn and tool): after it,
    # the rules decide and the incident says so. The loop is never held longer.
    answer_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # Turns per investigation (tool calls plus the decision).
    max_steps: int = Field(default=6, ge=1, le=32)
    # Token budgets: one incident's investigation, and all of them in a rolling hour. Over
    # budget, the rules decide alone and the incident says why.
    max_tokens_per_incident: int = Field(default=24_000, ge=256)
    max_tokens_per_hour: int = Field(default=1_000_000, ge=256)
    # Cost budget in USD per rolling hour (from the providers' prices). 0: no cost cap.
    max_cost_usd_per_hour: float = Field(default=5.0, ge=0)
    # A provider whose calls failed this many times in a row is skipped for
    # `breaker_open_seconds`, then tried once again.
    breaker_failures: int = Field(default=3, ge=1)
    breaker_open_seconds: float = Field(default=60.0, gt=0)
    # Namespaces (shell-style patterns such as "sandbox-*") where a plan the rules and the
    # model disagree on runs without a person's approval: the rules' plan when they act,
    # else the model's. Everywhere else it waits for one. The workflow's own approval
    # rules (risk, confidence, a recently failed target) still hold. A JSON list.
    unguarded_namespaces: tuple[str, ...] = ()
    # The Prometheus that evaluates the alerts (its HTTP API's base URL): a model may
    # re-run the alert's own expression there (the `alert_query` tool). Empty: not offered.
    prometheus_url: str = ""
    # How long an analysis waits for HolmesGPT's investigation (context_api's Investigate,
    # KUBERNAUT_CONTEXT_HOLMES_URL) before it decides without it; asked alongside the other
    # reads. Its root cause becomes one more reason and part of what a model is shown,
    # never an action by itself. 0: HolmesGPT is not asked.
    holmes_wait_seconds: float = Field(default=0.0, ge=0, le=600)
    # Extra regular expressions whose matches are redacted before anything is sent to a
    # model (the built-in ones cover tokens, keys, passwords and Authorization headers).
    redact_patterns: tuple[str, ...] = ()

    @field_validator("redact_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"redact pattern {pattern!r} does not compile: {error}") from None
        return patterns

    @model_validator(mode="after")
    def _distinct(self) -> AnalysisSettings:
        names = [provider.name for provider in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be distinct, got {names}")
        if not math.isfinite(self.answer_timeout_seconds):
            raise ValueError("answer_timeout_seconds must be finite")
        return self
