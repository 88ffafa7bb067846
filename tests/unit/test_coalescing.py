"""Webhooks arriving together go to the gateway in one call, each gets its own answer."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.gateway.v1 import gateway_pb2

from kubernaut.edge.coalescing import Coalescer

ACCEPTED = remediation_pb2.ALERT_DISPOSITION_ACCEPTED


def request(*names: str) -> gateway_pb2.SubmitAlertsRequest:
    return gateway_pb2.SubmitAlertsRequest(alerts=[alert_pb2.Alert(name=n) for n in names])


class Failure(grpc.aio.AioRpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class Gateway:
    """Answers each alert with its name as the fingerprint; held until released. An alert
    named "bad" makes its whole call INVALID_ARGUMENT, "down" UNAVAILABLE."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()

    async def __call__(
        self, call: gateway_pb2.SubmitAlertsRequest
    ) -> gateway_pb2.SubmitAlertsResponse:
        names = [alert.name for alert in call.alerts]
        self.calls.append(names)
        await self.release.wait()
        for failing, code in (
            ("bad", grpc.StatusCode.INVALID_ARGUMENT),
            ("down", grpc.StatusCode.UNAVAILABLE),
        ):
            if failing in names:
                raise Failure(code)
        return gateway_pb2.SubmitAlertsResponse(
            outcomes=[
                gateway_pb2.AlertOutcome(index=i, fingerprint=name, disposition=ACCEPTED)
                for i, name in enumerate(names)
            ]
        )


def fingerprints(response: gateway_pb2.SubmitAlertsResponse) -> list[tuple[int, str]]:
    return [(o.index, o.fingerprint) for o in response.outcomes]


async def test_an_idle_edge_sends_at_once_and_a_busy_one_batches() -> None:
    gateway = Gateway()
    coalescer = Coalescer(gateway, max_in_flight=1)
    first = asyncio.create_task(coalescer(request("a")))
    await asyncio.sleep(0)
    # While "a" is on its way, three more webhooks arrive.
    later = [asyncio.create_task(coalescer(request(*names))) for names in (["b", "c"], ["d"])]
    await asyncio.sleep(0)
    assert gateway.calls == [["a"]]
    gateway.release.set()
    assert fingerprints(await first) == [(0, "a")]
    answers = await asyncio.gather(*later)
    # One call for the two waiting webhooks; each gets its own outcomes, indexed as sent.
    assert gateway.calls == [["a"], ["b", "c", "d"]]
    assert [fingerprints(a) for a in answers] == [[(0, "b"), (1, "c")], [(0, "d")]]


@pytest.mark.parametrize("first_batch", [["a"], ["a", "b"]])
async def test_the_next_batch_leaves_before_the_last_ones_webhooks_are_answered(
    first_batch: list[str],
) -> None:
    gateway = Gateway()
    coalescer = Coalescer(gateway, max_in_flight=1)
    # How many calls the gateway had received when each webhook heard back.
    calls_when_answered: dict[str, int] = {}

    async def webhook(name: str) -> None:
        await coalescer(request(name))
        calls_when_answered[name] = len(gateway.calls)

    blocker = asyncio.create_task(webhook("blocker"))
    await asyncio.sleep(0)
    firsts = [asyncio.create_task(webhook(name)) for name in first_batch]
    await asyncio.sleep(0)
    held, gateway.release = gateway.release, asyncio.Event()  # the next call waits
    held.set()
    await blocker
    nexts = [asyncio.create_task(webhook(name)) for name in ("x", "y")]
    await asyncio.sleep(0)
    gateway.release.set()
    await asyncio.gather(*firsts, *nexts)
    assert gateway.calls == [["blocker"], first_batch, ["x", "y"]]
    assert calls_when_answered["blocker"] == 2
    assert {calls_when_answered[name] for name in first_batch} == {3}


async def test_a_batch_never_exceeds_the_alert_limit() -> None:
    gateway = Gateway()
    coalescer = Coalescer(gateway, max_in_flight=1, max_alerts=3)
    first = asyncio.create_task(coalescer(request("a")))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalescer(request(*n))) for n in (["b", "c"], ["d", "e"], ["f"])]
    await asyncio.sleep(0)
    gateway.release.set()
    await first
    await asyncio.gather(*rest)
    assert gateway.calls == [["a"], ["b", "c"], ["d", "e", "f"]]


async def test_a_malformed_webhook_fails_alone_and_the_others_are_taken() -> None:
    gateway = Gateway()
    coalescer = Coalescer(gateway, max_in_flight=1)
    first = asyncio.create_task(coalescer(request("a")))
    await asyncio.sleep(0)
    good = asyncio.create_task(coalescer(request("b")))
    bad = asyncio.create_task(coalescer(request("bad")))
    await asyncio.sleep(0)
    gateway.release.set()
    await first
    assert fingerprints(await good) == [(0, "b")]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await bad
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert gateway.calls == [["a"], ["b", "bad"], ["b"], ["bad"]]


async def test_an_unavailable_gateway_fails_every_webhook_of_the_batch() -> None:
    gateway = Gateway()
    coalescer = Coalescer(gateway, max_in_flight=1)
    first = asyncio.create_task(coalescer(request("a")))
    await asyncio.sleep(0)
    batch = [asyncio.create_task(coalescer(request(n))) for n in ("down", "b")]
    await asyncio.sleep(0)
    gateway.release.set()
    await first
    for task in batch:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await task
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_sender_that_goes_away_does_not_disturb_the_others() -> None:
    gateway = Gateway()
    coalescer = Coalescer(gateway, max_in_flight=1)
    first = asyncio.create_task(coalescer(request("a")))
    await asyncio.sleep(0)
    gone = asyncio.create_task(coalescer(request("b")))
    stays = asyncio.create_task(coalescer(request("c")))
    await asyncio.sleep(0)
    gone.cancel()
    gateway.release.set()
    await first
    assert fingerprints(await stays) == [(0, "c")]
    # Its alert was still sent: the gateway may have taken it, as with any cut connection.
    assert gateway.calls == [["a"], ["b", "c"]]
