"""How much the edge takes: 429 per sender with Retry-After, the global
concurrency cap (503), the request metrics; and the gateway's freshness judgement."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import httpx
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from kubernaut.gateway.v1 import gateway_pb2
from opentelemetry import trace
from prometheus_client import REGISTRY

from kubernaut.edge.app import ALERTMANAGER_PATH, GRAFANA_PATH, create_app
from kubernaut.edge.security import Authenticator
from kubernaut.runtime.ratelimit import RateLimiter
from kubernaut.services.gateway.decisions import FLAGS_ANNOTATION, flagged, judge_freshness
from kubernaut.services.gateway.settings import FreshnessPolicy, GatewaySettings
from tests.fixtures.waiting import eventually

TOKENS = ["sender-a-token", "sender-b-token"]
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def webhook() -> bytes:
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "KubePodCrashLooping", "namespace": "a", "pod": "p"},
                    "startsAt": "2026-11-26T10:00:00Z",
                }
            ],
        }
    ).encode()


class SlowGateway:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(
        self, request: gateway_pb2.SubmitAlertsRequest
    ) -> gateway_pb2.SubmitAlertsResponse:
        self.calls += 1
        await self.release.wait()
        return gateway_pb2.SubmitAlertsResponse()


async def post(client: httpx.AsyncClient, token: str, path: str = ALERTMANAGER_PATH) -> Any:
    return await client.post(
        path,
        content=webhook(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


def sample(route: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "kubernaut_edge_requests_total", {"route": route, "result": result}
    )
    return value or 0.0


async def test_each_sender_has_its_own_rate_limit_and_learns_when_to_retry() -> None:
    gateway = SlowGateway()
    gateway.release.set()
    app = create_app(gateway, Authenticator.of(TOKENS), rate_limiter=RateLimiter(rate=0.5, burst=2))
    limited_before = sample(ALERTMANAGER_PATH, "rate_limited")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as client:
        answers = [await post(client, TOKENS[0]) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        refusal = answers[2]
        assert refusal.headers["Retry-After"] == "2"
        assert "token#1" in refusal.json()["error"]
        assert TOKENS[0] not in refusal.text
        # The other sender is not held back.
        assert (await post(client, TOKENS[1])).status_code == 200
    # The refused request never reached the gateway.
    assert gateway.calls == 3
    assert sample(ALERTMANAGER_PATH, "rate_limited") == limited_before + 1


async def test_beyond_the_concurrency_cap_requests_are_shed_at_once() -> None:
    gateway = SlowGateway()
    app = create_app(gateway, Authenticator.of(TOKENS), max_concurrent=2)
    before = sample(ALERTMANAGER_PATH, "overloaded")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as client:
        held = [asyncio.create_task(post(client, TOKENS[0])) for _ in range(2)]
        await eventually(lambda: asyncio.sleep(0, gateway.calls == 2), "two requests held")
        shed = await post(client, TOKENS[1])
        assert shed.status_code == 503
        assert shed.headers["Retry-After"] == "1"
        assert "limit of 2 requests in progress" in shed.json()["error"]
        gateway.release.set()
        assert [(await task).status_code for task in held] == [200, 200]
        # Room again.
        assert (await post(client, TOKENS[1])).status_code == 200
    assert sample(ALERTMANAGER_PATH, "overloaded") == before + 1


async def test_requests_are_counted_by_result_and_timed() -> None:
    gateway = SlowGateway()
    gateway.release.set()
    app = create_app(gateway, Authenticator.of(TOKENS))
    ok, unauthenticated = sample(GRAFANA_PATH, "ok"), sample(GRAFANA_PATH, "unauthenticated")
    timed = (
        REGISTRY.get_sample_value("kubernaut_edge_request_seconds_count", {"route": GRAFANA_PATH})
        or 0.0
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as client:
        body = json.loads(webhook())
        body["version"] = "1"
        answer = await client.post(
            GRAFANA_PATH, json=body, headers={"Authorization": f"Bearer {TOKENS[0]}"}
        )
        assert answer.status_code == 200, answer.text
        assert (await post(client, "wrong", GRAFANA_PATH)).status_code == 401
    assert sample(GRAFANA_PATH, "ok") == ok + 1
    assert sample(GRAFANA_PATH, "unauthenticated") == unauthenticated + 1
    assert REGISTRY.get_sample_value(
        "kubernaut_edge_request_seconds_count", {"route": GRAFANA_PATH}
    ) == (timed + 2)


async def test_the_gateway_call_continues_the_senders_trace() -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    seen: list[str] = []

    async def gateway(request: gateway_pb2.SubmitAlertsRequest) -> gateway_pb2.SubmitAlertsResponse:
        # What the client interceptor sends on as the call's traceparent.
        seen.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))
        return gateway_pb2.SubmitAlertsResponse()

    app = create_app(gateway, Authenticator.of(TOKENS))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as client:
        answer = await client.post(
            ALERTMANAGER_PATH,
            content=webhook(),
            headers={
                "Authorization": f"Bearer {TOKENS[0]}",
                "Content-Type": "application/json",
                "traceparent": f"00-{trace_id}-b7ad6b7169203331-01",
            },
        )
    assert answer.status_code == 200, answer.text
    assert seen == [trace_id]


def firing(started: dt.datetime, status: int = alert_pb2.ALERT_STATUS_FIRING) -> alert_pb2.Alert:
    stamp = Timestamp()
    stamp.FromDatetime(started)
    return alert_pb2.Alert(name="X", status=status, starts_at=stamp)  # type: ignore[arg-type]


def test_freshness_refuses_or_flags_as_configured() -> None:
    settings = GatewaySettings(max_age_seconds=3600, future_skew_seconds=300)
    assert judge_freshness(firing(NOW - dt.timedelta(minutes=59)), NOW, settings).refusal == ""
    old = judge_freshness(firing(NOW - dt.timedelta(days=2)), NOW, settings)
    assert old.refusal == "stale: started 2.0d ago, longer than the 1.0h allowed"
    ahead = judge_freshness(firing(NOW + dt.timedelta(minutes=10)), NOW, settings)
    assert ahead.refusal.startswith("from the future: starts 10.0m from now")
    assert judge_freshness(firing(NOW + dt.timedelta(minutes=4)), NOW, settings).refusal == ""
    # A resolved alert is never judged: it never becomes work.
    resolved = firing(NOW - dt.timedelta(days=30), alert_pb2.ALERT_STATUS_RESOLVED)
    assert judge_freshness(resolved, NOW, settings).refusal == ""
    flagging = GatewaySettings(
        max_age_seconds=3600,
        stale_policy=FreshnessPolicy.FLAG,
        future_policy=FreshnessPolicy.FLAG,
    )
    stale = judge_freshness(firing(NOW - dt.timedelta(hours=2)), NOW, flagging)
    assert stale.refusal == "" and stale.flags[0].startswith("stale")


def test_a_flag_is_written_into_a_copy_of_the_alert_when_there_is_room() -> None:
    alert = firing(NOW)
    marked = flagged(alert, ["stale: started 2.0h ago"])
    assert marked.annotations[FLAGS_ANNOTATION] == "stale: started 2.0h ago"
    assert FLAGS_ANNOTATION not in alert.annotations
    full = firing(NOW)
    full.annotations.update({f"a{i}": "x" for i in range(128)})
    assert FLAGS_ANNOTATION not in flagged(full, ["stale"]).annotations
