"""Incidents in ServiceNow, through the Table API on the incident table.

The first event of an incident creates a ServiceNow incident: POST
{instance}/api/now/table/incident with short_description, description, urgency and
impact (from the alert's severity), category, correlation_id (Kubernaut's incident id) and
correlation_display "Kubernaut", and caller_id / assignment_group when configured. Its
result.sys_id and number are kept in the thread. Later events add a work note to it (PATCH
.../incident/{sys_id} with work_notes); the incident's end resolves it (state 6, close_code,
close_notes). An end that is also the first event creates the incident and resolves it.

Auth is HTTP Basic (user name, password from a file) or an OAuth access token from a file
(Bearer). ServiceNow answers 201/200 {"result": {...}}, or {"error": {"message", "detail"},
"status": "failure"}: 400/401/403 (the configuration, an ACL, a data policy) and 404 (a
deleted record) are permanent; 429 (with Retry-After) and 5xx are retried.

When creating succeeded and resolving did not, the failed result's thread holds the new
sys_id, so that another attempt resolves that incident instead of opening a second one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import httpx
from pydantic import Field, HttpUrl, model_validator

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

__all__ = [
    "MAX_SHORT_DESCRIPTION",
    "MAX_TEXT",
    "ServiceNowChannel",
    "ServiceNowConfig",
    "build",
    "urgency_of",
]

VENDOR: Final = "ServiceNow"
# The incident table's dictionary lengths: short_description 160; description, work_notes
# and close_notes 4000 (longer values are cut by the instance without a word).
MAX_SHORT_DESCRIPTION: Final = 160
MAX_TEXT: Final = 4000
# State "Resolved" of the incident table's state choices.
RESOLVED: Final = "6"
# Only what the thread needs comes back.
_FIELDS: Final = {"sysparm_fields": "sys_id,number"}
# Journal fields render [code]...[/code] as HTML; data must stay text.
_CODE_TAG: Final = re.compile(r"(?i)\[(/?code)\]")
_TEMPLATES: Final = template_environment(TEMPLATES_DIR)


class ServiceNowConfig(ChannelConfig):
    """A ServiceNow channel in the routing file. Credentials are files (mounted Secrets):
    `username` with `password_file` (Basic), or `token_file` (an OAuth access token)."""

    type: Literal["servicenow"]
    # The instance, e.g. https://acme.service-now.com (no default: every instance has its own).
    instance_url: HttpUrl
    username: str | None = Field(default=None, min_length=1)
    password_file: str | None = Field(default=None, min_length=1)
    token_file: str | None = Field(default=None, min_length=1)
    # Incident fields (reference fields take a sys_id, or a value the instance resolves).
    category: str = Field(default="software", min_length=1)
    caller_id: str | None = None
    assignment_group: str | None = None
    # The resolution code when the incident ends (a choice of the instance's close_code).
    close_code: str = Field(default="Solved (Permanently)", min_length=1)

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> ServiceNowConfig:
        basic = self.username is not None or self.password_file is not None
        if basic and self.token_file is not None:
            raise ValueError("either username with password_file, or token_file, not both")
        if basic and (self.username is None or self.password_file is None):
            raise ValueError("username and password_file go together")
        if not basic and self.token_file is None:
            raise ValueError("credentials: username with password_file, or token_file")
        return self


def urgency_of(severity: str) -> str:
    """Urgency and impact (the same value) for an alert severity: critical 1 (High),
    warning 2 (Medium), anything else 3 (Low)."""
    return {"critical": "1", "warning": "2"}.get(severity.strip().lower(), "3")


def _as_text(text: str) -> str:
    return _CODE_TAG.sub(r"(\1)", text)


class ServiceNowChannel:
    """One configured ServiceNow instance. `send` reports, never raises."""

    def __init__(
        self,
        name: str,
        config: ServiceNowConfig,
        http: httpx.AsyncClient,
        auth: httpx.Auth | None,
        headers: Mapping[str, str],
    ) -> None:
        self._name = name
        self._config = config
        self._http = http
        self._auth = auth
        self._headers = {"Accept": "application/json", **headers}
        self._table = f"{str(config.instance_url).rstrip('/')}/api/now/table/incident"
        self._short_description = _TEMPLATES.get_template("servicenow/short_description.txt")
        self._text = _TEMPLATES.get_template("servicenow/text.txt")

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return "servicenow"

    def destinations(self) -> tuple[str, ...]:
        group = self._config.assignment_group
        return (self._table + (f" (assignment group {group})" if group else ""),)

    def render(self, notice: Notice) -> tuple[str, str]:
        """The incident's short description (one line) and the event's text, cut to the
        table's lengths."""
        variables = notice.variables()
        title = " ".join(self._short_description.render(variables).split())
        text = _as_text(self._text.render(variables).strip("\n"))
        return cut(_as_text(title), MAX_SHORT_DESCRIPTION), cut(text, MAX_TEXT)

    def incident_fields(self, notice: Notice) -> dict[str, str]:
        """The fields of the incident the first event creates."""
        title, text = self.render(notice)
        urgency = urgency_of(notice.view.alert.severity)
        fields = {
            "short_description": title,
            "description": text,
            "urgency": urgency,
            "impact": urgency,
            "category": self._config.category,
            "correlation_id": notice.incident_id,
            "correlation_display": "Kubernaut",
        }
        if self._config.caller_id:
            fields["caller_id"] = self._config.caller_id
        if self._config.assignment_group:
            fields["assignment_group"] = self._config.assignment_group
        return fields

    def update_fields(self, notice: Notice) -> dict[str, str]:
        """The fields a later event sets: a work note, or the resolution at the end."""
        _, text = self.render(notice)
        if notice.kind.ends_incident:
            return {"state": RESOLVED, "close_code": self._config.close_code, "close_notes": text}
        return {"work_notes": text}

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        kept = {key: thread[key] for key in ("sys_id", "number") if thread.get(key)}
        try:
            if "sys_id" not in kept:
                created = await self._create(notice)
                if not created.delivered or not notice.kind.ends_incident:
                    return created
                kept = dict(created.thread)
            response = await self._request(
                "PATCH", f"{self._table}/{kept['sys_id']}", self.update_fields(notice)
            )
        except httpx.HTTPError as error:
            return dataclasses.replace(unreachable(VENDOR, error), thread=kept)
        return dataclasses.replace(_result(response), thread=kept)

    async def _create(self, notice: Notice) -> SendResult:
        response = await self._request("POST", self._table, self.incident_fields(notice))
        result = _result(response)
        if not result.delivered:
            return result
        record = _record(response)
        if not record.get("sys_id"):
            # Not the Table API that answered (a hibernating instance's page, a proxy).
            return SendResult(False, f"{VENDOR} answered {response.status_code} without a sys_id")
        return dataclasses.replace(
            result, thread={"sys_id": record["sys_id"], "number": record.get("number", "")}
        )

    async def _request(self, method: str, url: str, fields: dict[str, str]) -> httpx.Response:
        return await self._http.request(
            method, url, params=_FIELDS, json=fields, headers=self._headers, auth=self._auth
        )


