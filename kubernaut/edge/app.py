"""The HTTP edge: the only HTTP listener for alerts. It turns webhooks into gateway calls.

A webhook request takes a short path of plain ASGI steps: measured and traced, the
concurrency cap, the size limit, the sender (authentication, content type), its rate
limit, then the webhook itself. FastAPI's routing, dependency and exception layers cost
more CPU per request than all of those together (bench/edge_throughput), so they serve
the rest: the OpenAPI document (which describes the webhook routes too), /docs, /healthz,
and JSON 404s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.gateway.v1 import gateway_pb2
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kubernaut.edge.admission import ConcurrencyCap, Measured, SenderRateLimit, mark_refusal
from kubernaut.edge.grafana import GrafanaWebhook, grafana_to_alerts
from kubernaut.edge.security import (
    Authenticator,
    BodyLimit,
    SenderCheck,
    read_body,
    refusal_response,
)
from kubernaut.edge.webhooks import AlertmanagerWebhook, MissingAlertName, to_alerts
from kubernaut.runtime.ratelimit import RateLimiter

if TYPE_CHECKING:
    # Made (and imported) by the edge's settings only when configured.
    from kubernaut.edge.approvals import Approvals
    from kubernaut.edge.console.app import ConsoleApp

log = logging.getLogger("kubernaut.edge")

ALERTMANAGER_PATH = "/api/v1/alerts/alertmanager"
GRAFANA_PATH = "/api/v1/alerts/grafana"
WEBHOOK_PATHS = frozenset({ALERTMANAGER_PATH, GRAFANA_PATH})

Submit = Callable[[gateway_pb2.SubmitAlertsRequest], Awaitable[gateway_pb2.SubmitAlertsResponse]]

# AlertManager's default webhook body cap is far below this; a larger body is not an alert.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_CONCURRENT = 256

_ANSWERS: Final[dict[str, str]] = {
    "200": "every alert of the body is durably accepted; the outcomes say what became of each",
    "400": "malformed body; the violations name the fields",
    "401": "missing or invalid bearer token or signature",
    "405": "not a POST",
    "413": "body over the size limit",
    "415": "not application/json",
    "429": "the sender is over its rate limit; Retry-After says when to retry",
    "503": "not accepted (overloaded, or the gateway is unreachable); retry",
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
_BY_PATH: Final = {webhook.path: webhook for webhook in _WEBHOOKS}


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


def _document_webhooks(api: FastAPI) -> None:
    """Adds the webhook routes, and the models of their bodies, to FastAPI's OpenAPI
    document (the routes themselves are not FastAPI's, see the module's docstring)."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = generate()  # FastAPI keeps it as api.openapi_schema
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for webhook in _WEBHOOKS:
                schema = webhook.model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
                schemas.update(schema.pop("$defs", {}))
                schemas[webhook.model.__name__] = schema
                body = {"$ref": f"#/components/schemas/{webhook.model.__name__}"}
                document.setdefault("paths", {})[webhook.path] = {
                    "post": {
                        "summary": webhook.summary,
                        "operationId": webhook.name,
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": body}},
                        },
                        "responses": {
                            status: {
                                "description": description,
                                "content": {"application/json": {"schema": {"type": "object"}}},
                            }
                            for status, description in _ANSWERS.items()
                        },
                    }
                }
        assert api.openapi_schema is not None
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


class WebhookRoutes:
    """The webhooks themselves, at the end of the short path: the body (read and checked
    by then) parsed by pydantic straight from its bytes, translated, and submitted."""

    def __init__(self, submit: Submit) -> None:
        self.submit = submit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        webhook = _BY_PATH[scope["path"]]
        if scope["method"] != "POST":
            refusal = refusal_response(405, "Method Not Allowed", {"Allow": "POST"})
            await refusal(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away
        try:
            response = await self.accept(scope, body, webhook.parse)
        except Exception:
            # A bug, not the sender's fault: a 5xx makes it send the alerts again.
            log.exception("webhook failed", extra={"route": scope["path"]})
            response = JSONResponse({"error": "internal error; retry"}, status_code=500)
        await response(scope, receive, send)

    async def accept(self, scope: Scope, body: bytes, parse: Parse) -> Response:
        try:
            translated = parse(body)
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
            response = await self.submit(gateway_pb2.SubmitAlertsRequest(alerts=translated))
        except grpc.aio.AioRpcError as error:
            answer: dict[str, Any] = {"error": f"{error.code().name}: {error.details()}"}
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                answer["violations"] = _violations(error)
                return JSONResponse(answer, status_code=400)
            log.warning("gateway call failed", extra={"code": error.code().name})
            mark_refusal(scope, "unavailable")
            # 5xx makes AlertManager and Grafana retry: nothing was lost.
            return JSONResponse(answer, status_code=503, headers={"Retry-After": "1"})
        return Response(
            accepted_body(len(translated), response.outcomes), media_type="application/json"
        )


class Edge:
    """The edge's ASGI application: webhook requests take the short path, everything
    else goes to FastAPI (`api`)."""

    def __init__(self, webhooks: ASGIApp, api: FastAPI) -> None:
        self.webhooks = webhooks
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in WEBHOOK_PATHS:
            await self.webhooks(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(
    submit: Submit,
    authenticator: Authenticator | None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    rate_limiter: RateLimiter | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    approvals: Approvals | None = None,
    console: ConsoleApp | None = None,
) -> Edge:
    """The edge's application. `authenticator` None accepts anonymous senders: only for a
    loopback demo, and the settings make that an explicit choice. `rate_limiter` None (or
    a rate of 0) and `max_concurrent` 0 turn those limits off. `approvals`: the routes of
    approvals from chat (Slack buttons, signed links), when configured; `console`: the web
    console under /ui, when configured."""
    api = FastAPI(
        title="Kubernaut HTTP edge",
        version="1",
        description=(
            "Webhooks in: AlertManager (version 4) and Grafana unified alerting. A 200 "
            "means every alert of the body is durably accepted; its outcome says what "
            "became of each. Every refusal is a JSON body naming the reason: 400 "
            "malformed, 401 unauthenticated, 413 too large, 415 not JSON, 429 over the "
            "sender's rate limit; 503 means retry (nothing was accepted)."
        ),
        # Only documents and health here; webhook requests are measured and traced by the
        # edge's own first step.
        telemetry={"metrics": False, "logs": False, "operation_spans": False},
    )

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return refusal_response(error.status_code, error.detail, error.headers)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if approvals is not None:
        # Slack's clicks and the signed links: each request carries its own proof (Slack's
        # signature, the link's), so no webhook token is asked for.
        api.include_router(approvals.router())
    if console is not None:
        # People signed in with OIDC; every call goes out with their own token.
        api.include_router(console.router())
    _document_webhooks(api)

    def refused(status: int, why: str) -> None:
        # The reason names the check, never the presented token.
        log.info("webhook refused", extra={"status": status, "why": why})

    # The short path, from the last step to the first.
    webhooks: ASGIApp = WebhookRoutes(submit)
    if rate_limiter is not None and rate_limiter.enabled:
        webhooks = SenderRateLimit(webhooks, limiter=rate_limiter, routes=WEBHOOK_PATHS)
    webhooks = SenderCheck(webhooks, authenticator, paths=WEBHOOK_PATHS, on_refusal=refused)
    webhooks = BodyLimit(webhooks, max_bytes=max_body_bytes)
    webhooks = ConcurrencyCap(webhooks, limit=max_concurrent, routes=WEBHOOK_PATHS)
    webhooks = Measured(webhooks, routes=WEBHOOK_PATHS)
    return Edge(webhooks, api)
