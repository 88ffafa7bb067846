"""AlertManager webhook payloads (version 4) and their translation to gateway alerts."""

from __future__ import annotations

import datetime
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from pydantic import BaseModel, ConfigDict, Field

# AlertManager sends this for "no end" on firing alerts.
_ZERO_TIME_YEAR = 1


class AlertmanagerAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(max_length=128)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=128)
    startsAt: datetime.datetime
    endsAt: datetime.datetime | None = None
    generatorURL: str = Field(default="", max_length=2048)
    fingerprint: str = Field(default="", max_length=128)


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
    if value is None or value.year <= _ZERO_TIME_YEAR:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=datetime.UTC))
    return stamp


class MissingAlertName(ValueError):
    def __init__(self, index: int) -> None:
        super().__init__(f"alerts[{index}].labels: the alertname label is required")
        self.field = f"alerts[{index}].labels.alertname"


def to_alerts(webhook: AlertmanagerWebhook) -> list[alert_pb2.Alert]:
    alerts = []
    for index, alert in enumerate(webhook.alerts):
        name = alert.labels.get("alertname", "")
        if not name:
            raise MissingAlertName(index)
        alerts.append(
            alert_pb2.Alert(
                name=name,
                status=(
                    alert_pb2.ALERT_STATUS_FIRING
                    if alert.status == "firing"
                    else alert_pb2.ALERT_STATUS_RESOLVED
                ),
                labels=alert.labels,
                annotations=alert.annotations,
                starts_at=_timestamp(alert.startsAt),
                ends_at=_timestamp(alert.endsAt),
                generator_url=alert.generatorURL,
                source_fingerprint=alert.fingerprint,
                source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
            )
        )
    return alerts