def _record(response: httpx.Response) -> dict[str, str]:
    try:
        result: Any = response.json().get("result")
    except (ValueError, AttributeError):
        return {}
    if not isinstance(result, dict):
        return {}
    return {key: value for key, value in result.items() if isinstance(value, str)}


def _result(response: httpx.Response) -> SendResult:
    """result_of, with ServiceNow's own error message and detail when it gave them."""
    result = result_of(response, VENDOR)
    if result.delivered:
        return result
    try:
        error = response.json()["error"]
        reason = f"{error['message']}" + (f" ({error['detail']})" if error.get("detail") else "")
    except (ValueError, KeyError, TypeError):
        return result
    return dataclasses.replace(
        result, error=f"{VENDOR} answered {response.status_code}: {cut(str(reason), 300)}"
    )


def build(name: str, config: ServiceNowConfig, http: httpx.AsyncClient) -> ServiceNowChannel:
    """The channel `config` describes, its credentials read now (a clear ValueError naming
    the field when a file is missing or empty)."""
    if config.token_file is not None:
        token = read_secret(config.token_file, "token_file")
        return ServiceNowChannel(name, config, http, None, {"Authorization": f"Bearer {token}"})
    if config.username is None or config.password_file is None:
        raise ValueError("username with password_file, or token_file")
    password = read_secret(config.password_file, "password_file")
    return ServiceNowChannel(name, config, http, httpx.BasicAuth(config.username, password), {})
