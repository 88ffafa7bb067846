"""Request validation without CEL: protovalidate's answers, fast.

protovalidate 1.x evaluates every standard rule as a CEL program in a tree-walking
interpreter and converts whole sub-messages to CEL values first: milliseconds an alert. Here
the `buf.validate` rules of each message type are compiled once into plain Python checks
that report the same violations (same field paths, same descriptions, same order) as
protovalidate does, for the rules our protos use:

- field `required` and `ignore = IGNORE_IF_ZERO_VALUE`, with protovalidate's presence
  semantics (unset for fields with presence, empty for repeated and maps, the zero value
  otherwise); oneof `required`;
- string `min_len`, `max_len` (code points), `pattern` (RE2, an unanchored search, as
  protovalidate's `matches()`), `not_contains`, `uuid`;
- int32, int64 and double `gt`, `gte`, `lt`, `lte`;
- enum `defined_only`, `in`, `not_in`;
- repeated `min_items`, `max_items`, `unique` (scalar items), `items` (scalar rules);
- map `min_pairs`, `max_pairs`, `keys`, `values` (scalar rules);
- recursion into set message fields, repeated messages and message map values.

A message type with any other rule (message-level rules, `cel`, other rule kinds, a rule
on a field of another type) is validated by protovalidate itself, whole or, when nested,
just that sub-message. When a value would make protovalidate's CEL conversion fail (a
Timestamp or Duration outside the range protobuf allows, under a field with rules), the
whole request goes to protovalidate too, so that the answer, an exception included,
stays protovalidate's.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, cast

import re2  # type: ignore[import-untyped]  # protovalidate's own regex engine (a dependency of it)
from buf.validate import validate_pb2
from google.protobuf import unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import Message

log = logging.getLogger("kubernaut.validation")

Violation = tuple[str, str]  # (field path, description)
# A description when the value breaks the rule, None when it keeps it.
ValueRule = Callable[[Any], str | None]
# Appends the violations of one message (paths relative to it) to the list.
Check = Callable[[Message, list[Violation]], None]

TIMESTAMP: Final = "google.protobuf.Timestamp"
DURATION: Final = "google.protobuf.Duration"
# The ranges protobuf allows; protovalidate converts anything inside them without error.
TIMESTAMP_SECONDS: Final = range(-62_135_596_800, 253_402_300_800)
DURATION_SECONDS: Final = range(-315_576_000_000, 315_576_000_001)
NANOS: Final = range(0, 1_000_000_000)
# The expression protovalidate's `string.uuid` rule matches; fullmatch is RE2's ^...$.
UUID: Final = re.compile(
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

_Type = FieldDescriptor
# The element types whose `repeated.unique` is plain Python set semantics in CEL too.
UNIQUE_ITEM_TYPES: Final = frozenset(
    {
        _Type.TYPE_STRING,
        _Type.TYPE_BYTES,
        _Type.TYPE_BOOL,
        _Type.TYPE_ENUM,
        _Type.TYPE_INT32,
        _Type.TYPE_INT64,
        _Type.TYPE_SINT32,
        _Type.TYPE_SINT64,
        _Type.TYPE_SFIXED32,
        _Type.TYPE_SFIXED64,
        _Type.TYPE_UINT32,
        _Type.TYPE_UINT64,
        _Type.TYPE_FIXED32,
        _Type.TYPE_FIXED64,
    }
)
# Scalar rule kinds we compile, and the field type each applies to.
SCALAR_RULE_TYPES: Final = {
    "string": _Type.TYPE_STRING,
    "int32": _Type.TYPE_INT32,
    "int64": _Type.TYPE_INT64,
    "double": _Type.TYPE_DOUBLE,
    "enum": _Type.TYPE_ENUM,
}
SUPPORTED_RULES: Final = {
    "string": frozenset({"min_len", "max_len", "pattern", "not_contains", "uuid"}),
    "int32": frozenset({"gt", "gte", "lt", "lte"}),
    "int64": frozenset({"gt", "gte", "lt", "lte"}),
    "double": frozenset({"gt", "gte", "lt", "lte"}),
    "enum": frozenset({"defined_only", "in", "not_in"}),
    "repeated": frozenset({"min_items", "max_items", "unique", "items"}),
    "map": frozenset({"min_pairs", "max_pairs", "keys", "values"}),
}


class Unsupported(Exception):
    """A rule the fast path does not compile; protovalidate validates the type."""


class _AskProtovalidate(Exception):
    """A value the fast path cannot answer for exactly; protovalidate answers instead."""


def violations_of(message: Message) -> list[Violation]:
    """The buf.validate violations of a message, as (field path, description), exactly as
    protovalidate reports them."""
    validator = validator_for(_descriptor_of(message))
    if validator.fallback_reason is not None:
        return protovalidate_violations(message)
    found: list[Violation] = []
    try:
        validator.collect(message, found)
    except _AskProtovalidate:
        return protovalidate_violations(message)
    return found


def protovalidate_violations(message: Message) -> list[Violation]:
    """protovalidate's own answer; its exceptions (compilation, CEL conversion) pass through."""
    # Imported on first use: no request type of ours needs it today, and its CEL parser
    # costs some 10 MiB of RSS in every process (and its grammar a few hundred ms, once).
    import protovalidate

    return [
        (path_text(violation.proto.field), violation.proto.message)
        for violation in protovalidate.collect_violations(message)
    ]


