"""Which channels hear of an event: a routing tree in the style of AlertManager's, read
from a file (ConfigMap-friendly YAML) and checked when the service starts.

```yaml
channels:                       # every channel, by name, with its vendor's settings
  email: {type: email, to: [sre@example.com]}
  pager: {type: pagerduty, routing_key_file: /secrets/pagerduty/key}
  ops: {type: slack, bot_token_file: /secrets/slack/token, channel: C0123}
route:                          # the root matches everything: the default channels
  channels: [email]
  routes:                       # the first child that matches wins (unless `continue`)
    - match: {severity: [critical], kind: [approval_needed, failed, rolled_back]}
      channels: [pager, ops]
      continue: true            # and go on to the next sibling
      group_by: [namespace]
      rate_limit: {count: 10, per_seconds: 300}
```

A route matches when every condition it names holds (lists are alternatives; names and
label values take shell patterns, "shop-*"). A matching route whose children all miss
uses its own channels; a child without channels has its parent's. The rate limit counts
notifications per route and group (group_by: incident, alertname, namespace, cluster,
severity, kind or label:<name>) in a sliding window; an approval request is never held
back, nor is an incident's end.
"""

from __future__ import annotations

import fnmatch
import importlib
import time
import typing
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kubernaut.services.notification.settings import NotificationSettings
from kubernaut.services.notification.vendors.base import EventKind, Notice, VendorChannel

# The vendor modules under vendors/, by the `type` a channel names.
VENDOR_TYPES: Final = (
    "email",
    "slack",
    "teams",
    "pagerduty",
    "twilio",
    "servicenow",
    "jira",
    "webhook",
)
_GROUP_FIELDS: Final = ("incident", "alertname", "namespace", "cluster", "severity", "kind")


class RoutingError(ValueError):
    """The routing file is wrong; the message names the file and the place."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class RateLimit(_Strict):
    count: int = Field(ge=1)
    per_seconds: float = Field(gt=0)


class Match(_Strict):
    severity: tuple[str, ...] = ()
    namespace: tuple[str, ...] = ()
    cluster: tuple[str, ...] = ()
    alertname: tuple[str, ...] = ()
    kind: tuple[EventKind, ...] = ()
    # label name -> pattern
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.severity
            or self.namespace
            or self.cluster
            or self.alertname
            or self.kind
            or self.labels
        )

    def matches(self, notice: Notice) -> bool:
        view = notice.view
        labels = dict(view.alert.labels)
        checks = (
            (self.severity, view.alert.severity),
            (self.namespace, view.target.namespace),
            (self.cluster, view.target.cluster),
            (self.alertname, view.alert.name),
        )
        if any(patterns and not _any_match(value, patterns) for patterns, value in checks):
            return False
        if self.kind and notice.kind not in self.kind:
            return False
        return all(
            name in labels and fnmatch.fnmatchcase(labels[name], pattern)
            for name, pattern in self.labels.items()
        )


class Route(_Strict):
    match: Match = Field(default_factory=Match)
    # Empty: the parent's channels.
    channels: tuple[str, ...] = ()
    continue_: bool = Field(default=False, alias="continue")
    group_by: tuple[str, ...] = ("incident",)
    rate_limit: RateLimit | None = None
    routes: tuple[Route, ...] = ()

    @model_validator(mode="after")
    def _known_group_fields(self) -> Route:
        for field in self.group_by:
            if field not in _GROUP_FIELDS and not field.startswith("label:"):
                raise ValueError(
                    f"group_by {field!r}: one of {', '.join(_GROUP_FIELDS)} or label:<name>"
                )
        return self


class RoutingFile(_Strict):
    channels: dict[str, dict[str, Any]]
    route: Route


def _any_match(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Chosen:
    """A channel an event goes to, and the route that chose it (its path, "0.1")."""

    channel: str
    route: str
    # Why it is held back (a rate limit), or "".
    held: str = ""


class RateLimiter:
    """Sliding-window counts per (route, group); one process's view."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sent: dict[tuple[str, tuple[str, ...]], deque[float]] = {}

    def allow(self, route: str, group: tuple[str, ...], limit: RateLimit) -> bool:
        now = self._clock()
        window = self._sent.setdefault((route, group), deque())
        while window and window[0] <= now - limit.per_seconds:
            window.popleft()
        if len(window) >= limit.count:
            return False
        window.append(now)
        return True


def group_key(route: Route, notice: Notice) -> tuple[str, ...]:
    view = notice.view
    values = {
        "incident": view.incident_id,
        "alertname": view.alert.name,
        "namespace": view.target.namespace,
        "cluster": view.target.cluster,
        "severity": view.alert.severity,
        "kind": notice.kind.value,
    }
    labels = dict(view.alert.labels)
    return tuple(
        labels.get(field.removeprefix("label:"), "")
        if field.startswith("label:")
        else values[field]
        for field in route.group_by
    )


