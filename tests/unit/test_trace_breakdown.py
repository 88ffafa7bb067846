"""Reading Jaeger's answer into spans, and the latency bench's per-hop breakdown from them."""

from __future__ import annotations

from bench.alert_to_change import CHANGE, Sample, milestones, quantile
from kubernaut.devstack.jaeger import parse_trace, trace_url


def _span(
    span_id: str, process: str, operation: str, start: int, kind: str, parent: str = ""
) -> dict[str, object]:
    return {
        "spanID": span_id,
        "processID": process,
        "operationName": operation,
        "startTime": start,
        "duration": 10,
        "references": [{"refType": "CHILD_OF", "spanID": parent}] if parent else [],
        "tags": [{"key": "span.kind", "value": kind}] if kind else [],
    }


# Jaeger's /api/traces/<id>: spans in no particular order, services by process id.
ANSWER = {
    "data": [
        {
            "processes": {
                "p1": {"serviceName": "kubernaut-gateway-http"},
                "p2": {"serviceName": "kubernaut-gateway"},
                "p3": {"serviceName": "kubernaut-executor"},
            },
            "spans": [
                _span("c", "p2", "forward firing alert", 1_000_300, "", "b"),
                _span("a", "p1", "POST /api/v1/alerts/alertmanager", 1_000_000, "server"),
                _span(
                    "b",
                    "p2",
                    "/kubernaut.gateway.v1.GatewayService/SubmitAlerts",
                    1_000_100,
                    "server",
                    "a",
                ),
                _span(
                    "d",
                    "p2",
                    "/kubernaut.gateway.v1.GatewayService/SubmitAlerts",
                    1_000_200,
                    "client",
                    "a",
                ),
                _span(
                    "e",
                    "p3",
                    "/kubernaut.executor.v1.ExecutorService/ExecuteAction",
                    1_050_000,
                    "server",
                    "c",
                ),
            ],
        }
    ]
}


def test_spans_come_sorted_with_their_service_and_parent() -> None:
    spans = parse_trace(ANSWER)
    assert [s.span_id for s in spans] == ["a", "b", "d", "c", "e"]
    assert spans[1].service == "kubernaut-gateway" and spans[1].parent_id == "a"
    assert spans[0].end_us == 1_000_010
    assert parse_trace({"data": []}) == []
    assert trace_url("http://127.0.0.1:1/", "ab") == "http://127.0.0.1:1/trace/ab"


def test_the_breakdown_follows_the_path_and_ends_at_the_change() -> None:
    found = milestones(parse_trace(ANSWER))
    # The client span of SubmitAlerts is not the gateway's own; an unsent hop is absent.
    assert found == {
        "edge": 1_000_000,
        "gateway SubmitAlerts": 1_000_100,
        "gateway forwarder": 1_000_300,
        "executor ExecuteAction": 1_050_000,
    }
    sample = Sample("ns", "pod", starts=found, change_us=1_062_000)
    assert sample.total_ms == 62.0
    assert sample.hops_ms() == {
        "edge -> gateway SubmitAlerts": 0.1,
        "gateway SubmitAlerts -> gateway forwarder": 0.2,
        "gateway forwarder -> executor ExecuteAction": 49.7,
        f"executor ExecuteAction -> {CHANGE}": 12.0,
    }
    assert Sample("ns", "pod", starts={}, change_us=5).total_ms is None


def test_quantiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile([7.0], 0.99) == 7.0
