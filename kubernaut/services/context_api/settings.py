"""context_api's settings, from KUBERNAUT_CONTEXT_* variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubernaut.runtime.settings import HttpBaseUrl


class ContextSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_CONTEXT_", frozen=True, extra="ignore")

    # How long a resource's context or an incident's history is served from cache.
    cache_seconds: float = 3.0
    # A HolmesGPT server (its HTTP API, e.g. http://holmes.monitoring:5050) that Investigate
    # asks for a root-cause analysis. Empty: Investigate answers FAILED_PRECONDITION and
    # analyses go on without it.
    holmes_url: HttpBaseUrl = ""
    # How long one investigation may take (HolmesGPT runs an agent loop: tens of seconds).
    holmes_timeout_seconds: float = Field(default=60.0, gt=0)
    # After this many failures in a row (no answer, 5xx, 429), investigations are refused at
    # once for holmes_breaker_open_seconds; then one may try again.
    holmes_breaker_failures: int = Field(default=3, ge=1)
    holmes_breaker_open_seconds: float = Field(default=120.0, gt=0)
    # The Prometheus that scrapes the cluster's kube-state-metrics (its HTTP API's base
    # URL): GetWorkloadMetrics reads a workload's golden signals there. Empty:
    # GetWorkloadMetrics answers FAILED_PRECONDITION.
    prometheus_url: HttpBaseUrl = ""
    prometheus_timeout_seconds: float = Field(default=5.0, gt=0)
