"""SMS through Twilio's Messages API.

One message per recipient: POST {api}/2010-04-01/Accounts/{AccountSid}/Messages.json,
form-encoded To, From and/or MessagingServiceSid, Body, with HTTP Basic auth
AccountSid:AuthToken (the token from a file). Twilio answers 201 with the Message
resource ({"sid": "SM...", "status": "queued", ...}) or an error
{"code", "message", "more_info", "status"}: 400 (e.g. 21211 invalid 'To'), 401 (20003),
404 (20404 wrong account), 429 (20429, with Retry-After), 5xx.

The channel is delivered when every recipient's message was accepted. The sids are kept
in the thread, keyed by event and recipient, so that another attempt at the same event
(after a 429 or 5xx for a later recipient) does not text the earlier ones twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final, Literal

import httpx
from pydantic import AfterValidator, Field, field_validator, model_validator

from kubernaut.services.notification.rendering import TEMPLATES_DIR, template_environment
from kubernaut.services.notification.vendors.base import (
    ChannelConfig,
    Notice,
    SendResult,
    https_url,
    read_secret,
    result_of,
    unreachable,
)

__all__ = ["DEFAULT_API", "TwilioChannel", "TwilioConfig", "build", "fit"]

VENDOR: Final = "twilio"
DEFAULT_API: Final = "https://api.twilio.com"
# Twilio's own limit on Body (error 21617 above it).
MAX_BODY: Final = 1600
# Two GSM-7 segments: the incident id and the key facts fit, and it costs little.
DEFAULT_BODY: Final = 320
# ASCII, so that cutting never turns a GSM-7 message into a UCS-2 one (70 chars a segment).
_CUT_MARKER: Final = "..."

_E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")
# A sender Twilio accepts in From: an E.164 number, or an alphanumeric sender ID (1-11
# letters, digits and spaces, at least one letter).
_ALPHANUMERIC_SENDER: Final = re.compile(r"(?=[0-9 ]*[A-Za-z])[A-Za-z0-9 ]{1,11}")


def _e164(number: str) -> str:
    if _E164.fullmatch(number) is None:
        raise ValueError(f"not an E.164 phone number (+ country code and number): {number!r}")
    return number


E164Number = Annotated[str, AfterValidator(_e164)]


class TwilioConfig(ChannelConfig):
    """A Twilio SMS channel in the routing file. The auth token is read from a file."""

    type: Literal["twilio"]
    # Twilio's REST API; tests point it at loopback.
    api: str = DEFAULT_API
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    # A file holding the account's auth token (a mounted Secret).
    auth_token_file: str = Field(min_length=1)
    # The sender: a Twilio number (E.164) or alphanumeric sender ID, and/or a Messaging
    # Service (which then picks the sender).
    from_number: str | None = None
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    to: tuple[E164Number, ...] = Field(min_length=1)
    # Longest Body sent, in characters; longer text is cut at a line, key facts first.
    max_length: int = Field(default=DEFAULT_BODY, ge=160, le=MAX_BODY)

    @field_validator("api")
    @classmethod
    def _api(cls, value: str) -> str:
        return https_url(value, "api")

    @model_validator(mode="after")
    def _sender_and_recipients(self) -> TwilioConfig:
        if self.from_number is None and self.messaging_service_sid is None:
            raise ValueError("set from_number or messaging_service_sid (who the SMS is from)")
        if self.from_number is not None and (
            _E164.fullmatch(self.from_number) is None
            and _ALPHANUMERIC_SENDER.fullmatch(self.from_number) is None
        ):
            raise ValueError(
                f"from_number: not an E.164 number or alphanumeric sender ID: {self.from_number!r}"
            )
        if len(set(self.to)) != len(self.to):
            raise ValueError("to: a number is listed twice (it would get every message twice)")
        return self


def fit(text: str, limit: int) -> str:
    """`text` in at most `limit` characters: its lines in order, leaving out each that does
    not fit, and a marker when any was left out. The first line (the incident id and what
    happened) is always kept, cut when it is too long on its own."""
    text = text.strip()
    if len(text) <= limit:
        return text
    first, *rest = text.splitlines()
    budget = limit - len(_CUT_MARKER) - 1
    if len(first) > budget:
        return first[: limit - len(_CUT_MARKER)] + _CUT_MARKER
    kept = [first]
    used = len(first)
    for line in rest:
        if used + 1 + len(line) <= budget:
            kept.append(line)
            used += 1 + len(line)
    return "\n".join([*kept, _CUT_MARKER])


def _sent_key(notice: Notice, number: str) -> str:
    return f"sms {notice.key} {number}"


def _twilio_error(response: httpx.Response, number: str) -> str:
    """Twilio's error code and message for one recipient (never the request)."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "code" not in answer:
        return f"{VENDOR} answered {response.status_code} for {number}"
    message = str(answer.get("message", ""))[:200]
    return (
        f"{VENDOR} answered {response.status_code} for {number}: error {answer['code']}: "
        f"{message} ({answer.get('more_info', '')})"
    )


