"""The fast validator against protovalidate itself: for every message type of our protos,
many seeded random instances that sit on the rules' boundaries, and the two must report
the same (field path, description) list in the same order, or raise the same error.

hypothesis is not a dependency of the project, so the instances come from a seeded
generator that reads each field's rules and picks values at, just inside and just outside
them. KUBERNAUT_VALIDATION_EXAMPLES sets how many instances a type gets.
"""

from __future__ import annotations

import importlib
import math
import operator
import os
import random
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import protovalidate
import pytest
import re2  # type: ignore[import-untyped]  # what protovalidate matches patterns with
from buf.validate import validate_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from kubernaut.common.v1 import alert_pb2
from kubernaut.gateway.v1 import gateway_pb2

from kubernaut.runtime import interceptors, validation

# protovalidate takes most of the time (up to 100 ms an instance); CI can ask for more.
EXAMPLES = int(os.environ.get("KUBERNAUT_VALIDATION_EXAMPLES", "20"))
GENERATED = Path(__file__).resolve().parents[2] / "gen" / "python"
_Type = FieldDescriptor


def _our_message_types() -> list[Descriptor]:
    found: list[Descriptor] = []

    def walk(descriptor: Descriptor) -> None:
        if not descriptor.GetOptions().map_entry:
            found.append(descriptor)
        for nested in descriptor.nested_types:
            walk(nested)

    for path in sorted((GENERATED / "kubernaut").rglob("*_pb2.py")):
        module = importlib.import_module(
            ".".join(path.relative_to(GENERATED).with_suffix("").parts)
        )
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            walk(descriptor)
    return found


MESSAGE_TYPES = _our_message_types()


def protovalidate_answer(message: Message) -> list[tuple[str, str]]:
    """The reference: protovalidate's own answer, its paths printed as ours are."""
    return [
        (validation.path_text(v.proto.field), v.proto.message)
        for v in protovalidate.collect_violations(message)
    ]


def outcome(
    validate: Callable[[Message], list[tuple[str, str]]], message: Message
) -> list[tuple[str, str]] | tuple[str, str]:
    try:
        return validate(message)
    except Exception as error:
        return (type(error).__name__, str(error))


# The generator.

UUIDS = [
    "3f2c9a1e-4b7d-4c2a-9e1f-0a1b2c3d4e5f",
    "3F2C9A1E-4B7D-4C2A-9E1F-0A1B2C3D4E5F",  # upper case is valid
    "3f2C9a1E-4b7D-4c2A-9e1F-0a1B2c3D4e5F",
    "00000000-0000-0000-0000-000000000000",
    "3f2c9a1e4b7d4c2a9e1f0a1b2c3d4e5f",  # no hyphens
    "{3f2c9a1e-4b7d-4c2a-9e1f-0a1b2c3d4e5f}",
    "3f2c9a1e-4b7d-4c2a-9e1f-0a1b2c3d4e5",  # one short
    "3f2c9a1e-4b7d-4c2a-9e1f-0a1b2c3d4e5f0",  # one long
    "3f2c9a1e-4b7d-4c2a-9e1f-0a1b2c3d4e5g",  # not hex
    "3f2c9a1e-4b7d-4c2a-9e1f-0a1b2c3d4e5f\n",  # RE2's $ is the end of the text
    " 3f2c9a1e-4b7d-4c2a-9e1f-0a1b2c3d4e5f",
    "\uff13f2c9a1e-4b7d-4c2a-9e1f-0a1b2c3d4e5f",  # a full-width digit
    "",
    "not-a-uuid",
]
# Values for the patterns of our protos, inside and just outside them.
PATTERN_SAMPLES = [
    "default",
    "kube-system",
    "a",
    "a1",
    "-bad",
    "bad-",
    "Bad",
    "b_d",
    "",
    "Deployment",
    "Pod",
    "StatefulSet2",
    "deployment",
    "2Deployment",
    "Deploy-ment",
    "Ünicode",
    "2Gi",
    "512Mi",
    "1.5Gi",
    "100",
    "1.",
    ".5Gi",
    "2gi",
    "2GiB",
    "2 Gi",
    "restart_deployment",
    "scale_deployment",
    "Restart",
    "_restart",
    "restart-deployment",
    "r",
    "ABC",
    "AB C",
    # CPU quantities, JSON pointers, taint and ConfigMap keys (the executor's actions).
    "500m",
    "1.5",
    "m",
    "2Pi",
    "/spec/minReadySeconds",
    "/data/LOG_LEVEL",
    "spec/replicas",
    "//x",
    "/",
    "example.com/maintenance",
    "Example.com/x",
    "node/",
    "LOG_LEVEL",
    "a.b-c",
    "bad key",
    # Audit entries: principals, sha256 digests, gRPC status code names.
    "service:workflow",
    "person:alice@example.com",
    ":nobody",
    "ab" * 32,
    "AB" * 32,
    "ab" * 31,
    "OK",
    "PERMISSION_DENIED",
    "OKAY",
]
MAP_KEYS = [
    "alertname",
    "namespace",
    "",
    "it's",
    'say "hi"',
    "back\\slash",
    "ünïcödé",
    "😀",
    "\x00",
    "tab\tkey",
]
CHARACTERS = ["a", "Z", "0", "-", "é", "€", "😀", "\n", " "]  # 1, 2, 3 and 4 UTF-8 bytes
INT_RANGES = {
    _Type.TYPE_INT32: (-(2**31), 2**31 - 1),
    _Type.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _Type.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _Type.TYPE_INT64: (-(2**63), 2**63 - 1),
    _Type.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _Type.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _Type.TYPE_UINT32: (0, 2**32 - 1),
    _Type.TYPE_FIXED32: (0, 2**32 - 1),
    _Type.TYPE_UINT64: (0, 2**64 - 1),
    _Type.TYPE_FIXED64: (0, 2**64 - 1),
}


