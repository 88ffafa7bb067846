"""Approvals from chat: signed links (made per channel by the notification service,
checked by the edge) and Slack's buttons."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from kubernaut.runtime.chat_approvals import (
    LINKS_PATH,
    SLACK_APPROVE_ACTION_ID,
    SLACK_REJECT_ACTION_ID,
    Decision,
    LinkRefused,
    LinkSigner,
    LinkVerifier,
    read_link_secret,
)
from kubernaut.services.notification.dispatch import Dispatcher
from kubernaut.services.notification.rendering import EventRenderer
from kubernaut.services.notification.routing import Route, Router
from kubernaut.services.notification.vendors.base import EventKind, Notice, SendResult
from kubernaut.services.notification.vendors.slack import SlackRenderer
from tests.fixtures.incident_notices import WORKFLOW_ID, make_notice

SECRET = b"0123456789abcdef0123456789abcdef"
WORKFLOW = WORKFLOW_ID


def _token(url: str) -> str:
    path = httpx.URL(url).path
    assert path.startswith(LINKS_PATH)
    return path.removeprefix(LINKS_PATH)


def test_a_link_names_the_workflow_the_decision_and_the_channel() -> None:
    signer = LinkSigner(SECRET, "https://kubernaut.example.com/", 3600)
    approve, reject = signer.links(WORKFLOW, "inc-1", "oncall-mail")
    assert approve.startswith("https://kubernaut.example.com/api/v1/approvals/links/")
    assert approve != reject
    claims = LinkVerifier(SECRET).verify(_token(approve))
    assert (claims.workflow_id, claims.incident_id, claims.decision, claims.subject) == (
        WORKFLOW,
        "inc-1",
        Decision.APPROVE,
        "link:oncall-mail",
    )
    assert LinkVerifier(SECRET).verify(_token(reject)).decision is Decision.REJECT
    assert claims.expires_at == pytest.approx(time.time() + 3600, abs=5)


def test_altered_foreign_and_expired_links_are_refused() -> None:
    signer = LinkSigner(SECRET, "https://k.example.com", 600)
    token = _token(signer.link(WORKFLOW, "inc-1", Decision.APPROVE, "oncall"))
    verifier = LinkVerifier(SECRET)
    header, payload, signature = token.split(".")
    # A reject link cannot be made into an approve link, nor another workflow's.
    tampered = f"{header}.{payload[:-2]}AA.{signature}"
    with pytest.raises(LinkRefused, match="not a valid"):
        verifier.verify(tampered)
    with pytest.raises(LinkRefused, match="not a valid"):
        LinkVerifier(b"another-secret-another-secret-xx").verify(token)
    with pytest.raises(LinkRefused, match="not a valid"):
        verifier.verify("not-a-token")
    with pytest.raises(LinkRefused, match="expired"):
        verifier.verify(token, now=time.time() + 601)
    old = _token(signer.link(WORKFLOW, "inc-1", Decision.APPROVE, "oncall", now=time.time() - 700))
    with pytest.raises(LinkRefused, match="expired"):
        verifier.verify(old)


def test_the_secret_must_be_long_enough_and_is_never_echoed(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("hunter2\n")
    with pytest.raises(ValueError, match="at least 32") as error:
        read_link_secret(short)
    assert "hunter2" not in str(error.value)
    with pytest.raises(ValueError, match="cannot read"):
        read_link_secret(tmp_path / "missing")
    good = tmp_path / "good"
    good.write_bytes(SECRET + b"\n")
    assert read_link_secret(good) == SECRET


class _Recording:
    """A channel of our own interface that keeps what it was given."""

    kind = "webhook"

    def __init__(self, name: str) -> None:
        self.name = name
        self.notices: list[Notice] = []

    def destinations(self) -> tuple[str, ...]:
        return ("https://hooks.example/x",)

    async def send(self, notice: Notice, thread: Mapping[str, str]) -> SendResult:
        self.notices.append(notice)
        return SendResult(True)


async def test_each_channel_gets_links_that_name_it_and_only_approval_requests_get_any() -> None:
    mail, hook = _Recording("oncall-mail"), _Recording("ops-hook")
    router = Router(Route(channels=("oncall-mail", "ops-hook")), {c.name: c for c in (mail, hook)})
    signer = LinkSigner(SECRET, "https://kubernaut.example.com", 600)
    dispatcher = Dispatcher(router, EventRenderer(), links=signer)
    verifier = LinkVerifier(SECRET)
    asking = make_notice(EventKind.APPROVAL_NEEDED)
    for name in ("oncall-mail", "ops-hook"):
        assert (await dispatcher.send(name, asking, {})).delivered
    for channel in (mail, hook):
        (sent,) = channel.notices
        approve = verifier.verify(_token(sent.approve_url))
        reject = verifier.verify(_token(sent.reject_url))
        assert (approve.decision, reject.decision) == (Decision.APPROVE, Decision.REJECT)
        assert approve.subject == reject.subject == f"link:{channel.name}"
        assert approve.workflow_id == WORKFLOW_ID
    # Other events carry no links; neither does a dispatcher without a signer.
    await dispatcher.send("oncall-mail", make_notice(EventKind.REMEDIATED), {})
    assert mail.notices[-1].approve_url == ""
    unsigned = Dispatcher(router, EventRenderer())
    bare = dataclasses.replace(asking, approve_url="", reject_url="")
    await unsigned.send("oncall-mail", bare, {})
    assert mail.notices[-1].approve_url == ""


def test_slack_buttons_carry_the_workflow_to_decide() -> None:
    message = SlackRenderer().render(make_notice(EventKind.APPROVAL_NEEDED), parent=True)
    (actions,) = [block for block in message.blocks if block["type"] == "actions"]
    assert [(b["action_id"], b["value"]) for b in actions["elements"]] == [
        (SLACK_APPROVE_ACTION_ID, WORKFLOW_ID),
        (SLACK_REJECT_ACTION_ID, WORKFLOW_ID),
    ]
    remediated = SlackRenderer().render(make_notice(EventKind.REMEDIATED), parent=True)
    assert not [block for block in remediated.blocks if block["type"] == "actions"]
