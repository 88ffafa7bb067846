"""Approval policy as code: a YAML file of rules whose `when` is a CEL expression over the
facts of a plan. The first rule that fires decides (allow, require approval from N people,
deny); when none fires, the file's default does. The decision keeps the facts it was made on,
so `kubernaut policy test` can ask a new version of the file what it would have decided."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import celpy
import celpy.celtypes
import jsonschema  # type: ignore[import-untyped]
import lark
import yaml
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError
from kubernaut.workflow.v1 import workflow_pb2

OUTCOMES: Final = {
    "allow": workflow_pb2.POLICY_OUTCOME_ALLOW,
    "require_approval": workflow_pb2.POLICY_OUTCOME_REQUIRE_APPROVAL,
    "deny": workflow_pb2.POLICY_OUTCOME_DENY,
}
RISKS: Final = ("low", "medium", "high", "unknown")
WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_RULE: Final = "default"
MAX_APPROVERS: Final = 5

_OUTCOME_SCHEMA: Final[dict[str, Any]] = {"enum": list(OUTCOMES)}
_APPROVERS_SCHEMA: Final[dict[str, Any]] = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_APPROVERS,
}
# `approvers` means something only when people approve; elsewhere it is a mistake.
_APPROVERS_ONLY_WITH_APPROVAL: Final[dict[str, Any]] = {
    "if": {"properties": {"outcome": {"const": "require_approval"}}},
    "else": {"not": {"required": ["approvers"]}},
}

POLICY_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Kubernaut approval policy",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "default", "rules"],
    "properties": {
        "version": {"const": 1},
        "timezone": {"type": "string", "minLength": 1},
        "default": {
            "type": "object",
            "additionalProperties": False,
            "required": ["outcome"],
            "properties": {
                "outcome": _OUTCOME_SCHEMA,
                "approvers": _APPROVERS_SCHEMA,
                "reason": {"type": "string"},
            },
            **_APPROVERS_ONLY_WITH_APPROVAL,
        },
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "when", "outcome"],
                "properties": {
                    # A DNS label: it shows in decisions, audit entries and emails.
                    "name": {
                        "type": "string",
                        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                        "maxLength": 63,
                    },
                    "description": {"type": "string"},
                    "when": {"type": "string", "minLength": 1},
                    "outcome": _OUTCOME_SCHEMA,
                    "approvers": _APPROVERS_SCHEMA,
                },
                **_APPROVERS_ONLY_WITH_APPROVAL,
            },
        },
    },
}


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, the rule and why."""


class FactsError(ValueError):
    """Facts (JSON) that do not have the shape PolicyFacts.to_document() gives."""


# --- facts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetFacts:
    kind: str = ""
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True)
class PlanFacts:
    action: str = ""
    actions: tuple[str, ...] = ()
    risk: str = "unknown"
    steps: int = 0
    runbook: str = ""
    target: TargetFacts = field(default_factory=TargetFacts)


@dataclass(frozen=True)
class IncidentFacts:
    id: str = ""
    alert: str = ""
    severity: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    fingerprint: str = ""


@dataclass(frozen=True)
class NamespaceFacts:
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AnalysisFacts:
    confidence: float = 0.0
    source: str = ""
    approval_required: bool = False


@dataclass(frozen=True)
class TimeFacts:
    hour: int = 0
    weekday: str = "monday"
    iso: str = ""

    @classmethod
    def at(cls, when: dt.datetime, zone: dt.tzinfo) -> TimeFacts:
        local = when.astimezone(zone)
        return cls(
            hour=local.hour, weekday=WEEKDAYS[local.weekday()], iso=local.isoformat("T", "seconds")
        )


