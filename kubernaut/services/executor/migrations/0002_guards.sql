-- 0002: what the guards (kubernaut/services/executor/guards.py) need to see across replicas: the
-- target of each admitted action, when it was admitted and when it last changed something.
-- Rows from before this migration were never admitted and keep NULLs here: they never
-- count against a cooldown or the rate limit (at most one window of leniency after the
-- upgrade), and a retry of one goes through the guards as a new action.

-- The resolved cluster name (never empty: an empty ResourceRef.cluster is the default
-- cluster's name by then) and the target, copied out of `request` so that the guards'
-- queries can use indexes. Set when the action is admitted.
ALTER TABLE executor.actions ADD COLUMN cluster text;
ALTER TABLE executor.actions ADD COLUMN target_kind text;
-- '' for cluster-scoped kinds (Node), as in ResourceRef.
ALTER TABLE executor.actions ADD COLUMN target_namespace text;
ALTER TABLE executor.actions ADD COLUMN target_name text;
-- When the guards let the action start; NULL while it has not passed them (or was
-- refused). The rate limit counts these per cluster over the last 60 s.
ALTER TABLE executor.actions ADD COLUMN admitted_at timestamptz;
-- When the action last changed the target; the cooldown of (target, action) runs from it.
ALTER TABLE executor.actions ADD COLUMN applied_at timestamptz;

-- An admitted row always says what it was admitted for, or it would escape the guards.
ALTER TABLE executor.actions ADD CONSTRAINT actions_admitted_target CHECK (
    admitted_at IS NULL
    OR (cluster IS NOT NULL AND target_kind IS NOT NULL
        AND target_namespace IS NOT NULL AND target_name IS NOT NULL)
);

-- Target busy: the admitted, unfinished action on a target, to name it in the refusal.
-- Partial, so it only holds the few actions in progress.
CREATE INDEX actions_in_progress_by_target
    ON executor.actions (cluster, target_kind, target_namespace, target_name, admitted_at)
    WHERE admitted_at IS NOT NULL AND state NOT IN ('finished', 'recorded');
-- Cooldown: the latest applied_at of one action on one target.
CREATE INDEX actions_applied_by_target
    ON executor.actions (cluster, target_kind, target_namespace, target_name, action, applied_at)
    WHERE applied_at IS NOT NULL;
-- Rate limit: the actions admitted in a cluster within the last minute.
CREATE INDEX actions_admitted_by_cluster
    ON executor.actions (cluster, admitted_at)
    WHERE admitted_at IS NOT NULL;