def path_text(path: validate_pb2.FieldPath) -> str:
    """A protovalidate field path as we print it: `alerts[0].labels['team']`."""
    parts: list[str] = []
    for element in path.elements:
        part = element.field_name
        subscript = element.WhichOneof("subscript")
        if subscript == "index":
            part += f"[{element.index}]"
        elif subscript is not None:
            part += f"[{getattr(element, subscript)!r}]"
        parts.append(part)
    return ".".join(parts)


def fallback_reason(descriptor: Descriptor) -> str | None:
    """Why protovalidate validates this message type itself; None when the fast path does."""
    return validator_for(descriptor).fallback_reason


class MessageValidator:
    """The compiled checks of one message type, or the reason protovalidate does them."""

    __slots__ = ("checks", "complete", "descriptor", "fallback_reason")

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.checks: tuple[Check, ...] = ()
        self.fallback_reason: str | None = None
        # False while its own fields are compiled (a recursive type meets itself then).
        self.complete = False

    @property
    def has_nothing_to_check(self) -> bool:
        return self.complete and self.fallback_reason is None and not self.checks

    def collect(self, message: Message, found: list[Violation]) -> None:
        if self.fallback_reason is None:
            for check in self.checks:
                check(message, found)
            return
        try:
            found.extend(protovalidate_violations(message))
        except Exception as error:
            raise _AskProtovalidate from error  # let protovalidate raise for the whole request


# Complete validators only: another thread must never see one whose checks are not set yet.
_validators: dict[Descriptor, MessageValidator] = {}
# Those being compiled (with the types they lead to), published together when done.
_compiling: dict[Descriptor, MessageValidator] = {}
_compile_lock = threading.RLock()


def validator_for(descriptor: Descriptor) -> MessageValidator:
    """The validator of a message type, compiled on first use."""
    validator = _validators.get(descriptor)
    if validator is not None:
        return validator
    with _compile_lock:
        validator = _validators.get(descriptor) or _compiling.get(descriptor)
        if validator is not None:
            return validator  # compiled meanwhile, or a recursive type meeting itself
        outermost = not _compiling
        validator = _compiling[descriptor] = MessageValidator(descriptor)
        try:
            validator.checks = tuple(_message_checks(descriptor))
        except Unsupported as reason:
            validator.fallback_reason = str(reason)
            log.info(
                "validating with protovalidate",
                extra={"message_type": descriptor.full_name, "reason": str(reason)},
            )
        except Exception as error:  # a bug of ours must not let a request through unchecked
            validator.fallback_reason = f"compilation failed: {error!r}"
            log.exception(
                "validating with protovalidate", extra={"message_type": descriptor.full_name}
            )
        validator.complete = True
        if outermost:
            _validators.update(_compiling)
            _compiling.clear()
        return validator


