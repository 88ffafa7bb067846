"""context_api's settings, from KUBERNAUT_CONTEXT_* variables."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ContextSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_CONTEXT_", frozen=True, extra="ignore")

    # How long a resource's context or an incident's history is served from cache.
    cache_seconds: float = 3.0