def rules_of(field: FieldDescriptor) -> validate_pb2.FieldRules:
    if field.GetOptions().HasExtension(validate_pb2.field):
        return field.GetOptions().Extensions[validate_pb2.field]
    return validate_pb2.FieldRules()


class InstanceGenerator:
    """Instances of a message type. In "valid" mode values keep the rules; otherwise about
    half the values sit on a boundary or just outside it."""

    def __init__(self, rng: random.Random, *, valid: bool) -> None:
        self.rng = rng
        self.valid = valid

    def edgy(self) -> bool:
        return not self.valid and self.rng.random() < 0.5

    def message(self, descriptor: Descriptor, depth: int = 3) -> Message:
        message = message_factory.GetMessageClass(descriptor)()
        self.fill(message, descriptor, depth)
        return message

    def fill(self, message: Message, descriptor: Descriptor, depth: int) -> None:
        name = descriptor.full_name
        if name == "google.protobuf.Timestamp":
            self.time(message, seconds=(0, 4_102_444_800))
            return
        if name == "google.protobuf.Duration":
            self.time(message, seconds=(0, 7200))
            return
        chosen: dict[str, str | None] = {}
        for oneof in descriptor.oneofs:
            if oneof.fields and not oneof.name.startswith("_"):  # not a proto3 optional's
                required = oneof.GetOptions().Extensions[validate_pb2.oneof].required
                leave_unset = self.rng.random() < (0.0 if self.valid and required else 0.2)
                chosen[oneof.name] = None if leave_unset else self.rng.choice(oneof.fields).name
        for field in descriptor.fields:
            container = field.containing_oneof
            in_oneof = container is not None and container.name in chosen
            if container is not None and in_oneof and chosen[container.name] != field.name:
                continue
            self.field(message, field, depth, in_oneof=in_oneof)

    def time(self, message: Message, seconds: tuple[int, int]) -> None:
        time: Any = message
        roll = self.rng.random()
        if not self.valid and roll < 0.04:
            time.seconds = self.rng.choice([10**15, -(10**15), 253_402_300_800, 315_576_000_001])
        elif not self.valid and roll < 0.08:
            time.seconds = self.rng.randint(*seconds)
            time.nanos = self.rng.choice([-5, -(10**9) + 1, 10**9, 999_999_999])
        else:
            time.seconds = self.rng.randint(*seconds)
            time.nanos = self.rng.randrange(0, 10**9)

    def field(
        self, message: Message, field: FieldDescriptor, depth: int, *, in_oneof: bool
    ) -> None:
        rules = rules_of(field)
        target: Any = message
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            self.map(getattr(target, field.name), field, rules, depth)
        elif field.is_repeated:
            self.repeated(getattr(target, field.name), field, rules, depth)
        elif field.message_type is not None:
            unset = self.rng.random() < (0.05 if self.valid else 0.3)
            if depth <= 0 or (unset and not (self.valid and rules.required)):
                return
            child = getattr(target, field.name)
            child.SetInParent()  # set even when it has no fields (a oneof of empty messages)
            self.fill(child, field.message_type, depth - 1)
        else:
            if field.has_presence and not in_oneof and self.rng.random() < 0.3:
                return  # an unset proto3 optional
            setattr(target, field.name, self.scalar(field, rules))

    def repeated(
        self, items: Any, field: FieldDescriptor, rules: validate_pb2.FieldRules, depth: int
    ) -> None:
        count = self.count(rules.repeated.min_items, rules.repeated.max_items, rules.repeated)
        if field.message_type is not None:
            count = min(count, 2)  # the limits of message lists are checked separately
            for _ in range(count if depth > 0 else 0):
                self.fill(items.add(), field.message_type, depth - 1)
            return
        item_rules = rules.repeated.items if rules.repeated.HasField("items") else None
        values = [self.scalar(field, item_rules or validate_pb2.FieldRules()) for _ in range(count)]
        if rules.repeated.unique:
            if self.valid:
                values = list(dict.fromkeys(values))
            elif values and self.rng.random() < 0.3:
                values.append(self.rng.choice(values))
        items.extend(values)

    def map(
        self, entries: Any, field: FieldDescriptor, rules: validate_pb2.FieldRules, depth: int
    ) -> None:
        assert field.message_type is not None
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        count = self.count(rules.map.min_pairs, rules.map.max_pairs, rules.map)
        key_rules = rules.map.keys if rules.map.HasField("keys") else validate_pb2.FieldRules()
        value_rules = (
            rules.map.values if rules.map.HasField("values") else validate_pb2.FieldRules()
        )
        keys: list[Any] = []
        for _ in range(count * 10):  # bounded: scalar keys may repeat
            if len(keys) == count:
                break
            if key_field.type == _Type.TYPE_STRING and (self.valid or self.rng.random() < 0.7):
                key: Any = self.rng.choice(MAP_KEYS[:2]) + str(len(keys))
                if not self.valid and self.rng.random() < 0.1:
                    key = self.rng.choice(MAP_KEYS)
            else:
                key = self.scalar(key_field, key_rules)
            if key in keys and isinstance(key, str):
                key += str(len(keys))  # keep the count: it may be the one over the limit
            if key not in keys:
                keys.append(key)
        for key in keys:
            if value_field.message_type is not None:
                if depth > 0:
                    self.fill(entries[key], value_field.message_type, depth - 1)
            else:
                entries[key] = self.scalar(value_field, value_rules)

    def count(self, low: int, high: int, rules: Message) -> int:
        has_high = rules.HasField("max_items" if "max_items" in _names(rules) else "max_pairs")
        top = high if has_high else 4
        if self.valid:
            return self.rng.randint(low, min(top, low + 4))
        if self.rng.random() < 0.25:  # on the limits (big, and slow for protovalidate)
            return self.rng.choice([n for n in (low, max(low - 1, 0), top, top + 1) if n <= 1100])
        return self.rng.randint(0, 3)

    def scalar(self, field: FieldDescriptor, rules: validate_pb2.FieldRules) -> Any:
        kind = field.type
        if kind == _Type.TYPE_STRING:
            return self.text(rules.string)
        if kind == _Type.TYPE_BOOL:
            return self.rng.random() < 0.5
        if kind == _Type.TYPE_BYTES:
            return self.rng.randbytes(self.rng.randint(0, 8))
        if kind == _Type.TYPE_ENUM:
            return self.enum(field, rules.enum)
        if kind in (_Type.TYPE_DOUBLE, _Type.TYPE_FLOAT):
            return self.real(rules.double if kind == _Type.TYPE_DOUBLE else rules.float)
        low, high = INT_RANGES[kind]
        bounds_of = getattr(rules, rules.WhichOneof("type") or "", None)
        return self.integer(low, high, bounds_of)

    def text(self, rules: validate_pb2.StringRules) -> str:
        min_len = rules.min_len if rules.HasField("min_len") else 0
        max_len = rules.max_len if rules.HasField("max_len") else 24
        if rules.uuid:
            candidates = UUIDS[:4] if self.valid else UUIDS
            return self.rng.choice(candidates)
        if rules.pattern:
            samples = [*PATTERN_SAMPLES, *(s + "\n" for s in PATTERN_SAMPLES[:20])]
            if self.valid:
                samples = [
                    s
                    for s in samples
                    if re2.search(rules.pattern, s) and min_len <= len(s) <= max_len
                ]
                return self.rng.choice(samples)
            if self.rng.random() < 0.7:
                return self.rng.choice(samples)
        if self.edgy():
            length = self.rng.choice(
                [0, 1, max(min_len - 1, 0), min_len, min_len + 1, max_len - 1, max_len, max_len + 1]
            )
        else:
            length = self.rng.randint(min_len, max(min_len, min(max_len, min_len + 12)))
        if self.valid:
            alphabet = string.ascii_lowercase if rules.pattern else "".join(CHARACTERS)
            return "".join(self.rng.choice(alphabet) for _ in range(length))
        # One character repeated: at max_len code points "é" is valid though twice as many bytes.
        if self.rng.random() < 0.5:
            text = self.rng.choice(CHARACTERS) * length
        else:
            text = "".join(self.rng.choice(CHARACTERS) for _ in range(length))
        if rules.not_contains and self.rng.random() < 0.4:
            at = self.rng.randint(0, len(text))
            text = text[:at] + rules.not_contains + text[at:]
        return text

    def enum(self, field: FieldDescriptor, rules: validate_pb2.EnumRules) -> int:
        assert field.enum_type is not None
        defined = sorted(field.enum_type.values_by_number)
        if self.valid:
            allowed = [
                n
                for n in defined
                if n not in rules.not_in and (not getattr(rules, "in") or n in getattr(rules, "in"))
            ]
            return self.rng.choice(allowed or defined)
        return self.rng.choice([*defined, 0, 0, 99, -1])

    def real(self, rules: Any) -> float:
        bounds = [
            getattr(rules, name) for name in ("gt", "gte", "lt", "lte") if rules.HasField(name)
        ]
        candidates = [0.0, -0.0, 0.5, 1.0, -1.0, math.nan, math.inf, -math.inf]
        for bound in bounds:
            candidates += [bound, math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf)]
            candidates += [bound + 0.5, bound - 0.5]
        if self.valid:
            candidates = [c for c in candidates if _within(c, rules)]
        return self.rng.choice(candidates or [0.0])

    def integer(self, low: int, high: int, rules: Any) -> int:
        candidates = [0, 1, -1, low, high, self.rng.randint(low, high)]
        if rules is not None:
            for name in ("gt", "gte", "lt", "lte"):
                if name in _names(rules) and rules.HasField(name):
                    bound = getattr(rules, name)
                    candidates += [bound - 1, bound, bound + 1]
        candidates = [c for c in candidates if low <= c <= high]
        if self.valid and rules is not None:
            candidates = [c for c in candidates if _within(c, rules)]
        return self.rng.choice(candidates or [0])


