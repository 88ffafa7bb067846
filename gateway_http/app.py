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
from kubernaut.gateway.v1 import gateway_pb2
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway_http.security import Authenticator, BodyLimit, SenderCheck, refusal_response
from gateway_http.webhooks import AlertmanagerWebhook, MissingAlertName, to_alerts

log = logging.getLogger("kubernaut.edge")

ALERTMANAGER_PATH = "/api/v1/alerts/alertmanager"

Submit = Callable[[gateway_pb2.SubmitAlertsRequest], Awaitable[gateway_pb2.SubmitAlertsResponse]]

# AlertManager's default webhook body cap is far below this; a larger body is not an alert.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


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
) -> FastAPI:
    """The edge's application. `authenticator` None accepts anonymous senders: only for a
    loopback demo, and the settings make that an explicit choice."""
    app = FastAPI(
        title="Kubernaut HTTP edge",
        version="1",
        description=(
            "Webhooks in. Every refusal is a JSON body naming the reason: 400 malformed, "
            "401 unauthenticated, 413 too large, 415 not JSON; 503 means retry (nothing "
            "was accepted)."
        ),
    )

    def refused(status: int, why: str) -> None:
        # The reason names the check, never the presented token.
        log.info("webhook refused", extra={"status": status, "why": why})

    # Added last runs first: the size limit, then the sender, then the application.
    app.add_middleware(
        SenderCheck,
        authenticator=authenticator,
        paths=frozenset({ALERTMANAGER_PATH}),
        on_refusal=refused,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

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

    @app.post(
        ALERTMANAGER_PATH,
        summary="AlertManager webhook (version 4)",
        responses={
            400: {"description": "malformed body; the violations name the fields"},
            401: {"description": "missing or invalid bearer token or signature"},
            413: {"description": "body over the size limit"},
            415: {"description": "not application/json"},
            503: {"description": "not accepted; retry"},
        },
    )
    async def alertmanager(webhook: AlertmanagerWebhook) -> JSONResponse:
        try:
            alerts = to_alerts(webhook)
        except MissingAlertName as error:
            return JSONResponse(
                {
                    "error": str(error),
                    "violations": [{"field": error.field, "description": "required"}],
                },
                status_code=400,
            )
        try:
            response = await submit(gateway_pb2.SubmitAlertsRequest(alerts=alerts))
        except grpc.aio.AioRpcError as error:
            body: dict[str, Any] = {"error": f"{error.code().name}: {error.details()}"}
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                body["violations"] = _violations(error)
                return JSONResponse(body, status_code=400)
            log.warning("gateway call failed", extra={"code": error.code().name})
            # 5xx makes AlertManager retry: nothing was lost.
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {
                "accepted": len(alerts),
                "outcomes": [
                    MessageToDict(outcome, preserving_proto_field_name=True)
                    for outcome in response.outcomes
                ],
            }
        )

    return app
