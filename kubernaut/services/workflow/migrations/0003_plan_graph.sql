-- 0003: runbook plans, whose steps form a graph (WorkflowPlan.nodes).
--
-- A graph step (ACTION, CHECK, COMPENSATE) names its plan node, keeps the executor's id of
-- its current attempt (a resumed step asks the executor again with the same id, which
-- answers with the first run's result and acts no more), how that attempt ended, and when a
-- retry may start (the backoff survives a restart).

ALTER TABLE workflow.steps
    ADD COLUMN node       text        NOT NULL DEFAULT '',
    ADD COLUMN action_id  uuid,
    -- An ActionOutcome name without its prefix for actions (SUCCEEDED, ROLLED_BACK, ...),
    -- PASSED or NOT_PASSED for checks.
    ADD COLUMN outcome    text        NOT NULL DEFAULT '',
    ADD COLUMN not_before timestamptz;
