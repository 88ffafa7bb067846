"""CEL conditions: a runbook step's `when` over the earlier steps' results, compiled once
with cel-python and evaluated against plain JSON-like documents."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError


class ConditionError(ValueError):
    """An expression that does not compile, or does not evaluate to a bool."""


@dataclass(frozen=True)
class Condition:
    """One compiled CEL expression."""

    source: str
    _program: celpy.Runner

    @staticmethod
    @functools.lru_cache(maxsize=512)
    def compile(source: str) -> Condition:
        """ConditionError, naming where, for an expression that does not parse. Compiled
        once per expression: a plan's conditions are asked again at every step."""
        environment = celpy.Environment()
        try:
            ast = environment.compile(source)
        except CELParseError as error:
            raise ConditionError(f"{source!r} is not valid CEL: {_first_line(error)}") from error
        return Condition(source, environment.program(ast))

    def evaluate(self, facts: Mapping[str, Any]) -> bool:
        """The expression's value over `facts` (top-level variables, JSON-like values).
        ConditionError when it fails (a missing key, a type mismatch) or is not a bool."""
        activation = {name: json_to_cel(value) for name, value in facts.items()}
        try:
            value = self._program.evaluate(activation)
        except CELEvalError as error:
            raise ConditionError(f"{self.source!r} failed: {_first_line(error)}") from error
        if isinstance(value, CELEvalError):
            raise ConditionError(f"{self.source!r} failed: {_first_line(value)}")
        if not isinstance(value, celtypes.BoolType):
            raise ConditionError(f"{self.source!r} is a {type(value).__name__}, not a bool")
        return bool(value)


def _first_line(error: Exception) -> str:
    text = str(error.args[0]) if error.args else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
