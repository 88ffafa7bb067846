"""Runbook templates: versioned YAML files (kubernaut/runbooks/*.yaml) that turn one
recommendation into a plan graph (WorkflowPlan.nodes).

A file is checked whole when it is loaded, so that a bad template stops the service at
start instead of an incident later: its JSON Schema (kubernaut/runbooks/schema.json, draft
2020-12), unique step names, dependencies that name steps, no cycles, every `when` compiles
as CEL, every Jinja2 template compiles, and every action, check and compensation body parses
into ActionParams / CheckParams (proto JSON). The bodies are parsed *before* rendering: each
templated string stands in as a value of its field's type (0, "", false), so field names, the
action's oneof and literal values (their protovalidate rules too) are checked at load; the
rendered values are checked when a plan is made (ParseDict, then protovalidate on each
PlanNode, then the engine's graph checks).

Rendering: the string values of step bodies, targets and descriptions are Jinja2 templates,
rendered in a sandbox with StrictUndefined over

- `target`: the recommendation's target (cluster, kind, namespace, name);
- `alert`: name, labels, annotations;
- `recommendation`: action (ActionParams as a dict, e.g. {"scale_deployment": {...}}),
  action_name, confidence, reasons;
- `params`: the recommended action's own parameters (proto field names, every field with
  its default filled in, 64-bit integers as numbers, enums by name).

A rendered string lands in a number or bool field as ParseDict converts it
(`replicas: "{{ params.replicas + 1 }}"`). `when` values (the match's and the steps') are
CEL, never templated: the match's sees the same four variables, a step's the earlier steps'
results at run time. Names and `depends_on` are not templated either: a template's graph is
fixed. A step without a target acts on the recommendation's; a target's cluster is always
the recommendation's, and its namespace the recommendation's unless given (none for a Node).

Versions: several versions of one name may be loaded. A new incident gets the highest
(semantic versioning precedence) whose match fits, never an older one; `get(name, version)`
returns any loaded version, so an incident replays with the template it ran.
"""

from __future__ import annotations

import functools
import graphlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jinja2
import jsonschema  # type: ignore[import-untyped]
import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from jinja2.sandbox import ImmutableSandboxedEnvironment
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.runtime.validation import violations_of
from kubernaut.services.workflow.conditions import Condition, ConditionError
from kubernaut.services.workflow.graph import graph_problems

__all__ = [
    "ChosenRunbook",
    "RunbookCatalogue",
    "RunbookError",
    "RunbookTemplate",
    "default_runbook_dir",
    "load_runbooks",
    "render_context",
    "semver_key",
]

log = logging.getLogger(__name__)

SCHEMA_FILE: Final = "schema.json"
# Kinds without a namespace: a step target of these kinds gets none.
CLUSTER_SCOPED: Final = frozenset({"Node", "Namespace", "PersistentVolume", "StorageClass"})
# How many schema problems one error lists.
MAX_PROBLEMS: Final = 10

_TEMPLATE_MARKERS: Final = ("{{", "{%", "{#")
_INT_TYPES: Final = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)
_FLOAT_TYPES: Final = frozenset({FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT})

# Immutable: a template cannot change the lists and dicts of its context either.
_JINJA: Final = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
)


