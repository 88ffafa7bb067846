"""Durations as people read them in messages: 45s, 12.0m, 3.5h, 1.0d."""

from __future__ import annotations


def human_duration(seconds: float) -> str:
    """`seconds` (its absolute value) in the largest unit it reaches, one decimal."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
