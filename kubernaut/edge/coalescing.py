"""Webhooks that arrive together reach the gateway in one SubmitAlerts call.

A gRPC call and a database transaction per webhook are most of what a busy edge and
gateway spend. While `max_in_flight` calls are on their way, the webhooks that arrive wait
and then go together in the next call (up to `max_alerts` alerts), so an idle edge answers
at once and a busy one batches by itself: group commit, with no timer.

A call is one transaction at the gateway, so a batch is taken whole or not at all. When
the gateway refuses a combined batch as malformed (a webhook the edge's own checks let
through, but the gateway's did not), each webhook of it is sent again on its own: the
others are taken, and the malformed one gets its own field violations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from kubernaut.gateway.v1 import gateway_pb2

Submit = Callable[[gateway_pb2.SubmitAlertsRequest], Awaitable[gateway_pb2.SubmitAlertsResponse]]

# SubmitAlertsRequest's own limit.
MAX_ALERTS_PER_CALL = 1000


@dataclass
class _Waiting:
    request: gateway_pb2.SubmitAlertsRequest
    answer: asyncio.Future[gateway_pb2.SubmitAlertsResponse] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Coalescer:
    def __init__(
        self,
        submit: Submit,
        *,
        max_in_flight: int = 4,
        max_alerts: int = MAX_ALERTS_PER_CALL,
    ) -> None:
        self._submit = submit
        self.max_in_flight = max_in_flight
        self.max_alerts = min(max_alerts, MAX_ALERTS_PER_CALL)
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
        self._calls: set[asyncio.Task[None]] = set()

    async def __call__(
        self, request: gateway_pb2.SubmitAlertsRequest
    ) -> gateway_pb2.SubmitAlertsResponse:
        waiting = _Waiting(request)
        self._waiting.append(waiting)
        self._send_what_waits()
        return await waiting.answer

    def _send_what_waits(self) -> None:
        while self._waiting and self._in_flight < self.max_in_flight:
            batch = [self._waiting.pop(0)]
            size = len(batch[0].request.alerts)
            while self._waiting and size + len(self._waiting[0].request.alerts) <= self.max_alerts:
                size += len(self._waiting[0].request.alerts)
                batch.append(self._waiting.pop(0))
            self._in_flight += 1
            call = asyncio.create_task(self._send(batch))
            # Kept until done: the event loop holds tasks only weakly.
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        released = False

        def release() -> None:
            # The slot frees as soon as the gateway answered: the next batch leaves before
            # this one's webhooks are answered, so the gateway is idle for less time.
            nonlocal released
            if not released:
                released = True
                self._in_flight -= 1
                self._send_what_waits()

        try:
            if len(batch) == 1:
                await _answer(batch[0], self._submit(batch[0].request), release)
                return
            combined = gateway_pb2.SubmitAlertsRequest(
                alerts=[alert for waiting in batch for alert in waiting.request.alerts]
            )
            try:
                response = await self._submit(combined)
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                    release()
                    for waiting in batch:
                        _settle(waiting, error=error)
                    return
                # Nothing of the batch was taken: each alone, so that the others are.
                await asyncio.gather(
                    *(_answer(waiting, self._submit(waiting.request)) for waiting in batch)
                )
                return
            except BaseException as error:
                for waiting in batch:
                    _settle(waiting, error=error)
                raise
            release()
            start = 0
            for waiting in batch:
                count = len(waiting.request.alerts)
                outcomes = response.outcomes[start : start + count]
                for outcome in outcomes:
                    outcome.index -= start
                _settle(waiting, gateway_pb2.SubmitAlertsResponse(outcomes=outcomes))
                start += count
        finally:
            release()


async def _answer(
    waiting: _Waiting,
    call: Awaitable[gateway_pb2.SubmitAlertsResponse],
    answered: Callable[[], None] = lambda: None,
) -> None:
    """Settle `waiting` with what `call` gives; `answered` runs first, once it gave it."""
    try:
        response = await call
    except Exception as error:
        answered()
        _settle(waiting, error=error)
    else:
        answered()
        _settle(waiting, response)


def _settle(
    waiting: _Waiting,
    response: gateway_pb2.SubmitAlertsResponse | None = None,
    *,
    error: BaseException | None = None,
) -> None:
    # A webhook whose sender went away has a cancelled future: nobody to answer.
    if waiting.answer.done():
        return
    if isinstance(error, asyncio.CancelledError):
        waiting.answer.cancel()
    elif error is not None:
        waiting.answer.set_exception(error)
    else:
        waiting.answer.set_result(response or gateway_pb2.SubmitAlertsResponse())
