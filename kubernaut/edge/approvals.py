"""Approvals from chat at the edge: Slack's Approve/Reject buttons and the signed links.

Both end in one call, the workflow's DecideApproval, made for the person the edge
authenticated: the Slack user who clicked (`slack:<user ID>`, from a request Slack signed)
or the channel a signed link was sent to (`link:<channel>`). The edge passes that subject
in `kubernaut-on-behalf-of` metadata; the workflow service trusts it from the edge alone,
for DecideApproval alone, and the role bindings decide whether that person may approve.

A link's page (GET) only shows what the link would do: mail scanners and chat previews
open links, and must not approve anything. The decision is the page's form (POST).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs

import grpc
import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from kubernaut.workflow.v1 import workflow_pb2
from prometheus_client import Counter

from kubernaut.runtime.chat_approvals import (
    LINKS_PATH,
    SLACK_APPROVE_ACTION_ID,
    SLACK_REJECT_ACTION_ID,
    Decision,
    LinkClaims,
    LinkRefused,
    LinkVerifier,
    verify_slack_request,
)

log = logging.getLogger("kubernaut.edge.approvals")

SLACK_PATH: Final = "/api/v1/approvals/slack"
# Slack's interaction payloads are a few KiB; a larger body is not one.
MAX_BODY_BYTES: Final = 64 * 1024

DECISIONS: Final = Counter(
    "kubernaut_edge_approval_requests_total",
    "Approval decisions that reached the edge, by way (slack, link) and result: decided,"
    " repeated (a decision recorded before), refused (not allowed, or nothing waits),"
    " unauthenticated (a bad signature, an expired link), unavailable.",
    ["way", "result"],
)

# The workflow's DecideApproval, called for `subject` (kubernaut-on-behalf-of).
Decide = Callable[
    [workflow_pb2.DecideApprovalRequest, str], Awaitable[workflow_pb2.DecideApprovalResponse]
]

_PROTO_DECISION: Final = {
    Decision.APPROVE: workflow_pb2.APPROVAL_DECISION_APPROVE,
    Decision.REJECT: workflow_pb2.APPROVAL_DECISION_REJECT,
}
_SLACK_DECISION: Final = {
    SLACK_APPROVE_ACTION_ID: Decision.APPROVE,
    SLACK_REJECT_ACTION_ID: Decision.REJECT,
}
_PAST: Final = {Decision.APPROVE: "approved", Decision.REJECT: "rejected"}


@dataclass(frozen=True)
class Outcome:
    """What became of one decision, for the person who made it."""

    # The HTTP status a link's page answers with.
    status: int
    # decided, repeated, refused, unavailable (the metric's result).
    result: str
    message: str


def outcome_of_error(error: grpc.aio.AioRpcError) -> Outcome:
    """DecideApproval's refusal, in words the person can act on."""
    code, details = error.code(), error.details() or ""
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return Outcome(403, "refused", f"Not allowed: {details}")
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return Outcome(409, "refused", f"Nothing was changed: {details}")
    if code is grpc.StatusCode.NOT_FOUND:
        return Outcome(404, "refused", "Kubernaut has no such workflow (any more).")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return Outcome(400, "refused", f"Not a valid decision: {details}")
    log.warning("DecideApproval failed", extra={"code": code.name})
    return Outcome(503, "unavailable", "Kubernaut could not record it just now; try again.")


