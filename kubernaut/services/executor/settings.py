"""The executor's settings, from `KUBERNAUT_EXECUTOR_*` environment variables."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubernaut.runtime.settings import OptionalDatabaseUrl, database_url_field


class GitOpsChanges(enum.StrEnum):
    """What the executor does with a change to an object a GitOps controller manages
    (kubernaut.services.executor.gitops)."""

    # Refuse, with the proposed change as a patch for the manifests' owners.
    NOTIFY = "notify"
    # Patch it anyway.
    APPLY = "apply"
    # Push the change to a branch of the manifests' Git repository and open a pull request
    # (kubernaut.services.executor.gitops_pr); without one, refuse as `notify` does.
    PULL_REQUEST = "pull_request"


DEFAULT_PROTECTED_NAMESPACES: Final = frozenset(
    {"kube-system", "kube-public", "kube-node-lease", "istio-system", "kubernaut"}
)


# What patch_resource may touch unless configured otherwise: fields whose change is
# reversible and does not replace the workload's code.
DEFAULT_PATCH_ALLOWED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "Deployment": (
        "/spec/minReadySeconds",
        "/spec/progressDeadlineSeconds",
        "/spec/template/metadata/annotations/*",
    ),
    "StatefulSet": ("/spec/minReadySeconds", "/spec/template/metadata/annotations/*"),
    "DaemonSet": ("/spec/minReadySeconds", "/spec/template/metadata/annotations/*"),
    "HorizontalPodAutoscaler": ("/spec/behavior/*",),
    "ConfigMap": ("/data/*",),
}


class ClusterScope(BaseModel):
    """Which namespaces of one cluster the executor may act in, besides the protected ones:
    `allow` (empty: every namespace) and `deny` (wins over allow); shell-style patterns
    ("shop-*")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_EXECUTOR_", frozen=True, extra="ignore")

    # Namespaces the executor never changes anything in, whatever their labels say.
    # NoDecode: the variable is a plain comma-separated list ("kube-system,istio-system").
    protected_namespaces: Annotated[frozenset[str], NoDecode] = DEFAULT_PROTECTED_NAMESPACES
    # Act only on Deployments that carry kubernaut.ai/managed=true, or whose namespace does.
    require_opt_in: bool = True
    # Dry-run every action and stop there (outcome ACTION_OUTCOME_DRY_RUN).
    dry_run: bool = False
    # A target Argo CD or Flux manages (their tracking annotation or labels): `notify`
    # refuses to patch it (the controller would revert it) and returns the proposed change
    # as a kubectl patch for the manifests' owners; `apply` patches it anyway;
    # `pull_request` commits the change to the manifest in the application's Git source
    # (its Argo CD Application, or its Flux Kustomization's GitRepository) on a branch of its
    # own and opens a GitHub pull request, and refuses as `notify` when it cannot.
    gitops: GitOpsChanges = GitOpsChanges.NOTIFY
    # Where Argo CD's Applications live, unless the tracking id names a namespace
    # ("<namespace>_<app>", applications in any namespace).
    gitops_argocd_namespace: str = "argocd"
    # The GitHub REST API the pull requests are opened through; for GitHub Enterprise
    # Server, "https://<host>/api/v3".
    gitops_github_api_url: str = "https://api.github.com"
    # A file holding the GitHub token (read at each use, so it can be rotated): it opens the
    # pull requests and pushes over https remotes (contents and pull requests: write).
    # Unset: no pull request can be opened, and GITOPS=pull_request refuses as `notify`.
    gitops_github_token_file: Path | None = None
    # The author and committer of the commits ("Name <email>").
    gitops_commit_author: str = "Kubernaut <kubernaut@users.noreply.github.com>"
    # How long each Git command (ls-remote, fetch, push) and each GitHub call may take.
    gitops_timeout_seconds: float = Field(default=60.0, gt=0)
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

    # Per-cluster namespace allow and deny lists, as JSON: {"prod": {"deny": ["payments"]}}
    # (the clusters themselves: KUBERNAUT_KUBE_CLUSTERS, shared with context_api).
    cluster_scopes: dict[str, ClusterScope] = Field(default_factory=dict)
    # Nodes the executor never cordons, drains or taints (shell-style patterns); nodes
    # labelled node-role.kubernetes.io/control-plane are protected whatever this says.
    protected_nodes: Annotated[frozenset[str], NoDecode] = frozenset()
    # The circuit breaker of each cluster: after this many API failures in a row
    # (unreachable, 5xx, 429), actions on that cluster are refused at once (UNAVAILABLE)
    # for `breaker_open_seconds`; then one action may try again.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_seconds: float = Field(default=30.0, gt=0)
    # Guards. No second action starts on a target while one runs; the same action on the
    # same target is refused for `cooldown_seconds` after it last changed something (0:
    # no cooldown); at most `max_actions_per_cluster_per_minute` actions start per cluster
    # in any 60 s (0: no limit).
    cooldown_seconds: float = Field(default=300.0, ge=0)
    max_actions_per_cluster_per_minute: int = Field(default=30, ge=0)
    # How long RollbackAction can undo a recorded action.
    rollback_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Bounds of collect_diagnostics: log lines per container and bytes stored in total.
    diagnostics_log_lines: int = Field(default=200, ge=1, le=10000)
    diagnostics_max_bytes: int = Field(default=512 * 1024, ge=1024, le=4 * 1024 * 1024)
    # Kinds and JSON pointers patch_resource may change, as JSON: {"Deployment":
    # ["/spec/minReadySeconds"]}; a pointer ending in "/*" allows everything beneath it.
    patch_allowed_fields: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_PATCH_ALLOWED_FIELDS)
    )

    @field_validator("protected_namespaces", "protected_nodes", mode="before")
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
