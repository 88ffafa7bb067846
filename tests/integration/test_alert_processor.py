"""alert_processor against the in-process stack: an incident whose first analysis never
happened is analysed when the alert comes again; a closed one is only counted."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.alert_processor.v1 import alert_processor_pb2
from kubernaut.alert_processor.v1.alert_processor_pb2_grpc import AlertProcessorServiceStub
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.names import ServiceName
from kubernaut.services.alert_processor.processing import triage
from kubernaut.services.alerts import fingerprint_of
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration


async def test_an_open_incident_left_unanalysed_is_analysed_when_its_alert_comes_again(
    stack: InProcessStack,
) -> None:
    namespace = f"retry-{uuid.uuid4().hex[:8]}"
    started = Timestamp()
    started.GetCurrentTime()
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": namespace, "pod": "web-5d8f-abcde"},
        starts_at=started,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    operator = stack.clients()
    gateway = stack.clients(ServiceName.GATEWAY.account)
    storage = operator.stub(StorageServiceStub)
    processor = gateway.stub(AlertProcessorServiceStub)
    try:
        # As after a first ProcessAlert whose AnalyzeIncident failed: the incident is open
        # (the stack has no cluster, so the subject stays the pod) and nothing analysed it.
        subject = triage(alert).subject
        assert subject is not None
        opened = await storage.OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=fingerprint_of(alert, subject), alert=alert, subject=subject
            )
        )
        assert opened.created

        retried = await processor.ProcessAlert(alert_processor_pb2.ProcessAlertRequest(alert=alert))
        assert retried.incident_id == opened.incident.incident_id
        assert retried.disposition == remediation_pb2.ALERT_DISPOSITION_DUPLICATE
        # Analysed now: the pod's Deployment is unknown, so nothing is done, and says so.
        assert retried.analysis.decision == remediation_pb2.DECISION_NO_ACTION
        got = await storage.GetIncident(
            storage_pb2.GetIncidentRequest(incident_id=retried.incident_id)
        )
        assert got.incident.status == storage_pb2.INCIDENT_STATUS_NO_ACTION
        assert "owning workload" in got.incident.status_reason

        # Closed now: a further alert is only counted, never analysed again.
        counted = await processor.ProcessAlert(alert_processor_pb2.ProcessAlertRequest(alert=alert))
        assert counted.disposition == remediation_pb2.ALERT_DISPOSITION_DUPLICATE
        assert not counted.HasField("analysis")
    finally:
        await operator.close()
        await gateway.close()
