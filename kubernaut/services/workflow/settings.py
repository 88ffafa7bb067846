"""The workflow service's settings, from KUBERNAUT_WORKFLOW_* variables: planning's (when
a person must approve) and the runner's."""

from __future__ import annotations

from kubernaut.common.v1 import remediation_pb2
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PlanningSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_WORKFLOW_", frozen=True, extra="ignore")

    # Actions at or above this risk wait for a person's approval.
    approval_min_risk: int = remediation_pb2.RISK_LEVEL_HIGH
    # Recommendations less sure than this wait for approval too.
    approval_min_confidence: float = 0.5
    # KUBERNAUT_WORKFLOW_FAILED_TARGET_HOLD_SECONDS: after an action failed or was undone
    # on a workload, any plan for that workload waits for a person this long, whatever
    # alert leads to it (a second guess on a workload Kubernaut just failed to fix is
    # more likely to make it worse). 0 turns the hold off; the rule below stays.
    failed_target_hold_seconds: float = Field(default=6 * 3600.0, ge=0)
    # KUBERNAUT_WORKFLOW_SETTLE_SECONDS: after an action on a workload succeeded, another
    # incident's plan for it waits for a person this long: a second alert about the same
    # workload so soon is most often the same problem (e.g. a crash loop and a replica
    # mismatch of one bad rollout), which the first fix may already have mended, and two
    # fixes in a row hide which one worked. 0 turns it off.
    settle_seconds: float = Field(default=600.0, ge=0)
    # KUBERNAUT_WORKFLOW_OSCILLATION_*: fixes on one workload that keep coming back are an
    # oscillation (two controllers, or a fix and an alert, fighting): when the workload
    # already had `oscillation_actions - 1` successful actions within the window, or one
    # action undid another there (put the workload back as it was before it), every
    # further plan for it waits for a person, and people are told why. Actions 0 turns the
    # count off; the undo check stays while the window is above 0.
    oscillation_window_seconds: float = Field(default=3600.0, ge=0)
    oscillation_actions: int = Field(default=3, ge=0)

    @field_validator("oscillation_actions")
    @classmethod
    def _two_or_more(cls, value: int) -> int:
        if value == 1:
            raise ValueError("oscillation_actions: 0 (off) or at least 2 (1 would hold every plan)")
        return value

    # KUBERNAUT_WORKFLOW_HIGH_RISK_APPROVERS: how many different people must approve a
    # high-risk (or critical) action before it runs; 2 for the four-eyes rule. Whoever
    # requested a workflow never counts: they may not approve it at all.
    high_risk_approvers: int = Field(default=1, ge=1, le=5)
    # KUBERNAUT_WORKFLOW_RUNBOOK_DIR: where the runbook templates are (*.yaml, validated
    # against their JSON Schema at start; a ConfigMap mounted in a cluster). Empty: the
    # templates Kubernaut ships. A template is chosen by the alert and the recommended
    # action; without one, the recommended action runs alone.
    runbook_dir: str = ""
    # KUBERNAUT_WORKFLOW_POLICY_FILE: the approval policy (CEL rules, see
    # docs/examples/approval-policy.yaml), validated at start. Empty: the thresholds above
    # decide (approval_min_risk, approval_min_confidence, high_risk_approvers).
    policy_file: str = ""


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_WORKFLOW_", frozen=True, extra="ignore")

    # How long a claim lasts without renewal; renewed every third of it. A runner that dies
    # holds its workflows this long at most.
    lease_seconds: float = 30.0
    # How often an idle runner looks for workflows (CreateWorkflow wakes it at once).
    poll_seconds: float = 5.0
    # Workflows one runner runs at the same time.
    max_concurrent: int = 8
    # The executor's verification timeout until its progress says (it answers it with
    # every GetActionProgress): ExecuteAction's deadline is twice it (the change's
    # verification, and a rollback's) plus `execute_margin_seconds` for the other stages.
    executor_verify_timeout_seconds: float = Field(default=120.0, gt=0)
    execute_margin_seconds: float = Field(default=60.0, ge=0)
    # How often the executor's progress is asked while ExecuteAction runs.
    progress_poll_seconds: float = Field(default=2.0, gt=0)
    # Backoff of a call to an unavailable service: doubles from initial to max, forever.
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    # A workflow nobody approved or rejected within this long is rejected as expired
    # (nothing acts; people are told): a fix decided on a day later would act on a
    # cluster nobody looked at since. 0 waits for a decision forever.
    approval_timeout_seconds: float = Field(default=24 * 3600.0, ge=0)
    # How often a runner looks for expired approvals.
    approval_sweep_seconds: float = Field(default=60.0, gt=0)


class WatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_WORKFLOW_", frozen=True, extra="ignore")

    # KUBERNAUT_WORKFLOW_WATCH_POLL_SECONDS: how often a WatchWorkflow stream reads its
    # workflow again (the state lives in PostgreSQL, and any replica may run the workflow):
    # how late a change can reach a watcher, and one small read per open stream this often.
    watch_poll_seconds: float = Field(default=0.5, gt=0)
