"""Amazon Bedrock through boto3's bedrock-runtime Converse API, with forced tool use
(toolChoice "any"). Credentials come from the standard AWS chain (environment, IRSA's web
identity, the instance role), never from the settings."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from typing import Any

import boto3  # type: ignore[import-untyped]
import botocore.config  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]

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

# Transient on Bedrock's side (its documented 429/5xx errors, and a model still loading).
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelNotReadyException",
        "ModelTimeoutException",
    }
)
# botocore's time-outs and connection failures (EndpointConnectionError, ConnectTimeoutError,
# ReadTimeoutError, ConnectionClosedError).
_TRANSPORT_ERRORS = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
# Clients are built per whole-second time-out (botocore fixes it per client); a turn's
# time-out is the rest of the analysis' wall time, so only a few distinct values occur.
_MAX_CLIENTS = 8


class BedrockProvider:
    """One Bedrock model (or inference profile). boto3 is synchronous, so each call runs in
    a worker thread; botocore never retries (the chain above falls through instead)."""

    def __init__(self, settings: ProviderSettings) -> None:
        self._settings = settings
        self._session = boto3.session.Session(region_name=settings.region)
        self._clients: dict[int, Any] = {}
        # boto3 builds clients thread-unsafely; worker threads may build them concurrently.
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def model(self) -> str:
        return self._settings.model

    def _client(self, timeout: float) -> Any:
        seconds = max(1, math.ceil(timeout))
        with self._lock:
            client = self._clients.get(seconds)
            if client is None:
                if len(self._clients) >= _MAX_CLIENTS:
                    self._clients.pop(next(iter(self._clients))).close()
                config = botocore.config.Config(
                    connect_timeout=seconds,
                    read_timeout=seconds,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                )
                client = self._session.client(
                    "bedrock-runtime",
                    region_name=self._settings.region,
                    endpoint_url=self._settings.endpoint or None,
                    config=config,
                )
                self._clients[seconds] = client
            return client

    async def turn(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, timeout: float
    ) -> Reply:
        if not tools:
            raise ProviderError("a turn needs at least one tool", retryable=False)
        system, conversation = to_converse_messages(messages)
        request: dict[str, Any] = {
            "modelId": self._settings.model,
            "messages": conversation,
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": t.name,
                            "description": t.description,
                            "inputSchema": {"json": dict(t.parameters)},
                        }
                    }
                    for t in tools
                ],
                "toolChoice": {"any": {}},
            },
            "inferenceConfig": {"maxTokens": self._settings.max_tokens},
        }
        if system:
            request["system"] = [{"text": system}]
        try:
            # botocore's time-outs bound each connect/read; this bounds the whole turn. A
            # call it abandons finishes in its thread within the read time-out.
            async with asyncio.timeout(timeout):
                response = await asyncio.to_thread(self._converse, request, timeout)
        except TimeoutError:
            raise self._error(f"no answer within {timeout:g} s", retryable=True) from None
        except botocore.exceptions.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "") or "Unknown")
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = str(error.response.get("Error", {}).get("Message", ""))
            raise self._error(
                f"{code} (HTTP {status}): {message}",
                retryable=code in _RETRYABLE_CODES or status >= 500,
            ) from None
        except _TRANSPORT_ERRORS as error:
            raise self._error(f"{type(error).__name__}: {error}", retryable=True) from None
        except botocore.exceptions.BotoCoreError as error:
            # No credentials, an invalid parameter: the same call would fail again.
            raise self._error(f"{type(error).__name__}: {error}", retryable=False) from None
        return self._reply(response, tools)

    def _converse(self, request: dict[str, Any], timeout: float) -> Any:
        return self._client(timeout).converse(**request)

    def _reply(self, response: Any, tools: Sequence[ToolSpec]) -> Reply:
        content = response.get("output", {}).get("message", {}).get("content") or []
        texts = [block["text"] for block in content if isinstance(block.get("text"), str)]
        calls = [block["toolUse"] for block in content if isinstance(block.get("toolUse"), dict)]
        if not calls:
            raise self._error(
                f"the model called no tool (stopReason {response.get('stopReason')})",
                retryable=False,
            )
        call = calls[0]
        tool = tool_named(tools, str(call.get("name", "")))
        arguments = call.get("input")
        if not isinstance(arguments, dict):
            raise self._error(
                f"the model's call of {tool.name} has input that is not a JSON object",
                retryable=False,
            )
        usage = response.get("usage") or {}
        return Reply(
            tool_call=ToolCall(
                call_id=str(call.get("toolUseId", "")), name=tool.name, arguments=arguments
            ),
            usage=Usage(int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)),
            text="\n".join(texts),
        )

    def _error(self, message: str, *, retryable: bool) -> ProviderError:
        return ProviderError(
            f"bedrock provider {self.name} ({self.model}): {message[:500]}", retryable=retryable
        )

    async def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def to_converse_messages(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Our conversation as Converse's: the system prompt apart, the rest as content blocks,
    consecutive blocks of one role merged (Converse wants the roles to alternate; a tool's
    result is a user turn)."""
    return alternating_turns(messages, _blocks)


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    # Converse refuses blank text blocks, so an empty content adds none.
    text = [{"text": message.content}] if message.content else []
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
                "toolUse": {
                    "toolUseId": call.call_id,
                    "name": call.name,
                    "input": call.arguments,
                }
            }
            return "assistant", [*text, tool_use]
        case Role.TOOL:
            result = {
                "toolResult": {
                    "toolUseId": message.tool_call_id,
                    "content": [{"text": message.content or "(empty)"}],
                }
            }
            return "user", [result]
