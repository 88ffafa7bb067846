-- 0004: what each action was asked to do (its kubernaut.common.v1.ActionParams as protobuf
-- JSON; NULL for records from before), and the records of one target newest first, so that
-- the workflow's guard can find what failed on a workload whatever alert led to it, and
-- never plan the same action with the same parameters again on its own.

ALTER TABLE action_records ADD COLUMN params jsonb;

CREATE INDEX action_records_by_target ON action_records
    (target_cluster, target_namespace, target_kind, target_name, started_at DESC, action_id DESC);
