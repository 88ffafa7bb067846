"""HolmesGPT as an optional investigator: its HTTP investigation API (POST /api/investigate
of the HolmesGPT server; request: source, title, description, subject, context; answer:
analysis, sections, tool_calls, instructions, metadata).

Its answer is evidence from another system, and a model's at that: it is redacted, capped
and never acted on by itself. A HolmesGPT that is slow or failing must not slow every
analysis down: each call has a timeout, and a circuit breaker refuses at once after
repeated failures.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from prometheus_client import Gauge

from kubernaut.runtime.breaker import BreakerOpen, CircuitBreaker
from kubernaut.runtime.redaction import Redactor, redact_url

INVESTIGATOR: Final = "holmesgpt"
MAX_ANALYSIS_BYTES: Final = 8192
MAX_SECTION_CHARS: Final = 2048
MAX_SECTIONS: Final = 12
MAX_TOOLS: Final = 50

HOLMES_CIRCUIT_OPEN: Final = Gauge(
    "kubernaut_context_holmes_circuit_open",
    "1 while the HolmesGPT circuit breaker refuses investigations (open or half-open), else 0.",
)


class HolmesUnavailable(Exception):
    """HolmesGPT gave no investigation: down, slow, failing, an answer that is not one, or
    its circuit is open."""


def _cap(text: str, limit: int) -> tuple[str, bool]:
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode(errors="ignore") + "…", True


def investigate_body(alert: alert_pb2.Alert, resource: alert_pb2.ResourceRef) -> dict[str, Any]:
    """The request HolmesGPT's /api/investigate takes, for a firing alert on `resource`."""
    annotations = dict(alert.annotations)
    description = annotations.get("description") or annotations.get("summary") or alert.name
    subject = {
        "name": resource.name,
        "namespace": resource.namespace,
        "kind": resource.kind,
        "node": resource.name if resource.kind == "Node" else None,
        "container": None,
        "cluster": resource.cluster or None,
    }
    return {
        "source": "prometheus",
        "title": alert.name,
        "description": description,
        "subject": subject,
        "context": {
            "issue_type": alert.name,
            "labels": dict(alert.labels),
            "annotations": annotations,
            "starts_at": alert.starts_at.ToJsonString() if alert.HasField("starts_at") else "",
        },
        "source_instance_id": "kubernaut",
        "include_tool_calls": True,
        "include_tool_call_results": False,
    }


def investigation_of(
    body: Any, redact: Redactor, latency: float, now: dt.datetime
) -> context_api_pb2.Investigation:
    """The investigation in HolmesGPT's answer, redacted and capped; HolmesUnavailable when
    the answer is not one (not an object, or without an analysis)."""
    if not isinstance(body, Mapping):
        raise HolmesUnavailable("HolmesGPT answered something other than an investigation")
    analysis = body.get("analysis")
    if not isinstance(analysis, str) or not analysis.strip():
        raise HolmesUnavailable("HolmesGPT answered without an analysis")
    text, truncated = _cap(redact(analysis.strip()), MAX_ANALYSIS_BYTES)
    investigation = context_api_pb2.Investigation(
        investigator=INVESTIGATOR, analysis=text, truncated=truncated, latency_seconds=latency
    )
    sections = body.get("sections")
    if isinstance(sections, Mapping):
        for title, section in list(sections.items())[:MAX_SECTIONS]:
            if isinstance(section, str) and section.strip():
                capped, cut = _cap(redact(section.strip()), MAX_SECTION_CHARS)
                investigation.sections[str(title)[:100]] = capped
                investigation.truncated |= cut
    calls = body.get("tool_calls")
    if isinstance(calls, list):
        for call in calls[:MAX_TOOLS]:
            name = call.get("tool_name") if isinstance(call, Mapping) else None
            if isinstance(name, str) and name:
                investigation.tools.append(name[:100])
    investigation.observed_at.FromDatetime(now)
    return investigation


class HolmesClient:
    """One HolmesGPT server, through one pooled HTTP client, behind a circuit breaker."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        breaker_failures: int,
        breaker_open_seconds: float,
        redact: Redactor | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.display_url = redact_url(self.url)
        self.timeout = timeout
        self.redact = redact or Redactor()
        self.breaker = CircuitBreaker(
            INVESTIGATOR,
            failures=breaker_failures,
            open_seconds=breaker_open_seconds,
            gauge=HOLMES_CIRCUIT_OPEN,
        )
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def investigate(
        self, alert: alert_pb2.Alert, resource: alert_pb2.ResourceRef
    ) -> context_api_pb2.Investigation:
        """HolmesGPT's investigation of `alert` on `resource`; HolmesUnavailable otherwise."""
        try:
            self.breaker.check()
        except BreakerOpen as error:
            raise HolmesUnavailable(f"HolmesGPT at {self.display_url}: {error}") from None
        began = time.monotonic()
        try:
            response = await self._client.post(
                f"{self.url}/api/investigate", json=investigate_body(alert, resource)
            )
        except httpx.TimeoutException:
            self.breaker.failure()
            raise HolmesUnavailable(
                f"HolmesGPT at {self.display_url} did not answer within {self.timeout:g}s"
            ) from None
        except httpx.HTTPError as error:
            self.breaker.failure()
            raise HolmesUnavailable(
                f"HolmesGPT at {self.display_url} could not be reached ({type(error).__name__})"
            ) from None
        latency = time.monotonic() - began
        if response.status_code >= 500 or response.status_code == 429:
            self.breaker.failure()
            raise HolmesUnavailable(
                f"HolmesGPT at {self.display_url} failed ({response.status_code}"
                f"{_detail(response)})"
            )
        # It answered: reachable, whatever it said.
        self.breaker.success()
        if response.status_code != 200:
            raise HolmesUnavailable(
                f"HolmesGPT at {self.display_url} refused the request ({response.status_code}"
                f"{_detail(response)})"
            )
        try:
            body = response.json()
        except ValueError:
            raise HolmesUnavailable(f"HolmesGPT at {self.display_url} answered no JSON") from None
        return investigation_of(body, self.redact, latency, dt.datetime.now(dt.UTC))

    async def close(self) -> None:
        await self._client.aclose()


def _detail(response: httpx.Response) -> str:
    """FastAPI's {"detail": ...} of an error answer, short, or nothing."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    return f": {str(detail)[:200]}" if detail else ""
