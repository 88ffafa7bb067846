"""The edge writes its 200 answer itself (json_format's generic walk was the slowest part
of it): the same JSON json_format would write, for every field set or left out."""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict
from kubernaut.common.v1 import remediation_pb2
from kubernaut.gateway.v1 import gateway_pb2

from kubernaut.edge.app import accepted_body


def test_the_answer_is_what_json_format_writes() -> None:
    outcomes = [
        gateway_pb2.AlertOutcome(),
        gateway_pb2.AlertOutcome(
            index=3,
            fingerprint="9f2c",
            disposition=remediation_pb2.ALERT_DISPOSITION_DUPLICATE,
            reason="counted on incident inc-1 (4 alerts so far); not forwarded",
            incident_id="inc-1",
            flags=["stale: started 2.0d ago", "ünïcode"],
        ),
        gateway_pb2.AlertOutcome(
            index=0, fingerprint="a", disposition=remediation_pb2.ALERT_DISPOSITION_ACCEPTED
        ),
    ]
    body = accepted_body(3, outcomes)
    assert json.loads(body) == {
        "accepted": 3,
        "outcomes": [MessageToDict(o, preserving_proto_field_name=True) for o in outcomes],
    }
    assert "ünïcode".encode() in body
