"""The gateway's settings (`KUBERNAUT_GATEWAY_*`): where its intake lives, the hold, storms,
freshness, the callers' rate limit and the forwarder. Both intake backends take their
thresholds and windows from this one object (PostgreSQL as statement parameters, Redis as
script arguments); neither repeats them as constants."""

from __future__ import annotations

import enum

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubernaut.runtime.settings import database_url_field


class FreshnessPolicy(enum.StrEnum):
    # The alert is refused (disposition REFUSED, never work).
    REFUSE = "refuse"
    # The alert is accepted and carries a flag saying what is odd about it.
    FLAG = "flag"


class GatewaySettings(BaseSettings):
    """`KUBERNAUT_GATEWAY_*`; the database is `KUBERNAUT_GATEWAY_DATABASE_URL`, else the
    shared `KUBERNAUT_DATABASE_URL` (the gateway uses only its own schema there)."""

    model_config = SettingsConfigDict(
        env_prefix="KUBERNAUT_GATEWAY_", frozen=True, extra="ignore", populate_by_name=True
    )

    database_url: str = database_url_field("GATEWAY")
    # When set (redis://, rediss://), the shared state lives in Redis instead of the
    # database. Redis must run with appendonly yes and appendfsync always: the gateway
    # answers 2xx once an alert is recorded, and only an fsynced write survives a crash.
    redis_url: SecretStr | None = None
    redis_key_prefix: str = "kubernaut:gateway:"
    # A new alert waits this long before it is forwarded: an alert that resolves within it
    # never becomes work, and a storm starting within it opens one incident, not many.
    hold_seconds: float = Field(default=2.0, ge=0)
    # Storms: this many resources starting one alert within the window.
    storm_threshold: int = Field(default=10, ge=2)
    storm_window_seconds: float = Field(default=60.0, gt=0)
    # Firing alerts that started longer ago than this are stale.
    max_age_seconds: float = Field(default=24 * 3600.0, gt=0)
    stale_policy: FreshnessPolicy = FreshnessPolicy.REFUSE
    # Firing alerts starting further in the future than this come from a wrong clock.
    future_skew_seconds: float = Field(default=300.0, ge=0)
    future_policy: FreshnessPolicy = FreshnessPolicy.REFUSE
    # Integrators calling SubmitAlerts directly: alerts per second and burst per calling
    # identity (the HTTP edge limits its own senders). 0 turns the limit off.
    caller_rate_per_second: float = Field(default=100.0, ge=0)
    caller_burst: float = Field(default=1000.0, ge=1)
    # Finished lives (resolved or ended) are forgotten after this long.
    retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    # The forwarder: rows taken at once, alerts processed at once, how long a claimed row
    # is kept from other replicas (longer than the processing timeout, which includes the
    # analysis), how long it waits for work when idle.
    forward_batch: int = Field(default=32, ge=1)
    forward_concurrency: int = Field(default=8, ge=1)
    forward_timeout_seconds: float = Field(default=120.0, gt=0)
    forward_lease_seconds: float = Field(default=180.0, gt=0)
    forward_poll_seconds: float = Field(default=1.0, gt=0)
    # Retries back off exponentially up to this.
    forward_max_backoff_seconds: float = Field(default=60.0, gt=0)
    # How often duplicates are added to their incidents.
    count_interval_seconds: float = Field(default=2.0, gt=0)
