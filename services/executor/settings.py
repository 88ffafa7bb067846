"""The executor's settings, from `KUBERNAUT_EXECUTOR_*` environment variables."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Final

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.runtime.settings import OptionalDatabaseUrl, database_url_field

DEFAULT_PROTECTED_NAMESPACES: Final = frozenset(
    {"kube-system", "kube-public", "kube-node-lease", "istio-system", "kubernaut"}
)


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_EXECUTOR_", frozen=True, extra="ignore")

    # Namespaces the executor never changes anything in, whatever their labels say.
    # NoDecode: the variable is a plain comma-separated list ("kube-system,istio-system").
    protected_namespaces: Annotated[frozenset[str], NoDecode] = DEFAULT_PROTECTED_NAMESPACES
    # Act only on Deployments that carry kubernaut.ai/managed=true, or whose namespace does.
    require_opt_in: bool = True
    # Dry-run every action and stop there (outcome ACTION_OUTCOME_DRY_RUN).
    dry_run: bool = False
    # How long a change (and a rollback) may take to roll out before it counts as failed.
    verify_timeout_seconds: float = Field(default=120.0, gt=0)
    # How often verification looks at the Deployment and its pods.
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    # RecordAction attempts (each one retried by the client itself on UNAVAILABLE) before
    # ExecuteAction answers UNAVAILABLE; a retry of the call records again.
    record_attempts: int = Field(default=5, ge=1)
    record_backoff_seconds: float = Field(default=0.5, ge=0)
    # Actions in progress at once (each holds a database connection while it runs).
    max_concurrent_actions: int = Field(default=20, ge=1)
    # How long a call waits for another call of the same action_id; 0 means
    # twice the verification timeout plus a minute.
    lock_wait_seconds: float = Field(default=0.0, ge=0)
    # The executor's own schema (snapshots, progress): KUBERNAUT_EXECUTOR_DATABASE_URL,
    # else the shared KUBERNAUT_DATABASE_URL. Unset: ExecuteAction answers
    # FAILED_PRECONDITION (without its snapshots it could not retry or roll back safely).
    database_url: OptionalDatabaseUrl = database_url_field("EXECUTOR", default=None)

    @field_validator("protected_namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, Iterable):
            return frozenset(s for item in value if (s := str(item).strip()))
        return value

    @property
    def lock_wait(self) -> float:
        """Seconds a call waits for another call of the same action_id."""
        return self.lock_wait_seconds or 2 * self.verify_timeout_seconds + 60
