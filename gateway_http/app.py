"""The HTTP edge: the only HTTP listener for alerts. It turns webhooks into gateway calls."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.gateway.v1 import gateway_pb2
from pydantic import BaseModel, ValidationError
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


Parse = Callable[[bytes], list[alert_pb2.Alert]]


def _alertmanager_alerts(body: bytes) -> list[alert_pb2.Alert]:
    return to_alerts(AlertmanagerWebhook.model_validate_json(body))


def _grafana_alerts(body: bytes) -> list[alert_pb2.Alert]:
    return grafana_to_alerts(GrafanaWebhook.model_validate_json(body))


@dataclass(frozen=True)
class _Webhook:
    name: str
    path: str
    summary: str
    model: type[BaseModel]
    parse: Parse


_WEBHOOKS: Final = (
    _Webhook(
        "alertmanager",
        ALERTMANAGER_PATH,
        "AlertManager webhook (version 4)",
        AlertmanagerWebhook,
        _alertmanager_alerts,
    ),
    _Webhook(
        "grafana", GRAFANA_PATH, "Grafana unified-alerting webhook", GrafanaWebhook, _grafana_alerts
    ),
)


def _outcome(outcome: gateway_pb2.AlertOutcome) -> dict[str, Any]:
    """An outcome as proto3 JSON with proto field names (fields at their default left out),
    written directly: json_format's generic walk cost more than the rest of the answer."""
    written: dict[str, Any] = {}
    if outcome.index:
        written["index"] = outcome.index
    if outcome.fingerprint:
        written["fingerprint"] = outcome.fingerprint
    if outcome.disposition:
        written["disposition"] = remediation_pb2.AlertDisposition.Name(outcome.disposition)
    if outcome.reason:
        written["reason"] = outcome.reason
    if outcome.incident_id:
        written["incident_id"] = outcome.incident_id
    if outcome.flags:
        written["flags"] = list(outcome.flags)
    return written


def accepted_body(accepted: int, outcomes: Iterable[gateway_pb2.AlertOutcome]) -> bytes:
    """The 200 answer: how many alerts were accepted, and what became of each."""
    return json.dumps(
        {"accepted": accepted, "outcomes": [_outcome(o) for o in outcomes]},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a webhook route (the route parses the body itself)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _document_bodies(app: FastAPI, models: Iterable[type[BaseModel]]) -> None:
    """Adds the webhook body models to the OpenAPI document's schemas."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # FastAPI's own document, which it keeps as app.openapi_schema.
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def accept(request: Request, parse: Parse) -> Response:
        # The body is parsed here, not by FastAPI: pydantic reads the JSON bytes itself,
        # several times faster than decoding them to Python objects first.
        try:
            translated = parse(await request.body())
        except ValidationError as error:
            problems = [
                {"field": ".".join(str(p) for p in e["loc"]), "description": e["msg"]}
                for e in error.errors(include_url=False, include_context=False)
            ]
            return JSONResponse(
                {"error": "invalid webhook body", "violations": problems}, status_code=400
            )
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
        return Response(
            accepted_body(len(translated), response.outcomes), media_type="application/json"
        )

    def endpoint(parse: Parse) -> Callable[[Request], Awaitable[Response]]:
        async def webhook_route(request: Request) -> Response:
            return await accept(request, parse)

        return webhook_route

    for webhook in _WEBHOOKS:
        app.add_api_route(
            webhook.path,
            endpoint(webhook.parse),
            methods=["POST"],
            name=webhook.name,
            summary=webhook.summary,
            responses=_REFUSALS,
            openapi_extra=_json_body(webhook.model),
        )
    _document_bodies(app, [webhook.model for webhook in _WEBHOOKS])
    return app