def _names(rules: Message) -> set[str]:
    return {field.name for field in rules.DESCRIPTOR.fields}


def _within(value: float, rules: Any) -> bool:
    names = _names(rules)
    checks: dict[str, Callable[[float, float], bool]] = {
        "gt": operator.gt,
        "gte": operator.ge,
        "lt": operator.lt,
        "lte": operator.le,
    }
    return all(
        check(value, getattr(rules, name))
        for name, check in checks.items()
        if name in names and rules.HasField(name)
    )


def instances(descriptor: Descriptor, count: int, depth: int = 3) -> Iterator[Message]:
    rng = random.Random(descriptor.full_name)  # the same instances on every run
    for index in range(count):
        yield InstanceGenerator(rng, valid=index % 3 == 0).message(descriptor, depth)


# The differential tests.


@pytest.mark.parametrize("descriptor", MESSAGE_TYPES, ids=lambda d: d.full_name)
def test_the_fast_validator_answers_as_protovalidate_does(descriptor: Descriptor) -> None:
    reason = validation.fallback_reason(descriptor)
    # Still correct (protovalidate answers), but slow: teach kubernaut/runtime/validation.py.
    assert reason is None, f"{descriptor.full_name} falls back to protovalidate: {reason}"
    answers = {"valid": 0, "invalid": 0, "raised": 0}
    for message in instances(descriptor, EXAMPLES):
        expected = outcome(protovalidate_answer, message)
        assert outcome(validation.violations_of, message) == expected, message
        answers[
            "raised" if isinstance(expected, tuple) else "invalid" if expected else "valid"
        ] += 1
    if validation.validator_for(descriptor).checks:
        assert answers["valid"] > 0, answers
        assert answers["invalid"] > 0, answers


