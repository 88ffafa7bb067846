"""The HTTP edge is its own deployable: it talks to the gateway over gRPC and shares only the
runtime (and the shared alert limits) with the services, never a service's internals."""

from __future__ import annotations

import ast
from pathlib import Path

from kubernaut.runtime.names import ServiceName

EDGE = Path(__file__).resolve().parents[2] / "kubernaut" / "edge"

# The product's packages the edge must keep out of, and what it may take from them: shared
# code that belongs to no service. The generated API (kubernaut.<service>.v1) is its contract.
PRODUCT = ("kubernaut.services", "kubernaut.cli", "kubernaut.devstack")
ALLOWED = ("kubernaut.services.alerts",)


def imported_modules(source: str) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included);
    `from kubernaut.services import gateway` counts as `kubernaut.services.gateway`."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def forbidden(module: str) -> bool:
    def within(prefixes: tuple[str, ...]) -> bool:
        return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)

    if module == "kubernaut.services":
        # `from kubernaut.services import alerts` adds kubernaut.services.alerts, judged on its own.
        return False
    return within(PRODUCT) and not within(ALLOWED)


def test_the_edge_imports_no_service_internals() -> None:
    files = sorted(EDGE.rglob("*.py"))
    assert files, f"no Python files under {EDGE}"
    offending = {
        f"{path.relative_to(EDGE.parent)}: {module}"
        for path in files
        for module in imported_modules(path.read_text())
        if forbidden(module)
    }
    assert not offending, "kubernaut.edge imports service internals:\n" + "\n".join(
        sorted(offending)
    )


def test_the_check_catches_every_way_of_importing_a_service() -> None:
    for name in ServiceName:
        for source in (
            f"import kubernaut.services.{name}.server",
            f"from kubernaut.services.{name}.server import x",
            f"from kubernaut.services import {name}",
            f"def f():\n    from kubernaut.services.{name} import y\n",
            "from kubernaut.cli.main import main",
            "import kubernaut.devstack.system",
        ):
            assert any(forbidden(m) for m in imported_modules(source)), source
    assert not any(
        forbidden(m)
        for m in imported_modules(
            "from kubernaut.runtime.ratelimit import RateLimiter\n"
            "from kubernaut import runtime\n"
            "from kubernaut.services.alerts import MAX_CLUSTER_CHARS\n"
            "import kubernaut.gateway.v1.gateway_pb2\n"
        )
    )
