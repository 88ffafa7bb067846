"""Kubernetes quantities ("10Gi", "1500m") as exact Decimals, for the rules and the
contract's caps alike."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from kubernaut.runtime.quantity import parse_quantity


def quantity(value: str) -> Decimal:
    """A Kubernetes quantity as a Decimal; ValueError when it is not one."""
    try:
        parsed = parse_quantity(value)
    except (InvalidOperation, TypeError, ValueError) as error:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from error
    if not isinstance(parsed, Decimal) or not parsed.is_finite():
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return parsed
