"""The model path of an analysis: ask the configured models in order, let one investigate
with read-only tools and decide through the contract, then weigh its decision against the
rules'. Bounded in every way that matters to an incident: a wall time after which the rules
decide (the loop is never held longer), a number of turns, tokens per incident, and tokens
and cost per rolling hour. Each provider has a circuit breaker. Plain logic: the providers
and the tools come in from outside, so all of it runs without gRPC.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.executor.v1 import executor_pb2
from prometheus_client import Counter, Histogram

from kubernaut.runtime.breaker import CircuitBreaker
from kubernaut.runtime.redaction import Redactor
from kubernaut.services.ai_analysis import contract, guard
from kubernaut.services.ai_analysis.prompt import Prompt, encode
from kubernaut.services.ai_analysis.providers.base import (
    Message,
    Provider,
    ProviderError,
    Role,
    ToolCall,
    ToolSpec,
    Usage,
)
from kubernaut.services.ai_analysis.settings import AnalysisSettings, ProviderSettings
from kubernaut.services.ai_analysis.tools import Tool, ToolRefused

log = logging.getLogger(__name__)

AI_REQUESTS = Counter(
    "kubernaut_ai_requests_total",
    "Model turns by provider and result (ok, invalid, error, timeout).",
    ["provider", "result"],
)
AI_TOKENS = Counter(
    "kubernaut_ai_tokens_total",
    "Tokens by provider and direction (in, out).",
    ["provider", "direction"],
)
AI_COST = Counter("kubernaut_ai_cost_usd_total", "Model cost in USD by provider.", ["provider"])
AI_SECONDS = Histogram(
    "kubernaut_ai_request_seconds",
    "One model turn's latency by provider.",
    ["provider"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)

Clock = Callable[[], float]
# Less time than this for the model is no time at all: the rules decide without asking.
MIN_MODEL_SECONDS = 1.0


class Budget:
    """Tokens and cost over a rolling hour, across incidents."""

    WINDOW = 3600.0

    def __init__(self, settings: AnalysisSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._spent: collections.deque[tuple[float, int, float]] = collections.deque()

    def _prune(self) -> None:
        horizon = self.clock() - self.WINDOW
        while self._spent and self._spent[0][0] < horizon:
            self._spent.popleft()

    def refusal(self) -> str:
        """Why no model may be asked now, or ""."""
        self._prune()
        tokens = sum(t for _, t, _ in self._spent)
        cost = sum(c for _, _, c in self._spent)
        if tokens >= self.settings.max_tokens_per_hour:
            return (
                f"the hourly token budget is spent ({tokens} of "
                f"{self.settings.max_tokens_per_hour}; KUBERNAUT_AI_MAX_TOKENS_PER_HOUR)"
            )
        cap = self.settings.max_cost_usd_per_hour
        if cap and cost >= cap:
            return (
                f"the hourly cost budget is spent (${cost:.2f} of ${cap:.2f}; "
                "KUBERNAUT_AI_MAX_COST_USD_PER_HOUR)"
            )
        return ""

    def spend(self, tokens: int, cost: float) -> None:
        self._spent.append((self.clock(), tokens, cost))


class _OverBudget(Exception):
    pass


@dataclass
class _Trace:
    """What one investigation did, for the record."""

    provider: ProviderSettings
    prompt: str = ""
    usage: Usage = field(default_factory=Usage)
    tool_uses: list[remediation_pb2.ToolUse] = field(default_factory=list)
    answer: str = ""
    validation: str = ""

    def cost(self) -> float:
        p = self.provider
        return (
            self.usage.input_tokens * p.price_in_per_1k
            + self.usage.output_tokens * p.price_out_per_1k
        ) / 1000


@dataclass(frozen=True)
class Incident:
    """What the model is asked about."""

    alert: alert_pb2.Alert
    subject: alert_pb2.ResourceRef
    evidence: context_api_pb2.ResourceContext | None
    knowledge: context_api_pb2.AlertKnowledge | None
    # HolmesGPT's investigation, when it was asked and answered.
    investigation: context_api_pb2.Investigation | None = None


class ModelAnalyst:
    def __init__(
        self,
        providers: Sequence[tuple[ProviderSettings, Provider]],
        settings: AnalysisSettings,
        clock: Clock = time.monotonic,
    ) -> None:
        self.providers = list(providers)
        self.settings = settings
        self.clock = clock
        self.redact = Redactor(settings.redact_patterns)
        self.budget = Budget(settings, clock)
        self.breakers = {
            ps.name: CircuitBreaker(
                ps.name,
                failures=settings.breaker_failures,
                open_seconds=settings.breaker_open_seconds,
                clock=clock,
            )
            for ps, _ in self.providers
        }

    @property
    def enabled(self) -> bool:
        return bool(self.providers)

    def cannot_change(self, rules: remediation_pb2.Analysis) -> bool:
        """Whether no model's answer could change what is done (guard.cannot_change)."""
        return self.enabled and guard.cannot_change(rules, self.settings.unguarded_namespaces)

    def rules_first(self, rules: remediation_pb2.Analysis) -> remediation_pb2.Analysis:
        """The rules' analysis, acted on before the model answers; says who is asked after."""
        ps = self.providers[0][0]
        namespace = rules.recommendation.target.namespace
        analysis = _fallback(
            rules,
            remediation_pb2.ModelReasoning(provider=ps.name, model=ps.model),
            f"the model is asked after the plan: {namespace} is unguarded, so no answer "
            "could change the rules' plan, and the fix does not wait for it",
        )
        analysis.reasoning.guard = "rules first"
        return analysis

    async def close(self) -> None:
        for _, provider in self.providers:
            await provider.close()

    async def analyse(
        self,
        incident: Incident,
        rules: remediation_pb2.Analysis,
        catalogue: Sequence[executor_pb2.ActionDefinition],
        tools: Sequence[Tool] = (),
        time_left: float | None = None,
    ) -> remediation_pb2.Analysis:
        """The analysis to act on: the rules' alone when no model answers in time and within
        the contract (the analysis says why), else the guard's weighing of both. `time_left`
        (the caller's deadline, less what the rest of its work needs) shortens the model's
        time below KUBERNAUT_AI_ANSWER_TIMEOUT_SECONDS."""
        started = self.clock()
        evidence = incident.evidence
        if evidence is not None and not evidence.managed and evidence.managed_reason:
            # Nothing a model could choose would be carried out: the executor refuses.
            return rules_only(rules, f"not asked: {evidence.managed_reason}")
        refusal = self.budget.refusal()
        if refusal:
            return rules_only(rules, f"not asked: {refusal}")
        targets = contract.targets_of(incident.subject, incident.evidence)
        offers = contract.offers(catalogue, targets)
        traces: list[_Trace] = []
        errors: list[str] = []
        decided: remediation_pb2.Analysis | None = None
        timeout = self.settings.answer_timeout_seconds
        if time_left is not None and time_left < timeout:
            if time_left < MIN_MODEL_SECONDS:
                return rules_only(
                    rules, f"not asked: the caller's deadline leaves {max(time_left, 0):.1f}s"
                )
            timeout = time_left
        try:
            async with asyncio.timeout(timeout):
                for ps, provider in self.providers:
                    breaker = self.breakers[ps.name]
                    if not breaker.allows():
                        errors.append(f"{ps.name}: circuit open after repeated failures")
                        continue
                    trace = _Trace(ps)
                    traces.append(trace)
                    try:
                        decided = await self._investigate(
                            ps, provider, trace, incident, rules, offers, tools
                        )
                    except ProviderError as error:
                        if error.retryable:  # an outage; a malformed answer is the model's
                            breaker.failure()
                        errors.append(f"{ps.name}: {error}")
                        continue
                    except contract.ContractViolation as error:
                        # It answered: reachable, whatever it said.
                        breaker.success()
                        errors.append(f"{ps.name}: no valid decision ({error})")
                        continue
                    except _OverBudget as error:
                        errors.append(f"{ps.name}: {error}")
                        break
                    finally:
                        self._spend(trace)
                    breaker.success()
                    break
        except TimeoutError:
            limit = (
                "KUBERNAUT_AI_ANSWER_TIMEOUT_SECONDS"
                if timeout == self.settings.answer_timeout_seconds
                else "the caller's deadline"
            )
            errors.append(f"no decision within {timeout:.3g}s ({limit})")
            if traces:
                AI_REQUESTS.labels(traces[-1].provider.name, "timeout").inc()
        reasoning = _reasoning(traces[-1] if traces else None, self.clock() - started)
        if decided is None:
            why = "; ".join(errors) or "no provider answered"
            return _fallback(rules, reasoning, why)
        weighed, how = guard.weigh(rules, decided, self.settings.unguarded_namespaces)
        reasoning.guard = how
        weighed.reasoning.CopyFrom(reasoning)
        return weighed

    def _spend(self, trace: _Trace) -> None:
        tokens = trace.usage.input_tokens + trace.usage.output_tokens
        if tokens:
            self.budget.spend(tokens, trace.cost())

    async def _investigate(
        self,
        ps: ProviderSettings,
        provider: Provider,
        trace: _Trace,
        incident: Incident,
        rules: remediation_pb2.Analysis,
        offers: Sequence[contract.Offer],
        tools: Sequence[Tool],
    ) -> remediation_pb2.Analysis:
        prompt = Prompt(self.redact)
        rules_view = {
            "decision": remediation_pb2.Decision.Name(rules.decision),
            "action": rules.recommendation.action.WhichOneof("params") or "",
            "reasons": list(rules.reasons)[:4],
        }
        user = prompt.incident(
            incident.alert,
            incident.subject,
            incident.evidence,
            incident.knowledge,
            rules_view,
            incident.investigation,
        )
        messages = [Message(Role.SYSTEM, prompt.system()), Message(Role.USER, user)]
        trace.prompt = messages[0].content + "\n\n" + user
        decide = contract.decide_tool(offers)
        by_name = {tool.spec.name: tool for tool in tools}
        repaired = False
        for step in range(self.settings.max_steps):
            last = step == self.settings.max_steps - 1
            offered = [decide] if last else [*(t.spec for t in tools), decide]
            reply = await self._turn(ps, provider, trace, messages, offered)
            call = reply.tool_call
            if call.name == contract.DECIDE or call.name not in {t.name for t in offered}:
                trace.answer = contract.arguments_digest(call.arguments)
                try:
                    if call.name != contract.DECIDE:  # never trust a provider to have checked
                        raise contract.ContractViolation(f"tool: {call.name[:64]!r} not offered")
                    decided = contract.validate(call.arguments, offers, incident.evidence, ps.name)
                except contract.ContractViolation as violation:
                    trace.validation = str(violation)
                    log.warning(
                        "model answer refused",
                        extra={"provider": ps.name, "violation": str(violation)},
                    )
                    AI_REQUESTS.labels(ps.name, "invalid").inc()
                    if repaired:
                        raise
                    repaired = True
                    messages += _answered(call, f"Refused: {violation}. Call decide again.")
                    continue
                trace.validation = "valid"
                return decided
            result = await self._use(by_name, call, prompt, trace)
            messages += _answered(call, result)
        raise contract.ContractViolation(f"no decision in {self.settings.max_steps} turns")

    async def _turn(
        self,
        ps: ProviderSettings,
        provider: Provider,
        trace: _Trace,
        messages: Sequence[Message],
        offered: Sequence[ToolSpec],
    ) -> Any:
        began = self.clock()
        try:
            reply = await provider.turn(messages, offered, timeout=ps.timeout_seconds)
        except ProviderError as error:
            AI_REQUESTS.labels(ps.name, "error" if error.retryable else "invalid").inc()
            raise
        finally:
            AI_SECONDS.labels(ps.name).observe(self.clock() - began)
        AI_REQUESTS.labels(ps.name, "ok").inc()
        AI_TOKENS.labels(ps.name, "in").inc(reply.usage.input_tokens)
        AI_TOKENS.labels(ps.name, "out").inc(reply.usage.output_tokens)
        before = trace.cost()
        trace.usage = trace.usage + reply.usage
        AI_COST.labels(ps.name).inc(trace.cost() - before)
        used = trace.usage.input_tokens + trace.usage.output_tokens
        if used > self.settings.max_tokens_per_incident:
            raise _OverBudget(
                f"over the incident's token budget ({used} of "
                f"{self.settings.max_tokens_per_incident}; KUBERNAUT_AI_MAX_TOKENS_PER_INCIDENT)"
            )
        return reply

    async def _use(
        self, by_name: Mapping[str, Tool], call: ToolCall, prompt: Prompt, trace: _Trace
    ) -> str:
        tool = by_name.get(call.name)
        if tool is None:
            result = f"Unknown tool {call.name[:64]!r}."
        else:
            try:
                value = await tool.handler(call.arguments)
                result = prompt.data(f"Result of {call.name}", value)
            except ToolRefused as refused:
                result = f"Refused: {refused}"
        trace.tool_uses.append(
            remediation_pb2.ToolUse(
                name=call.name[:64],
                arguments=encode(call.arguments, self.redact, 1024),
                result_sha256=hashlib.sha256(result.encode()).hexdigest(),
                result_chars=len(result),
            )
        )
        return result