def test_every_type_of_ours_is_checked_and_none_falls_back() -> None:
    names = {d.full_name for d in MESSAGE_TYPES}
    assert {"kubernaut.common.v1.Alert", "kubernaut.gateway.v1.SubmitAlertsRequest"} <= names
    assert len(names) > 50
    assert all(validation.fallback_reason(d) is None for d in MESSAGE_TYPES)


def test_the_interceptor_uses_the_fast_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(message: Message) -> list[Any]:
        raise AssertionError("protovalidate was asked")

    alert = valid_alert()
    alert.name = ""
    monkeypatch.setattr(protovalidate, "collect_violations", refuse)
    assert interceptors.violations_of(alert) == [("name", "must be at least 1 characters")]


def valid_alert() -> alert_pb2.Alert:
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": "cart-1"},
        annotations={"summary": "Pod shop/cart-1 is crash looping."},
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    alert.starts_at.seconds = 1_767_225_600
    return alert


def test_the_alert_count_limits_of_a_batch() -> None:
    # protovalidate would take seconds for a thousand alerts; the wording of the limits is
    # compared with its own on the smaller lists of the differential test.
    too_many = gateway_pb2.SubmitAlertsRequest(alerts=[valid_alert()] * 1001)
    expected = [("alerts", "must contain no more than 1000 item(s)")]
    assert validation.violations_of(too_many) == expected
    del too_many.alerts[-1]
    assert validation.violations_of(too_many) == []
    empty = gateway_pb2.SubmitAlertsRequest()
    expected = [("alerts", "must contain at least 1 item(s)")]
    assert validation.violations_of(empty) == protovalidate_answer(empty) == expected


