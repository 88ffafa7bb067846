"""Every KUBERNAUT_* setting in one place: the settings classes of the runtime, the ten
services and the edge. `kubernaut serve` refuses to start when the environment holds a
KUBERNAUT_* variable that none of them reads (a misspelt one would otherwise be ignored,
and the service would run on the default), naming the closest valid one;
`kubernaut render settings` writes the reference in docs/settings.md from the same
classes and the comments above their fields."""

from __future__ import annotations

import ast
import difflib
import inspect
import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

PREFIX = "KUBERNAUT_"


def settings_classes() -> list[type[BaseSettings]]:
    """The settings classes, in the order the reference lists them. Imported here, not at
    module level: the CLI reads this only when it starts a service or renders the docs."""
    from kubernaut.edge.settings import EdgeSettings, TokenReviewSettings
    from kubernaut.runtime.access import AccessSettings
    from kubernaut.runtime.audit import AuditSettings
    from kubernaut.runtime.settings import DatabaseSettings, KubeSettings, RuntimeSettings
    from kubernaut.services.ai_analysis.settings import AnalysisSettings
    from kubernaut.services.context_api.settings import ContextSettings
    from kubernaut.services.effectiveness.settings import AssessmentSettings, VerdictSettings
    from kubernaut.services.executor.settings import ExecutorSettings
    from kubernaut.services.gateway.settings import GatewaySettings
    from kubernaut.services.intelligence.settings import IntelligenceSettings
    from kubernaut.services.notification.settings import (
        NotificationSettings,
        OutboxSettings,
        RedeliverySettings,
    )
    from kubernaut.services.storage.settings import StorageSettings
    from kubernaut.services.storage.vectors.settings import VectorStoreSettings
    from kubernaut.services.workflow.settings import (
        PlanningSettings,
        RunnerSettings,
        WatchSettings,
    )

    return [
        RuntimeSettings,
        AccessSettings,
        AuditSettings,
        DatabaseSettings,
        KubeSettings,
        EdgeSettings,
        TokenReviewSettings,
        GatewaySettings,
        StorageSettings,
        VectorStoreSettings,
        ContextSettings,
        AnalysisSettings,
        PlanningSettings,
        RunnerSettings,
        WatchSettings,
        ExecutorSettings,
        AssessmentSettings,
        VerdictSettings,
        IntelligenceSettings,
        NotificationSettings,
        OutboxSettings,
        RedeliverySettings,
    ]


@dataclass(frozen=True)
class Setting:
    """One environment variable and the field that reads it."""

    variable: str
    owner: str
    field: str
    type: str
    default: str
    doc: str


def _variables(cls: type[BaseSettings], field: str, info: Any) -> list[str]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice).upper() for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias.upper()]
    prefix = str(cls.model_config.get("env_prefix", ""))
    return [f"{prefix}{field}".upper()]


def _default(info: Any) -> str:
    if info.default_factory is not None:
        return "(computed)"
    default = info.get_default()
    if default is None:
        return "unset"
    if hasattr(default, "value"):  # an enum
        return str(default.value)
    if isinstance(default, frozenset | set):
        # Sorted: a set's order changes from run to run, and the reference is drift-checked.
        return ",".join(sorted(str(item) for item in default))
    text = repr(default) if isinstance(default, str) else str(default)
    return text if text not in ("''", "") else '""'


def _type(info: Any) -> str:
    annotation = info.annotation
    name = getattr(annotation, "__name__", None)
    text = name if name and not getattr(annotation, "__args__", None) else str(annotation)
    # Module paths say nothing to an operator: SecretStr, not pydantic.types.SecretStr.
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text).replace("NoneType", "None")


