"""What every model provider offers the analysis: one chat turn in which the model must
call exactly one of the tools it is given (an investigation tool, or `decide`).

Every provider speaks its vendor's own API through the vendor's own SDK (openai, anthropic,
boto3) and maps it onto these types, so the investigation loop, the decision contract and
the guard never see a vendor format. Tool use is forced: a provider either uses the
vendor's tool calling with "a tool must be called", or (for small local models) constrained
JSON decoding whose schema is the union of the tools' argument schemas.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

JsonObject = dict[str, Any]


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    # The result of a tool the assistant called, answering its ToolCall by id.
    TOOL = "tool"


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: a name, what it does, and a JSON schema of its arguments
    (an object schema)."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """The model's call of one tool. `arguments` is what it sent, parsed; nothing in it is
    trusted before the decision contract validates it."""

    call_id: str
    name: str
    arguments: JsonObject


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""
    # Set on an ASSISTANT message that called a tool.
    tool_call: ToolCall | None = None
    # Set on a TOOL message: the call it answers.
    tool_call_id: str = ""


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True)
class Reply:
    """One turn's answer: the tool the model called, and what the turn cost."""

    tool_call: ToolCall
    usage: Usage = field(default_factory=Usage)
    # The provider's own text around the call, if any (kept for the record, never acted on).
    text: str = ""


class ProviderError(Exception):
    """The provider gave no usable answer. `retryable` errors (throttling, 5xx, time-outs,
    connection failures) count against the provider's circuit breaker; the others (an
    answer that calls no tool, or an unknown one) are the model's fault."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Provider(Protocol):
    """One configured model behind one vendor API."""

    @property
    def name(self) -> str:
        """The configured name, e.g. "local" or "bedrock-claude": in metrics and records."""
        ...

    @property
    def model(self) -> str: ...

    async def turn(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, timeout: float
    ) -> Reply:
        """One chat turn in which the model must call one of `tools`. Raises ProviderError;
        never returns a call of a tool that is not in `tools`."""
        ...

    async def close(self) -> None: ...


def alternating_turns(
    messages: Sequence[Message], blocks: Callable[[Message], tuple[str, list[JsonObject]]]
) -> tuple[str, list[JsonObject]]:
    """The conversation as APIs that take the system prompt apart and want user and
    assistant turns to alternate (Anthropic's Messages, Bedrock's Converse): `blocks` gives
    each message's role and content blocks in the vendor's shape; consecutive blocks of one
    role merge into one turn (a tool's result is a user turn)."""
    system = "\n\n".join(m.content for m in messages if m.role is Role.SYSTEM and m.content)
    turns: list[JsonObject] = []
    for message in messages:
        role, content = blocks(message)
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(content)
        else:
            turns.append({"role": role, "content": content})
    return system, turns


def tool_named(tools: Sequence[ToolSpec], name: str) -> ToolSpec:
    """The tool the model called, or ProviderError (not retryable) when it named another."""
    for tool in tools:
        if tool.name == name:
            return tool
    raise ProviderError(f"the model called an unknown tool {name[:64]!r}", retryable=False)