def _answered(call: ToolCall, result: str) -> list[Message]:
    return [
        Message(Role.ASSISTANT, tool_call=call),
        Message(Role.TOOL, result, tool_call_id=call.call_id),
    ]


def _reasoning(trace: _Trace | None, seconds: float) -> remediation_pb2.ModelReasoning:
    if trace is None:
        return remediation_pb2.ModelReasoning(latency_seconds=seconds)
    return remediation_pb2.ModelReasoning(
        provider=trace.provider.name,
        model=trace.provider.model,
        prompt=trace.prompt[:32_768],
        tool_uses=trace.tool_uses,
        answer=trace.answer,
        validation=trace.validation[:1024],
        input_tokens=trace.usage.input_tokens,
        output_tokens=trace.usage.output_tokens,
        cost_usd=trace.cost(),
        latency_seconds=seconds,
    )


def rules_only(rules: remediation_pb2.Analysis, why: str) -> remediation_pb2.Analysis:
    """The rules' analysis when no model could be asked, saying why."""
    return _fallback(rules, remediation_pb2.ModelReasoning(), why)


def _fallback(
    rules: remediation_pb2.Analysis, reasoning: remediation_pb2.ModelReasoning, why: str
) -> remediation_pb2.Analysis:
    """The rules' analysis, saying why the model had no part in it."""
    analysis = remediation_pb2.Analysis()
    analysis.CopyFrom(rules)
    reasoning.fallback_reason = why[:1024]
    reasoning.guard = "rules only"
    analysis.reasoning.CopyFrom(reasoning)
    analysis.reasons.append(f"The rules decided without a model: {why}"[:1024])
    return analysis
