"""The gateway stores alerts as JSON it writes itself (services/alerts.py, alert_json): what it
writes reads back as the same alert with json_format, for every field Alert has."""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from kubernaut.common.v1 import alert_pb2

from kubernaut.services.alerts import alert_json

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)


def every_field_set() -> alert_pb2.Alert:
    """An alert with each of its fields set, found from the descriptor: a field added to
    Alert later is set here too, and must come back."""
    alert = alert_pb2.Alert()
    for field in alert.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(alert, field.name)["key-" + field.name] = "value ünï " + field.name
        elif field.message_type is Timestamp.DESCRIPTOR:
            getattr(alert, field.name).FromNanoseconds(1_764_158_400_123_456_789 + field.number)
        elif field.enum_type is not None:
            setattr(alert, field.name, field.enum_type.values[-1].number)
        elif field.type == FieldDescriptor.TYPE_STRING:
            setattr(alert, field.name, f'{field.name} "quoted" \\ ü')
        else:
            raise AssertionError(f"Alert.{field.name}: a field kind this test cannot set")
    return alert


def test_every_field_comes_back() -> None:
    alert = every_field_set()
    assert json_format.Parse(alert_json(alert), alert_pb2.Alert()) == alert


def test_an_empty_alert_is_an_empty_object() -> None:
    assert alert_json(alert_pb2.Alert()) == "{}"


@given(
    name=TEXT,
    labels=st.dictionaries(TEXT, TEXT, max_size=5),
    seconds=st.integers(-62_135_596_800, 253_402_300_799),
    nanos=st.integers(0, 999_999_999),
    status=st.sampled_from([v.number for v in alert_pb2.AlertStatus.DESCRIPTOR.values]),
)
def test_what_json_format_reads_back_is_the_alert(
    name: str, labels: dict[str, str], seconds: int, nanos: int, status: int
) -> None:
    alert = alert_pb2.Alert(
        name=name,
        labels=labels,
        status=status,  # type: ignore[arg-type]
        starts_at=Timestamp(seconds=seconds, nanos=nanos),
    )
    assert json_format.Parse(alert_json(alert), alert_pb2.Alert()) == alert
