"""Anthropic's Messages API through the official `anthropic` SDK, with forced tool use
(tool_choice "any", one call per turn)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anthropic
from anthropic.types import Message as AnthropicMessage
from anthropic.types import TextBlock, ToolUseBlock

from kubernaut.services.ai_analysis.providers.base import (
    Message,
    ProviderError,
    Reply,
    Role,
    ToolCall,
    ToolSpec,
    Usage,
    alternating_turns,
    tool_named,
)
from kubernaut.services.ai_analysis.settings import ProviderSettings

# Statuses the SDK's own retry policy treats as transient; everything else is a request
# the same provider would refuse again.
_RETRYABLE_STATUS = frozenset({408, 409, 429})


class AnthropicProvider:
    """One Anthropic model. The SDK never retries (max_retries=0): the chain above falls
    through to the next provider instead, within the analysis' wall time."""

    def __init__(self, settings: ProviderSettings) -> None:
        self._settings = settings
        # Read once; kept only inside the client (which sends it as x-api-key), so that
        # it can be scrubbed from any error text that might echo it.
        self._key = settings.api_key()
        self._client = anthropic.AsyncAnthropic(
            api_key=self._key or None,
            base_url=settings.endpoint or None,
            max_retries=0,
            timeout=settings.timeout_seconds,
        )

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def model(self) -> str:
        return self._settings.model

    async def turn(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, timeout: float
    ) -> Reply:
        if not tools:
            raise ProviderError("a turn needs at least one tool", retryable=False)
        system, conversation = to_anthropic_messages(messages)
        request: dict[str, Any] = {
            "model": self._settings.model,
            "max_tokens": self._settings.max_tokens,
            "messages": conversation,
            "tools": [
                {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
                for t in tools
            ],
            # "any": some tool must be called; one per turn, as the Provider contract says.
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
        if system:
            request["system"] = system
        try:
            # The SDK's timeout bounds each connect/read; asyncio's bounds the whole turn
            # (a server trickling bytes would otherwise hold it longer).
            async with asyncio.timeout(timeout):
                response = await self._client.messages.create(**request, timeout=timeout)
        except TimeoutError:
            raise self._error(f"no answer within {timeout:g} s", retryable=True) from None
        except anthropic.APIStatusError as error:
            retryable = error.status_code in _RETRYABLE_STATUS or error.status_code >= 500
            raise self._error(
                f"HTTP {error.status_code} {_error_type(error.body)}: {error.message}",
                retryable=retryable,
            ) from None
        except anthropic.APITimeoutError:
            raise self._error(f"no answer within {timeout:g} s", retryable=True) from None
        except anthropic.APIConnectionError as error:
            raise self._error(f"cannot connect: {error.message}", retryable=True) from None
        except anthropic.AnthropicError as error:
            # Configuration (no key, a bad base URL) or an answer the SDK cannot read.
            raise self._error(f"{type(error).__name__}: {error}", retryable=False) from None
        try:
            return self._reply(response, tools)
        except (AttributeError, TypeError, ValueError) as error:
            # The SDK does not validate answers: one missing its fields surfaces here.
            raise self._error(f"unreadable answer: {error}", retryable=False) from None

    def _reply(self, response: AnthropicMessage, tools: Sequence[ToolSpec]) -> Reply:
        texts = [block.text for block in response.content if isinstance(block, TextBlock)]
        calls = [block for block in response.content if isinstance(block, ToolUseBlock)]
        if not calls:
            raise self._error(
                f"the model called no tool (stop_reason {response.stop_reason})",
                retryable=False,
            )
        call = calls[0]
        tool = tool_named(tools, call.name)
        # Typed as a dict, but the SDK does not validate answers: a list arrives as one.
        if not isinstance(call.input, dict):
            raise self._error(
                f"the model's call of {tool.name} has input that is not a JSON object",
                retryable=False,
            )
        usage = response.usage
        return Reply(
            tool_call=ToolCall(call_id=call.id, name=tool.name, arguments=dict(call.input)),
            usage=Usage(usage.input_tokens, usage.output_tokens),
            text="\n".join(texts),
        )

    def _error(self, message: str, *, retryable: bool) -> ProviderError:
        if self._key:
            message = message.replace(self._key, "[redacted]")
        return ProviderError(
            f"anthropic provider {self.name} ({self.model}): {message[:500]}", retryable=retryable
        )

    async def close(self) -> None:
        await self._client.close()


def _error_type(body: object) -> str:
    """The API's error type ("rate_limit_error", "overloaded_error", ...) from its body."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("type"), str):
            return str(inner["type"])
    return "error"


def to_anthropic_messages(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Our conversation as Anthropic's: the system prompt apart (the API's `system`), the
    rest as content blocks, consecutive blocks of one role merged into one message (the API
    wants user and assistant turns to alternate; a tool's result is a user turn)."""
    return alternating_turns(messages, _blocks)


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    # The API refuses empty text blocks, so an empty content adds none.
    text = [{"type": "text", "text": message.content}] if message.content else []
    match message.role:
        case Role.SYSTEM:
            return "system", []
        case Role.USER:
            return "user", text
        case Role.ASSISTANT:
            if message.tool_call is None:
                return "assistant", text
            call = message.tool_call
            tool_use = {
                "type": "tool_use",
                "id": call.call_id,
                "name": call.name,
                "input": call.arguments,
            }
            return "assistant", [*text, tool_use]
        case Role.TOOL:
            result = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content or "(empty)",
            }
            return "user", [result]
