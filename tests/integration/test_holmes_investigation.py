"""context_api's Investigate against a loopback HolmesGPT server (its /api/investigate
request and answer formats, FastAPI's errors): an investigation comes back redacted, capped
and with the tools it used; every way HolmesGPT fails is UNAVAILABLE with why, and after
repeated failures the circuit refuses at once; without a HolmesGPT server it is
FAILED_PRECONDITION. The context_api is the real service under mTLS, called as ai_analysis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.services.ai_analysis.rules import RulesSettings
from kubernaut.services.ai_analysis.server import AIAnalysisServicer, investigation_reason
from tests.fixtures.grpc_errors import field_violations
from tests.fixtures.holmes_loopback import HolmesLoopback, failed, result
from tests.fixtures.kubernaut import InProcessStack
from tests.fixtures.scripted_http import Answer

pytestmark = pytest.mark.integration

ALERT = alert_pb2.Alert(
    name="KubePodCrashLooping",
    status=alert_pb2.ALERT_STATUS_FIRING,
    labels={"namespace": "shop", "pod": "checkout-6d4b9c7f5-abcde", "severity": "warning"},
    annotations={"description": "Pod shop/checkout-6d4b9c7f5-abcde is crash looping."},
    starts_at=Timestamp(seconds=1796612400),
)
CHECKOUT = alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout")
REQUEST = context_api_pb2.InvestigateRequest(alert=ALERT, resource=CHECKOUT)


@contextlib.asynccontextmanager
async def context_api(
    stack: InProcessStack, monkeypatch: pytest.MonkeyPatch, **env: str
) -> AsyncIterator[ContextAPIServiceStub]:
    """A context_api of the test's own (KUBERNAUT_CONTEXT_* from `env`), called as
    ai_analysis."""
    for name, value in env.items():
        monkeypatch.setenv(f"KUBERNAUT_CONTEXT_{name.upper()}", value)
    addresses = {f"{name.value}_address": address for name, address in stack.addresses.items()}
    runtime = stack.settings.model_copy(update={**addresses, "grpc_port": 0})
    running = await start_service(ServiceName.CONTEXT_API, runtime, serve_metrics=False)
    caller = Clients(
        stack.settings, "ai-analysis", addresses={ServiceName.CONTEXT_API: running.address}
    )
    try:
        yield caller.stub(ContextAPIServiceStub)
    finally:
        await caller.close()
        await running.shutdown()


async def _refused(stub: ContextAPIServiceStub) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Investigate(REQUEST, timeout=30)
    return refused.value


async def test_an_investigation_comes_back_redacted_with_the_tools_it_used(
    stack: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HolmesLoopback() as holmes:
        async with context_api(stack, monkeypatch, holmes_url=holmes.url) as stub:
            answer = await stub.Investigate(REQUEST, timeout=30)
        (asked,) = holmes.requests
    body = asked.json
    # What HolmesGPT's request model takes, about this alert and object.
    assert (body["source"], body["title"]) == ("prometheus", "KubePodCrashLooping")
    assert body["description"] == "Pod shop/checkout-6d4b9c7f5-abcde is crash looping."
    assert body["subject"]["name"] == "checkout" and body["subject"]["namespace"] == "shop"
    assert body["context"]["labels"]["pod"] == "checkout-6d4b9c7f5-abcde"
    found = answer.investigation
    assert found.investigator == "holmesgpt"
    assert "missing config key PAYMENTS_URL" in found.analysis
    # An investigator's text is another model's words: secrets in it are masked.
    assert "sk-live-0123456789" not in found.analysis and "[REDACTED]" in found.analysis
    assert list(found.tools) == ["kubectl_logs", "kubectl_describe"]
    assert dict(found.sections) == {"Root cause": "missing config key PAYMENTS_URL"}
    assert found.latency_seconds > 0 and found.HasField("observed_at")


async def test_every_failure_of_holmes_is_unavailable_and_the_circuit_opens(
    stack: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HolmesLoopback() as holmes:
        holmes.script(
            Answer(200, {"analysis": "x"}, delay=3.0),  # slower than the timeout
            Answer(200, b"<html>gateway</html>", {"content-type": "text/html"}),
            Answer(200, {"analysis": None, "tool_calls": []}),
            Answer(422, {"detail": [{"type": "missing", "loc": ["body", "title"]}]}),
            failed("model provider quota exceeded"),
            failed("upstream timeout", 504),
            failed("rate limited", 429),
        )
        async with context_api(
            stack,
            monkeypatch,
            holmes_url=holmes.url,
            holmes_timeout_seconds="1",
            holmes_breaker_failures="3",
            holmes_breaker_open_seconds="60",
        ) as stub:
            reasons = []
            for _ in range(7):
                error = await _refused(stub)
                assert error.code() is grpc.StatusCode.UNAVAILABLE, error
                reasons.append(error.details() or "")
            asked = len(holmes.requests)
            # Three failures in a row (500, 504, 429): refused at once, HolmesGPT not asked.
            error = await _refused(stub)
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert "circuit open after 3 failures in a row" in (error.details() or "")
            assert len(holmes.requests) == asked
    assert "did not answer within 1s" in reasons[0]
    assert "answered no JSON" in reasons[1]
    assert "without an analysis" in reasons[2]
    assert "refused the request (422" in reasons[3]
    assert "failed (500: model provider quota exceeded)" in reasons[4]
    assert "failed (504" in reasons[5] and "failed (429" in reasons[6]


async def test_without_holmes_investigate_says_it_is_not_configured(
    stack: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with context_api(stack, monkeypatch) as stub:
        error = await _refused(stub)
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "KUBERNAUT_CONTEXT_HOLMES_URL" in (error.details() or "")
        # Nor does it read metrics without a Prometheus.
        with pytest.raises(grpc.aio.AioRpcError) as unmetered:
            await stub.GetWorkloadMetrics(
                context_api_pb2.GetWorkloadMetricsRequest(resource=CHECKOUT)
            )
        assert unmetered.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "KUBERNAUT_CONTEXT_PROMETHEUS_URL" in (unmetered.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Investigate(context_api_pb2.InvestigateRequest(resource=CHECKOUT))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "alert" in field_violations(bad.value)


def _analysis_with(stub: ContextAPIServiceStub, wait: float) -> AIAnalysisServicer:
    return AIAnalysisServicer(
        stub,
        WorkflowServiceStub(grpc.aio.insecure_channel("localhost:1")),
        RulesSettings(),
        holmes_wait_seconds=wait,
    )


async def test_the_analysis_weighs_holmes_and_goes_on_without_it_when_it_is_slow_or_down(
    stack: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident = storage_pb2.Incident(incident_id="i-1", alert=ALERT, subject=CHECKOUT)
    with HolmesLoopback() as holmes:
        holmes.script(Answer(200, result(), delay=0), Answer(200, result(), delay=5.0))
        async with context_api(stack, monkeypatch, holmes_url=holmes.url) as stub:
            heard = await _analysis_with(stub, 10)._investigation(incident)
            assert isinstance(heard, context_api_pb2.Investigation)
            reason = investigation_reason(heard)
            assert reason.startswith("HolmesGPT's investigation (")
            assert "it used kubectl_logs, kubectl_describe" in reason
            assert "Root cause The pods of checkout crash on start" in reason
            # Slower than the analysis waits: decided without it, and said so.
            slow = await _analysis_with(stub, 1)._investigation(incident)
            assert slow == "no answer within 1s"
            # Not asked at all when the analysis is not told to wait for it.
            assert await _analysis_with(stub, 0)._investigation(incident) == ""
    # HolmesGPT gone (the same URL, nothing listening), then not configured at all.
    async with context_api(stack, monkeypatch) as stub:
        down = await _analysis_with(stub, 10)._investigation(incident)
        assert isinstance(down, str) and down.startswith("UNAVAILABLE: HolmesGPT at")
        assert "could not be reached" in down
    monkeypatch.delenv("KUBERNAUT_CONTEXT_HOLMES_URL")
    async with context_api(stack, monkeypatch) as stub:
        off = await _analysis_with(stub, 10)._investigation(incident)
        assert isinstance(off, str) and off.startswith("FAILED_PRECONDITION")
