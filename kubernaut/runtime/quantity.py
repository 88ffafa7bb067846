"""The `kubernetes` package's quantity parser ("10Gi", "1500m" as a Decimal), without the
rest of that package.

`import kubernetes.utils.quantity` runs `kubernetes/__init__.py`, which loads the whole
synchronous client (some 40 MiB of RSS) into every process that parses a quantity
(ai_analysis, the executor). The parser is one module that needs only `decimal`; it is
loaded here on its own from the installed package, so the semantics stay upstream's.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any


def _load() -> ModuleType:
    package = importlib.util.find_spec("kubernetes")  # finds it without importing it
    if package is None or package.origin is None:
        raise ImportError("the kubernetes package is not installed")
    path = Path(package.origin).parent / "utils" / "quantity.py"
    spec = importlib.util.spec_from_file_location("kubernaut.runtime._kubernetes_quantity", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_quantity = _load()
parse_quantity: Callable[[Any], Decimal] = _quantity.parse_quantity
