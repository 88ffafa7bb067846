"""The HTTP edge is its own deployable: it talks to the gateway over gRPC and shares only the
runtime (and the shared alert limits) with the services, never a service's internals."""

from __future__ import annotations

import ast
from pathlib import Path

from services.runtime.names import ServiceName

EDGE = Path(__file__).resolve().parents[2] / "gateway_http"

# What the edge may take from the `services` package: shared code that belongs to no service.
ALLOWED = ("services.runtime", "services.alerts")


def imported_modules(source: str) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included);
    `from services import gateway` counts as `services.gateway`."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def forbidden(module: str) -> bool:
    if module != "services" and not module.startswith("services."):
        return False
    if module == "services":
        # `from services import runtime` adds services.runtime, judged on its own.
        return False
    return not any(module == allowed or module.startswith(allowed + ".") for allowed in ALLOWED)


def test_the_edge_imports_no_service_internals() -> None:
    files = sorted(EDGE.rglob("*.py"))
    assert files, f"no Python files under {EDGE}"
    offending = {
        f"{path.relative_to(EDGE.parent)}: {module}"
        for path in files
        for module in imported_modules(path.read_text())
        if forbidden(module)
    }
    assert not offending, "gateway_http imports service internals:\n" + "\n".join(sorted(offending))


def test_the_check_catches_every_way_of_importing_a_service() -> None:
    for name in ServiceName:
        for source in (
            f"import services.{name}.server",
            f"from services.{name}.server import x",
            f"from services import {name}",
            f"def f():\n    from services.{name} import y\n",
        ):
            assert any(forbidden(m) for m in imported_modules(source)), source
    assert not any(
        forbidden(m)
        for m in imported_modules(
            "from services.runtime.ratelimit import RateLimiter\n"
            "from services import runtime\n"
            "from services.alerts import MAX_CLUSTER_CHARS\n"
            "import kubernaut.gateway.v1.gateway_pb2\n"
        )
    )
