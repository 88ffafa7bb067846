"""The effectiveness service's settings, from KUBERNAUT_EFFECTIVENESS_* variables: the
staged assessments' and the verdicts'."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Final

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubernaut.runtime.settings import HttpBaseUrl, database_url_field

DEFAULT_DELAYS: Final = (30.0, 120.0, 1800.0)
MAX_DELAYS: Final = 16
MAX_DELAY_SECONDS: Final = 7 * 24 * 3600.0

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds of "30", "30s", "2m", "1h", "500ms"."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 2m, 30m, or seconds)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_delays(value: Any) -> tuple[float, ...]:
    """Delays from the environment ("30s,2m,30m", "30,120,1800" or a JSON list of seconds)
    or from code (a sequence of seconds)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            return tuple(parse_duration(part) for part in text.split(",") if part.strip())
    if isinstance(value, Sequence):
        return tuple(float(v) if not isinstance(v, str) else parse_duration(v) for v in value)
    raise ValueError(f"delays must be a list of durations, not {value!r}")


class AssessmentSettings(BaseSettings):
    """KUBERNAUT_EFFECTIVENESS_<FIELD>; the database also from KUBERNAUT_DATABASE_URL."""

    model_config = SettingsConfigDict(
        env_prefix="KUBERNAUT_EFFECTIVENESS_", frozen=True, extra="ignore", populate_by_name=True
    )

    # When to assess an action, after it acted: "30s,2m,30m" (the last is the final
    # checkpoint, where an alert still firing makes the verdict INEFFECTIVE).
    delays: Annotated[tuple[float, ...], NoDecode] = DEFAULT_DELAYS
    # AlertManager's base URL (API v2). Empty: the alert evidence is missing, and the
    # verdicts say so; an action is then never judged EFFECTIVE.
    alertmanager_url: HttpBaseUrl = ""
    alertmanager_timeout_seconds: float = Field(default=5.0, gt=0)
    # Prometheus' base URL (HTTP API): the alert's own expression and the workload's golden
    # signals before and after the action. Empty: the metric evidence is missing, and the
    # verdicts say so.
    prometheus_url: HttpBaseUrl = ""
    prometheus_timeout_seconds: float = Field(default=5.0, gt=0)
    # How often the scheduler looks for due assessments.
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    # How long a replica owns the assessments it claimed; past it another replica may take
    # them over (it then records the same verdict, by the same assessment id).
    lease_seconds: float = Field(default=120.0, gt=0)
    # At most this many assessments at once per replica.
    batch_size: int = Field(default=16, ge=1, le=256)
    # Deadline of the baseline's GetResourceContext in ScheduleAssessment.
    baseline_timeout_seconds: float = Field(default=5.0, gt=0)
    # Deadline of the evidence's GetResourceContext and of RecordAssessment calls.
    call_timeout_seconds: float = Field(default=10.0, gt=0)
    # Backoff between attempts to record when storage cannot be reached (doubling).
    retry_initial_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=60.0, gt=0)
    # The schedule lives in schema `effectiveness` of this database.
    database_url: str = database_url_field("EFFECTIVENESS")

    @field_validator("delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: Any) -> tuple[float, ...]:
        delays = parse_delays(value)
        if not 1 <= len(delays) <= MAX_DELAYS:
            raise ValueError(f"give 1 to {MAX_DELAYS} delays, not {len(delays)}")
        if any(not 0 < d <= MAX_DELAY_SECONDS for d in delays):
            raise ValueError(f"each delay must be more than 0 and at most 7 days: {delays}")
        if len(set(delays)) != len(delays):
            raise ValueError(f"delays must differ: {delays}")
        return tuple(sorted(delays))


class VerdictSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KUBERNAUT_EFFECTIVENESS_", frozen=True, extra="ignore"
    )

    # Fewer attempts than this give VERDICT_UNKNOWN.
    min_attempts: int = 3
    # Effective when the 95% Wilson interval's lower bound of the success rate reaches
    # this: with 5 of 5 successes the bound is 0.57, with 4 of 5 only 0.38.
    effective_lower_bound: float = Field(default=0.5, ge=0, le=1)
    # Ineffective when even the interval's upper bound stays below this (1 of 5: 0.62).
    effective_rate: float = Field(default=0.7, ge=0, le=1)
