"""The forwarder gives alert_processor its whole forward timeout as the call's deadline:
without one, the runtime's default deadline for calls (10 s) cut ProcessAlert short while
an analysis waited for a model, and the alert was forwarded (and analysed) again."""

from __future__ import annotations

from typing import Any

from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.common.v1 import alert_pb2

from kubernaut.services.gateway.backend import QueuedAlert
from kubernaut.services.gateway.forwarding import Forwarder
from kubernaut.services.gateway.settings import GatewaySettings


class RecordingIntake:
    """What the forwarder reports back about each alert."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []
        self.retried: list[str] = []

    async def forwarded_alert(self, queued: QueuedAlert, incident_id: str) -> None:
        self.forwarded.append(incident_id)

    async def retry_later(self, queued: QueuedAlert, error: str, delay_seconds: float) -> None:
        self.retried.append(error)

    async def give_up(self, queued: QueuedAlert, error: str) -> None:
        raise AssertionError(error)

    async def resolution_target(self, queued: QueuedAlert) -> tuple[str, bool]:
        return "i-1", False


class OneIntake:
    def __init__(self, intake: RecordingIntake) -> None:
        self.intake = intake

    async def store(self) -> Any:
        intake = self.intake

        class Store:
            forwarded = intake.forwarded_alert
            retry_later = intake.retry_later
            give_up = intake.give_up
            resolution_target = intake.resolution_target

        return Store()


async def test_process_alert_gets_the_forward_timeout_as_its_deadline() -> None:
    deadlines: list[float] = []

    async def process_alert(
        request: alert_processor_pb2.ProcessAlertRequest, *, timeout: float
    ) -> alert_processor_pb2.ProcessAlertResponse:
        deadlines.append(timeout)
        return alert_processor_pb2.ProcessAlertResponse(incident_id="i-1")

    async def count(request: Any) -> Any:
        raise AssertionError("not counted here")

    intake = RecordingIntake()
    settings = GatewaySettings(forward_timeout_seconds=95.0)
    forwarder = Forwarder(OneIntake(intake), process_alert, count, settings)  # type: ignore[arg-type]
    alert = alert_pb2.Alert(name="KubePodCrashLooping", status=alert_pb2.ALERT_STATUS_FIRING)
    for kind in ("firing", "resolved"):
        queued = QueuedAlert(1, "fp", kind, alert, "", "", 0)
        await forwarder._forward_in_span(queued)
    assert deadlines == [95.0, 95.0]
    assert intake.forwarded == ["i-1", ""] and intake.retried == []
