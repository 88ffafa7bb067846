"""OpenAI-compatible chat servers through the `openai` SDK: OpenAI, Azure OpenAI (a
deployment and an api-version), vLLM, Ollama, LocalAI and llama.cpp's server.

How the model is made to call one tool depends on the server (ProviderSettings.
structured_output): its tool calling with tool_choice "required"; OpenAI's response_format
json_schema; or llama.cpp's constrained decoding ({"type": "json_object", "schema": ...}),
which a small local model needs to answer in shape at all. The two JSON modes ask for
{"tool": <name>, "arguments": {...}} with one branch per tool.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import openai

from kubernaut.services.ai_analysis.providers.base import (
    JsonObject,
    Message,
    ProviderError,
    Reply,
    Role,
    ToolCall,
    ToolSpec,
    Usage,
    tool_named,
)
from kubernaut.services.ai_analysis.settings import ProviderSettings

# The SDK insists on a key; local servers ignore it.
_NO_KEY = "unused"


def call_schema(tools: Sequence[ToolSpec]) -> JsonObject:
    """The JSON schema of one tool call, for servers that decode to a schema."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "tool": {"const": tool.name},
                    "arguments": dict(tool.parameters),
                },
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
            for tool in tools
        ]
    }


def _tools_in_prompt(tools: Sequence[ToolSpec]) -> str:
    """The tools as the JSON modes describe them to the model (no tool calling there)."""
    lines = ['Answer with one JSON object {"tool": <name>, "arguments": {...}}. Tools:']
    lines += [f"- {tool.name}: {tool.description}" for tool in tools]
    return "\n".join(lines)


class OpenAICompatibleProvider:
    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        key = settings.api_key() or _NO_KEY
        if settings.kind == "azure_openai":
            self._client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
                azure_endpoint=settings.endpoint,
                api_version=settings.api_version,
                azure_deployment=settings.model,
                api_key=key,
                max_retries=0,  # the chain falls through to the next provider instead
            )
        else:
            self._client = openai.AsyncOpenAI(
                base_url=settings.endpoint or None, api_key=key, max_retries=0
            )

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def model(self) -> str:
        return self.settings.model

    async def close(self) -> None:
        await self._client.close()

    def _messages(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[Any]:
        tool_calling = self.settings.structured_output == "tools"
        out: list[dict[str, Any]] = []
        for message in messages:
            call = message.tool_call
            if message.role is Role.ASSISTANT and call is not None:
                if tool_calling:
                    out.append(
                        {
                            "role": "assistant",
                            "content": message.content or None,
                            "tool_calls": [
                                {
                                    "id": call.call_id,
                                    "type": "function",
                                    "function": {
                                        "name": call.name,
                                        "arguments": json.dumps(call.arguments),
                                    },
                                }
                            ],
                        }
                    )
                else:
                    body = {"tool": call.name, "arguments": call.arguments}
                    out.append({"role": "assistant", "content": json.dumps(body)})
            elif message.role is Role.TOOL:
                if tool_calling:
                    out.append(
                        {
                            "role": "tool",
                            "tool_call_id": message.tool_call_id,
                            "content": message.content,
                        }
                    )
                else:  # servers without tool calling take the result as the next user turn
                    out.append({"role": "user", "content": f"Tool result:\n{message.content}"})
            else:
                out.append({"role": message.role.value, "content": message.content})
        if not tool_calling and out and out[0]["role"] == "system":
            out[0] = {
                "role": "system",
                "content": out[0]["content"] + "\n\n" + _tools_in_prompt(tools),
            }
        return out

    def _format(self, tools: Sequence[ToolSpec]) -> dict[str, Any]:
        mode = self.settings.structured_output
        if mode == "tools":
            return {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": dict(tool.parameters),
                        },
                    }
                    for tool in tools
                ],
                "tool_choice": "required",
            }
        schema = call_schema(tools)
        if mode == "json_schema":
            return {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "tool_call", "schema": schema},
                }
            }
        return {"response_format": {"type": "json_object", "schema": schema}}

    async def turn(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, timeout: float
    ) -> Reply:
        try:
            completion = await self._client.chat.completions.create(
                model=self.settings.model,
                messages=self._messages(messages, tools),
                max_tokens=self.settings.max_tokens,
                temperature=0,
                timeout=timeout,
                **cast(Any, self._format(tools)),
            )
        except (openai.APITimeoutError, openai.APIConnectionError) as error:
            raise ProviderError(f"{type(error).__name__}: no answer", retryable=True) from None
        except openai.APIStatusError as error:
            retryable = error.status_code == 429 or error.status_code >= 500
            raise ProviderError(
                f"HTTP {error.status_code} from the model server", retryable=retryable
            ) from None
        usage = Usage()
        if completion.usage is not None:
            usage = Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
        if not completion.choices:
            raise ProviderError("the model server answered no choice", retryable=False)
        message = completion.choices[0].message
        if self.settings.structured_output == "tools":
            calls = message.tool_calls or []
            if not calls:
                raise ProviderError("the model called no tool", retryable=False)
            call = calls[0]
            if call.type != "function":
                raise ProviderError("the model called no function tool", retryable=False)
            name, raw_arguments, call_id = call.function.name, call.function.arguments, call.id
            arguments = _object(raw_arguments)
        else:
            body = _object(message.content or "")
            name = body.get("tool")
            if not isinstance(name, str):
                raise ProviderError("the answer names no tool", retryable=False)
            given = body.get("arguments")
            if not isinstance(given, dict):
                raise ProviderError("the answer's arguments are not an object", retryable=False)
            arguments = given
            call_id = completion.id or "call"
        tool_named(tools, name)
        return Reply(ToolCall(call_id, name, arguments), usage)


def _object(text: str) -> JsonObject:
    try:
        value = json.loads(text)
    except ValueError:
        raise ProviderError("the answer is not JSON", retryable=False) from None
    if not isinstance(value, dict):
        raise ProviderError("the answer is not a JSON object", retryable=False)
    return value