def _field_comments(cls: type) -> dict[str, str]:
    """The comment lines right above each field of `cls` (its docs in the source)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above: list[str] = []
        index = node.lineno - 2
        while index >= 0 and lines[index].strip().startswith("#"):
            above.insert(0, lines[index].strip().lstrip("#").strip())
            index -= 1
        comments[node.target.id] = " ".join(above)
    return comments


def all_settings(classes: Iterable[type[BaseSettings]] | None = None) -> list[Setting]:
    settings: list[Setting] = []
    seen: set[str] = set()
    for cls in classes if classes is not None else settings_classes():
        comments: dict[str, str] = {}
        for base in reversed(cls.__mro__):
            if isinstance(base, type) and issubclass(base, BaseSettings):
                comments |= _field_comments(base)
        for field, info in cls.model_fields.items():
            for variable in _variables(cls, field, info):
                if variable in seen:
                    continue
                seen.add(variable)
                settings.append(
                    Setting(
                        variable,
                        cls.__name__,
                        field,
                        _type(info),
                        _default(info),
                        comments.get(field, ""),
                    )
                )
    return settings


# Read outside the settings classes (the CLI, scripts, tests' fixtures): known, not fields.
OTHER_VARIABLES: dict[str, str] = {
    "KUBERNAUT_STATE_DIR": "the state directory for setup, the dev stack and logs (also read "
    "by RuntimeSettings)",
    "KUBERNAUT_K8S_BIN_DIR": "where the dev stack finds the Kubernetes binaries "
    "scripts/build-k8s.sh built and Jaeger (scripts/build-jaeger.sh) (default "
    "`<state_dir>/bin`)",
    "KUBERNAUT_KUBE_STATE_DIR": "tests: run the control plane test in this directory and "
    "leave it running for the next run",
    "KUBERNAUT_VALIDATION_EXAMPLES": "tests: how many generated examples each message type "
    "gets in the validation test",
    "KUBERNAUT_CHAOS_SEED": "tests/chaos and `python -m bench.chaos`: the seed of the run "
    "(default: a random one, printed), to replay a failure",
}


def known_variables() -> frozenset[str]:
    return frozenset(s.variable for s in all_settings()) | frozenset(OTHER_VARIABLES)


class UnknownSettings(ValueError):
    """The environment names KUBERNAUT_* variables no setting reads."""


def check_environment(environ: Mapping[str, str], known: frozenset[str] | None = None) -> None:
    """UnknownSettings naming every KUBERNAUT_* variable of `environ` that nothing reads,
    each with the closest valid name when there is one."""
    known = known if known is not None else known_variables()
    unknown = sorted(name for name in environ if name.upper().startswith(PREFIX))
    problems = []
    for name in unknown:
        if name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{name}{hint}")
    if problems:
        raise UnknownSettings(
            "unknown setting"
            + ("s" if len(problems) > 1 else "")
            + ": "
            + "; ".join(problems)
            + ". docs/settings.md lists every KUBERNAUT_* setting; an unknown one would be "
            "ignored, so Kubernaut refuses to start rather than run on a default."
        )


def render_markdown() -> str:
    """docs/settings.md: one table of every setting, from the classes and their comments."""
    out = [
        "# Settings",
        "",
        "<!-- Generated by `kubernaut render settings` (make generate); do not edit. -->",
        "",
        "Every setting is an environment variable, read once when a process starts. "
        "`kubernaut serve` refuses to start when a `KUBERNAUT_*` variable is none of "
        "these, naming the closest valid one.",
        "",
    ]
    owner = ""
    for setting in all_settings():
        if setting.owner != owner:
            owner = setting.owner
            out += ["", f"## {owner}", "", "| variable | type | default | what it is |"]
            out.append("|---|---|---|---|")
        doc = setting.doc.replace("|", "\\|")
        out.append(
            f"| `{setting.variable}` | {setting.type.replace('|', 'or')} | "
            f"`{setting.default.replace('|', '/')}` | {doc} |"
        )
    out += ["", "## Read outside the settings classes", "", "| variable | what it is |"]
    out.append("|---|---|")
    out += [f"| `{name}` | {doc} |" for name, doc in OTHER_VARIABLES.items()]
    return "\n".join(out) + "\n"