# Compilation, in protovalidate's order: message rules, oneofs, then each field in
# declaration order (its own rules, then the message it holds).


def _message_checks(descriptor: Descriptor) -> list[Check]:
    if descriptor.GetOptions().HasExtension(validate_pb2.message):
        raise Unsupported(f"{descriptor.full_name} has message-level rules")
    checks: list[Check] = []
    for oneof in descriptor.oneofs:
        if oneof.GetOptions().HasExtension(validate_pb2.oneof):
            checks.extend(_oneof_checks(oneof, oneof.GetOptions().Extensions[validate_pb2.oneof]))
    for field in descriptor.fields:
        if field.GetOptions().HasExtension(validate_pb2.field):
            rules = field.GetOptions().Extensions[validate_pb2.field]
            checks.extend(_field_checks(field, rules))
        if field.message_type is not None:
            checks.extend(_nested_checks(field))
    return checks


def _oneof_checks(oneof: OneofDescriptor, rules: validate_pb2.OneofRules) -> list[Check]:
    _only(rules, {"required"}, f"oneof {oneof.full_name}")
    if not rules.required:
        return []
    name = oneof.name

    def oneof_required(message: Message, found: list[Violation]) -> None:
        if not message.WhichOneof(name):
            found.append((name, "exactly one field is required in oneof"))

    return [oneof_required]


