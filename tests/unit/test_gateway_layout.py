"""The gateway intake's layout holds: what is decided (decisions.py) and the settings
(settings.py) stay free of any store and of gRPC, so that both backends share them and they
can be tested without a process."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

_FORBIDDEN = frozenset({"asyncpg", "redis", "grpc"})


def _imports(module: str) -> set[str]:
    """Every module `module` imports, followed through the project's own (`kubernaut.*`)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if not name.startswith("kubernaut."):
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        tree = ast.parse(Path(spec.origin).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo.append(node.module)
                # `from kubernaut.x import y` names a submodule y when kubernaut.x is a package.
                if _is_package(node.module):
                    todo += [f"{node.module}.{alias.name}" for alias in node.names]
    return seen


def _is_package(name: str) -> bool:
    if not name.startswith("kubernaut."):
        return False
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.submodule_search_locations is not None


def _top_level(names: set[str]) -> set[str]:
    return {name.split(".", 1)[0] for name in names}


def test_decisions_and_settings_import_no_store_and_no_grpc() -> None:
    for module in ("kubernaut.services.gateway.decisions", "kubernaut.services.gateway.settings"):
        pulled = _top_level(_imports(module)) & _FORBIDDEN
        assert not pulled, f"{module} pulls in {sorted(pulled)}"


def test_the_backends_do_import_their_stores() -> None:
    """The check above can see a store: each backend's module is found to use its own."""
    assert "asyncpg" in _top_level(_imports("kubernaut.services.gateway.postgres_intake"))
    assert "redis" in _top_level(_imports("kubernaut.services.gateway.redis_intake"))
