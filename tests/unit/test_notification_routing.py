"""The routing tree: which channels hear of which event, rate limits, and a routing file
refused at start with an error that names the place."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from kubernaut.common.v1 import alert_pb2
from kubernaut.notification.v1 import notification_pb2

from kubernaut.services.notification.rendering import EventRenderer, EventView
from kubernaut.services.notification.routing import (
    RateLimit,
    RateLimiter,
    Route,
    Router,
    RoutingError,
    load_routing,
)
from kubernaut.services.notification.settings import NotificationSettings
from kubernaut.services.notification.vendors.base import EventKind, Notice, VendorChannel
from kubernaut.services.notification.vendors.email import EmailConfig, build

_PROTO_KIND = {
    EventKind.APPROVAL_NEEDED: notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED,
    EventKind.REMEDIATED: notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED,
    EventKind.FAILED: notification_pb2.INCIDENT_EVENT_KIND_FAILED,
    EventKind.STORM: notification_pb2.INCIDENT_EVENT_KIND_STORM,
}


def notice(
    kind: EventKind,
    *,
    severity: str = "warning",
    namespace: str = "shop",
    incident: str = "inc-1",
    **labels: str,
) -> Notice:
    event = notification_pb2.IncidentEvent(
        incident_id=incident,
        kind=_PROTO_KIND[kind],
        alert=alert_pb2.Alert(
            name="KubePodCrashLooping",
            labels={"severity": severity, "namespace": namespace, **labels},
        ),
        target=alert_pb2.ResourceRef(namespace=namespace, kind="Deployment", name="web"),
    )
    event.occurred_at.GetCurrentTime()
    return Notice(
        key=f"{incident}/{kind}",
        kind=kind,
        view=EventView.of(event),
        message=EventRenderer().render(event),
    )


def _channels(names: list[str]) -> dict[str, VendorChannel]:
    settings = NotificationSettings(email_to=("sre@example.com",))
    http = httpx.AsyncClient()
    return {
        name: build(name, EmailConfig(type="email", to=(f"{name}@example.com",)), http, settings)
        for name in names
    }


TREE = Route.model_validate(
    {
        "channels": ["email"],
        "routes": [
            {
                "match": {"severity": ["critical"]},
                "channels": ["pager", "chat"],
                "continue": True,
                "routes": [{"match": {"kind": ["approval_needed"]}, "channels": ["approvers"]}],
            },
            {"match": {"namespace": ["payments-*"]}, "channels": ["payments"]},
            {"match": {"labels": {"team": "db*"}}, "channels": ["dba"]},
            {"match": {"kind": ["storm"]}},  # no channels: the parent's (email)
        ],
    }
)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (notice(EventKind.FAILED), ["email"]),
        (notice(EventKind.FAILED, severity="critical"), ["pager", "chat"]),
        # A child of a matching route wins over its parent's channels.
        (notice(EventKind.APPROVAL_NEEDED, severity="critical"), ["approvers"]),
        # `continue`: the critical route and then the next sibling that matches.
        (
            notice(EventKind.FAILED, severity="critical", namespace="payments-eu"),
            ["pager", "chat", "payments"],
        ),
        (notice(EventKind.REMEDIATED, namespace="payments-eu"), ["payments"]),
        # Without `continue` the first match ends the search.
        (notice(EventKind.FAILED, namespace="payments-eu", team="dba"), ["payments"]),
        (notice(EventKind.FAILED, team="dbre"), ["dba"]),
        (notice(EventKind.STORM), ["email"]),
    ],
)
def test_routing_picks_the_channels_of_each_event(event: Notice, expected: list[str]) -> None:
    router = Router(TREE, _channels(["email", "pager", "chat", "approvers", "payments", "dba"]))
    assert [c.channel for c in router.choose(event)] == expected


def test_a_rate_limit_holds_back_the_excess_but_never_an_approval_or_an_end() -> None:
    clock = [0.0]
    limited = Route.model_validate(
        {
            "channels": ["email"],
            "group_by": ["namespace"],
            "rate_limit": {"count": 2, "per_seconds": 60},
        }
    )
    router = Router(limited, _channels(["email"]), RateLimiter(lambda: clock[0]))
    held = [router.choose(notice(EventKind.FAILED, incident=f"i{n}"))[0].held for n in range(3)]
    assert held[:2] == ["", ""] and "rate limit (2 per 60 s)" in held[2]
    # Another group has its own count.
    assert router.choose(notice(EventKind.FAILED, namespace="web"))[0].held == ""
    # Approval requests and an incident's end always go.
    assert router.choose(notice(EventKind.APPROVAL_NEEDED))[0].held == ""
    assert router.choose(notice(EventKind.REMEDIATED))[0].held == ""
    clock[0] = 61.0
    assert router.choose(notice(EventKind.FAILED))[0].held == ""
    assert RateLimit(count=1, per_seconds=1).count == 1


def test_a_routing_file_is_checked_at_start_naming_the_place(tmp_path: Path) -> None:
    http = httpx.AsyncClient()
    smtp = NotificationSettings()
    path = tmp_path / "routes.yaml"
    cases = {
        "channels: {a: {type: email, to: [x@example.com]}}\nroute: {channels: [b]}": (
            "route 0: unknown channel(s) b; the channels are a"
        ),
        "channels: {a: {type: carrier-pigeon}}\nroute: {channels: [a]}": (
            "channels.a.type: 'carrier-pigeon' is not one of email, slack"
        ),
        "channels: {a: {type: email, to: [nobody]}}\nroute: {channels: [a]}": (
            "channels.a: to: Value error, not an email address: 'nobody'"
        ),
        "channels: {a: {type: email, to: [x@example.com], cc: 1}}\nroute: {channels: [a]}": (
            "channels.a: cc: Extra inputs are not permitted"
        ),
        "channels: {}\nroute: {channels: [], routes: [{match: {colour: red}}]}": (
            "route.routes.0.match.colour: Extra inputs are not permitted"
        ),
        "channels: {a: {type: email, to: [x@example.com]}}\nroute: {channels: [a], "
        "match: {severity: [critical]}}": "the root route matches everything",
        "channels: {a: {type: email, to: [x@example.com]}}\nroute: {channels: [a], "
        "group_by: [colour]}": "group_by 'colour'",
        "route: [": "not YAML",
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(RoutingError) as error:
            load_routing(path, http, smtp)
        assert str(error.value).startswith(str(path)), error.value
        assert expected in str(error.value), (text, str(error.value))

    path.write_text(
        "channels:\n  sre: {type: email, to: [sre@example.com]}\n"
        "  db: {type: email, to: [dba@example.com]}\n"
        "route:\n  channels: [sre]\n  routes:\n    - match: {labels: {team: db}}\n"
        "      channels: [db]\n      rate_limit: {count: 5, per_seconds: 300}\n"
    )
    router = load_routing(path, http, smtp)
    assert router.channels["db"].destinations() == ("dba@example.com",)
    assert router.describe() == [
        "0: match everything -> sre",
        "0.0: match {'labels': {'team': 'db'}} -> db; at most 5 per 300 s",
    ]
