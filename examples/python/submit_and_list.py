"""Submit one alert to Kubernaut's gateway, then read the incident it opened from storage.

Needs only the kubernaut-api wheel (`uv build --wheel clients/python`), not Kubernaut:

    python submit_and_list.py --gateway localhost:9080 --storage localhost:9085 \\
        --certs ~/.local/state/kubernaut/certs --name operator

Prints what the gateway did with the alert, then the incident's id.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.api import MTLS, channel
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.gateway.v1 import gateway_pb2
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub


def main() -> None:
    parser = argparse.ArgumentParser(description="Submit an alert, print its incident's id.")
    parser.add_argument("--gateway", default="localhost:9080")
    parser.add_argument("--storage", default="localhost:9085")
    parser.add_argument("--certs", type=Path, default=Path.home() / ".local/state/kubernaut/certs")
    parser.add_argument("--name", default="operator", help="your certificate: NAME.crt, NAME.key")
    args = parser.parse_args()
    # mTLS with your files; tls=None would be plaintext, for a mesh's sidecar to secure.
    tls = MTLS.in_dir(args.certs, args.name)

    # What AlertManager would send (a namespace of its own, to tell its incident apart).
    now = Timestamp()
    now.GetCurrentTime()
    namespace = f"example-{uuid.uuid4().hex[:8]}"
    alert = alert_pb2.Alert(
        name="KubeDeploymentRolloutStuck",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={
            "alertname": "KubeDeploymentRolloutStuck",
            "namespace": namespace,
            "deployment": "checkout",
            "severity": "warning",
        },
        starts_at=now,
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    with channel(args.gateway, GatewayServiceStub, tls=tls) as gateway_channel:
        gateway = GatewayServiceStub(gateway_channel)
        reply = gateway.SubmitAlerts(gateway_pb2.SubmitAlertsRequest(alerts=[alert]))
    (outcome,) = reply.outcomes
    print("gateway:", remediation_pb2.AlertDisposition.Name(outcome.disposition), outcome.reason)

    # The gateway answers once the alert is safely queued; the incident opens soon after.
    with channel(args.storage, StorageServiceStub, tls=tls) as storage_channel:
        storage = StorageServiceStub(storage_channel)
        for _ in range(120):
            listed = storage.ListIncidents(
                storage_pb2.ListIncidentsRequest(alert_name=alert.name, opened_after=now)
            )
            mine = [i for i in listed.incidents if i.subject.namespace == namespace]
            if mine:
                got = storage.GetIncident(
                    storage_pb2.GetIncidentRequest(incident_id=mine[0].incident_id)
                )
                print(got.incident.incident_id)
                return
            time.sleep(0.5)
    raise SystemExit("no incident for the alert after 60 s")


if __name__ == "__main__":
    main()
