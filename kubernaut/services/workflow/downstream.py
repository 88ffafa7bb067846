"""The workflow engine's boundary to the services it calls: the operations it needs
(`Downstream`, which the servicer wires to gRPC stubs and tests to plain functions) and the
errors they raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.executor.v1 import executor_pb2
from kubernaut.notification.v1 import notification_pb2
from kubernaut.storage.v1 import storage_pb2


class DownstreamError(Exception):
    """A downstream call failed and repeating it now would fail the same way."""

    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation
        self.detail = detail


class Unavailable(DownstreamError):
    """The callee cannot be reached right now (UNAVAILABLE, DEADLINE_EXCEEDED): retried."""


class FailedPrecondition(DownstreamError):
    """The callee refused because of its state (FAILED_PRECONDITION), e.g. the incident is
    closed already, or no notification channel is configured."""


class Downstream(Protocol):
    """What the engine calls. Raise Unavailable for transient failures (retried with
    backoff), FailedPrecondition or DownstreamError for the others."""

    async def execute_action(
        self, request: executor_pb2.ExecuteActionRequest, timeout: float
    ) -> executor_pb2.ExecuteActionResponse:
        """ExecuteAction with a deadline of `timeout` seconds."""
        ...

    async def get_action_progress(
        self, request: executor_pb2.GetActionProgressRequest
    ) -> executor_pb2.GetActionProgressResponse: ...

    async def rollback_action(
        self, request: executor_pb2.RollbackActionRequest, timeout: float
    ) -> executor_pb2.RollbackActionResponse:
        """RollbackAction with a deadline of `timeout` seconds (a runbook's compensation)."""
        ...

    async def run_check(
        self, request: executor_pb2.RunCheckRequest, timeout: float
    ) -> executor_pb2.RunCheckResponse:
        """RunCheck with a deadline of `timeout` seconds (a runbook's check)."""
        ...

    async def update_incident(self, request: storage_pb2.UpdateIncidentRequest) -> None: ...

    async def schedule_assessment(
        self, request: effectiveness_pb2.ScheduleAssessmentRequest
    ) -> None: ...

    async def notify_incident_event(
        self, request: notification_pb2.NotifyIncidentEventRequest
    ) -> Notified: ...


@dataclass(frozen=True)
class Notified:
    """What NotifyIncidentEvent answered."""

    # Delivered by this call.
    sent: bool
    # Delivered on some channel, by this call or an earlier one with the key. When no
    # channel took it, the notification service keeps it and delivers it later.
    delivered: bool
    # Why no channel took it, when none did.
    errors: str = ""

    @staticmethod
    def of(response: notification_pb2.NotifyIncidentEventResponse) -> Notified:
        return Notified(
            sent=response.sent,
            delivered=any(result.delivered for result in response.results),
            errors="; ".join(f"{r.channel}: {r.error}" for r in response.results if r.error),
        )

    def undelivered(self, what: str) -> str:
        return (
            f"{what} was not delivered yet ({self.errors or 'no channel took it'}); "
            "the notification service keeps trying"
        )
