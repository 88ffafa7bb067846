"""Incident event messages: a subject and a plain-text body from the jinja2 templates in
`templates/`, one template per IncidentEventKind.

Alert labels and annotations are data, never instructions: they reach the templates only
as variable values, which jinja2 inserts as text and never evaluates, and control
characters in them (terminal escapes, NUL, bidi overrides) are escaped first so a mail
client or terminal shows them instead of acting on them. URLs in them are links only when
the link policy allows their host (kubernaut.services.notification.links); others are defanged.

Subjects say what happened to the workload, not to Kubernaut's action: what the executor's
stage lines tell about the change (applied, undone, never made) is read by `what_changed`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jinja2
from google.protobuf import timestamp_pb2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from kubernaut.common.v1 import alert_pb2
from kubernaut.notification.v1 import notification_pb2

from kubernaut.services.notification.links import LinkPolicy, ShownUrl

__all__ = [
    "MAX_SUBJECT_LENGTH",
    "TEMPLATES",
    "TEMPLATES_DIR",
    "AlertView",
    "Changed",
    "EventRenderer",
    "EventView",
    "RenderedMessage",
    "TargetView",
    "UnknownEventKind",
    "plain_text",
    "what_changed",
]

TEMPLATES_DIR: Final = Path(__file__).with_name("templates")

# One template file per kind; UNSPECIFIED has none (protovalidate refuses it).
TEMPLATES: Final[Mapping[notification_pb2.IncidentEventKind.ValueType, str]] = {
    notification_pb2.INCIDENT_EVENT_KIND_APPROVAL_NEEDED: "approval_needed.txt",
    notification_pb2.INCIDENT_EVENT_KIND_SUCCEEDED: "succeeded.txt",
    notification_pb2.INCIDENT_EVENT_KIND_FAILED: "failed.txt",
    notification_pb2.INCIDENT_EVENT_KIND_ROLLED_BACK: "rolled_back.txt",
    notification_pb2.INCIDENT_EVENT_KIND_REFUSED: "refused.txt",
    notification_pb2.INCIDENT_EVENT_KIND_STORM: "storm.txt",
    notification_pb2.INCIDENT_EVENT_KIND_NOT_ACTED_ON: "not_acted_on.txt",
    notification_pb2.INCIDENT_EVENT_KIND_OPENED: "opened.txt",
    notification_pb2.INCIDENT_EVENT_KIND_ACTION_PLANNED: "action_planned.txt",
    notification_pb2.INCIDENT_EVENT_KIND_ESCALATED: "escalated.txt",
    notification_pb2.INCIDENT_EVENT_KIND_RESOLVED: "resolved.txt",
}

# The limit SendNotification puts on a subject; longer ones are cut with an ellipsis.
MAX_SUBJECT_LENGTH: Final = 200
NOT_ASSESSED: Final = "not assessed yet"

# Every line break Python's str.splitlines() knows, so that no later step splits on one we
# did not normalise.
_LINE_BREAK: Final = re.compile(r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# C0 and C1 controls except \t and \n, and the bidi embedding/override/isolate characters
# (which can make text display in an order other than the one it is in).
_UNSAFE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain_text(value: object) -> str:
    """`value` as text that is safe to show: line breaks normalised to \\n, other control
    characters escaped as \\xNN or \\uNNNN. Idempotent."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, _LINE_BREAK.sub("\n", text))


def _continued(value: object, width: int = 2) -> str:
    """Indent every line after the first by `width` spaces (a template filter)."""
    return plain_text(value).replace("\n", "\n" + " " * width)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > MAX_SUBJECT_LENGTH:
        line = line[: MAX_SUBJECT_LENGTH - 1].rstrip() + "…"
    return line