def test_nested_violations_carry_the_full_path_in_protovalidate_order() -> None:
    broken = valid_alert()
    broken.labels["it's"] = "x" * 4097
    broken.labels[""] = "é" * 4096  # 4096 code points (8192 bytes) is within max_len
    broken.status = alert_pb2.ALERT_STATUS_UNSPECIFIED
    broken.ClearField("starts_at")
    request = gateway_pb2.SubmitAlertsRequest(alerts=[valid_alert(), broken])
    found = validation.violations_of(request)
    assert found == protovalidate_answer(request)
    # Map entries come in the map's own order, which protobuf does not define.
    assert sorted(found) == [
        ('alerts[1].labels["it\'s"]', "must be at most 4096 characters"),
        ("alerts[1].labels['']", "must be at least 1 characters"),
        ("alerts[1].starts_at", "value is required"),
        ("alerts[1].status", "must not be in list [0]"),
    ]
    assert found[0] == ("alerts[1].status", "must not be in list [0]")
    assert found[-1] == ("alerts[1].starts_at", "value is required")


def test_a_trailing_newline_does_not_pass_an_anchored_pattern() -> None:
    # Python's re would let "$" match before the newline; RE2 (protovalidate's) does not.
    ref = alert_pb2.ResourceRef(namespace="default\n", kind="Deployment", name="cart")
    expected = [("namespace", "does not match regex pattern `^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$`")]
    assert validation.violations_of(ref) == expected
    assert protovalidate_answer(ref) == expected


def test_times_protovalidate_cannot_convert_get_protovalidates_answer() -> None:
    request = gateway_pb2.SubmitAlertsRequest(alerts=[valid_alert()])
    request.alerts[0].ends_at.seconds = 10**15  # no rules on ends_at, but alerts has some
    expected = outcome(protovalidate_answer, request)
    assert isinstance(expected, tuple) and expected[0] == "ValueError"
    assert outcome(validation.violations_of, request) == expected
    request.alerts[0].ends_at.seconds, request.alerts[0].ends_at.nanos = 0, -5
    assert validation.violations_of(request) == protovalidate_answer(request) == []


