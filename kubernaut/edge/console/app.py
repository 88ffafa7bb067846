"""The console's routes, under /ui: server-rendered pages (Jinja2, autoescaped), no
script at all, so the Content-Security-Policy allows none.

Every page needs a signed-in person (else it sends the browser to sign in) and reads
through the services with that person's token; what the person may not see or do, the
services refuse, and the page says so. Approve/Reject show only for the approver role
(from the same role bindings the services apply); each POST carries the session's CSRF
token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, quote

import grpc
import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from kubernaut.storage.v1 import storage_pb2

from kubernaut.edge.console.session import (
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    SESSION_COOKIE,
    Person,
    Sessions,
    SignInFailed,
)
from kubernaut.edge.console.views import Console
from kubernaut.runtime.access import Access
from kubernaut.runtime.edges import Role, role_allows

log = logging.getLogger("kubernaut.edge.console")

HERE: Final = Path(__file__).parent
# Pages reload themselves this often (a meta refresh: no script needed), except while they
# show a form a person may be filling in (Approve/Reject with a reason).
REFRESH_SECONDS: Final = 10
MAX_FORM_BYTES: Final = 8192
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATUSES: Final = [
    name.removeprefix("INCIDENT_STATUS_").lower()
    for name in storage_pb2.IncidentStatus.keys()  # noqa: SIM118 (an enum wrapper)
    if name != "INCIDENT_STATUS_UNSPECIFIED"
]
_CODES: Final = {
    grpc.StatusCode.PERMISSION_DENIED: (403, "Not allowed"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "Sign in again"),
    grpc.StatusCode.NOT_FOUND: (404, "Not found"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, "Not a valid request"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "Nothing was changed"),
}


class ConsoleApp:
    """The /ui routes of one edge."""

    def __init__(self, console: Console, sessions: Sessions, access: Access) -> None:
        self.console = console
        self.sessions = sessions
        self._access = access
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    async def close(self) -> None:
        await self.sessions.close()

    def roles(self, person: Person) -> list[str]:
        subjects = [f"user:{person.name}", *(f"group:{g}" for g in person.groups)]
        return sorted(self._access.roles(subjects))

    def page(
        self,
        template: str,
        person: Person | None,
        http_status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        roles = self.roles(person) if person is not None else []
        may_approve = role_allows(roles, Role.APPROVER)
        if values.pop("deciding", False) and may_approve:
            values["refresh"] = 0
        values.setdefault("refresh", 0)
        values.setdefault("notice", "")
        html = self._templates.get_template(template).render(
            person=person,
            roles=roles,
            may_approve=may_approve,
            **values,
        )
        return HTMLResponse(html, status_code=http_status, headers=_HEADERS)

    def failed(self, person: Person | None, error: grpc.aio.AioRpcError) -> HTMLResponse:
        status, title = _CODES.get(error.code(), (503, "Kubernaut cannot answer just now"))
        if status == 503:
            log.warning("console call failed", extra={"code": error.code().name})
        return self.page(
            "error.html", person, status, title=title, message=error.details() or error.code().name
        )

    def notice(self, request: Request) -> str:
        """The outcome the last form left for this page (signed by this console)."""
        opened = self.sessions.open(request.query_params.get("notice", ""))
        return str(opened.get("notice", "")) if opened else ""

    async def signed_in(self, request: Request) -> Person | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        try:
            return await self.sessions.person(token)
        except SignInFailed:
            return None

    def to_login(self, request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)

    def router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)
        app = self

        def person_page(
            handler: Callable[[Request, Person], Awaitable[Response]],
        ) -> Callable[[Request], Awaitable[Response]]:
            async def page(request: Request) -> Response:
                person = await app.signed_in(request)
                if person is None:
                    if request.method != "GET":
                        return app.page(
                            "error.html",
                            None,
                            401,
                            title="Sign in again",
                            message="Your session ended; sign in and try again.",
                        )
                    return app.to_login(request)
                try:
                    return await handler(request, person)
                except grpc.aio.AioRpcError as error:
                    return app.failed(person, error)

            return page

        async def incidents(request: Request, person: Person) -> Response:
            status = request.query_params.get("status", "")
            value = storage_pb2.INCIDENT_STATUS_UNSPECIFIED
            if status:
                if status not in _STATUSES:
                    return app.page("error.html", person, 400, title="Not a status", message=status)
                value = storage_pb2.IncidentStatus.Value(f"INCIDENT_STATUS_{status.upper()}")
            text = request.query_params.get("q", "").strip()[:200]
            rows = await app.console.incidents(person.token, value, text)
            return app.page(
                "incidents.html",
                person,
                rows=rows,
                status=status,
                text=text,
                statuses=_STATUSES,
                refresh=REFRESH_SECONDS,
            )

        async def incident(request: Request, person: Person) -> Response:
            view = await app.console.incident(person.token, request.path_params["incident_id"])
            return app.page(
                "incident.html",
                person,
                view=view,
                here=request.url.path,
                notice=app.notice(request),
                refresh=REFRESH_SECONDS,
                deciding=view.workflow is not None and view.workflow.waiting,
            )

        async def approvals(request: Request, person: Person) -> Response:
            held = await app.console.waiting(person.token)
            return app.page(
                "approvals.html",
                person,
                held=held,
                here="/ui/approvals",
                notice=app.notice(request),
                refresh=REFRESH_SECONDS,
                deciding=bool(held),
            )

        async def overview(request: Request, person: Person) -> Response:
            return app.page(
                "overview.html", person, overview=await app.console.overview(person.token)
            )

        async def decide(request: Request, person: Person) -> Response:
            form = await _form(request)
            if form is None or not app.sessions.csrf_holds(person, form.get("csrf", "")):
                return app.page(
                    "error.html",
                    person,
                    403,
                    title="Not allowed",
                    message="The form is stale or did not come from this console; reload it.",
                )
            decision = form.get("decision", "")
            if decision not in ("approve", "reject"):
                return app.page("error.html", person, 400, title="No decision", message=decision)
            workflow_id = request.path_params["workflow_id"]
            decided = await app.console.decide(
                person.token, workflow_id, decision == "approve", form.get("reason", "").strip()
            )
            done = "approved" if decision == "approve" else "rejected"
            notice = (
                f"You {done} workflow {workflow_id}. {decided.workflow.message}"
                if decided.decided
                else f"You had {done} workflow {workflow_id} before; nothing more changed."
            )
            back = form.get("next", "")
            back = back if back.startswith("/ui") and "//" not in back else "/ui/approvals"
            # Signed, so that a link cannot make the console say what it did not do.
            sealed = app.sessions.seal({"notice": notice, "exp": app.sessions.now() + 60})
            return RedirectResponse(f"{back}?notice={quote(sealed)}", status_code=303)

        async def login(request: Request) -> Response:
            try:
                url, cookie = await app.sessions.start(request.query_params.get("next", "/ui"))
            except SignInFailed as error:
                return app.page("error.html", None, 503, title="Cannot sign in", message=str(error))
            response = RedirectResponse(url, status_code=303)
            response.set_cookie(LOGIN_COOKIE, cookie, **app.sessions.cookie_options(LOGIN_SECONDS))
            return response

        async def callback(request: Request) -> Response:
            try:
                person, next_path = await app.sessions.finish(
                    dict(request.query_params), request.cookies.get(LOGIN_COOKIE)
                )
            except SignInFailed as error:
                return app.page("error.html", None, 401, title="Not signed in", message=str(error))
            log.info("console sign-in", extra={"person": person.name})
            response = RedirectResponse(next_path, status_code=303)
            lifetime = max(1, int(person.expires_at - app.sessions.now()))
            response.set_cookie(
                SESSION_COOKIE, person.token, **app.sessions.cookie_options(lifetime)
            )
            response.delete_cookie(LOGIN_COOKIE, path="/ui")
            return response

        async def logout(request: Request, person: Person) -> Response:
            form = await _form(request)
            if form is None or not app.sessions.csrf_holds(person, form.get("csrf", "")):
                return app.page(
                    "error.html", person, 403, title="Not allowed", message="stale form"
                )
            response = RedirectResponse("/ui/signed-out", status_code=303)
            response.delete_cookie(SESSION_COOKIE, path="/ui")
            return response

        async def signed_out(request: Request) -> Response:
            return app.page("error.html", None, title="Signed out", message="You are signed out.")

        async def stylesheet(request: Request) -> Response:
            return FileResponse(
                HERE / "static" / "console.css",
                media_type="text/css",
                headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
            )

        router.add_api_route("/ui", person_page(incidents), methods=["GET"])
        router.add_api_route("/ui/incidents/{incident_id}", person_page(incident), methods=["GET"])
        router.add_api_route("/ui/approvals", person_page(approvals), methods=["GET"])
        router.add_api_route("/ui/overview", person_page(overview), methods=["GET"])
        router.add_api_route("/ui/approvals/{workflow_id}", person_page(decide), methods=["POST"])
        router.add_api_route("/ui/login", login, methods=["GET"])
        router.add_api_route("/ui/callback", callback, methods=["GET"])
        router.add_api_route("/ui/logout", person_page(logout), methods=["POST"])
        router.add_api_route("/ui/signed-out", signed_out, methods=["GET"])
        router.add_api_route("/ui/static/console.css", stylesheet, methods=["GET"])
        return router


async def _form(request: Request) -> dict[str, str] | None:
    """An urlencoded form's fields (the last of each), or None when it is not one or too
    large."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    return {name: values[-1] for name, values in fields.items()}
