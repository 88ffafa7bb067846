"""Issues in Jira, through the REST API v2 (Jira Cloud, and Data Center, which has only v2).

The first event of an incident creates an issue: POST {site}/rest/api/2/issue
{"fields": {"project": {"key"}, "summary", "description", "issuetype": {"name"},
"labels": ["kubernaut", ...]}}; Jira answers 201 {"id", "key", "self"}, and the key and id
are kept in the thread. Later events are comments (POST .../issue/{key}/comment
{"body"}). The incident's end comments, then takes the configured transition (default
"Done"): GET .../issue/{key}/transitions, the one of that name, POST
.../issue/{key}/transitions {"transition": {"id"}} (204). A name the issue's workflow does
not offer now is a permanent error naming those it does.

v2 bodies are wiki markup: the text is put in a {noformat} box so that data stays text (an
alert's "[~accountid:...]" mentions nobody, "{color}" colours nothing); links a reader may
click follow the box.

Auth is HTTP Basic with the account's email and an API token from a file (Cloud), or a
personal access token from a file (Bearer, Data Center). Jira answers errors as
{"errorMessages": [...], "errors": {field: message}}: 400, 401, 403 and 404 are permanent;
429 (with Retry-After) and 5xx are retried.

The thread keeps the issue (issue_key, issue_id), the key of the event last commented
(`commented`: another attempt at that event does not comment twice) and whether the issue
was transitioned (`resolved`: a second end only comments). A failed result's thread holds
what was done before the failure.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import httpx
from pydantic import Field, HttpUrl, StringConstraints, model_validator

from kubernaut.services.notification.rendering import TEMPLATES_DIR, template_environment
from kubernaut.services.notification.vendors.base import (
    ChannelConfig,
    Notice,
    SendResult,
    cut,
    read_secret,
    result_of,
    unreachable,
)

__all__ = ["MAX_SUMMARY", "MAX_TEXT", "JiraChannel", "JiraConfig", "build"]

VENDOR: Final = "Jira"
# Jira's limits: a summary is one line of at most 255 characters; a text field
# (description, comment body) at most 32767.
MAX_SUMMARY: Final = 255
MAX_TEXT: Final = 32767
_BOX: Final = "{noformat}"
# Inside the box, only its closing tag is markup: data must not close it.
_BOX_TAG: Final = re.compile(r"(?i)\{(noformat)")
_THREAD_KEYS: Final = ("issue_key", "issue_id", "commented", "resolved")
_TEMPLATES: Final = template_environment(TEMPLATES_DIR)

# A Jira label: no whitespace, at most 255 characters.
Label = Annotated[str, StringConstraints(pattern=r"^\S{1,255}$")]


class JiraConfig(ChannelConfig):
    """A Jira channel in the routing file. Credentials are files (mounted Secrets):
    `email` with `api_token_file` (Cloud), or `personal_access_token_file` (Data Center)."""

    type: Literal["jira"]
    # The site, e.g. https://acme.atlassian.net (no default: every site has its own).
    site_url: HttpUrl
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    api_token_file: str | None = Field(default=None, min_length=1)
    personal_access_token_file: str | None = Field(default=None, min_length=1)
    # The project issues are created in (its key, e.g. "OPS") and their type.
    project_key: str = Field(pattern=r"^[A-Z][A-Z0-9_]+$")
    issue_type: str = Field(default="Bug", min_length=1)
    # Labels besides "kubernaut".
    labels: tuple[Label, ...] = ()
    # The transition the incident's end takes (by name, as the issue's workflow calls it).
    done_transition: str = Field(default="Done", min_length=1)

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> JiraConfig:
        basic = self.email is not None or self.api_token_file is not None
        if basic and self.personal_access_token_file is not None:
            raise ValueError(
                "either email with api_token_file, or personal_access_token_file, not both"
            )
        if basic and (self.email is None or self.api_token_file is None):
            raise ValueError("email and api_token_file go together")
        if not basic and self.personal_access_token_file is None:
            raise ValueError(
                "credentials: email with api_token_file, or personal_access_token_file"
            )
        return self


class JiraChannel:
    """One configured Jira project. `send` reports, never raises."""

    def __init__(
        self,
        name: str,
        config: JiraConfig,
        http: httpx.AsyncClient,
        auth: httpx.Auth | None,
        headers: Mapping[str, str],
    ) -> None:
        self._name = name
        self._config = config
        self._http = http
        self._auth = auth
        self._headers = {"Accept": "application/json", **headers}
        self._site = str(config.site_url).rstrip("/")
        self._api = f"{self._site}/rest/api/2"
        self._summary = _TEMPLATES.get_template("jira/summary.txt")
        self._text = _TEMPLATES.get_template("jira/text.txt")
        self._links = _TEMPLATES.get_template("jira/links.txt")

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return "jira"

    def destinations(self) -> tuple[str, ...]:
        return (f"{self._site} project {self._config.project_key}",)

    def render(self, notice: Notice) -> tuple[str, str]:
        """The issue's summary (one line) and the event's body (wiki markup: the text in a
        {noformat} box, then the links), cut to Jira's limits."""
        variables = notice.variables()
        summary = cut(" ".join(self._summary.render(variables).split()), MAX_SUMMARY)
        links = self._links.render(variables).strip("\n")
        after = f"\n{_BOX}" + (f"\n{links}" if links else "")
        room = MAX_TEXT - len(_BOX) - 1 - len(after)
        text = _BOX_TAG.sub(r"{ \1", self._text.render(variables).strip("\n"))
        return summary, f"{_BOX}\n{cut(text, room)}{after}"

    def issue_fields(self, notice: Notice) -> dict[str, Any]:
        """The fields of the issue the first event creates."""
        summary, body = self.render(notice)
        return {
            "project": {"key": self._config.project_key},
            "summary": summary,
            "description": body,
            "issuetype": {"name": self._config.issue_type},
            "labels": ["kubernaut", *self._config.labels],
        }

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        kept = {key: thread[key] for key in _THREAD_KEYS if thread.get(key)}
        try:
            if "issue_key" not in kept:
                created = await self._create(notice)
                if not created.delivered or not notice.kind.ends_incident:
                    return created
                # The description says it all: no comment on a new issue.
                kept = dict(created.thread)
            elif kept.get("commented") != notice.key:
                _, body = self.render(notice)
                url = f"{self._api}/issue/{kept['issue_key']}/comment"
                commented = _result(await self._call("POST", url, {"body": body}))
                if not commented.delivered:
                    return dataclasses.replace(commented, thread=kept)
                kept["commented"] = notice.key
            if notice.kind.ends_incident and not kept.get("resolved"):
                resolved = await self._resolve(kept["issue_key"])
                if not resolved.delivered:
                    return dataclasses.replace(resolved, thread=kept)
                kept["resolved"] = "true"
        except httpx.HTTPError as error:
            return dataclasses.replace(unreachable(VENDOR, error), thread=kept)
        return SendResult(True, thread=kept)

    async def _create(self, notice: Notice) -> SendResult:
        response = await self._call(
            "POST", f"{self._api}/issue", {"fields": self.issue_fields(notice)}
        )
        result = _result(response)
        if not result.delivered:
            return result
        issue = _json(response)
        key, issue_id = issue.get("key"), issue.get("id")
        if not isinstance(key, str) or not key or not isinstance(issue_id, str):
            return SendResult(
                False, f"{VENDOR} answered {response.status_code} without an issue key"
            )
        return dataclasses.replace(result, thread={"issue_key": key, "issue_id": issue_id})

    async def _resolve(self, key: str) -> SendResult:
        """Take the configured transition on issue `key`."""
        url = f"{self._api}/issue/{key}/transitions"
        response = await self._call("GET", url)
        listed = _result(response)
        if not listed.delivered:
            return listed
        transitions = [t for t in _listed(_json(response), "transitions") if isinstance(t, dict)]
        wanted = self._config.done_transition
        chosen = next(
            (t for t in transitions if str(t.get("name", "")).casefold() == wanted.casefold()),
            None,
        )
        if chosen is None or not chosen.get("id"):
            offered = ", ".join(repr(str(t.get("name", ""))) for t in transitions) or "none"
            return SendResult(
                False,
                f"{VENDOR}: issue {key} offers no transition {wanted!r} (done_transition) now;"
                f" it offers {offered}",
                permanent=True,
            )
        return _result(await self._call("POST", url, {"transition": {"id": str(chosen["id"])}}))

    async def _call(
        self, method: str, url: str, payload: dict[str, Any] | None = None
    ) -> httpx.Response:
        return await self._http.request(
            method, url, json=payload, headers=self._headers, auth=self._auth
        )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _listed(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    return value if isinstance(value, list) else []


def _result(response: httpx.Response) -> SendResult:
    """result_of, with Jira's own error messages when it gave them."""
    result = result_of(response, VENDOR)
    if result.delivered:
        return result
    body = _json(response)
    messages = [str(m) for m in _listed(body, "errorMessages") if m]
    errors = body.get("errors")
    if isinstance(errors, dict):
        messages += [f"{field}: {message}" for field, message in errors.items()]
    if isinstance(body.get("message"), str):
        messages.append(body["message"])
    if not messages:
        return result
    reason = cut("; ".join(messages), 300)
    return dataclasses.replace(result, error=f"{VENDOR} answered {response.status_code}: {reason}")


def build(name: str, config: JiraConfig, http: httpx.AsyncClient) -> JiraChannel:
    """The channel `config` describes, its credentials read now (a clear ValueError naming
    the field when a file is missing or empty)."""
    if config.personal_access_token_file is not None:
        token = read_secret(config.personal_access_token_file, "personal_access_token_file")
        return JiraChannel(name, config, http, None, {"Authorization": f"Bearer {token}"})
    if config.email is None or config.api_token_file is None:
        raise ValueError("email with api_token_file, or personal_access_token_file")
    token = read_secret(config.api_token_file, "api_token_file")
    return JiraChannel(name, config, http, httpx.BasicAuth(config.email, token), {})