def test_the_edges_of_protobufs_time_range_stay_on_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alert = valid_alert()
    alert.starts_at.seconds, alert.starts_at.nanos = 253_402_300_799, 999_999_999
    alert.ends_at.seconds = -62_135_596_800  # 0001-01-01T00:00:00Z
    request = gateway_pb2.SubmitAlertsRequest(alerts=[alert])
    assert protovalidate_answer(request) == []

    def refuse(message: Message) -> list[Any]:
        raise AssertionError("protovalidate was asked")

    monkeypatch.setattr(protovalidate, "collect_violations", refuse)
    assert validation.violations_of(request) == []


# Rules our protos do not use yet but the compiler takes (other bounds and their
# exclusive forms, NaN bounds, enum `in`, optional scalars, scalar `required`, item and key
# rules of other types, `min_pairs`, message map values, a recursive type), checked
# against protovalidate on a type made at run time.

RULES_FILE = "kubernaut_test/validation_rules.proto"


def rule_probe_type() -> Descriptor:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(RULES_FILE)
    except KeyError:
        pool.Add(_rule_probe_file())
    return pool.FindMessageTypeByName("kubernaut.test.v1.RuleProbe")


def _rule_probe_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name=RULES_FILE,
        package="kubernaut.test.v1",
        syntax="proto3",
        dependency=[
            "buf/validate/validate.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/timestamp.proto",
        ],
    )
    level = file.enum_type.add(name="Level")
    for number, name in enumerate(["LEVEL_UNSPECIFIED", "LEVEL_LOW", "LEVEL_HIGH"]):
        level.value.add(name=name, number=number)
    child = file.message_type.add(name="RuleChild")
    probe = file.message_type.add(name="RuleProbe")
    optional, repeated = 1, 3

    def add(
        message: descriptor_pb2.DescriptorProto,
        name: str,
        number: int,
        kind: int,
        rules: str = "",
        *,
        label: int = optional,
        type_name: str = "",
    ) -> descriptor_pb2.FieldDescriptorProto:
        field = message.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
        if rules:
            text_format.Parse(rules, field.options.Extensions[validate_pb2.field])
        return field

    def add_map(
        message: descriptor_pb2.DescriptorProto,
        name: str,
        number: int,
        key: int,
        value: int,
        rules: str = "",
        value_type: str = "",
    ) -> None:
        entry_name = "".join(part.title() for part in name.split("_")) + "Entry"
        entry = message.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        add(entry, "key", 1, key)
        add(entry, "value", 2, value, type_name=value_type)
        add(
            message,
            name,
            number,
            _Type.TYPE_MESSAGE,
            rules,
            label=repeated,
            type_name=f".kubernaut.test.v1.{message.name}.{entry_name}",
        )

    child_type, level_type = ".kubernaut.test.v1.RuleChild", ".kubernaut.test.v1.Level"
    add(child, "name", 1, _Type.TYPE_STRING, "string { min_len: 1 }")
    add(child, "wait", 2, _Type.TYPE_MESSAGE, type_name=".google.protobuf.Duration")
    add_map(child, "nested", 3, _Type.TYPE_STRING, _Type.TYPE_MESSAGE, value_type=child_type)

    # Declared out of number order: protovalidate goes by declaration.
    add(probe, "must", 11, _Type.TYPE_STRING, "required: true")
    add(probe, "range", 1, _Type.TYPE_INT32, "int32 { gt: 0 lt: 10 }")
    add(probe, "outside", 2, _Type.TYPE_INT64, "int64 { gte: 10 lt: 0 }")
    add(probe, "at_most", 3, _Type.TYPE_INT64, "int64 { lte: 5 }")
    add(probe, "above", 4, _Type.TYPE_DOUBLE, "double { gt: 0.5 }")
    add(probe, "below", 5, _Type.TYPE_DOUBLE, "double { lt: -1.5 }")
    add(probe, "gap", 6, _Type.TYPE_DOUBLE, "double { gt: 2.0 lte: -2.0 }")
    add(probe, "nan_bound", 7, _Type.TYPE_DOUBLE, "double { gte: nan }")
    add(probe, "level", 8, _Type.TYPE_ENUM, "enum { in: [1, 2] }", type_name=level_type)
    add(
        probe,
        "quiet",
        9,
        _Type.TYPE_ENUM,
        "enum { defined_only: true not_in: [2] } ignore: IGNORE_IF_ZERO_VALUE",
        type_name=level_type,
    )
    nickname = add(probe, "nickname", 10, _Type.TYPE_STRING, "string { min_len: 2 max_len: 4 }")
    nickname.proto3_optional = True
    nickname.oneof_index = 1  # the synthetic oneof, declared last
    add(
        probe,
        "scores",
        12,
        _Type.TYPE_INT32,
        "repeated { min_items: 1 unique: true"
        " items { int32 { gt: 0 } ignore: IGNORE_IF_ZERO_VALUE } }",
        label=repeated,
    )
    add_map(
        probe,
        "codes",
        13,
        _Type.TYPE_INT32,
        _Type.TYPE_STRING,
        "map { min_pairs: 1 max_pairs: 3 keys { int32 { gte: 100 } }"
        ' values { string { pattern: "^[A-Z]+$" } ignore: IGNORE_IF_ZERO_VALUE } }',
    )
    add_map(probe, "children", 14, _Type.TYPE_STRING, _Type.TYPE_MESSAGE, value_type=child_type)
    add(
        probe,
        "kids",
        15,
        _Type.TYPE_MESSAGE,
        "required: true",
        label=repeated,
        type_name=child_type,
    )
    uuid_choice = add(probe, "uuid_choice", 16, _Type.TYPE_STRING, "string { uuid: true }")
    number_choice = add(probe, "number_choice", 17, _Type.TYPE_INT32, "int32 { lte: 3 }")
    uuid_choice.oneof_index = number_choice.oneof_index = 0
    add(
        probe, "child", 18, _Type.TYPE_MESSAGE, "ignore: IGNORE_IF_ZERO_VALUE", type_name=child_type
    )
    add(
        probe,
        "tags",
        19,
        _Type.TYPE_STRING,
        "repeated { max_items: 2 items { string { max_len: 3 } } }",
        label=repeated,
    )
    add(probe, "flag", 20, _Type.TYPE_BOOL)
    add(
        probe,
        "at",
        21,
        _Type.TYPE_MESSAGE,
        "required: true",
        type_name=".google.protobuf.Timestamp",
    )
    add(
        probe,
        "levels",
        22,
        _Type.TYPE_ENUM,
        "repeated { items { enum { in: [1] } } }",
        label=repeated,
        type_name=level_type,
    )
    add(probe, "amount", 23, _Type.TYPE_UINT32)
    add(probe, "exactly", 24, _Type.TYPE_INT32, "int32 { gte: 5 lte: 5 }")
    add(probe, "never", 25, _Type.TYPE_INT64, "int64 { gt: 5 lt: 5 }")
    choice = probe.oneof_decl.add(name="choice")
    choice.options.Extensions[validate_pb2.oneof].required = True
    probe.oneof_decl.add(name="_nickname")
    return file