def _when(timestamp: timestamp_pb2.Timestamp) -> str:
    at = timestamp.ToDatetime(tzinfo=dt.UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


class Changed(enum.StrEnum):
    """What the executor's stage lines say about the change to the target."""

    # No stage line of the executor's: it did not answer (the workflow failed first).
    UNKNOWN = "unknown"
    # It stopped before applying (refused, dry-run mode, an action that only reads), or the
    # API server rejected the change.
    NOTHING = "nothing"
    # Applied, and no undo was needed or tried.
    APPLIED = "applied"
    # Applied, then restored from the snapshot.
    UNDONE = "undone"
    # Applied, and the undo failed or is not possible: Kubernaut's change is still there.
    NOT_UNDONE = "not_undone"


# The executor's stage lines start "<phase>: " (the stage modules of kubernaut/services/executor/).
_EXECUTOR_PHASES: Final = frozenset(
    {
        "resume",
        "scope",
        "rbac",
        "guards",
        "plan",
        "dry-run",
        "snapshot",
        "apply",
        "verify",
        "rollback",
        "rollback verify",
        "record",
        "collect",
        "notify",
    }
)


def what_changed(stages: Sequence[str]) -> Changed:
    """What `stages` (the executor's stage lines, as the workflow passes them on) say about
    the change. Says UNKNOWN rather than guess when they are not the executor's."""
    lines = [line.strip().lower() for line in stages]
    if not any(line.partition(":")[0] in _EXECUTOR_PHASES for line in lines):
        return Changed.UNKNOWN
    rollback = [line for line in lines if line.startswith("rollback:")]
    if any(line.startswith(("rollback: failed", "rollback: not possible")) for line in rollback):
        return Changed.NOT_UNDONE
    if any(line.startswith(("rollback: restored", "rollback: deleted")) for line in rollback):
        return Changed.UNDONE
    if any(line.startswith("apply:") and not line.startswith("apply: failed") for line in lines):
        return Changed.APPLIED
    return Changed.NOTHING


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    body: str


@dataclass(frozen=True, slots=True)
class AlertView:
    """What fired, as the templates see it. Every string is already `plain_text`, and URLs
    in the annotations and labels that may not be links are defanged."""

    name: str
    status: str
    severity: str
    summary: str
    description: str
    # From the annotations / the alert's generator URL; None when the alert has none.
    runbook: ShownUrl | None
    source: ShownUrl | None
    starts_at: str
    # Sorted by key.
    labels: tuple[tuple[str, str], ...]
    # Whether a URL in the summary, description or labels was defanged.
    defanged_text: bool


@dataclass(frozen=True, slots=True)
class TargetView:
    cluster: str
    namespace: str
    kind: str
    name: str

    @property
    def ref(self) -> str:
        """`Deployment shop/checkout`, or `Node worker-1` for cluster-scoped kinds."""
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"


@dataclass(frozen=True, slots=True)
class EventView:
    """The variables every template gets (as attributes of this object)."""

    incident_id: str
    alert: AlertView
    target: TargetView
    action: str
    stages: tuple[str, ...]
    verdict: str
    occurred_at: str
    # What the stages say about the change (a Changed value, as text for the templates).
    changed: str
    # The incident's workflow, when it has one (what approval buttons and links decide).
    workflow_id: str = ""

    @classmethod
    def of(
        cls, event: notification_pb2.IncidentEvent, links: LinkPolicy | None = None
    ) -> EventView:
        return cls(
            incident_id=plain_text(event.incident_id),
            alert=_alert_view(event.alert, links or LinkPolicy()),
            target=_target_view(event.target),
            action=plain_text(event.action),
            stages=tuple(plain_text(stage) for stage in event.stages),
            verdict=plain_text(event.verdict) or NOT_ASSESSED,
            occurred_at=_when(event.occurred_at) if event.HasField("occurred_at") else "",
            changed=what_changed(event.stages).value,
            workflow_id=plain_text(event.workflow_id),
        )

    def variables(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def _alert_view(alert: alert_pb2.Alert, links: LinkPolicy) -> AlertView:
    annotations = alert.annotations
    status = {
        alert_pb2.ALERT_STATUS_FIRING: "firing",
        alert_pb2.ALERT_STATUS_RESOLVED: "resolved",
    }.get(alert.status, "unknown status")
    defanged = False

    def text(value: str) -> str:
        nonlocal defanged
        shown, changed = links.defang_text(plain_text(value))
        defanged = defanged or changed
        return shown

    def url(value: str) -> ShownUrl | None:
        # Whitespace around a URL is not part of it; inside one, it makes it no link.
        value = plain_text(value).strip()
        return links.show(value) if value else None

    summary = text(annotations.get("summary", ""))
    description = text(annotations.get("description", ""))
    labels = tuple(sorted((plain_text(k), text(v)) for k, v in alert.labels.items()))
    return AlertView(
        name=text(alert.name),
        status=status,
        severity=plain_text(alert.labels.get("severity", "")),
        summary=summary,
        description=description,
        runbook=url(annotations.get("runbook_url", "")),
        source=url(alert.generator_url),
        starts_at=_when(alert.starts_at) if alert.HasField("starts_at") else "",
        labels=labels,
        defanged_text=defanged,
    )


def _target_view(target: alert_pb2.ResourceRef) -> TargetView:
    return TargetView(
        cluster=plain_text(target.cluster),
        namespace=plain_text(target.namespace),
        kind=plain_text(target.kind),
        name=plain_text(target.name),
    )


class UnknownEventKind(ValueError):
    def __init__(self, kind: int) -> None:
        super().__init__(f"no notification template for incident event kind {kind}")
        self.kind = kind


def template_environment(directory: Path) -> ImmutableSandboxedEnvironment:
    """The Jinja2 environment every notification template is rendered in (email's and
    each vendor channel's): sandboxed and immutable (a template cannot call methods that
    change data, or reach Python internals), undefined variables are errors, and every
    value printed goes through plain_text (data stays text)."""
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(directory),
        # Plain text: HTML escaping would show "&lt;" to the reader.
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # The last guard on everything a template prints: data stays text.
        finalize=plain_text,
    )
    env.filters["continued"] = _continued
    return env


class EventRenderer:
    """Renders incident events with the templates in `directory` (ours by default).

    Templates are parsed when the renderer is made, so a broken one fails at start. The
    environment is sandboxed and immutable (a template cannot call methods that change
    data, or reach Python internals) and undefined variables are errors, not blanks.
    """

    def __init__(self, directory: Path = TEMPLATES_DIR, links: LinkPolicy | None = None) -> None:
        # Which URLs from an alert may be links; by default none.
        self._links = links or LinkPolicy()
        self._env = template_environment(directory)
        self._templates: dict[int, jinja2.Template] = {}
        for kind, name in TEMPLATES.items():
            template = self._env.get_template(name)
            if "subject" not in template.blocks:
                raise ValueError(f"{directory / name}: no {{% block subject %}}")
            self._templates[kind] = template

    @property
    def links(self) -> LinkPolicy:
        """Which URLs of an alert may be links (every channel shows the same)."""
        return self._links

    def render(self, event: notification_pb2.IncidentEvent) -> RenderedMessage:
        """Subject (one line, at most MAX_SUBJECT_LENGTH characters) and body of `event`.
        Raises UnknownEventKind for a kind without a template."""
        template = self._templates.get(event.kind)
        if template is None:
            raise UnknownEventKind(event.kind)
        variables = EventView.of(event, self._links).variables()
        subject = "".join(template.blocks["subject"](template.new_context(variables)))
        body = template.render(variables)
        # Blank lines at the ends come from optional sections; one final newline stays.
        return RenderedMessage(subject=_one_line(subject), body=body.strip("\n") + "\n")
