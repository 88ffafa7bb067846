"""Every KUBERNAUT_* setting is known in one place: a misspelt variable is refused with
the closest valid name, and the reference in docs/ lists every setting."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from pydantic_settings import BaseSettings

import kubernaut.cli
import kubernaut.devstack
import kubernaut.edge
import kubernaut.runtime
import kubernaut.services
from kubernaut.cli.settings_reference import (
    UnknownSettings,
    all_settings,
    check_environment,
    known_variables,
    render_markdown,
    settings_classes,
)


def test_known_variables_pass_and_others_are_ignored() -> None:
    check_environment(
        {
            "KUBERNAUT_EXECUTOR_COOLDOWN_SECONDS": "5",
            "KUBERNAUT_DATABASE_URL": "postgresql://x",
            "KUBERNAUT_GATEWAY_DATABASE_URL": "postgresql://y",  # an alias of a field
            "KUBERNAUT_STATE_DIR": "/tmp/x",
            "PATH": "/usr/bin",
            "KUBECONFIG": "/tmp/k",
        }
    )


def test_a_misspelt_variable_is_refused_naming_the_closest_valid_one() -> None:
    with pytest.raises(UnknownSettings) as refused:
        check_environment(
            {
                "KUBERNAUT_EXECUTER_COOLDOWN_SECONDS": "5",
                "KUBERNAUT_WORKFLOW_POLL_SECOND": "1",
                "KUBERNAUT_NOTHING_LIKE_ANYTHING_AT_ALL": "1",
            }
        )
    message = str(refused.value)
    assert (
        "KUBERNAUT_EXECUTER_COOLDOWN_SECONDS (did you mean KUBERNAUT_EXECUTOR_COOLDOWN_SECONDS?)"
        in message
    )
    assert "KUBERNAUT_WORKFLOW_POLL_SECOND (did you mean KUBERNAUT_WORKFLOW_POLL_SECONDS?)" in (
        message
    )
    assert "KUBERNAUT_NOTHING_LIKE_ANYTHING_AT_ALL (did you mean" not in message  # no close name
    assert "KUBERNAUT_NOTHING_LIKE_ANYTHING_AT_ALL" in message
    assert "docs/settings.md" in message


def _product_modules() -> list[str]:
    names = []
    for package in (
        kubernaut.runtime,
        kubernaut.services,
        kubernaut.edge,
        kubernaut.cli,
        kubernaut.devstack,
    ):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(module.name)
    return names


def test_every_settings_class_of_the_product_is_in_the_reference() -> None:
    """A new settings class that is not listed would have its variables refused."""
    for name in _product_modules():
        importlib.import_module(name)
    listed = set(settings_classes())

    def subclasses(cls: type) -> list[type]:
        found: list[type] = []
        direct: list[type] = cls.__subclasses__()
        for sub in direct:
            found += [sub, *subclasses(sub)]
        return found

    ours = {cls for cls in subclasses(BaseSettings) if cls.__module__.startswith("kubernaut.")}
    assert ours - listed == set()


def test_the_reference_lists_every_variable_once_and_the_same_way_each_time() -> None:
    text = render_markdown()
    assert text == render_markdown()
    variables = [s.variable for s in all_settings()]
    assert len(variables) == len(set(variables))
    for variable in known_variables():
        assert f"`{variable}`" in text
    # Defaults and comments come from the code.
    assert "| `KUBERNAUT_WORKFLOW_FAILED_TARGET_HOLD_SECONDS` | float | `21600.0` |" in text
    assert "Larger bodies get 413." in text