class Approvals:
    """Takes decisions from Slack and from signed links. `links` None: links are not
    configured (their routes answer 404); `slack_signing_secret` None: no Slack app."""

    def __init__(
        self,
        decide: Decide,
        *,
        links: LinkVerifier | None = None,
        slack_signing_secret: str | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._decide = decide
        self._links = links
        self._slack_secret = slack_signing_secret
        # For Slack's response_url (the clicker's answer); made on first use.
        self._http = http
        self._clock = clock
        self._replies: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        if self._replies:
            await asyncio.gather(*self._replies, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def decide(
        self, way: str, workflow_id: str, decision: Decision, subject: str, reason: str
    ) -> Outcome:
        request = workflow_pb2.DecideApprovalRequest(
            workflow_id=workflow_id, decision=_PROTO_DECISION[decision], reason=reason
        )
        try:
            answer = await self._decide(request, subject)
        except grpc.aio.AioRpcError as error:
            outcome = outcome_of_error(error)
        else:
            if answer.decided:
                done = f"{_PAST[decision].capitalize()} as {subject}."
                outcome = Outcome(200, "decided", f"{done} {answer.workflow.message}".strip())
            else:
                outcome = Outcome(
                    409,
                    "repeated",
                    f"This was {_PAST[decision]} as {subject} before; nothing more was changed"
                    " (a link or a button decides once).",
                )
        DECISIONS.labels(way, outcome.result).inc()
        log.info(
            "approval decision",
            extra={
                "way": way,
                "workflow_id": workflow_id,
                "decision": decision.value,
                "subject": subject,
                "result": outcome.result,
            },
        )
        return outcome

    # Signed links -----------------------------------------------------------------------

    def _claims(self, token: str) -> LinkClaims:
        if self._links is None:
            raise LinkRefused("approval links are not configured on this edge")
        return self._links.verify(token, now=self._clock())

    async def link_page(self, token: str) -> HTMLResponse:
        try:
            claims = self._claims(token)
        except LinkRefused as error:
            return _refused_link(error)
        verb = claims.decision.value.capitalize()
        body = (
            f"<p>{verb} workflow <code>{html.escape(claims.workflow_id)}"
            f"</code> of incident <code>{html.escape(claims.incident_id)}</code>, as"
            f" <code>{html.escape(claims.subject)}</code>?</p>"
            f'<form method="post"><button type="submit">{verb}</button></form>'
            "<p>The link decides once. Kubernaut's checks still run before anything changes.</p>"
        )
        return _page(200, f"{verb} this action?", body, raw=True)

    async def link_decision(self, token: str) -> HTMLResponse:
        try:
            claims = self._claims(token)
        except LinkRefused as error:
            return _refused_link(error)
        outcome = await self.decide(
            "link",
            claims.workflow_id,
            claims.decision,
            claims.subject,
            f"signed link sent to {claims.subject.removeprefix('link:')}",
        )
        title = {"decided": "Done", "repeated": "Already used"}.get(outcome.result, "Not done")
        return _page(outcome.status, title, outcome.message)

    # Slack ------------------------------------------------------------------------------

    async def slack_interaction(self, headers: Mapping[str, str], body: bytes) -> Response:
        """One interaction request from Slack. Slack wants a 200 within three seconds;
        what came of the click goes to its response_url, for the clicker only."""
        if self._slack_secret is None:
            return JSONResponse({"error": "no Slack app is configured on this edge"}, 404)
        if not verify_slack_request(self._slack_secret, headers, body, self._clock()):
            DECISIONS.labels("slack", "unauthenticated").inc()
            return JSONResponse(
                {"error": "the Slack signature or timestamp does not hold"}, status_code=401
            )
        try:
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            action = payload["actions"][0]
            decision = _SLACK_DECISION.get(action["action_id"])
            workflow_id = str(action["value"])
            user = payload["user"]
            subject = f"slack:{user['id']}"
            who = str(user.get("username") or user.get("name") or user["id"])
            response_url = str(payload.get("response_url", ""))
        except (KeyError, IndexError, TypeError, ValueError):
            return JSONResponse({"error": "not a Slack block_actions payload"}, status_code=400)
        if decision is None:
            # Another app's button in the same workspace: nothing of ours.
            return Response(status_code=200)
        outcome = await self.decide(
            "slack", workflow_id, decision, subject, f"clicked in Slack by {who}"
        )
        if response_url:
            reply = asyncio.create_task(self._reply(response_url, outcome.message))
            self._replies.add(reply)
            reply.add_done_callback(self._replies.discard)
        return Response(status_code=200)

    async def _reply(self, response_url: str, text: str) -> None:
        # Only to Slack's own hosts (or loopback, for tests): the URL came in a signed
        # request, but a mistake in it must not make the edge call elsewhere.
        url = httpx.URL(response_url)
        local = url.scheme == "http" and url.host in ("127.0.0.1", "localhost", "::1")
        if not (local or (url.scheme == "https" and url.host.endswith("slack.com"))):
            log.warning("Slack response_url refused", extra={"host": url.host})
            return
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0)
        try:
            await self._http.post(
                response_url,
                json={"response_type": "ephemeral", "replace_original": False, "text": text},
            )
        except httpx.HTTPError as error:
            log.warning("Slack response_url unreachable", extra={"error": type(error).__name__})

    def router(self) -> APIRouter:
        router = APIRouter(tags=["approvals"])
        approvals = self

        @router.post(
            SLACK_PATH,
            summary="Slack interactivity: the Approve/Reject buttons",
            responses={401: {"description": "bad signature or timestamp"}},
        )
        async def slack(request: Request) -> Response:
            body = await _bounded_body(request)
            if body is None:
                return JSONResponse({"error": "body over the size limit"}, status_code=413)
            return await approvals.slack_interaction(request.headers, body)

        @router.get(LINKS_PATH + "{token}", summary="A signed link: what it would decide")
        async def link_page(token: str) -> HTMLResponse:
            return await approvals.link_page(token)

        @router.post(LINKS_PATH + "{token}", summary="A signed link: decide")
        async def link_decision(token: str) -> HTMLResponse:
            return await approvals.link_decision(token)

        return router


def _refused_link(error: LinkRefused) -> HTMLResponse:
    DECISIONS.labels("link", "unauthenticated").inc()
    return _page(410 if error.expired else 404, "Link refused", str(error))


async def _bounded_body(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# The link is a credential in the URL: never sent on as a referrer, never cached, never
# framed by another site (a click there would be ours).
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
    " form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


def _page(status: int, title: str, body: str, *, raw: bool = False) -> HTMLResponse:
    content = body if raw else f"<p>{html.escape(body)}</p>"
    return HTMLResponse(
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>Kubernaut: {html.escape(title)}</title>"
        '<meta name="viewport" content="width=device-width">'
        "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{content}</body></html>",
        status_code=status,
        headers=_PAGE_HEADERS,
    )