def test_the_rules_our_protos_do_not_use_yet_answer_as_protovalidate_does() -> None:
    probe = rule_probe_type()
    assert validation.fallback_reason(probe) is None
    seen: set[str] = set()
    for message in instances(probe, EXAMPLES * 8, depth=2):
        expected = outcome(protovalidate_answer, message)
        assert outcome(validation.violations_of, message) == expected, message
        if isinstance(expected, list):
            seen.update(description for _, description in expected)
    assert {
        "value is required",
        "must be greater than 0 and less than 10",
        "must be greater than or equal to 10 or less than 0",
        "must be less than or equal to 5",
        "must be greater than 0.5",
        "must be less than -1.5",
        "must be greater than 2 or less than or equal to -2",
        "must be greater than or equal to NaN",
        "must be in list [1, 2]",
        "must not be in list [2]",
        "value must be one of the defined enum values",
        "must be at least 2 characters",
        "must contain at least 1 item(s)",
        "repeated value must contain unique items",
        "must be greater than 0",
        "map must be at least 1 entries",
        "map must be at most 3 entries",
        "must be greater than or equal to 100",
        "does not match regex pattern `^[A-Z]+$`",
        "exactly one field is required in oneof",
        "must be a valid UUID",
        "must be less than or equal to 3",
        "must contain no more than 2 item(s)",
        "must be at most 3 characters",
        "must be in list [1]",
        "must be at least 1 characters",
        "must be greater than or equal to 5 and less than or equal to 5",
        "must be greater than 5 and less than 5",
    } <= seen


