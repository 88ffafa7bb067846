"""One row of `python -m bench.all`'s table: a figure, its goal, what was measured and
whether the goal was met. Each bench module that feeds the table exposes

    def table_figures(quick: bool) -> list[Figure]

which runs that bench (cut short when `quick`) and returns its rows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str  # e.g. "edge throughput vs durable floor"
    goal: str  # e.g. ">= 1.0x"
    measured: str  # e.g. "1.31x (edge 2,410/s, floor 1,840/s)"
    met: bool
