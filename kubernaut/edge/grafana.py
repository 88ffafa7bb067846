"""Grafana unified-alerting webhook payloads (Grafana 9+, payload version "1") and their
translation to gateway alerts.

Grafana's alerting runs an embedded AlertManager, and its webhook contact point sends that
AlertManager's alerts extended with Grafana links and the values that fired (grafana/alerting's
ExtendedAlert). So a Grafana alert is an AlertmanagerAlert with extra fields, and is translated
by the same function; the extras worth keeping become annotations.
"""

from __future__ import annotations

from typing import Literal

from kubernaut.common.v1 import alert_pb2
from pydantic import BaseModel, ConfigDict, Field

from kubernaut.edge.webhooks import AlertmanagerAlert, Text, translate_alert

# Annotation names for the Grafana-only fields we keep; the alert's own annotations win.
DASHBOARD_URL_ANNOTATION = "grafana_dashboard_url"
PANEL_URL_ANNOTATION = "grafana_panel_url"
VALUES_ANNOTATION = "grafana_values"

# Links we keep are bounded like generatorURL (alert.proto's generator_url limit). Links we
# drop (silence, image) get a looser bound: a silence link carries every label as a matcher,
# and a long one must not cost the alert.
_KEPT_URL_MAX = 2048
_DROPPED_URL_MAX = 16384
# Title and message are rendered from every alert in the group; the edge's body limit
# (1 MiB by default) is what really bounds them.
_TEXT_MAX = 1024 * 1024


class GrafanaAlert(AlertmanagerAlert):
    """One alert of a Grafana webhook: AlertManager's fields and bounds, plus Grafana's."""

    silenceURL: str = Field(default="", max_length=_DROPPED_URL_MAX)
    dashboardURL: Text = Field(default="", max_length=_KEPT_URL_MAX)
    panelURL: Text = Field(default="", max_length=_KEPT_URL_MAX)
    # Grafana sends null when the rule produced no values (e.g. a test notification).
    values: dict[Text, float] | None = Field(default=None, max_length=128)
    # Deprecated by Grafana in favour of `values`, but it names each series' labels.
    valueString: Text = Field(default="", max_length=_TEXT_MAX)
    imageURL: str = Field(default="", max_length=_DROPPED_URL_MAX)


class GrafanaWebhook(BaseModel):
    """The body Grafana's webhook contact point POSTs (unified alerting, version "1")."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["1"]
    receiver: str = Field(default="", max_length=1024)
    status: Literal["firing", "resolved"]
    orgId: int = 0
    alerts: list[GrafanaAlert] = Field(min_length=1, max_length=1000)
    groupLabels: dict[str, str] = Field(default_factory=dict, max_length=128)
    commonLabels: dict[str, str] = Field(default_factory=dict, max_length=128)
    commonAnnotations: dict[str, str] = Field(default_factory=dict, max_length=128)
    externalURL: str = Field(default="", max_length=_KEPT_URL_MAX)
    groupKey: str = Field(default="", max_length=_TEXT_MAX)
    truncatedAlerts: int = Field(default=0, ge=0)
    # Deprecated by Grafana; accepted and not used.
    title: str = Field(default="", max_length=_TEXT_MAX)
    state: str = Field(default="", max_length=64)
    message: str = Field(default="", max_length=_TEXT_MAX)


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _values_text(alert: GrafanaAlert) -> str:
    """What fired: Grafana's valueString when sent (it names each series), else its values."""
    if alert.valueString:
        return alert.valueString
    return ", ".join(
        f"{ref_id}={_format_number(value)}"
        for ref_id, value in sorted((alert.values or {}).items())
    )


def grafana_to_alerts(webhook: GrafanaWebhook) -> list[alert_pb2.Alert]:
    """The webhook's alerts as gateway alerts. Raises MissingAlertName (from
    kubernaut.edge.webhooks) for the first alert without an alertname label."""
    return [
        translate_alert(
            alert,
            index=index,
            source=alert_pb2.ALERT_SOURCE_GRAFANA,
            # In this order of value when the annotation limit leaves room for only some.
            extra_annotations={
                VALUES_ANNOTATION: _values_text(alert),
                DASHBOARD_URL_ANNOTATION: alert.dashboardURL,
                PANEL_URL_ANNOTATION: alert.panelURL,
            },
        )
        for index, alert in enumerate(webhook.alerts)
    ]