@dataclass(frozen=True)
class PolicyFacts:
    """What the policy sees of one plan: the CEL activation, as one JSON document."""

    plan: PlanFacts = field(default_factory=PlanFacts)
    incident: IncidentFacts = field(default_factory=IncidentFacts)
    namespace: NamespaceFacts = field(default_factory=NamespaceFacts)
    analysis: AnalysisFacts = field(default_factory=AnalysisFacts)
    time: TimeFacts = field(default_factory=TimeFacts)

    def to_document(self) -> dict[str, Any]:
        """The activation: `target` and `risk` repeat plan's, so that rules read short."""
        plan = _plain(self.plan)
        return {
            "plan": plan,
            "target": dict(plan["target"]),
            "risk": self.plan.risk,
            "incident": _plain(self.incident),
            "namespace": _plain(self.namespace),
            "analysis": _plain(self.analysis),
            "time": _plain(self.time),
        }

    def to_json(self) -> str:
        """Canonical JSON: the same facts give the same text (what decisions record)."""
        return json.dumps(
            self.to_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )

    @classmethod
    def from_json(cls, text: str) -> PolicyFacts:
        """Facts recorded with a decision. Missing facts take their defaults and unknown ones
        are ignored, so that facts recorded by another version still evaluate."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise FactsError(f"facts are not JSON: {error}") from error
        if not isinstance(document, dict):
            raise FactsError("facts must be a JSON object")
        return cls.from_document(document)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> PolicyFacts:
        plan = _section(document, "plan")
        incident = _section(document, "incident")
        namespace = _section(document, "namespace")
        analysis = _section(document, "analysis")
        time = _section(document, "time")
        target = _section(plan, "target", "plan.") or _section(document, "target")
        return cls(
            plan=PlanFacts(
                action=_get(plan, "action", str, "plan."),
                actions=tuple(_strings(plan, "actions", "plan.")),
                risk=_get(plan, "risk", str, "plan.", "unknown"),
                steps=_get(plan, "steps", int, "plan."),
                runbook=_get(plan, "runbook", str, "plan."),
                target=TargetFacts(
                    kind=_get(target, "kind", str, "target."),
                    namespace=_get(target, "namespace", str, "target."),
                    name=_get(target, "name", str, "target."),
                ),
            ),
            incident=IncidentFacts(
                id=_get(incident, "id", str, "incident."),
                alert=_get(incident, "alert", str, "incident."),
                severity=_get(incident, "severity", str, "incident."),
                labels=_labels(incident, "incident."),
                fingerprint=_get(incident, "fingerprint", str, "incident."),
            ),
            namespace=NamespaceFacts(
                name=_get(namespace, "name", str, "namespace."),
                labels=_labels(namespace, "namespace."),
            ),
            analysis=AnalysisFacts(
                confidence=float(_get(analysis, "confidence", float, "analysis.", 0.0)),
                source=_get(analysis, "source", str, "analysis."),
                approval_required=_get(analysis, "approval_required", bool, "analysis.", False),
            ),
            time=TimeFacts(
                hour=_get(time, "hour", int, "time."),
                weekday=_get(time, "weekday", str, "time.", "monday"),
                iso=_get(time, "iso", str, "time."),
            ),
        )

    def in_timezone(self, zone: dt.tzinfo) -> PolicyFacts:
        """The same facts with the time facts in `zone`: an instant is the same instant under
        another policy's timezone. Facts without a usable time are left as they are."""
        try:
            when = dt.datetime.fromisoformat(self.time.iso)
            if when.tzinfo is None:
                return self
            return dataclasses.replace(self, time=TimeFacts.at(when, zone))
        except (ValueError, OverflowError):  # recorded by hand, or year 9999 at UTC+1
            return self


def build_facts(
    *,
    action: str,
    risk: str,
    target_kind: str,
    target_namespace: str,
    target_name: str,
    actions: Sequence[str] = (),
    steps: int = 0,
    runbook: str = "",
    incident_id: str = "",
    alert: str = "",
    severity: str = "",
    incident_labels: Mapping[str, str] | None = None,
    fingerprint: str = "",
    namespace_labels: Mapping[str, str] | None = None,
    confidence: float = 0.0,
    source: str = "",
    approval_required: bool = False,
    now: dt.datetime | None = None,
    timezone: dt.tzinfo | str = dt.UTC,
) -> PolicyFacts:
    """PolicyFacts from plain values. `actions` defaults to [action]; a risk that is not
    low, medium or high is "unknown"; `now` (default: this instant) is read in `timezone`,
    which should be the policy's (ApprovalPolicy.timezone)."""
    zone = zoneinfo.ZoneInfo(timezone) if isinstance(timezone, str) else timezone
    when = now if now is not None else dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # naive times in this code base are UTC
    risk = risk.strip().lower()
    return PolicyFacts(
        plan=PlanFacts(
            action=action,
            actions=tuple(actions) or ((action,) if action else ()),
            risk=risk if risk in RISKS else "unknown",
            steps=steps,
            runbook=runbook,
            target=TargetFacts(kind=target_kind, namespace=target_namespace, name=target_name),
        ),
        incident=IncidentFacts(
            id=incident_id,
            alert=alert,
            severity=severity,
            labels=dict(incident_labels or {}),
            fingerprint=fingerprint,
        ),
        namespace=NamespaceFacts(name=target_namespace, labels=dict(namespace_labels or {})),
        analysis=AnalysisFacts(
            confidence=float(confidence), source=source, approval_required=approval_required
        ),
        time=TimeFacts.at(when, zone),
    )


