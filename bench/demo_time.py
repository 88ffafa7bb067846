"""How long `kubernaut demo` takes with the local model and without it, run one after the
other on this machine (so the ratio, not the seconds, is what to compare).

    .venv/bin/python -m bench.demo_time [--rounds 1]

Each run is the real demo in a state directory of its own (the Kubernetes binaries and the
local model `make setup` built are reused), on ports of its own. Printed per run: the wall
time, and from the demo's timeline the seconds from the bad rollout to the executor's
recorded rollback and to the demo's last line. The model must not hold the fix back: in
the dev stack the sample app's namespaces are unguarded, so the rules' plan runs at once and
the model's view is recorded when it comes (ai_analysis asks it after the plan).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubernaut.devstack.kube import default_bin_dir
from kubernaut.devstack.model import LlamaBuild
from kubernaut.devstack.processes import HTTP_PORT_OFFSET, free_port_base

ROOT = Path(__file__).resolve().parents[1]
_STEP = re.compile(r"^\[\s*(\d+(?:\.\d+)?)s\] (.*)$")


@dataclass(frozen=True)
class DemoRun:
    model: bool
    wall: float
    fixed_at: float  # seconds after the bad rollout, per the timeline
    last_at: float


def run_demo(model: bool, root: Path) -> DemoRun:
    state = root / ("model" if model else "no-model")
    built = LlamaBuild.default()
    (state / "llama").mkdir(parents=True)
    (state / "llama" / "current").symlink_to(built.python.parents[2])
    (state / "models").symlink_to(built.model.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    base = free_port_base()
    env |= {
        "KUBERNAUT_STATE_DIR": str(state),
        "KUBERNAUT_PORT_BASE": str(base),
        "KUBERNAUT_HTTP_PORT": str(base + HTTP_PORT_OFFSET),
        "KUBERNAUT_K8S_BIN_DIR": str(default_bin_dir()),
    }
    argv = [sys.executable, "-m", "kubernaut.cli.main", "demo"]
    if not model:
        argv.append("--no-model")
    started = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"the demo failed ({done.returncode}):\n{done.stdout[-4000:]}")
    steps = [(float(m[1]), m[2]) for m in map(_STEP.match, done.stdout.splitlines()) if m]
    fixed = [at for at, what in steps if what.startswith("executor recorded rollback")]
    if not fixed or not steps:
        raise SystemExit(f"no rollback in the demo's timeline:\n{done.stdout[-4000:]}")
    return DemoRun(model, wall, fixed[0], steps[-1][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (default 1)")
    args = parser.parse_args()
    runs: list[DemoRun] = []
    with tempfile.TemporaryDirectory(prefix="kubernaut-demo-time-") as tmp:
        for round_ in range(args.rounds):
            # Alternate which goes first, so a machine getting busier favours neither.
            for model in (True, False) if round_ % 2 == 0 else (False, True):
                run = run_demo(model, Path(tmp) / str(round_))
                runs.append(run)
                print(
                    f"demo {'with' if model else 'without'} the model: wall {run.wall:.1f}s, "
                    f"fixed {run.fixed_at:.1f}s after the bad rollout, "
                    f"last line at {run.last_at:.1f}s",
                    flush=True,
                )

    def median(model: bool, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs if r.model == model))

    for field, what in (("wall", "wall time"), ("fixed_at", "time to the fix")):
        with_model, without = median(True, field), median(False, field)
        print(
            f"{what}: with the model {with_model:.1f}s, without {without:.1f}s "
            f"(ratio {with_model / without:.2f})"
        )


if __name__ == "__main__":
    main()
