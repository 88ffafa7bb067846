-- 0006: the workload as the executor verified it after a change (its
-- kubernaut.common.v1.WorkloadState as protobuf JSON; NULL for read-only actions, for
-- targets that are not workloads and for records from before). It is the baseline of the
-- quiet period: an alert soon after an incident closed opens a new incident when the
-- workload changed since (template, images, generation, more restarts), and is counted on
-- the closed one otherwise. Read through action_records_by_incident.

ALTER TABLE action_records ADD COLUMN observed_after jsonb;
