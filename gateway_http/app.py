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

from gateway_http.webhooks import AlertmanagerWebhook, MissingAlertName, to_alerts

log = logging.getLogger("kubernaut.edge")

ALERTMANAGER_PATH = "/api/v1/alerts/alertmanager"

Submit = Callable[[gateway_pb2.SubmitAlertsRequest], Awaitable[gateway_pb2.SubmitAlertsResponse]]


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


def create_app(submit: Submit) -> FastAPI:
    app = FastAPI(title="Kubernaut HTTP edge", version="1")

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

    @app.post(ALERTMANAGER_PATH)
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
