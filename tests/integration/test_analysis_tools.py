"""The model's `alert_query` tool against the real Prometheus (Debian's): the alert's own
expression, taken from its generator URL, evaluated now; a broken expression or a
Prometheus that is down is refused with why, never raised into the investigation."""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path

import pytest
from kubernaut.common.v1 import alert_pb2

from kubernaut.devstack.monitoring import Prometheus
from kubernaut.runtime.prometheus import PrometheusAPI
from kubernaut.services.ai_analysis import tools
from kubernaut.services.alerts import alert_expression

pytestmark = pytest.mark.integration


def alert_from(base_url: str, expression: str) -> alert_pb2.Alert:
    query = urllib.parse.urlencode({"g0.expr": expression, "g0.tab": "1"})
    return alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        generator_url=f"{base_url}/graph?{query}",
    )


async def test_the_alerts_own_expression_is_evaluated_in_prometheus(tmp_path: Path) -> None:
    prometheus = Prometheus(tmp_path / "prometheus", scrape_targets=[])
    await asyncio.to_thread(prometheus.start)
    try:
        expression = 'label_replace(vector(3), "pod", "web-1", "", "") > 2'
        alert = alert_from(prometheus.url, expression)
        assert alert_expression(alert) == expression
        api = PrometheusAPI(prometheus.url)
        tool = tools.prometheus_tool(api, alert_expression(alert))
        assert tool.spec.name == "alert_query"
        answer = await tool.handler({})
        assert answer == {
            "expression": expression,
            "series": [{"labels": {"pod": "web-1"}, "value": "3"}],
            "total_series": 1,
        }
        broken = tools.prometheus_tool(api, "rate(")
        with pytest.raises(tools.ToolRefused, match=r"answered 400: .*parse error"):
            await broken.handler({})
    finally:
        await asyncio.to_thread(prometheus.stop)
    # Stopped: refused with why, not an exception the investigation would die of.
    with pytest.raises(tools.ToolRefused, match="did not answer"):
        await tool.handler({})
    await api.close()


def test_an_alert_without_a_generator_url_has_no_expression() -> None:
    assert alert_expression(alert_pb2.Alert(name="X")) == ""
    odd = alert_pb2.Alert(name="X", generator_url="https://grafana.example/alerting/list")
    assert alert_expression(odd) == ""