class TwilioChannel:
    """Texts each event to every number in `to`."""

    def __init__(
        self, name: str, config: TwilioConfig, auth_token: str, http: httpx.AsyncClient
    ) -> None:
        self._name = name
        self._config = config
        self._auth = httpx.BasicAuth(config.account_sid, auth_token)
        self._http = http
        self._url = f"{config.api}/2010-04-01/Accounts/{config.account_sid}/Messages.json"
        self._sender: dict[str, str] = {}
        if config.from_number is not None:
            self._sender["From"] = config.from_number
        if config.messaging_service_sid is not None:
            self._sender["MessagingServiceSid"] = config.messaging_service_sid
        self._template = template_environment(TEMPLATES_DIR / VENDOR).get_template("sms.txt")

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return VENDOR

    def destinations(self) -> tuple[str, ...]:
        return self._config.to

    def render(self, notice: Notice) -> str:
        """The SMS body of `notice`, at most max_length characters."""
        text = self._template.render(
            notice.view.variables(),
            kind=notice.kind.value,
            approve_url=notice.approve_url,
            reject_url=notice.reject_url,
            inspect_command=notice.inspect_command,
        )
        return fit(text, self._config.max_length)

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        body = self.render(notice)
        sent: dict[str, str] = {}
        failures: list[SendResult] = []
        for number in self._config.to:
            key = _sent_key(notice, number)
            if key in thread:
                continue  # texted on an earlier attempt at this event
            form = {"To": number, **self._sender, "Body": body}
            try:
                response = await self._http.post(self._url, data=form, auth=self._auth)
            except httpx.HTTPError as error:
                failures.append(unreachable(VENDOR, error))
                break
            result = result_of(response, VENDOR)
            if result.delivered:
                sent[key] = _sid(response)
                continue
            failures.append(
                SendResult(
                    False,
                    _twilio_error(response, number),
                    permanent=result.permanent,
                    retry_after=result.retry_after,
                )
            )
            if response.status_code != 400:
                # Only a 400 is about this number (invalid, unsubscribed); a 401, 404, 429
                # or 5xx is about the account or Twilio and the next recipient would get
                # the same. The next attempt resumes here.
                break
        if not failures:
            return SendResult(True, thread=sent)
        waits = [f.retry_after for f in failures if f.retry_after is not None]
        return SendResult(
            False,
            "; ".join(f.error for f in failures),
            permanent=all(f.permanent for f in failures),
            retry_after=max(waits) if waits else None,
            thread=sent,
        )


def _sid(response: httpx.Response) -> str:
    """The Message resource's sid ("SM..."), or "" when the answer has none."""
    try:
        answer = response.json()
    except ValueError:
        return ""
    return str(answer.get("sid", "")) if isinstance(answer, dict) else ""


def build(name: str, config: TwilioConfig, http: httpx.AsyncClient) -> TwilioChannel:
    """The channel `config` describes; ValueError when its token file is missing or empty."""
    token = read_secret(config.auth_token_file, f"{name}: auth_token_file")
    return TwilioChannel(name, config, token, http)