def _plain(value: Any) -> Any:
    """A facts dataclass as JSON-able values (tuples become lists, mappings dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def _section(document: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, Mapping):
        raise FactsError(f"{where}{key} must be an object")
    return value


def _get(
    document: Mapping[str, Any], key: str, kind: type[Any], where: str, default: Any = None
) -> Any:
    if key not in document:
        return kind() if default is None else default
    value = document[key]
    # bool is an int in Python, not in the facts; an int is a fine double.
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise FactsError(f"{where}{key} must be {kind.__name__}, not {value!r}")
    return value


def _strings(document: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FactsError(f"{where}{key} must be a list of strings")
    return value


def _labels(document: Mapping[str, Any], where: str) -> dict[str, str]:
    value = _section(document, "labels", where)
    if not all(isinstance(item, str) for item in value.values()):
        raise FactsError(f"{where}labels must map strings to strings")
    return {str(key): item for key, item in value.items()}


# The facts' shape, for checking field names in expressions: None marks a map whose keys are
# open (labels), a leaf is any value that has no fields.
_OPEN = None
_FACT_FIELDS: Final[dict[str, Any]] = {
    "plan": {
        "action": {},
        "actions": {},
        "risk": {},
        "steps": {},
        "runbook": {},
        "target": {"kind": {}, "namespace": {}, "name": {}},
    },
    "target": {"kind": {}, "namespace": {}, "name": {}},
    "risk": {},
    "incident": {"id": {}, "alert": {}, "severity": {}, "labels": _OPEN, "fingerprint": {}},
    "namespace": {"name": {}, "labels": _OPEN},
    "analysis": {"confidence": {}, "source": {}, "approval_required": {}},
    "time": {"hour": {}, "weekday": {}, "iso": {}},
}

# Facts that take each branch of typical rules, so that evaluating every rule on each reaches
# most of its comparisons: CEL's && and || stop early, and a type error hides behind them.
_SAMPLE_FACTS: Final = (
    build_facts(
        action="rollback_deployment",
        actions=("rollback_deployment", "scale_deployment"),
        risk="high",
        steps=4,
        runbook="crashloop-rollback",
        target_kind="Deployment",
        target_namespace="kube-system",
        target_name="coredns",
        incident_id="inc-sample-1",
        alert="KubePodCrashLooping",
        severity="critical",
        incident_labels={"team": "platform", "severity": "critical"},
        fingerprint="0123456789abcdef",
        namespace_labels={"env": "prod", "team": "platform", "tier": "critical"},
        confidence=0.95,
        source="rules",
        approval_required=True,
        now=dt.datetime(2025, 1, 4, 23, 30, tzinfo=dt.UTC),
    ),
    build_facts(
        action="delete_pod",
        risk="low",
        steps=1,
        target_kind="Pod",
        target_namespace="shop",
        target_name="web-1",
        incident_id="inc-sample-2",
        alert="KubePodNotReady",
        severity="warning",
        confidence=0.4,
        source="model",
        now=dt.datetime(2025, 1, 6, 10, 15, tzinfo=dt.UTC),
    ),
    build_facts(
        action="scale_deployment",
        risk="medium",
        steps=2,
        target_kind="Deployment",
        target_namespace="staging",
        target_name="api",
        namespace_labels={"env": "staging"},
        confidence=0.7,
        source="history",
        now=dt.datetime(2025, 1, 8, 4, 0, tzinfo=dt.UTC),
    ),
)


# --- rules -------------------------------------------------------------------------------

_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    outcome: str
    approvers: int
    description: str
    program: celpy.Runner = field(repr=False, compare=False)

    def evaluate(self, activation: Mapping[str, celpy.celtypes.Value]) -> tuple[bool, str]:
        """(fired, why not when it failed). An expression that fails does not fire."""
        try:
            value = self.program.evaluate(dict(activation))
        except CELEvalError as error:
            return False, _eval_error_text(error)
        except Exception as error:  # a bug in celpy must not stop a decision
            return False, f"{type(error).__name__}: {error}"
        if isinstance(value, CELEvalError):
            return False, _eval_error_text(value)
        if not isinstance(value, celpy.celtypes.BoolType):
            return False, f"gave {_cel_type_name(value)}, not bool"
        return bool(value), ""


@dataclass(frozen=True)
class ApprovalPolicy:
    name: str
    digest: str
    default_outcome: str
    default_approvers: int
    default_reason: str
    timezone: dt.tzinfo
    rules: tuple[Rule, ...]

    @property
    def policy_id(self) -> str:
        """What decisions record as `policy`: the file name and its sha256's first 12 hex."""
        return f"{self.name} sha256:{self.digest[:12]}"

    @classmethod
    def load(cls, path: Path | str) -> ApprovalPolicy:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise PolicyError(f"{path}: cannot read: {error.strerror or error}") from error
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise PolicyError(f"{path.name}: not UTF-8 text: {error}") from error
        return cls.parse(text, path.name)

    @classmethod
    def parse(cls, text: str, name: str) -> ApprovalPolicy:
        """The policy in `text`, named `name` (its file name) in decisions and errors."""
        document = _load_yaml(text, name)
        _check_schema(document, name)
        zone = _timezone(document.get("timezone", "UTC"), name)
        rules: list[Rule] = []
        seen: set[str] = set()
        for entry in document["rules"]:
            rule_name = entry["name"]
            if rule_name in seen:
                raise PolicyError(f"{name}: rule {rule_name}: the name is used twice")
            if rule_name == DEFAULT_RULE:
                raise PolicyError(
                    f"{name}: rule {rule_name}: the name is reserved for the policy's default"
                )
            seen.add(rule_name)
            rules.append(_compile_rule(entry, name))
        default = document["default"]
        policy = cls(
            name=name,
            digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            default_outcome=default["outcome"],
            default_approvers=_approvers_of(default),
            default_reason=default.get("reason") or "no rule matched: the policy's default",
            timezone=zone,
            rules=tuple(rules),
        )
        policy._check_against_samples()
        return policy

    def decide(self, facts: PolicyFacts) -> workflow_pb2.PolicyDecision:
        """The first rule that fires decides, else the default. Rules that fail to evaluate
        (a label the namespace lacks) do not fire; the reason names them."""
        facts = facts.in_timezone(self.timezone)
        activation = _activation(facts.to_document())
        failed: list[str] = []
        for rule in self.rules:
            fired, error = rule.evaluate(activation)
            if error:
                failed.append(f"{rule.name}: {error}")
            if fired:
                reason = rule.description or f"rule {rule.name}"
                return self._decision(
                    rule.name, rule.outcome, rule.approvers, reason, facts, failed
                )
        return self._decision(
            DEFAULT_RULE,
            self.default_outcome,
            self.default_approvers,
            self.default_reason,
            facts,
            failed,
        )

    def decide_json(self, input_json: str) -> workflow_pb2.PolicyDecision:
        """Decide again on facts a decision recorded (its input_json). Raises FactsError."""
        return self.decide(PolicyFacts.from_json(input_json))

    def _decision(
        self,
        rule: str,
        outcome: str,
        approvers: int,
        reason: str,
        facts: PolicyFacts,
        failed: Sequence[str],
    ) -> workflow_pb2.PolicyDecision:
        if failed:
            reason += f" (did not fire on an error: {'; '.join(failed)})"
        return workflow_pb2.PolicyDecision(
            outcome=OUTCOMES[outcome],
            rule=rule,
            approvers=approvers if outcome == "require_approval" else 0,
            reason=reason,
            policy=self.policy_id,
            input_json=facts.to_json(),
        )

    def _check_against_samples(self) -> None:
        """Evaluate every rule on sample facts: a type error (a string compared with a number,
        a result that is not a bool) is a broken rule. A missing map key is not: the samples
        cannot have every label a rule may ask for."""
        for facts in _SAMPLE_FACTS:
            activation = _activation(facts.in_timezone(self.timezone).to_document())
            for rule in self.rules:
                value: object
                try:
                    value = rule.program.evaluate(dict(activation))
                except CELEvalError as error:
                    value = error
                except Exception as error:
                    raise PolicyError(
                        f"{self.name}: rule {rule.name}: when: {rule.when!r}: "
                        f"{type(error).__name__}: {error}"
                    ) from error
                if isinstance(value, CELEvalError):
                    if _missing_key(value):
                        continue
                    raise PolicyError(
                        f"{self.name}: rule {rule.name}: when: {rule.when!r}: "
                        f"{_eval_error_text(value)}"
                    )
                if not isinstance(value, celpy.celtypes.BoolType):
                    raise PolicyError(
                        f"{self.name}: rule {rule.name}: when: {rule.when!r}: gives "
                        f"{_cel_type_name(value)}, not bool"
                    )