class RunbookError(ValueError):
    """A runbook that does not load or render: the message names the file and the JSON
    path of the (first) problem, e.g. `node-not-ready.yaml: $.steps[1].depends_on[0]: ...`."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        super().__init__(f"{source}: {path}: {problem}")


@dataclass(frozen=True)
class ChosenRunbook:
    """A runbook rendered for one alert and recommendation: the plan graph to run."""

    ref: workflow_pb2.RunbookRef
    nodes: list[workflow_pb2.PlanNode]
    max_parallel: int


@dataclass(frozen=True)
class RunbookTemplate:
    """One loaded, validated runbook file."""

    name: str
    version: str
    description: str
    alerts: tuple[str, ...]
    actions: tuple[str, ...]
    when: Condition | None
    max_parallel: int
    # The steps as the file holds them (schema-valid JSON-like values).
    steps: tuple[Mapping[str, Any], ...]
    # sha256 of the file's bytes, hex.
    digest: str
    source: Path

    @property
    def ref(self) -> workflow_pb2.RunbookRef:
        return workflow_pb2.RunbookRef(name=self.name, version=self.version, digest=self.digest)

    def listing(self) -> workflow_pb2.Runbook:
        """The runbook as ListRunbooks lists it."""
        return workflow_pb2.Runbook(
            name=self.name,
            version=self.version,
            description=self.description,
            alerts=list(self.alerts),
            actions=list(self.actions),
            digest=self.digest,
            source=str(self.source),
            steps=[str(step["name"]) for step in self.steps],
        )


def default_runbook_dir() -> Path:
    """The runbooks shipped with Kubernaut: kubernaut/runbooks."""
    return Path(__file__).resolve().parents[2] / "runbooks"


@functools.cache
def _validator() -> Any:
    schema = json.loads((default_runbook_dir() / SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# -- versions ----------------------------------------------------------------------------

_SEMVER: Final = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
)


def semver_key(version: str) -> tuple[Any, ...]:
    """A sort key with semantic versioning's precedence: 1.0.0-alpha < 1.0.0-alpha.1 <
    1.0.0-beta < 1.0.0 < 1.1.0. ValueError for a string that is not MAJOR.MINOR.PATCH with
    an optional pre-release (build metadata is not accepted)."""
    found = _SEMVER.fullmatch(version)
    if found is None:
        raise ValueError(f"{version!r} is not a semantic version")
    major, minor, patch, pre = found.groups()
    if pre is None:
        # A release ranks above every pre-release of it.
        return (int(major), int(minor), int(patch), (1,))
    # Numeric identifiers rank below alphanumeric ones; a longer list ranks above its prefix.
    ids = tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split("."))
    return (int(major), int(minor), int(patch), (0, ids))


# -- loading -----------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping with the same key twice (PyYAML keeps the last
    one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_runbooks(directory: Path) -> RunbookCatalogue:
    """Every `*.yaml` of `directory`, validated; RunbookError for the first file that is
    not a valid runbook, or for two files with the same name and version."""
    if not directory.is_dir():
        raise RunbookError(str(directory), "$", "not a directory")
    loaded: dict[tuple[str, str], RunbookTemplate] = {}
    for path in sorted(directory.glob("*.yaml")):
        runbook = load_runbook(path)
        key = (runbook.name, runbook.version)
        other = loaded.get(key)
        if other is not None:
            raise RunbookError(
                str(path),
                "$.version",
                f"{runbook.name} {runbook.version} is loaded from {other.source.name} already",
            )
        loaded[key] = runbook
    return RunbookCatalogue(loaded.values())


def load_runbook(path: Path) -> RunbookTemplate:
    """One runbook file, validated; RunbookError naming the file and the JSON path."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise RunbookError(source, "$", f"cannot be read: {error}") from error
    try:
        document = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as error:
        raise RunbookError(source, "$", f"is not UTF-8: {error}") from error
    except yaml.YAMLError as error:
        raise RunbookError(source, "$", f"is not valid YAML: {_yaml_problem(error)}") from error
    _check_schema(source, document)
    steps: list[Mapping[str, Any]] = document["steps"]
    _check_graph(source, steps)
    match = document["match"]
    when = _compile_condition(source, "$.match.when", match.get("when"))
    for index, step in enumerate(steps):
        _compile_condition(source, f"$.steps[{index}].when", step.get("when"))
    nodes = [_check_step(source, index, step) for index, step in enumerate(steps)]
    # The engine's own view of the graph (with placeholders for templated values): a
    # template it would refuse never loads.
    problems = graph_problems(nodes)
    if problems:
        raise RunbookError(source, "$.steps", "; ".join(problems))
    return RunbookTemplate(
        name=document["name"],
        version=document["version"],
        description=document["description"],
        alerts=tuple(match["alerts"]),
        actions=tuple(match["actions"]),
        when=when,
        max_parallel=int(document.get("max_parallel", 1)),
        steps=tuple(steps),
        digest=hashlib.sha256(raw).hexdigest(),
        source=path,
    )


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(error)