def _field_checks(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> list[Check]:
    where = f"field {field.full_name}"
    _only(rules, {"required", "ignore", *SUPPORTED_RULES}, where)
    if rules.ignore not in (validate_pb2.IGNORE_UNSPECIFIED, validate_pb2.IGNORE_IF_ZERO_VALUE):
        raise Unsupported(f"{where}: ignore {validate_pb2.Ignore.Name(rules.ignore)}")
    kind = rules.WhichOneof("type")
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    is_list = _is_repeated(field) and not is_map
    value_rules: list[ValueRule] = []
    after: list[Check] = []
    if is_map:
        if kind not in (None, "map"):
            raise Unsupported(f"{where}: {kind} rules on a map")
        if kind == "map":
            value_rules, entry_check = _map_rules(field, rules.map)
            after.append(entry_check)
    elif is_list:
        if kind not in (None, "repeated"):
            raise Unsupported(f"{where}: {kind} rules on a repeated field")
        if kind == "repeated":
            value_rules, items_check = _repeated_rules(field, rules.repeated)
            if items_check is not None:
                after.append(items_check)
    elif kind is not None:
        kind_rules = _scalar_kind_rules(field, rules, where)
        value_rules = _scalar_value_rules(kind, kind_rules, where)
        if kind == "enum" and rules.enum.defined_only:
            after.append(_defined_only_check(field))

    # What protovalidate converts to CEL (and may fail on) before evaluating the rules.
    guarded = field.message_type is not None and _reaches_time(field.message_type)
    own = _own_check(
        field,
        required=rules.required,
        ignore_empty=rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE or field.has_presence,
        value_rules=tuple(value_rules),
        guard=_times_guard(field, is_map=is_map, is_list=is_list) if guarded else None,
    )
    return ([own] if own is not None else []) + after


def _own_check(
    field: FieldDescriptor,
    *,
    required: bool,
    ignore_empty: bool,
    value_rules: tuple[ValueRule, ...],
    guard: Callable[[Any], None] | None,
) -> Check | None:
    """protovalidate's FieldRules.validate: required, ignore, then the value's own rules."""
    if not required and not value_rules and guard is None:
        return None
    name = field.name
    has_presence = field.has_presence
    is_repeated = _is_repeated(field)
    zero = field.default_value  # protovalidate's "empty" for a scalar without presence

    def field_rules(message: Message, found: list[Violation]) -> None:
        if has_presence:
            if not message.HasField(name):
                if required:
                    found.append((name, "value is required"))
                    return
                if ignore_empty:
                    return
            value = getattr(message, name)
        else:
            value = getattr(message, name)
            if (len(value) == 0) if is_repeated else value == zero:
                if required:
                    found.append((name, "value is required"))
                    return
                if ignore_empty:
                    return
        if guard is not None:
            guard(value)
        for rule in value_rules:
            description = rule(value)
            if description is not None:
                found.append((name, description))

    return field_rules


def _defined_only_check(field: FieldDescriptor) -> Check:
    # protovalidate checks it after the field's other rules, whether or not they ran.
    name = field.name
    if field.enum_type is None:
        raise TypeError(f"{field.full_name} is no enum")
    defined = frozenset(field.enum_type.values_by_number)

    def defined_only(message: Message, found: list[Violation]) -> None:
        if getattr(message, name) not in defined:
            found.append((name, "value must be one of the defined enum values"))

    return defined_only


def _repeated_rules(
    field: FieldDescriptor, rules: validate_pb2.RepeatedRules
) -> tuple[list[ValueRule], Check | None]:
    where = f"field {field.full_name}"
    _only(rules, SUPPORTED_RULES["repeated"], where)
    value_rules: list[ValueRule] = []
    items_check: Check | None = None
    for rule_field, bound in rules.ListFields():
        if rule_field.name == "min_items":
            value_rules.append(
                _size_rule(bound, below=True, text=f"must contain at least {bound} item(s)")
            )
        elif rule_field.name == "max_items":
            value_rules.append(
                _size_rule(bound, below=False, text=f"must contain no more than {bound} item(s)")
            )
        elif rule_field.name == "unique" and bound:
            if field.type not in UNIQUE_ITEM_TYPES:
                raise Unsupported(f"{where}: unique on {field.type} items")
            value_rules.append(_unique)
        elif rule_field.name == "items":
            item_rules, ignore_empty = _element_rules(field, rules.items, f"{where} items")
            items_check = _items_check(field.name, item_rules, ignore_empty)
    return value_rules, items_check


def _unique(items: Sequence[Any]) -> str | None:
    if len(set(items)) != len(items):
        return "repeated value must contain unique items"
    return None


def _items_check(name: str, item_rules: tuple[ValueRule, ...], ignore_empty: bool) -> Check:
    def items(message: Message, found: list[Violation]) -> None:
        for index, item in enumerate(getattr(message, name)):
            if ignore_empty and not item:
                continue
            for rule in item_rules:
                description = rule(item)
                if description is not None:
                    found.append((f"{name}[{index}]", description))

    return items


def _map_rules(
    field: FieldDescriptor, rules: validate_pb2.MapRules
) -> tuple[list[ValueRule], Check]:
    where = f"field {field.full_name}"
    _only(rules, SUPPORTED_RULES["map"], where)
    value_rules: list[ValueRule] = []
    key_rules: tuple[ValueRule, ...] = ()
    entry_rules: tuple[ValueRule, ...] = ()
    key_ignore_empty = entry_ignore_empty = False
    entry = _held(field)
    for rule_field, bound in rules.ListFields():
        if rule_field.name == "min_pairs":
            value_rules.append(
                _size_rule(bound, below=True, text=f"map must be at least {bound} entries")
            )
        elif rule_field.name == "max_pairs":
            value_rules.append(
                _size_rule(bound, below=False, text=f"map must be at most {bound} entries")
            )
        elif rule_field.name == "keys":
            key_rules, key_ignore_empty = _element_rules(
                entry.fields_by_name["key"], rules.keys, f"{where} keys"
            )
        elif rule_field.name == "values":
            entry_rules, entry_ignore_empty = _element_rules(
                entry.fields_by_name["value"], rules.values, f"{where} values"
            )
    name = field.name

    def entries(message: Message, found: list[Violation]) -> None:
        for key, value in getattr(message, name).items():
            # protovalidate lists an entry's value violations before its key's.
            if entry_rules and (not entry_ignore_empty or value):
                for rule in entry_rules:
                    description = rule(value)
                    if description is not None:
                        found.append((f"{name}[{key!r}]", description))
            if key_rules and (not key_ignore_empty or key):
                for rule in key_rules:
                    description = rule(key)
                    if description is not None:
                        found.append((f"{name}[{key!r}]", description))

    return value_rules, entries


def _element_rules(
    field: FieldDescriptor, rules: validate_pb2.FieldRules, where: str
) -> tuple[tuple[ValueRule, ...], bool]:
    """The rules of a list item, map key or map value, and whether its zero value is
    skipped. protovalidate ignores `required` and `defined_only` there, so we fall back."""
    _only(rules, {"ignore", *SCALAR_RULE_TYPES}, where)
    if rules.ignore not in (validate_pb2.IGNORE_UNSPECIFIED, validate_pb2.IGNORE_IF_ZERO_VALUE):
        raise Unsupported(f"{where}: ignore {validate_pb2.Ignore.Name(rules.ignore)}")
    kind = rules.WhichOneof("type")
    if kind is None:
        raise Unsupported(f"{where}: no scalar rules")
    kind_rules = _scalar_kind_rules(field, rules, where)
    if kind == "enum" and rules.enum.HasField("defined_only"):
        raise Unsupported(f"{where}: defined_only on an element")
    return (
        tuple(_scalar_value_rules(kind, kind_rules, where)),
        rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE,
    )


def _scalar_kind_rules(field: FieldDescriptor, rules: validate_pb2.FieldRules, where: str) -> Any:
    kind = rules.WhichOneof("type")
    if kind not in SCALAR_RULE_TYPES:
        raise Unsupported(f"{where}: {kind} rules")
    if field.type != SCALAR_RULE_TYPES[kind]:
        raise Unsupported(f"{where}: {kind} rules on a field of type {field.type}")
    kind_rules = getattr(rules, kind)
    _only(kind_rules, SUPPORTED_RULES[kind], where)
    return kind_rules


def _scalar_value_rules(kind: str, rules: Any, where: str) -> list[ValueRule]:
    """One ValueRule for each CEL program protovalidate runs, in its order: the set rule
    fields by number, each rule's programs in validate.proto's order."""
    value_rules: list[ValueRule] = []
    for rule_field, bound in rules.ListFields():
        rule = rule_field.name
        if kind == "string":
            value_rules.extend(_string_rules(rule, bound, where))
        elif kind == "enum":
            if rule == "in":
                value_rules.append(_enum_in(frozenset(bound), _format_list(bound)))
            elif rule == "not_in":
                value_rules.append(_enum_not_in(frozenset(bound), _format_list(bound)))
        else:
            value_rules.extend(_range_rules(rule, rules, is_double=kind == "double"))
    return value_rules


def _string_rules(rule: str, bound: Any, where: str) -> list[ValueRule]:
    if rule == "min_len":
        return [_size_rule(bound, below=True, text=f"must be at least {bound} characters")]
    if rule == "max_len":
        return [_size_rule(bound, below=False, text=f"must be at most {bound} characters")]
    if rule == "pattern":
        try:
            pattern = re2.compile(bound)
        except re2.error as error:
            raise Unsupported(f"{where}: pattern {bound!r}: {error}") from error
        return [_pattern_rule(pattern.search, f"does not match regex pattern `{bound}`")]
    if rule == "not_contains":
        return [_not_contains_rule(bound)]
    if rule == "uuid":
        return [_uuid, _uuid_empty] if bound else []
    raise Unsupported(f"{where}: string.{rule}")


def _not_contains_rule(substring: str) -> ValueRule:
    text = f"contains substring `{substring}`"

    def not_contains(value: str) -> str | None:
        return text if substring in value else None

    return not_contains


def _size_rule(bound: int, *, below: bool, text: str) -> ValueRule:
    if below:

        def at_least(value: Any) -> str | None:
            return text if len(value) < bound else None

        return at_least

    def at_most(value: Any) -> str | None:
        return text if len(value) > bound else None

    return at_most


def _pattern_rule(search: Callable[[str], Any], text: str) -> ValueRule:
    def pattern(value: str) -> str | None:
        return text if search(value) is None else None

    return pattern


def _uuid(value: str) -> str | None:
    if value == "" or UUID.fullmatch(value):
        return None
    return "must be a valid UUID"


def _uuid_empty(value: str) -> str | None:
    return "value is empty, which is not a valid UUID" if value == "" else None


def _enum_in(allowed: frozenset[int], listed: str) -> ValueRule:
    text = f"must be in list {listed}"

    def enum_in(value: int) -> str | None:
        return None if value in allowed else text

    return enum_in


def _enum_not_in(refused: frozenset[int], listed: str) -> ValueRule:
    text = f"must not be in list {listed}"

    def enum_not_in(value: int) -> str | None:
        return text if value in refused else None

    return enum_not_in


def _range_rules(rule: str, rules: Any, *, is_double: bool) -> list[ValueRule]:
    """int32/int64/double gt, gte, lt, lte: validate.proto's programs for one rule field.

    Each program of the lower bound covers one combination with the upper bound (none,
    lt, lte; the range or its exclusive complement); the upper bound's own program only
    speaks when there is no lower bound. NaN breaks every double bound (`isNan()`).
    """
    has = rules.HasField
    show = _format_double if is_double else str
    if rule in ("lt", "lte"):
        if has("gt") or has("gte"):
            return []
        high = getattr(rules, rule)
        return [_bound_rule(_breaks(rule, high), f"must be {_WORDS[rule]} {show(high)}")]
    low = getattr(rules, rule)
    breaks_low = _breaks(rule, low)
    if not has("lt") and not has("lte"):
        return [_bound_rule(breaks_low, f"must be {_WORDS[rule]} {show(low)}")]
    upper = "lt" if has("lt") else "lte"
    high = getattr(rules, upper)
    breaks_high = _breaks(upper, high)
    words = f"{_WORDS[rule]} {show(low)}", f"{_WORDS[upper]} {show(high)}"
    value_rules: list[ValueRule] = []
    if high >= low:  # a range: outside it on either side

        def outside(value: Any) -> bool:
            return bool(breaks_low(value) or breaks_high(value))

        value_rules.append(_bound_rule(outside, f"must be {words[0]} and {words[1]}"))
    if high < low:  # the complement of a range: inside the gap

        def in_gap(value: Any) -> bool:
            return bool(breaks_low(value) and breaks_high(value))

        value_rules.append(_bound_rule(in_gap, f"must be {words[0]} or {words[1]}"))
    return value_rules


_WORDS: Final = {
    "gt": "greater than",
    "gte": "greater than or equal to",
    "lt": "less than",
    "lte": "less than or equal to",
}


def _breaks(rule: str, bound: Any) -> Callable[[Any], bool]:
    """Whether a value breaks one bound; NaN (value != value) breaks all of them."""
    if rule == "gt":
        return lambda value: value != value or value <= bound
    if rule == "gte":
        return lambda value: value != value or value < bound
    if rule == "lt":
        return lambda value: value != value or value >= bound
    return lambda value: value != value or value > bound


def _bound_rule(broken: Callable[[Any], bool], text: str) -> ValueRule:
    def bound(value: Any) -> str | None:
        return text if broken(value) else None

    return bound


def _format_double(value: float) -> str:
    # protovalidate's format("%s") of a double.
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return f"{value:g}"


def _format_list(values: Iterable[int]) -> str:
    return "[" + ", ".join(str(value) for value in values) + "]"


# Nested messages.


def _nested_checks(field: FieldDescriptor) -> list[Check]:
    entry = _held(field)
    if entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        if value_field.message_type is None:
            return []
        child = validator_for(value_field.message_type)
        if child.has_nothing_to_check:
            return []
        return [_map_values_check(field.name, child)]
    child = validator_for(entry)
    if child.has_nothing_to_check:
        return []
    if _is_repeated(field):
        return [_list_check(field.name, child)]
    return [_message_check(field.name, child)]


def _message_check(name: str, child: MessageValidator) -> Check:
    def nested(message: Message, found: list[Violation]) -> None:
        if message.HasField(name):
            start = len(found)
            child.collect(getattr(message, name), found)
            if len(found) > start:
                _prefix(found, start, name)

    return nested


def _list_check(name: str, child: MessageValidator) -> Check:
    def nested_items(message: Message, found: list[Violation]) -> None:
        for index, item in enumerate(getattr(message, name)):
            start = len(found)
            child.collect(item, found)
            if len(found) > start:
                _prefix(found, start, f"{name}[{index}]")

    return nested_items


def _map_values_check(name: str, child: MessageValidator) -> Check:
    def nested_values(message: Message, found: list[Violation]) -> None:
        for key, value in getattr(message, name).items():
            start = len(found)
            child.collect(value, found)
            if len(found) > start:
                _prefix(found, start, f"{name}[{key!r}]")

    return nested_values


def _prefix(found: list[Violation], start: int, prefix: str) -> None:
    found[start:] = [
        (f"{prefix}.{path}" if path else prefix, description) for path, description in found[start:]
    ]


# Timestamps and Durations: protovalidate turns a field with rules into a CEL value before
# it runs them, sub-messages and all, and that fails for times Python cannot represent.


def _times_guard(field: FieldDescriptor, *, is_map: bool, is_list: bool) -> Callable[[Any], None]:
    if is_map:

        def map_values(value: Any) -> None:
            for item in value.values():
                check_times(item)

        return map_values
    if is_list:

        def items(value: Any) -> None:
            for item in value:
                check_times(item)

        return items
    return check_times


def check_times(message: Message) -> None:
    """Raise _AskProtovalidate when a Timestamp or Duration in the message is outside
    protobuf's range (protovalidate may fail on it; it should say what happens)."""
    descriptor = _descriptor_of(message)
    full_name = descriptor.full_name
    if full_name in (TIMESTAMP, DURATION):
        time: Any = message  # a Timestamp or a Duration, by its descriptor
        seconds: int = time.seconds
        nanos: int = time.nanos
        if full_name == TIMESTAMP:
            if seconds not in TIMESTAMP_SECONDS or nanos not in NANOS:
                raise _AskProtovalidate
        elif (
            seconds not in DURATION_SECONDS
            or abs(nanos) not in NANOS
            or (seconds > 0 > nanos)
            or (seconds < 0 < nanos)
        ):
            raise _AskProtovalidate
        return
    for name, shape in _time_fields(descriptor):
        value = getattr(message, name)
        if shape == "one":
            if message.HasField(name):
                check_times(value)
        else:
            for item in value.values() if shape == "map" else value:
                check_times(item)


_time_fields_cache: dict[Descriptor, tuple[tuple[str, str], ...]] = {}


def _time_fields(descriptor: Descriptor) -> tuple[tuple[str, str], ...]:
    """The fields of a message that lead to a Timestamp or Duration, each with its shape."""
    found = _time_fields_cache.get(descriptor)
    if found is None:
        fields: list[tuple[str, str]] = []
        for field in descriptor.fields:
            held = field.message_type
            if held is None:
                continue
            shape = "list" if _is_repeated(field) else "one"
            if held.GetOptions().map_entry:
                held = held.fields_by_name["value"].message_type
                shape = "map"
            if held is not None and _reaches_time(held):
                fields.append((field.name, shape))
        found = _time_fields_cache[descriptor] = tuple(fields)
    return found


def _reaches_time(descriptor: Descriptor) -> bool:
    seen: set[str] = set()
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name in (TIMESTAMP, DURATION):
            return True
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        pending.extend(f.message_type for f in current.fields if f.message_type is not None)
    return False


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _descriptor_of(message: Message) -> Descriptor:
    # The stubs type DESCRIPTOR as the pure-Python or the upb class; they are one API.
    return cast(Descriptor, message.DESCRIPTOR)


def _held(field: FieldDescriptor) -> Descriptor:
    """The message type a message field holds (a map's is its entry type)."""
    held = field.message_type
    if held is None:
        raise TypeError(f"{field.full_name} holds no message")
    return held


def _only(rules: Message, allowed: Iterable[str], where: str) -> None:
    """Refuse rules we do not compile, and unknown rule fields protovalidate refuses."""
    allowed = set(allowed)
    for rule_field, _ in rules.ListFields():
        if rule_field.is_extension or rule_field.name not in allowed:
            raise Unsupported(f"{where}: {rules.DESCRIPTOR.name}.{rule_field.name}")
    if len(unknown_fields.UnknownFieldSet(rules)) > 0:
        raise Unsupported(f"{where}: unknown fields in {rules.DESCRIPTOR.name}")