# Fallback: a type with a rule we do not compile is validated by protovalidate.

PROBE_FILE = "kubernaut_test/validation_probe.proto"


def probe_types() -> tuple[Descriptor, Descriptor]:
    """Two message types made at run time: Probe has a rule the fast path does not
    compile (string.email) next to one it does; Holder holds Probes and has its own rule."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(PROBE_FILE)
    except KeyError:
        file = descriptor_pb2.FileDescriptorProto(
            name=PROBE_FILE,
            package="kubernaut.test.v1",
            syntax="proto3",
            dependency=["buf/validate/validate.proto"],
        )
        probe = file.message_type.add(name="Probe")
        email = probe.field.add(name="email", number=1, type=_Type.TYPE_STRING, label=1)
        email.options.Extensions[validate_pb2.field].string.email = True
        name = probe.field.add(name="name", number=2, type=_Type.TYPE_STRING, label=1)
        name.options.Extensions[validate_pb2.field].string.max_len = 3
        holder = file.message_type.add(name="Holder")
        one = holder.field.add(name="probe", number=1, type=_Type.TYPE_MESSAGE, label=1)
        one.type_name = ".kubernaut.test.v1.Probe"
        many = holder.field.add(name="probes", number=2, type=_Type.TYPE_MESSAGE, label=3)
        many.type_name = ".kubernaut.test.v1.Probe"
        tag = holder.field.add(name="tag", number=3, type=_Type.TYPE_STRING, label=1)
        tag.options.Extensions[validate_pb2.field].string.min_len = 1
        pool.Add(file)
    return (
        pool.FindMessageTypeByName("kubernaut.test.v1.Probe"),
        pool.FindMessageTypeByName("kubernaut.test.v1.Holder"),
    )


def test_a_type_with_an_unsupported_rule_is_validated_by_protovalidate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe_type, holder_type = probe_types()
    assert "email" in (validation.fallback_reason(probe_type) or "")
    assert validation.fallback_reason(holder_type) is None

    asked: list[str] = []
    real = protovalidate.collect_violations

    def spy(message: Message) -> Any:
        asked.append(message.DESCRIPTOR.full_name)
        return real(message)

    monkeypatch.setattr(protovalidate, "collect_violations", spy)
    holder: Any = message_factory.GetMessageClass(holder_type)()
    holder.probe.email, holder.probe.name = "not an address", "long"
    holder.probes.add(email="ops@example.com")
    holder.probes.add(email="@", name="ok")
    found = validation.violations_of(holder)
    assert asked == ["kubernaut.test.v1.Probe"] * 3  # only the sub-messages; Holder is fast
    monkeypatch.setattr(protovalidate, "collect_violations", real)
    assert found == protovalidate_answer(holder)
    assert found == [
        ("probe.email", "must be a valid email address"),
        ("probe.name", "must be at most 3 characters"),
        ("probes[1].email", "must be a valid email address"),
        ("tag", "must be at least 1 characters"),
    ]
    probe: Any = message_factory.GetMessageClass(probe_type)(email="x")
    assert validation.violations_of(probe) == protovalidate_answer(probe)


def test_a_compile_that_refuses_hands_the_whole_type_to_protovalidate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(descriptor: Descriptor) -> list[Any]:
        raise validation.Unsupported(f"{descriptor.full_name}: refused for the test")

    monkeypatch.setattr(validation, "_validators", {})
    monkeypatch.setattr(validation, "_message_checks", refuse)
    asked: list[str] = []
    real = protovalidate.collect_violations

    def spy(message: Message) -> Any:
        asked.append(message.DESCRIPTOR.full_name)
        return real(message)

    monkeypatch.setattr(protovalidate, "collect_violations", spy)
    alert = valid_alert()
    alert.name = "x" * 257
    assert validation.violations_of(alert) == [("name", "must be at most 256 characters")]
    assert asked == ["kubernaut.common.v1.Alert"]
    assert validation.fallback_reason(alert.DESCRIPTOR) == (
        "kubernaut.common.v1.Alert: refused for the test"
    )
