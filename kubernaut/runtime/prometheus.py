"""Prometheus' HTTP API, read-only: instant queries (`/api/v1/query`), at now or at a given
time. Used by ai_analysis (the alert's own expression, as a tool) and effectiveness (the
metrics before and after an action)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from kubernaut.runtime.redaction import redact_url

__all__ = ["PromQL", "PrometheusAPI", "PrometheusUnavailable", "Sample", "label_matcher"]


class PrometheusUnavailable(Exception):
    """Prometheus could not answer the query (down, an error, or a query it refused): its
    evidence is missing, never assumed good."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and its value."""

    labels: Mapping[str, str]
    value: float


def label_matcher(name: str, value: str, *, regex: bool = False) -> str:
    """`name="value"` (or `name=~"value"`) with the value escaped for PromQL."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{name}{"=~" if regex else "="}"{escaped}"'


# An instant query's text, as its caller built it.
PromQL = str


class PrometheusAPI:
    """One Prometheus, through one pooled HTTP client (`close()` it)."""

    def __init__(
        self, url: str, timeout: float = 5.0, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.display_url = redact_url(self.url)
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def query(self, expression: PromQL, at: dt.datetime | None = None) -> list[Sample]:
        """The instant vector of `expression` at `at` (now when None). A scalar answers as
        one sample without labels. PrometheusUnavailable when it cannot be had."""
        params = {"query": expression}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        try:
            response = await self._client.get(f"{self.url}/api/v1/query", params=params)
        except httpx.HTTPError as error:
            raise PrometheusUnavailable(
                f"Prometheus at {self.display_url} did not answer ({type(error).__name__})"
            ) from error
        body: Any = {}
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                body = response.json()
            except ValueError:
                body = {}
        if response.status_code != 200 or body.get("status") != "success":
            why = str(body.get("error", ""))[:200] if isinstance(body, dict) else ""
            raise PrometheusUnavailable(
                f"Prometheus at {self.display_url} answered {response.status_code}: {why}"
            )
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar" and isinstance(result, list):
            return [Sample({}, _number(result[1]))]
        if data.get("resultType") != "vector" or not isinstance(result, list):
            raise PrometheusUnavailable(
                f"Prometheus at {self.display_url} answered a {data.get('resultType')!r},"
                " not an instant vector"
            )
        return [
            Sample(
                {str(k): str(v) for k, v in (item.get("metric") or {}).items()},
                _number((item.get("value") or [None, "NaN"])[1]),
            )
            for item in result
            if isinstance(item, dict)
        ]

    async def close(self) -> None:
        await self._client.aclose()


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