class Router:
    """The routing tree and the channels it names."""

    def __init__(
        self,
        root: Route,
        channels: Mapping[str, VendorChannel],
        limiter: RateLimiter | None = None,
    ) -> None:
        if not root.match.empty:
            raise RoutingError("route: the root route matches everything; it takes no `match`")
        if not root.channels:
            raise RoutingError("route: the root route needs channels (the default ones)")
        self.root = root
        self.channels = dict(channels)
        self._limiter = limiter or RateLimiter()
        for path, route in _walk(root, "0"):
            unknown = [name for name in route.channels if name not in self.channels]
            if unknown:
                raise RoutingError(
                    f"route {path}: unknown channel(s) {', '.join(unknown)};"
                    f" the channels are {', '.join(sorted(self.channels))}"
                )

    def matched(self, notice: Notice) -> list[tuple[str, Route, tuple[str, ...]]]:
        """The routes the event ends at: (path, route, its channels)."""
        found: list[tuple[str, Route, tuple[str, ...]]] = []
        self._match(self.root, "0", self.root.channels, notice, found)
        return found

    def _match(
        self,
        route: Route,
        path: str,
        inherited: tuple[str, ...],
        notice: Notice,
        found: list[tuple[str, Route, tuple[str, ...]]],
    ) -> bool:
        if not route.match.matches(notice):
            return False
        channels = route.channels or inherited
        before = len(found)
        for index, child in enumerate(route.routes):
            if self._match(child, f"{path}.{index}", channels, notice, found) and not (
                child.continue_
            ):
                break
        if len(found) == before:
            found.append((path, route, channels))
        return True

    def choose(self, notice: Notice) -> list[Chosen]:
        """Each channel the event goes to once (the first route naming it decides its rate
        limit), with the reason it is held back, if it is."""
        chosen: dict[str, Chosen] = {}
        exempt = notice.kind is EventKind.APPROVAL_NEEDED or notice.kind.ends_incident
        for path, route, channels in self.matched(notice):
            held = ""
            limit = route.rate_limit
            if (
                limit is not None
                and not exempt
                and not self._limiter.allow(path, group_key(route, notice), limit)
            ):
                held = (
                    f"held back by route {path}'s rate limit ({limit.count} per"
                    f" {limit.per_seconds:g} s)"
                )
            for name in channels:
                chosen.setdefault(name, Chosen(name, path, held))
        return list(chosen.values())

    def describe(self) -> list[str]:
        """The routes, one line each, for ListChannels and the logs."""
        lines = []
        for path, route in _walk(self.root, "0"):
            match = route.match.model_dump(exclude_defaults=True, mode="json")
            limit = route.rate_limit
            channels = ", ".join(route.channels) or "(the parent's)"
            lines.append(
                f"{path}: match {match or 'everything'} -> {channels}"
                + (" (continue)" if route.continue_ else "")
                + (f"; at most {limit.count} per {limit.per_seconds:g} s" if limit else "")
            )
        return lines


def _walk(route: Route, path: str) -> Iterable[tuple[str, Route]]:
    yield path, route
    for index, child in enumerate(route.routes):
        yield from _walk(child, f"{path}.{index}")


def build_channel(
    name: str,
    spec: Mapping[str, Any],
    http: httpx.AsyncClient,
    smtp: NotificationSettings | None = None,
) -> VendorChannel:
    """One channel from its entry in the routing file: the vendor module its `type` names
    checks the entry (its config model, from `build`'s signature) and makes the channel.
    Email channels send through `smtp`, the service's SMTP settings."""
    kind = spec.get("type")
    if kind not in VENDOR_TYPES:
        raise RoutingError(
            f"channels.{name}.type: {kind!r} is not one of {', '.join(VENDOR_TYPES)}"
        )
    module = importlib.import_module(f"kubernaut.services.notification.vendors.{kind}")
    build = module.build
    model = typing.get_type_hints(build)["config"]
    try:
        config = model.model_validate(dict(spec))
    except ValidationError as error:
        raise RoutingError(f"channels.{name}: {_first_errors(error)}") from error
    try:
        if kind == "email":
            channel: VendorChannel = build(name, config, http, smtp=smtp)
        else:
            channel = build(name, config, http)
    except ValueError as error:
        raise RoutingError(f"channels.{name}: {error}") from error
    return channel


def _first_errors(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(entry)'}: {e['msg']}" for e in error.errors()[:5]
    )


def load_routing(
    path: Path, http: httpx.AsyncClient, smtp: NotificationSettings | None = None
) -> Router:
    """The Router of a routing file; RoutingError naming the file and the place."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise RoutingError(f"{path}: cannot read: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise RoutingError(f"{path}: not YAML: {error}") from error
    try:
        parsed = RoutingFile.model_validate(raw)
    except ValidationError as error:
        raise RoutingError(f"{path}: {_first_errors(error)}") from error
    try:
        channels = {
            name: build_channel(name, spec, http, smtp) for name, spec in parsed.channels.items()
        }
        return Router(parsed.route, channels)
    except RoutingError as error:
        raise RoutingError(f"{path}: {error}") from error
