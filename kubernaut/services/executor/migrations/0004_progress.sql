-- 0004: progress that others can read while an action runs (GetActionProgress): when each
-- stage line was reached, and when the latest verification started. Rows from before
-- this migration have no times for their lines.

-- One entry per line of `stages`, in the same order.
ALTER TABLE executor.actions ADD COLUMN stage_times timestamptz[] NOT NULL DEFAULT '{}';
ALTER TABLE executor.actions ADD COLUMN verify_started_at timestamptz;
