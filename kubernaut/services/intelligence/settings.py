"""intelligence's settings, from KUBERNAUT_INTELLIGENCE_* variables: how much history it
reads, and the thresholds of its judgements. Read once at start into one frozen object;
each plain logic module gets its part as a small frozen policy."""

from __future__ import annotations

import datetime as dt

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubernaut.services.intelligence.anomalies import AnomalyPolicy
from kubernaut.services.intelligence.stats import TrendPolicy

DAY = 24 * 3600.0


class IntelligenceSettings(BaseSettings):
    """KUBERNAUT_INTELLIGENCE_<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix="KUBERNAUT_INTELLIGENCE_", frozen=True, extra="ignore"
    )

    # An action with fewer attempts than this is "too few to judge": its success rate is
    # shown with its 95% Wilson interval but never ranked as effective or not.
    min_attempts: int = Field(default=5, ge=1)
    # The success-rate trend compares this recent window before now (7 days) ...
    trend_recent_seconds: float = Field(default=7 * DAY, gt=0)
    # ... with this window before it (28 days), by a two-proportion z-test at 95%; each
    # window needs min_attempts.
    trend_previous_seconds: float = Field(default=28 * DAY, gt=0)
    # Recurring incidents: this many incidents of one workload and alert within the window,
    # one of them closed REMEDIATED and followed by another, mean the fix does not hold
    # (GetRecurringIncidents' default, and the insight report's).
    recurring_min_incidents: int = Field(default=3, ge=2, le=1000)
    # Recurring incidents: GetRecurringIncidents' default window.
    recurring_window_seconds: float = Field(default=7 * DAY, gt=0, le=90 * DAY)
    # Clusters of similar incidents: at most this many of the most recent embedded
    # incidents are clustered (GetIncidentClusters' default).
    cluster_max_incidents: int = Field(default=2000, ge=10, le=10000)
    # Clusters of similar incidents: GetIncidentClusters' default window.
    cluster_window_seconds: float = Field(default=30 * DAY, gt=0, le=365 * DAY)
    # Clusters of similar incidents: the fewest incidents a cluster has (HDBSCAN's
    # min_cluster_size; GetIncidentClusters' default).
    cluster_min_size: int = Field(default=5, ge=2, le=1000)
    # Anomalies: incidents are counted per namespace and per alert name in buckets this
    # long; the last bucket is compared with the baseline before it.
    anomaly_bucket_seconds: float = Field(default=3600.0, ge=60)
    # Anomalies: how many buckets before the last make its baseline (a week of hours).
    anomaly_baseline_buckets: int = Field(default=168, ge=2, le=10000)
    # Anomalies: the last bucket is an anomaly above the baseline's mean + this many
    # standard deviations (at least 1 incident each) ...
    anomaly_stddevs: float = Field(default=3.0, gt=0)
    # ... and at least this many incidents.
    anomaly_min_count: int = Field(default=3, ge=1)
    # How often the service evaluates anomalies by itself, to keep the gauge
    # kubernaut_intelligence_anomalies current; 0: only when GetAnomalies is called.
    anomaly_interval_seconds: float = Field(default=300.0, ge=0)
    # The time saved: the minutes a person spends on an incident remediated by hand.
    minutes_per_manual_incident: float = Field(default=30.0, ge=0)
    # The most incidents one request reads from storage (the newest); a report over more
    # says it was truncated.
    max_incidents: int = Field(default=20000, ge=100, le=1_000_000)
    # The most action records one request reads from storage (the newest).
    max_action_records: int = Field(default=20000, ge=100, le=1_000_000)

    @model_validator(mode="after")
    def _anomaly_history_is_bounded(self) -> IntelligenceSettings:
        span = self.anomaly_bucket_seconds * (self.anomaly_baseline_buckets + 1)
        if span > 365 * DAY:
            raise ValueError(
                "anomaly_bucket_seconds * (anomaly_baseline_buckets + 1) must be at most"
                f" 365 days, not {span / DAY:.0f} days"
            )
        return self

    def trend_policy(self) -> TrendPolicy:
        return TrendPolicy(
            recent=dt.timedelta(seconds=self.trend_recent_seconds),
            previous=dt.timedelta(seconds=self.trend_previous_seconds),
        )

    def anomaly_policy(self) -> AnomalyPolicy:
        return AnomalyPolicy(
            bucket=dt.timedelta(seconds=self.anomaly_bucket_seconds),
            baseline_buckets=self.anomaly_baseline_buckets,
            stddevs=self.anomaly_stddevs,
            min_count=self.anomaly_min_count,
        )
