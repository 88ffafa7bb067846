"""How much the edge takes at once and from whom, and what it measures: a global cap on
requests in progress (503 beyond it), a token bucket per sender (429 beyond it), and the
request metrics. ASGI middleware, so that a refusal costs no body parsing.
"""

from __future__ import annotations

import time
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubernaut.edge.security import refusal_response
from kubernaut.runtime.ratelimit import RateLimiter, retry_after_header

_tracer = trace.get_tracer("kubernaut.edge")

REQUESTS: Final = Counter(
    "kubernaut_edge_requests_total",
    "Webhook requests by route and result (ok, or the reason of the refusal).",
    ["route", "result"],
)
REQUEST_SECONDS: Final = Histogram(
    "kubernaut_edge_request_seconds",
    "Time from a webhook request's arrival to its answer.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# What each refusal status means, for the metrics; 503s name themselves (see `_state`).
_RESULT_OF_STATUS: Final = {
    400: "invalid",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "not_json",
    422: "invalid",
    429: "rate_limited",
}


def _state(scope: Scope) -> dict[str, object]:
    state: dict[str, object] = scope.setdefault("state", {})
    return state


def mark_refusal(scope: Scope, result: str) -> None:
    """Name why a request was refused, for the metrics (when the status alone does not)."""
    _state(scope)["refusal"] = result


class Measured:
    """Outermost: counts every request of `routes` by result and times it, in a server
    span that continues the sender's trace (W3C traceparent): the gateway call made for
    the request carries it on."""

    def __init__(self, app: ASGIApp, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        route = scope["path"]
        method = scope["method"]
        with _tracer.start_as_current_span(
            f"{method} {route}",
            context=propagate.extract(Headers(scope=scope)),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        ) as span:
            try:
                await self.app(scope, receive, recording_send)
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
                self._count(scope, status, time.perf_counter() - started)

    @staticmethod
    def _count(scope: Scope, status: int, seconds: float) -> None:
        route = scope["path"]
        if status < 400:
            result = "ok"
        else:
            refusal = _state(scope).get("refusal")
            result = str(refusal) if refusal else _RESULT_OF_STATUS.get(status, str(status))
        REQUESTS.labels(route, result).inc()
        REQUEST_SECONDS.labels(route).observe(seconds)


class ConcurrencyCap:
    """At most `limit` webhook requests in progress; beyond that 503 with Retry-After, at
    once, so that an overloaded edge sheds load instead of queueing it without bound
    (AlertManager retries). `limit` <= 0 turns the cap off."""

    def __init__(self, app: ASGIApp, limit: int, routes: frozenset[str]) -> None:
        self.app = app
        self.limit = limit
        self.routes = routes
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            mark_refusal(scope, "overloaded")
            refusal = refusal_response(
                503,
                f"the edge is at its limit of {self.limit} requests in progress; retry",
                {"Retry-After": "1"},
            )
            await refusal(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


class SenderRateLimit:
    """A token bucket per sender (the identity SenderCheck put in the scope's state; one
    token per request); beyond it 429 with Retry-After."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, routes: frozenset[str]) -> None:
        self.app = app
        self.limiter = limiter
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        sender = str(_state(scope).get("sender", "anonymous"))
        verdict = self.limiter.take(sender)
        if not verdict.allowed:
            refusal = refusal_response(
                429,
                f"{sender} sends faster than its limit of {self.limiter.rate:g} requests per "
                f"second (burst {self.limiter.burst:g}); retry later",
                {"Retry-After": retry_after_header(verdict.retry_after)},
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)