# --- loading -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice: YAML keeps the last silently, and a rule
    with two `when`s would not be the rule its author reads."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", mark)
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str, name: str) -> dict[str, Any]:
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise PolicyError(f"{name}: not valid YAML{where}: {error.problem}") from error
    except yaml.YAMLError as error:
        raise PolicyError(f"{name}: not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise PolicyError(f"{name}: a policy is a YAML mapping (version, default, rules)")
    return document


def _check_schema(document: Mapping[str, Any], name: str) -> None:
    validator = jsonschema.Draft202012Validator(POLICY_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return
    path = list(error.absolute_path)
    where = _where(document, path)
    if error.validator == "not":  # the only `not` is approvers outside require_approval
        message = "approvers: only with outcome require_approval"
    else:
        key = ".".join(str(part) for part in path[2 if path[:1] == ["rules"] else 0 :])
        message = f"{key}: {error.message}" if key else error.message
    raise PolicyError(f"{name}: {where}{message}")


def _where(document: Mapping[str, Any], path: Sequence[Any]) -> str:
    """'rule NAME: ' (or 'rules[3]: ') for a path into a rule, '' elsewhere."""
    if len(path) < 2 or path[0] != "rules" or not isinstance(path[1], int):
        return ""
    entry = document["rules"][path[1]]
    rule_name = entry.get("name") if isinstance(entry, dict) else None
    return f"rule {rule_name}: " if isinstance(rule_name, str) else f"rules[{path[1]}]: "


def _timezone(value: str, name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise PolicyError(f"{name}: timezone: unknown IANA time zone {value!r}") from error


def _approvers_of(entry: Mapping[str, Any]) -> int:
    if entry["outcome"] != "require_approval":
        return 0
    approvers: int = entry.get("approvers", 1)
    return approvers


@functools.cache
def _environment() -> celpy.Environment:
    """Made on first use: celpy.Environment() raises the interpreter's recursion limit."""
    return celpy.Environment()


def _compile_rule(entry: Mapping[str, Any], name: str) -> Rule:
    rule_name: str = entry["name"]
    when: str = entry["when"]
    prefix = f"{name}: rule {rule_name}: when: {when!r}"
    try:
        ast = _environment().compile(when)
    except CELParseError as error:
        raise PolicyError(f"{prefix}: {_syntax_error_text(error, when)}") from error
    problem = _check_names(ast)
    if problem:
        raise PolicyError(f"{prefix}: {problem}")
    return Rule(
        name=rule_name,
        when=when,
        outcome=entry["outcome"],
        approvers=_approvers_of(entry),
        description=entry.get("description", ""),
        program=_environment().program(ast),
    )


def _syntax_error_text(error: CELParseError, when: str) -> str:
    where = f"column {error.column}" if error.column else "an unknown place"
    if error.line and "\n" in when.strip():
        where = f"line {error.line} {where}"
    cause = error.__context__
    what = ""
    if isinstance(cause, lark.exceptions.UnexpectedCharacters):
        what = f": unexpected {cause.char!r}"
    elif isinstance(cause, lark.exceptions.UnexpectedToken):
        token = cause.token
        what = (
            ": unexpected end of expression" if token.type == "$END" else f": unexpected {token!r}"
        )
    return f"syntax error at {where}{what}"


def _check_names(ast: lark.Tree[Any]) -> str:
    """The first unknown variable or fact field the expression names, as an error ('' when
    all are known): a typo would otherwise only fail (and so never fire) when evaluated."""
    bound = set()
    for node in ast.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) in _MACROS:
            variable = _chain(node.children[2].children[0]) if len(node.children) > 2 else None
            if variable and len(variable) == 1:
                bound.add(variable[0])
    for node in ast.iter_subtrees():
        if node.data in ("ident", "dot_ident"):
            ident = str(node.children[0])
            if ident not in _FACT_FIELDS and ident not in bound:
                return f"unknown name {ident!r} (the facts are {', '.join(_FACT_FIELDS)})"
        if node.data == "member_dot":
            chain = _chain(node)
            if chain and chain[0] not in bound:
                problem = _check_chain(chain)
                if problem:
                    return problem
    return ""


def _chain(node: Any) -> list[str] | None:
    """['plan', 'target', 'kind'] for `plan.target.kind`; None for anything but a chain of
    field selections on a variable. Single-child nodes are the grammar's precedence levels."""
    while isinstance(node, lark.Tree):
        if node.data == "member_dot":
            base = _chain(node.children[0])
            return None if base is None else [*base, str(node.children[1])]
        if node.data in ("ident", "dot_ident"):
            return [str(node.children[0])]
        if len(node.children) != 1:
            return None
        node = node.children[0]
    return None


def _check_chain(chain: Sequence[str]) -> str:
    shape: Any = _FACT_FIELDS
    for depth, part in enumerate(chain):
        if shape is _OPEN:
            return ""
        if part not in shape:
            owner = ".".join(chain[:depth])
            known = ", ".join(shape) or "none"
            if not shape:
                return f"{owner} has no fields (it is a value), so {'.'.join(chain)} fails"
            return f"{owner} has no field {part!r} (it has {known})"
        shape = shape[part]
    return ""


def _activation(document: Mapping[str, Any]) -> dict[str, celpy.celtypes.Value]:
    return {key: json_to_cel(value) for key, value in document.items()}


def _missing_key(error: CELEvalError) -> bool:
    """A map lookup of a key that is not there: `namespace.labels["env"]` on a namespace
    without that label."""
    message = str(error.args[0]) if error.args else ""
    return (
        len(error.args) > 1
        and error.args[1] is KeyError
        and message.startswith(("no such key", "no such member"))
    )


_ACTIVATION_DUMP = re.compile(r"\s*\(in activation .*", re.DOTALL)
_NO_OVERLOAD = re.compile(r"no matching overload for Token\('RULE', '(?P<rule>\w+)'\) applied to")
_OPERATORS: Final = {
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_in": "in",
    "addition_add": "+",
    "addition_sub": "-",
    "multiplication_mul": "*",
    "multiplication_div": "/",
    "multiplication_mod": "%",
    "unary_not": "!",
    "unary_neg": "-",
}


def _eval_error_text(error: CELEvalError) -> str:
    """The error in a line: celpy's own text may hold the whole activation."""
    if not error.args:
        return "evaluation failed"
    message = _ACTIVATION_DUMP.sub("", str(error.args[0]))
    kind = error.args[1] if len(error.args) > 1 else None
    detail = error.args[2] if len(error.args) > 2 else None
    details = detail if isinstance(detail, tuple) else () if detail is None else (detail,)
    if _missing_key(error) and details:
        return f"no such key {', '.join(repr(str(key)) for key in details)}"
    # Macros (exists, all, ...) wrap the errors of their items: the first says enough.
    nested = [item for item in details if isinstance(item, CELEvalError)]
    if nested:
        return _eval_error_text(nested[0])
    if "does not support field selection" in message:
        found = re.search(r"celtypes\.(\w+)Type'", message)
        return f"a {found[1].lower() if found else 'value'} has no fields"
    overload = _NO_OVERLOAD.search(message)
    if overload:
        operator = _OPERATORS.get(overload["rule"], overload["rule"])
        types = re.findall(r"celtypes\.(\w+)Type'", message[overload.end() :])
        return f"type error: no {operator} for {' and '.join(t.lower() for t in types)}"
    if details and kind is not KeyError:
        message += ": " + "; ".join(str(item) for item in details)
    return message


def _cel_type_name(value: object) -> str:
    return type(value).__name__.removesuffix("Type").lower()
