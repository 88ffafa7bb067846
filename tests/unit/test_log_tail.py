"""The `log_tail` tool's argument checks and what it shows the model, and context_api's
tail trimming (kubernaut/services/ai_analysis/tools.py, context_api/logs.py)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.runtime.redaction import Redactor
from kubernaut.services.ai_analysis import contract, tools
from kubernaut.services.ai_analysis.prompt import Prompt
from kubernaut.services.context_api.logs import tail_of

SUBJECT = alert_pb2.ResourceRef(kind="Pod", namespace="shop", name="web-7d4-abc")
WORKLOAD = alert_pb2.ResourceRef(kind="Deployment", namespace="shop", name="web")
EVIDENCE = context_api_pb2.ResourceContext(
    resource=SUBJECT,
    workload=WORKLOAD,
    pods=[
        context_api_pb2.PodState(name="web-7d4-abc", node="node-1"),
        context_api_pb2.PodState(name="web-7d4-def", node="node-2"),
    ],
)
TARGETS = contract.targets_of(SUBJECT, EVIDENCE)
READABLE = tools.log_targets(TARGETS, EVIDENCE)


def test_only_the_incidents_pods_and_workload_are_readable() -> None:
    assert sorted(READABLE) == [
        "Deployment/shop/web",
        "Pod/shop/web-7d4-abc",
        "Pod/shop/web-7d4-def",
    ]
    # Nodes are targets (for cordoning) but have no logs here.
    assert any(t.ref.kind == "Node" for t in TARGETS)
    # A sibling pod is read in the workload's scope, which context_api checks it against.
    assert READABLE["Pod/shop/web-7d4-def"] == (WORKLOAD, "web-7d4-def")
    # The alert's own pod, as its own scope (context_api picks it).
    assert READABLE["Pod/shop/web-7d4-abc"] == (SUBJECT, "")


def test_no_tool_without_pods_to_read() -> None:
    node = alert_pb2.ResourceRef(kind="Node", name="node-1")
    assert tools.log_tool(_never, contract.targets_of(node, None), None) is None
    hpa = alert_pb2.ResourceRef(kind="HorizontalPodAutoscaler", namespace="shop", name="web")
    assert tools.log_tool(_never, contract.targets_of(hpa, None), None) is None


async def _never(request: context_api_pb2.GetPodLogsRequest) -> context_api_pb2.PodLogs:
    raise AssertionError("not to be called")


def test_a_well_formed_call_becomes_the_request() -> None:
    request = tools.log_request(
        {"target": "Pod/shop/web-7d4-def", "container": "app", "previous": True, "lines": 200},
        READABLE,
    )
    assert request == context_api_pb2.GetPodLogsRequest(
        scope=WORKLOAD, pod="web-7d4-def", container="app", previous=True, tail_lines=200
    )
    defaults = tools.log_request({"target": "Deployment/shop/web"}, READABLE)
    assert defaults.tail_lines == tools.LOG_DEFAULT_LINES
    assert (defaults.pod, defaults.container, defaults.previous) == ("", "", False)


@pytest.mark.parametrize(
    ("arguments", "why"),
    [
        ({}, "target must be one of"),
        ({"target": "Deployment/kube-system/coredns"}, "target must be one of"),
        ({"target": "Node/node-1"}, "target must be one of"),
        ({"target": "Deployment/shop/web", "lines": 201}, "lines must be"),
        ({"target": "Deployment/shop/web", "lines": 0}, "lines must be"),
        ({"target": "Deployment/shop/web", "lines": -5}, "lines must be"),
        ({"target": "Deployment/shop/web", "lines": 10.5}, "lines must be"),
        ({"target": "Deployment/shop/web", "lines": "50"}, "lines must be"),
        ({"target": "Deployment/shop/web", "lines": True}, "lines must be"),
        ({"target": "Deployment/shop/web", "previous": "yes"}, "previous must be"),
        ({"target": "Deployment/shop/web", "container": 3}, "container must be"),
        ({"target": "Deployment/shop/web", "container": "c" * 64}, "container must be"),
        ({"target": "Deployment/shop/web", "namespace": "kube-system"}, "unknown arguments"),
    ],
)
def test_arguments_outside_the_bounds_are_refused(arguments: dict[str, Any], why: str) -> None:
    with pytest.raises(tools.ToolRefused, match=why):
        tools.log_request(arguments, READABLE)


def test_the_tools_schema_states_the_same_bounds() -> None:
    tool = tools.log_tool(_never, TARGETS, EVIDENCE)
    assert tool is not None and tool.spec.name == "log_tail"
    schema = tool.spec.parameters
    assert schema["properties"]["target"]["enum"] == sorted(READABLE)
    assert schema["properties"]["lines"]["maximum"] == tools.LOG_MAX_LINES == 200
    assert schema["additionalProperties"] is False


async def test_a_refused_call_never_reaches_context_api() -> None:
    tool = tools.log_tool(_never, TARGETS, EVIDENCE)
    assert tool is not None
    with pytest.raises(tools.ToolRefused):
        await tool.handler({"target": "Pod/other/x", "lines": 10})


def test_the_model_sees_the_newest_lines_within_the_bound() -> None:
    logs = context_api_pb2.PodLogs(
        pod=SUBJECT, container="app", lines=[f"{i:04d} " + "y" * 95 for i in range(200)]
    )
    view = tools.log_view(logs)
    assert view["lines"][-1].startswith("0199")
    assert sum(len(line) + 4 for line in view["lines"]) <= tools.LOG_MAX_CHARS
    assert view["older_lines_left_out"]
    short = tools.log_view(context_api_pb2.PodLogs(pod=SUBJECT, lines=["one", "two"]))
    assert short["lines"] == ["one", "two"] and not short["older_lines_left_out"]


def test_a_secret_in_a_log_line_is_redacted_before_the_prompt() -> None:
    logs = context_api_pb2.PodLogs(
        pod=SUBJECT,
        container="app",
        lines=[
            "connecting to db with password=hunter2-s3cr3t",
            "GET /api Authorization: Bearer abcdefghijklmnop0123456789",
            "aws key AKIAIOSFODNN7EXAMPLE loaded",
            "panic: nil map",
        ],
    )
    text = Prompt(Redactor()).data("Result of log_tail", tools.log_view(logs))
    for secret in ("hunter2-s3cr3t", "abcdefghijklmnop0123456789", "AKIAIOSFODNN7EXAMPLE"):
        assert secret not in text
    assert text.count("[REDACTED]") >= 3
    assert "panic: nil map" in text


def test_a_refusal_carries_no_words_of_the_cluster() -> None:
    for code in grpc.StatusCode:
        assert "ignore" not in tools.log_refusal(code)
    assert "previous run" in tools.log_refusal(grpc.StatusCode.FAILED_PRECONDITION)


def test_the_tail_keeps_the_newest_whole_lines_within_the_byte_cap() -> None:
    data = b"".join(b"%04d abcdefghij\n" % i for i in range(100))  # 16 bytes a line
    lines, truncated = tail_of(data, 100, complete=True)
    assert lines == [f"{i:04d} abcdefghij" for i in range(94, 100)] and truncated
    everything, cut = tail_of(data, 10_000, complete=True)
    assert len(everything) == 100 and not cut
    # A read cut by its byte cap: its last, partial line is dropped.
    partial, cut = tail_of(data[:40], 100, complete=False)
    assert partial == ["0000 abcdefghij", "0001 abcdefghij"] and cut
    # One line longer than the cap: its end.
    (long_line,), cut = tail_of(b"a" * 50 + b"END\n", 10, complete=True)
    assert long_line.endswith("END") and len(long_line) < 10 and cut
