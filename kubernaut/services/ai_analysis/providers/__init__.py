"""Model providers, one module per vendor API; `build` makes the configured one."""

from __future__ import annotations

from kubernaut.services.ai_analysis.providers.base import Provider
from kubernaut.services.ai_analysis.settings import ProviderSettings


def build(settings: ProviderSettings) -> Provider:
    """The provider for one configured model (its SDK is imported only when used)."""
    if settings.kind in ("openai", "azure_openai"):
        from kubernaut.services.ai_analysis.providers.openai_compat import (
            OpenAICompatibleProvider,
        )

        return OpenAICompatibleProvider(settings)
    if settings.kind == "anthropic":
        from kubernaut.services.ai_analysis.providers.anthropic import AnthropicProvider

        return AnthropicProvider(settings)
    from kubernaut.services.ai_analysis.providers.bedrock import BedrockProvider

    return BedrockProvider(settings)
