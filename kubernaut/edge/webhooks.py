"""AlertManager webhook payloads (version 4) and their translation to gateway alerts.

`translate_alert` turns one AlertManager-shaped alert into a gateway alert; every webhook
source whose alerts have that shape (AlertManager, Grafana) goes through it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Annotated, Literal

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from kubernaut.services.alerts import MAX_ANNOTATION_VALUE_CHARS, MAX_ANNOTATIONS, MAX_CLUSTER_CHARS

# AlertManager (and Grafana) send this for "no end" on firing alerts.
_ZERO_TIME_YEAR = 1

# Marks a value cut to fit alert.proto's limit.
_TRUNCATION_MARK = "…"


def _storable(value: str) -> str:
    """Text an alert can carry: no NUL character (no store keeps one) and valid Unicode (a
    lone surrogate, which JSON allows, has no UTF-8 form, so neither protobuf nor
    PostgreSQL takes it)."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it contains a lone surrogate)") from None
    return value


def _in_utc_range(value: datetime.datetime) -> datetime.datetime:
    """The instant in UTC; a time whose UTC form falls outside years 1 to 9999 (e.g.
    9999-12-31T23:00:00-05:00) is refused, as no timestamp can hold it."""
    aware = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    try:
        return aware.astimezone(datetime.UTC)
    except OverflowError:
        raise ValueError("is outside the years 1 to 9999 in UTC") from None


# What a webhook's alerts are made of.
Text = Annotated[str, AfterValidator(_storable)]
Instant = Annotated[datetime.datetime, AfterValidator(_in_utc_range)]


class AlertmanagerAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[Text, Text] = Field(max_length=128)
    annotations: dict[Text, Text] = Field(default_factory=dict, max_length=MAX_ANNOTATIONS)
    startsAt: Instant
    endsAt: Instant | None = None
    generatorURL: Text = Field(default="", max_length=2048)
    fingerprint: Text = Field(default="", max_length=128)

    @field_validator("labels")
    @classmethod
    def _cluster_is_a_name(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels.get("cluster", "")) > MAX_CLUSTER_CHARS:
            raise ValueError(f"the cluster label must be at most {MAX_CLUSTER_CHARS} characters")
        return labels


class AlertmanagerWebhook(BaseModel):
    """The body AlertManager POSTs to a webhook receiver."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str = ""
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AlertmanagerAlert] = Field(min_length=1, max_length=1000)


def _timestamp(value: datetime.datetime | None) -> Timestamp | None:
    """`value` is in UTC already (Instant)."""
    if value is None or value.year <= _ZERO_TIME_YEAR:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _fit_annotation_value(value: str) -> str:
    if len(value) <= MAX_ANNOTATION_VALUE_CHARS:
        return value
    # Marked, so that nobody reads a cut value as the whole one.
    return value[: MAX_ANNOTATION_VALUE_CHARS - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


class MissingAlertName(ValueError):
    def __init__(self, index: int) -> None:
        super().__init__(f"alerts[{index}].labels: the alertname label is required")
        self.field = f"alerts[{index}].labels.alertname"


def translate_alert(
    alert: AlertmanagerAlert,
    *,
    index: int,
    source: alert_pb2.AlertSource.ValueType,
    extra_annotations: Mapping[str, str] | None = None,
) -> alert_pb2.Alert:
    """One AlertManager-shaped alert, the `index`-th of its webhook, as a gateway alert.

    `extra_annotations` are added in their order, each only where the alert has no annotation
    of that name and only while the alert stays within alert.proto's annotation limit; a
    value over the proto's length limit is cut. The source's own annotations are passed on
    untouched: the gateway validates them and names any that break the limits.
    Raises MissingAlertName when the alert has no alertname label.
    """
    name = alert.labels.get("alertname", "")
    if not name:
        raise MissingAlertName(index)
    annotations = dict(alert.annotations)
    for key, value in (extra_annotations or {}).items():
        if len(annotations) >= MAX_ANNOTATIONS:
            break
        if value and key not in annotations:
            annotations[key] = _fit_annotation_value(value)
    firing = alert.status == "firing"
    starts_at = _timestamp(alert.startsAt)
    if starts_at is None and firing:
        # Unknown (Grafana's test notifications send the zero time): it started by the
        # time it arrived, which is what the gateway's freshness check then judges.
        starts_at = Timestamp()
        starts_at.GetCurrentTime()
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING if firing else alert_pb2.ALERT_STATUS_RESOLVED,
        labels=alert.labels,
        annotations=annotations,
        starts_at=starts_at,
        ends_at=_timestamp(alert.endsAt),
        generator_url=alert.generatorURL,
        source_fingerprint=alert.fingerprint,
        source=source,
    )


def to_alerts(webhook: AlertmanagerWebhook) -> list[alert_pb2.Alert]:
    return [
        translate_alert(alert, index=index, source=alert_pb2.ALERT_SOURCE_ALERTMANAGER)
        for index, alert in enumerate(webhook.alerts)
    ]