def _check_schema(source: str, document: Any) -> None:
    errors = sorted(_validator().iter_errors(document), key=lambda e: (e.json_path, e.message))
    if not errors:
        return
    first = errors[0]
    problems = [_schema_problem(first)]
    problems += [f"{e.json_path}: {_schema_problem(e)}" for e in errors[1:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_PROBLEMS} more")
    raise RunbookError(source, first.json_path, "; ".join(problems))


def _schema_problem(error: Any) -> str:
    """A schema error in words; `oneOf` of `required` alternatives says which keys."""
    if error.validator == "oneOf":
        keys = [
            key for alternative in error.validator_value for key in alternative.get("required", ())
        ]
        if keys and isinstance(error.instance, dict):
            present = [key for key in keys if key in error.instance]
            return f"needs exactly one of {', '.join(keys)} (has {', '.join(present) or 'none'})"
    if error.validator == "not" and isinstance(error.validator_value, dict):
        refused = error.validator_value.get("required", ())
        if refused:
            return f"{', '.join(refused)} is not allowed here"
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.instance!r} is not valid: {error.schema['description']}"
    return str(error.message)


def _check_graph(source: str, steps: Sequence[Mapping[str, Any]]) -> None:
    names: dict[str, int] = {}
    for index, step in enumerate(steps):
        name = step["name"]
        if name in names:
            raise RunbookError(
                source,
                f"$.steps[{index}].name",
                f"step name {name!r} is used by $.steps[{names[name]}] already",
            )
        names[name] = index
    for index, step in enumerate(steps):
        for position, dependency in enumerate(step.get("depends_on", ())):
            where = f"$.steps[{index}].depends_on[{position}]"
            if dependency == step["name"]:
                raise RunbookError(source, where, f"step {dependency!r} depends on itself")
            if dependency not in names:
                raise RunbookError(source, where, f"{dependency!r} is not a step of this runbook")
    sorter = graphlib.TopologicalSorter(
        {step["name"]: list(step.get("depends_on", ())) for step in steps}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        cycle = list(error.args[1])
        raise RunbookError(
            source,
            f"$.steps[{names[cycle[0]]}].depends_on",
            f"the steps depend on each other in a cycle: {' -> '.join(cycle)}",
        ) from error


def _compile_condition(source: str, path: str, expression: str | None) -> Condition | None:
    if expression is None:
        return None
    try:
        return Condition.compile(expression)
    except ConditionError as error:
        raise RunbookError(source, path, str(error)) from error


def _check_step(source: str, index: int, step: Mapping[str, Any]) -> workflow_pb2.PlanNode:
    """The step as a PlanNode with each templated string replaced by a placeholder of its
    field's type: proves the bodies parse, every template compiles, and every literal value
    keeps its field's rules (a templated one is checked when it is rendered)."""
    path = f"$.steps[{index}]"
    placeholders = _Placeholders(source)
    node = _build_node(step, path, placeholders, remediation_pb2.Recommendation())
    for field, text in violations_of(node):
        where = f"{path}.{field}"
        if where in placeholders.templated:
            continue
        if field.startswith("target.") and "target" not in step:
            continue  # the recommendation's target, when the plan is made
        raise RunbookError(source, where, text)
    return node


# -- rendering ---------------------------------------------------------------------------

# Turns one string of a step (with its JSON path and, inside a proto body, its field) into
# the value the node gets.
_Leaf = Callable[[str, str, FieldDescriptor | None], Any]


def _is_template(text: str) -> bool:
    return any(marker in text for marker in _TEMPLATE_MARKERS)


@functools.lru_cache(maxsize=4096)
def _template(text: str) -> jinja2.Template:
    return _JINJA.from_string(text)


class _Placeholders:
    """Load time: compile each template; a value of the field's type stands in for it."""

    def __init__(self, source: str) -> None:
        self.source = source
        # The JSON paths of the templated values (proto field names).
        self.templated: set[str] = set()

    def __call__(self, text: str, path: str, field: FieldDescriptor | None) -> Any:
        if not _is_template(text):
            return text
        self.templated.add(path)
        try:
            _template(text)
        except jinja2.TemplateSyntaxError as error:
            raise RunbookError(
                self.source, path, f"is not a valid Jinja2 template: {error.message}"
            ) from error
        if field is None or field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
            # Any text: a templated value's rules are checked once it is rendered.
            return "placeholder" if field is None else ""
        if field.cpp_type in _INT_TYPES or field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
            return 0
        if field.cpp_type in _FLOAT_TYPES:
            return 0.0
        if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
            return False
        return text  # a message field: ParseDict says it wants an object


class _Renderer:
    """Render time: each template over the context, converted towards its field's type."""

    def __init__(self, source: str, context: Mapping[str, Any]) -> None:
        self.source = source
        self.context = context

    def __call__(self, text: str, path: str, field: FieldDescriptor | None) -> Any:
        if not _is_template(text):
            return text
        try:
            value = _template(text).render(self.context)
        except jinja2.UndefinedError as error:
            raise RunbookError(self.source, path, f"does not render: {error.message}") from error
        except Exception as error:  # a template is data: any failure is the template's
            raise RunbookError(
                self.source, path, f"does not render: {type(error).__name__}: {error}"
            ) from error
        if field is None or field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
            return value
        value = value.strip()
        if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value  # numbers and enum names: ParseDict converts the string


def _fill(body: Any, descriptor: Descriptor, path: str, leaf: _Leaf) -> Any:
    """`body` (proto JSON of `descriptor`) with each string passed through `leaf`. Keys that
    name no field are kept as they are, for ParseDict to refuse."""
    if not isinstance(body, Mapping):
        return body
    filled: dict[str, Any] = {}
    by_json = {f.json_name: f for f in descriptor.fields}
    for key, value in body.items():
        field = descriptor.fields_by_name.get(key) or by_json.get(key)
        # By the proto field name, as protovalidate names a field.
        where = f"{path}.{key if field is None else field.name}"
        if field is None:
            filled[key] = value
        elif isinstance(value, list):
            filled[key] = [
                _fill_value(item, field, f"{where}[{i}]", leaf) for i, item in enumerate(value)
            ]
        else:
            filled[key] = _fill_value(value, field, where, leaf)
    return filled


def _fill_value(value: Any, field: FieldDescriptor, path: str, leaf: _Leaf) -> Any:
    if field.message_type is not None and isinstance(value, Mapping):
        return _fill(value, field.message_type, path, leaf)
    if isinstance(value, str):
        return leaf(value, path, field)
    return value


def _parse_body(source: str, path: str, body: Mapping[str, Any], message: Any, leaf: _Leaf) -> Any:
    filled = _fill(body, message.DESCRIPTOR, path, leaf)
    try:
        return json_format.ParseDict(filled, message)
    except json_format.ParseError as error:
        raise RunbookError(source, path, " ".join(str(error).split())) from error


def _target(
    spec: Mapping[str, Any] | None,
    path: str,
    leaf: _Leaf,
    default: alert_pb2.ResourceRef,
) -> alert_pb2.ResourceRef:
    if spec is None:
        copy = alert_pb2.ResourceRef()
        copy.CopyFrom(default)
        return copy
    kind = str(leaf(spec["kind"], f"{path}.kind", None))
    name = str(leaf(spec["name"], f"{path}.name", None))
    if "namespace" in spec:
        namespace = str(leaf(spec["namespace"], f"{path}.namespace", None))
    else:
        namespace = "" if kind in CLUSTER_SCOPED else default.namespace
    return alert_pb2.ResourceRef(cluster=default.cluster, kind=kind, name=name, namespace=namespace)


def _build_node(
    step: Mapping[str, Any],
    path: str,
    leaf: _Placeholders | _Renderer,
    recommendation: remediation_pb2.Recommendation,
) -> workflow_pb2.PlanNode:
    source = leaf.source
    node = workflow_pb2.PlanNode(
        name=step["name"],
        depends_on=list(step.get("depends_on", ())),
        when=step.get("when", ""),
        timeout_seconds=int(step.get("timeout_seconds", 0)),
        continue_on_failure=bool(step.get("continue_on_failure", False)),
    )
    if "description" in step:
        node.description = str(leaf(step["description"], f"{path}.description", None))
    if "action" in step:
        node.action.CopyFrom(
            _parse_body(
                source, f"{path}.action", step["action"], remediation_pb2.ActionParams(), leaf
            )
        )
    else:
        node.check.CopyFrom(
            _parse_body(source, f"{path}.check", step["check"], remediation_pb2.CheckParams(), leaf)
        )
    node.target.CopyFrom(_target(step.get("target"), f"{path}.target", leaf, recommendation.target))
    if "retry" in step:
        retry = step["retry"]
        node.retry.CopyFrom(
            workflow_pb2.RetryPolicy(
                attempts=int(retry.get("attempts", 0)),
                backoff_seconds=float(retry.get("backoff_seconds", 0)),
                max_backoff_seconds=float(retry.get("max_backoff_seconds", 0)),
            )
        )
    if "compensation" in step:
        compensation = step["compensation"]
        where = f"{path}.compensation"
        if compensation.get("undo"):
            node.compensation.undo = True
        else:
            node.compensation.action.CopyFrom(
                _parse_body(
                    source,
                    f"{where}.action",
                    compensation["action"],
                    remediation_pb2.ActionParams(),
                    leaf,
                )
            )
            if "target" in compensation:
                node.compensation.target.CopyFrom(
                    _target(compensation["target"], f"{where}.target", leaf, recommendation.target)
                )
    return node


def _numbers(text: str, path: str, field: FieldDescriptor | None) -> Any:
    if field is not None and field.cpp_type in _INT_TYPES:
        return int(text)
    return text


def render_context(
    alert: alert_pb2.Alert,
    recommendation: remediation_pb2.Recommendation,
    workload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What templates and a match's `when` see (JSON-like values only). `workload`: what
    the workflow read of the target when it planned (e.g. `replicas`, a Deployment's desired
    replicas); empty when it could not."""
    action_name = recommendation.action.WhichOneof("params") or ""
    params: dict[str, Any] = {}
    if action_name:
        message = getattr(recommendation.action, action_name)
        as_json = json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        # Proto JSON writes 64-bit integers as strings; templates and CEL get numbers.
        params = _fill(as_json, message.DESCRIPTOR, "$", _numbers)
    target = recommendation.target
    return {
        "target": {
            "cluster": target.cluster,
            "kind": target.kind,
            "namespace": target.namespace,
            "name": target.name,
        },
        "alert": {
            "name": alert.name,
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
        },
        "recommendation": {
            "action": {action_name: params} if action_name else {},
            "action_name": action_name,
            "confidence": recommendation.confidence,
            "reasons": list(recommendation.reasons),
        },
        "params": params,
        "workload": dict(workload or {}),
    }


def render(
    runbook: RunbookTemplate,
    alert: alert_pb2.Alert,
    recommendation: remediation_pb2.Recommendation,
    workload: Mapping[str, Any] | None = None,
) -> ChosenRunbook:
    """The runbook's plan graph for this alert and recommendation; RunbookError naming the
    template and the JSON path of what does not render or validate."""
    source = str(runbook.source)
    renderer = _Renderer(source, render_context(alert, recommendation, workload))
    nodes: list[workflow_pb2.PlanNode] = []
    for index, step in enumerate(runbook.steps):
        path = f"$.steps[{index}]"
        node = _build_node(step, path, renderer, recommendation)
        violations = violations_of(node)
        if violations:
            found = "; ".join(f"{field}: {text}" for field, text in violations)
            raise RunbookError(source, path, f"renders to an invalid step: {found}")
        nodes.append(node)
    problems = graph_problems(nodes)
    if problems:
        raise RunbookError(source, "$.steps", "; ".join(problems))
    return ChosenRunbook(ref=runbook.ref, nodes=nodes, max_parallel=runbook.max_parallel)


# -- the catalogue -----------------------------------------------------------------------


class RunbookCatalogue:
    """The loaded runbooks, every version of each."""

    def __init__(self, runbooks: Iterable[RunbookTemplate] = ()) -> None:
        self._by_key: dict[tuple[str, str], RunbookTemplate] = {}
        for runbook in runbooks:
            key = (runbook.name, runbook.version)
            if key in self._by_key:
                raise ValueError(f"runbook {runbook.name} {runbook.version} is given twice")
            self._by_key[key] = runbook
        ordered = sorted(self._by_key.values(), key=lambda r: (r.name, semver_key(r.version)))
        self._ordered: tuple[RunbookTemplate, ...] = tuple(ordered)
        latest: dict[str, RunbookTemplate] = {}
        for runbook in ordered:
            latest[runbook.name] = runbook  # ascending: the last one is the highest
        self._latest = latest

    def __len__(self) -> int:
        return len(self._by_key)

    def list(self) -> list[workflow_pb2.Runbook]:
        """Every loaded runbook, sorted by name, then version (semantic precedence)."""
        return [runbook.listing() for runbook in self._ordered]

    def get(self, name: str, version: str) -> RunbookTemplate | None:
        """A loaded runbook by name and version, the current one or an older one."""
        return self._by_key.get((name, version))

    def latest(self, name: str) -> RunbookTemplate | None:
        """The highest loaded version of `name`: the one new incidents get."""
        return self._latest.get(name)

    def answers(self, alert_name: str, action: str) -> bool:
        """Whether the current version of some runbook lists this alert and action (its
        condition aside): worth reading what its condition and templates need."""
        return any(
            alert_name in runbook.alerts and action in runbook.actions
            for runbook in self._latest.values()
        )

    def matches(
        self,
        alert: alert_pb2.Alert,
        recommendation: remediation_pb2.Recommendation,
        workload: Mapping[str, Any] | None = None,
    ) -> tuple[RunbookTemplate, ...]:
        """The current (highest) version of each runbook whose match fits, by name. An older
        version is never chosen, even when its match would fit and the current one's not."""
        action = recommendation.action.WhichOneof("params") or ""
        context: dict[str, Any] | None = None
        fitting: list[RunbookTemplate] = []
        for name in sorted(self._latest):
            runbook = self._latest[name]
            if alert.name not in runbook.alerts or action not in runbook.actions:
                continue
            if runbook.when is not None:
                if context is None:
                    context = render_context(alert, recommendation, workload)
                try:
                    holds = runbook.when.evaluate(context)
                except ConditionError as error:
                    log.info(
                        "runbook not chosen: its match condition could not be evaluated",
                        extra={
                            "runbook": name,
                            "version": runbook.version,
                            "alert": alert.name,
                            "error": str(error),
                        },
                    )
                    continue
                if not holds:
                    continue
            fitting.append(runbook)
        return tuple(fitting)

    def choose(
        self,
        alert: alert_pb2.Alert,
        recommendation: remediation_pb2.Recommendation,
        workload: Mapping[str, Any] | None = None,
    ) -> ChosenRunbook | None:
        """The plan graph of the first runbook (by name) whose current version matches and
        renders for this alert and recommendation; None when none does (the recommended
        action is then planned alone), with why logged for each that did not render."""
        for runbook in self.matches(alert, recommendation, workload):
            try:
                return render(runbook, alert, recommendation, workload)
            except RunbookError as error:
                log.warning(
                    "runbook matches but does not render; not chosen",
                    extra={
                        "runbook": runbook.name,
                        "version": runbook.version,
                        "alert": alert.name,
                        "error": str(error),
                    },
                )
        return None

    def render(
        self,
        runbook: RunbookTemplate | workflow_pb2.RunbookRef,
        alert: alert_pb2.Alert,
        recommendation: remediation_pb2.Recommendation,
        workload: Mapping[str, Any] | None = None,
    ) -> ChosenRunbook:
        """`runbook` rendered for this alert and recommendation; RunbookError when it does
        not render or validate. A RunbookRef names a loaded version (an incident replayed);
        one that is not loaded, or whose digest differs from the file loaded under that
        name and version, is a RunbookError too."""
        if isinstance(runbook, workflow_pb2.RunbookRef):
            found = self.get(runbook.name, runbook.version)
            label = f"runbook {runbook.name} {runbook.version}"
            if found is None:
                raise RunbookError(label, "$", "is not loaded")
            if runbook.digest and runbook.digest != found.digest:
                raise RunbookError(
                    label,
                    "$",
                    f"was {runbook.digest}, but {found.source.name} loaded as {found.digest}",
                )
            runbook = found
        return render(runbook, alert, recommendation, workload)
