"""The generated code in kubernaut-api's wheel: gen/python's kubernaut/ and buf/ trees, with a
PEP 561 py.typed in each of their packages (their .pyi files are the types). gen/python is
wiped and rewritten by every `buf generate`, so the markers cannot live there.

From the repository the code comes from ../../gen/python; an sdist carries a copy of it under
gen/python. Editable installs take nothing: dev-mode-dirs put gen/python itself on sys.path."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

TREES = ("kubernaut", "buf")


class GeneratedCode(BuildHookInterface):  # type: ignore[type-arg]
    markers: Path | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return
        gen = self.generated_code()
        forced: dict[str, str] = build_data["force_include"]
        if self.target_name == "sdist":
            forced.update({str(gen / tree): f"gen/python/{tree}" for tree in TREES})
            return
        self.markers = Path(tempfile.mkdtemp(prefix="kubernaut-api-"))
        for tree in TREES:
            forced[str(gen / tree)] = tree
            for package in sorted(p.name for p in (gen / tree).iterdir() if p.is_dir()):
                marker = self.markers / tree / package / "py.typed"
                marker.parent.mkdir(parents=True)
                marker.touch()
                forced[str(marker)] = f"{tree}/{package}/py.typed"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self.markers is not None:
            shutil.rmtree(self.markers, ignore_errors=True)

    def generated_code(self) -> Path:
        root = Path(self.root)
        for gen in (root / "gen" / "python", root.parent.parent / "gen" / "python"):
            if all((gen / tree).is_dir() for tree in TREES):
                return gen
        raise FileNotFoundError(
            f"no generated code in {root.parent.parent / 'gen' / 'python'}: kubernaut-api builds"
            " from the Kubernaut repository's clients/python (`make generate` writes gen/python)"
        )
