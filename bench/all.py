"""Every benchmark of the issue's table, one after the other, and one table of their figures:
figure, goal, measured, met or not.

    .venv/bin/python -m bench.all [--quick] [--modules bench.footprint,bench.rpc_overhead]

Each module runs in its own process (a bench that fails or leaves state behind cannot
spoil the next one) and returns its rows from `table_figures(quick)` (bench/figures.py);
its own output goes to a log, named when it fails. A module that is not there, or that
fails, gets a row saying so. --quick cuts each bench short: its figures are noisier, and
are for checking that the table is made, not for the README.

The exit code is 0 when every bench ran, whether or not its goals were met, and 1 when one
was missing or failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bench.figures import Figure

MODULES: Final = (
    "bench.edge_throughput",
    "bench.rpc_overhead",
    "bench.alert_to_change",
    "bench.footprint",
    "bench.vector_search",
)
MARKER: Final = "BENCH-ALL-FIGURES "
REPO: Final = Path(__file__).resolve().parent.parent


def _one(module: str, quick: bool) -> int:
    """In the child: run one module's table_figures and print its rows after MARKER."""
    figures = importlib.import_module(module).table_figures(quick)
    print(MARKER + json.dumps([dataclasses.asdict(f) for f in figures]), flush=True)
    return 0


def run_module(
    module: str, quick: bool, log_dir: Path, timeout: float
) -> tuple[list[Figure], bool]:
    """(the rows of one module, or one row saying why there are none; whether it ran)."""
    if importlib.util.find_spec(module) is None:
        return [Figure(module, "-", "missing: the module is not there", False)], False
    log_path = log_dir / f"{module}.log"
    argv = [sys.executable, "-m", "bench.all", "--one", module] + (["--quick"] if quick else [])
    try:
        with log_path.open("wb") as log:
            done = subprocess.run(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=timeout,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return [Figure(module, "-", f"failed: no answer in {timeout:.0f} s", False)], False
    text = done.stdout.decode(errors="replace")
    with log_path.open("a") as log:
        log.write(text)
    rows = [line for line in text.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not rows:
        why = f"failed (exit {done.returncode}): see {log_path}"
        return [Figure(module, "-", why, False)], False
    return [Figure(**row) for row in json.loads(rows[-1].removeprefix(MARKER))], True


def table(figures: Sequence[Figure]) -> list[str]:
    header = ("figure", "goal", "measured", "met")
    cells = [(f.name, f.goal, f.measured, "yes" if f.met else "NO") for f in figures]
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in cells)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.all",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="each bench cut short")
    parser.add_argument(
        "--modules",
        default=",".join(MODULES),
        help="comma-separated bench modules with table_figures (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds one module may take at most"
    )
    parser.add_argument("--keep", metavar="DIR", default=None, help="keep the logs in DIR")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _one(args.one, args.quick)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    figures: list[Figure] = []
    failed = False
    with contextlib.ExitStack() as cleanup:
        if args.keep:
            log_dir = Path(args.keep).resolve()
            log_dir.mkdir(parents=True, exist_ok=True)
        else:
            log_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-all-")))
        for module in modules:
            print(f"running {module}{' (quick)' if args.quick else ''} ...", flush=True)
            started = time.monotonic()
            rows, ran = run_module(module, args.quick, log_dir, args.timeout)
            failed |= not ran
            print(f"  {time.monotonic() - started:.0f} s", flush=True)
            figures += rows
            log_path = log_dir / f"{module}.log"
            if not ran and not args.keep and log_path.exists():
                # The log is about to go with the temporary directory: show its end now.
                print("".join(log_path.read_text(errors="replace").splitlines(True)[-30:]))
    print()
    for line in table(figures):
        print(line)
    met = sum(f.met for f in figures)
    print(f"\n{met} of {len(figures)} goals met{' (quick run)' if args.quick else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
