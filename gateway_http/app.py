"""The HTTP edge: the only HTTP listener for alerts. It turns webhooks into gateway calls."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kubernaut.common.v1 import alert_pb2
from kubernaut.gateway.v1 import gateway_pb2
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway_http.admission import ConcurrencyCap, Measured, SenderRateLimit, mark_refusal
from gateway_http.grafana import GrafanaWebhook, grafana_to_alerts
from gateway_http.security import Authenticator, BodyLimit, SenderCheck, refusal_response
from gateway_http.webhooks import AlertmanagerWebhook, MissingAlertName, to_alerts
from services.gateway.limits import RateLimiter

log = logging.getLogger("kubernaut.edge")

ALERTMANAGER_PATH = "/api/v1/alerts/alertmanager"
GRAFANA_PATH = "/api/v1/alerts/grafana"
WEBHOOK_PATHS = frozenset({ALERTMANAGER_PATH, GRAFANA_PATH})

Submit = Callable[[gateway_pb2.SubmitAlertsRequest], Awaitable[gateway_pb2.SubmitAlertsResponse]]

# AlertManager's default webhook body cap is far below this; a larger body is not an alert.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_CONCURRENT = 256

_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed body; the violations name the fields"},
    401: {"description": "missing or invalid bearer token or signature"},
    413: {"description": "body over the size limit"},
    415: {"description": "not application/json"},
    429: {"description": "the sender is over its rate limit; Retry-After says when to retry"},
    503: {"description": "not accepted (overloaded, or the gateway is unreachable); retry"},
}


def _violations(error: grpc.aio.AioRpcError) -> list[dict[str, str]]:
    status = rpc_status.from_call(error)
    violations: list[dict[str, str]] = []
    for detail in status.details if status else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations += [
                {"field": v.field, "description": v.description}
                for v in bad_request.field_violations
            ]
    return violations


def create_app(
    submit: Submit,
    authenticator: Authenticator | None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    rate_limiter: RateLimiter | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
) -> FastAPI:
    """The edge's application. `authenticator` None accepts anonymous senders: only for a
    loopback demo, and the settings make that an explicit choice. `rate_limiter` None (or
    a rate of 0) and `max_concurrent` 0 turn those limits off."""
    app = FastAPI(
        title="Kubernaut HTTP edge",
        version="1",
        description=(
            "Webhooks in: AlertManager (version 4) and Grafana unified alerting. A 200 "
            "means every alert of the body is durably accepted; its outcome says what "
            "became of each. Every refusal is a JSON body naming the reason: 400 "
            "malformed, 401 unauthenticated, 413 too large, 415 not JSON, 429 over the "
            "sender's rate limit; 503 means retry (nothing was accepted)."
        ),
        # FastAPI's own telemetry keeps only the request span (it carries a caller's
        # traceparent on to the gateway). Its metrics, logs and per-stage spans would repeat
        # the edge's Prometheus metrics and logs at a fifth of the edge's CPU per request.
        telemetry={"metrics": False, "logs": False, "operation_spans": False},
    )

    def refused(status: int, why: str) -> None:
        # The reason names the check, never the presented token.
        log.info("webhook refused", extra={"status": status, "why": why})

    # Added last runs first: measuring, the concurrency cap, the size limit, the sender,
    # its rate limit, then the application.
    if rate_limiter is not None and rate_limiter.enabled:
        app.add_middleware(SenderRateLimit, limiter=rate_limiter, routes=WEBHOOK_PATHS)
    app.add_middleware(
        SenderCheck, authenticator=authenticator, paths=WEBHOOK_PATHS, on_refusal=refused
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(ConcurrencyCap, limit=max_concurrent, routes=WEBHOOK_PATHS)
    app.add_middleware(Measured, routes=WEBHOOK_PATHS)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return refusal_response(error.status_code, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"][1:]), "description": e["msg"]}
            for e in error.errors()
        ]
        return JSONResponse(
            {"error": "invalid webhook body", "violations": problems}, status_code=400
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def accept(request: Request, alerts: Callable[[], list[alert_pb2.Alert]]) -> JSONResponse:
        try:
            translated = alerts()
        except MissingAlertName as error:
            return JSONResponse(
                {
                    "error": str(error),
                    "violations": [{"field": error.field, "description": "required"}],
                },
                status_code=400,
            )
        try:
            response = await submit(gateway_pb2.SubmitAlertsRequest(alerts=translated))
        except grpc.aio.AioRpcError as error:
            body: dict[str, Any] = {"error": f"{error.code().name}: {error.details()}"}
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                body["violations"] = _violations(error)
                return JSONResponse(body, status_code=400)
            log.warning("gateway call failed", extra={"code": error.code().name})
            mark_refusal(request.scope, "unavailable")
            # 5xx makes AlertManager and Grafana retry: nothing was lost.
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse(
            {
                "accepted": len(translated),
                "outcomes": [
                    MessageToDict(outcome, preserving_proto_field_name=True)
                    for outcome in response.outcomes
                ],
            }
        )

    @app.post(ALERTMANAGER_PATH, summary="AlertManager webhook (version 4)", responses=_REFUSALS)
    async def alertmanager(request: Request, webhook: AlertmanagerWebhook) -> JSONResponse:
        return await accept(request, lambda: to_alerts(webhook))

    @app.post(GRAFANA_PATH, summary="Grafana unified-alerting webhook", responses=_REFUSALS)
    async def grafana(request: Request, webhook: GrafanaWebhook) -> JSONResponse:
        return await accept(request, lambda: grafana_to_alerts(webhook))

    return app
