-- 0003: RollbackAction. A rollback is an action of its own (its row, its snapshot, its
-- record, keyed by the caller's rollback_id) that undoes another: `undo_of` names the
-- action it undoes. Its `action` column is "undo:<name>", so that the guards' cooldown
-- of the action itself does not hold back its undo (the target lock and the rate limit
-- still apply).
ALTER TABLE executor.actions ADD COLUMN undo_of uuid REFERENCES executor.actions (action_id);

-- The rollbacks of an action: at most one may succeed, and a second is refused.
CREATE INDEX actions_by_undo_of ON executor.actions (undo_of) WHERE undo_of IS NOT NULL;
