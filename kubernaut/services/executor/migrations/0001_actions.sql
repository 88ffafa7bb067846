-- 0001: the executor's own record of each ExecuteAction, keyed by action_id. The snapshot
-- and the computed change are stored BEFORE anything is applied, so that a retry after a
-- crash re-applies the same change (a second rollback never goes back one more revision),
-- restores from the same snapshot, or, once done, returns the stored record without
-- touching the cluster. The schema `executor` is created by the migration runner; nothing
-- outside the executor reads it. Storage keeps the shared audit record (RecordAction).

CREATE TABLE executor.actions (
    action_id   uuid        PRIMARY KEY,
    incident_id text        NOT NULL DEFAULT '',
    -- The catalogue name, e.g. rollback_deployment.
    action      text        NOT NULL,
    -- The first ExecuteActionRequest with this action_id, as protobuf JSON: a retry
    -- continues this one, whatever it sends.
    request     jsonb       NOT NULL,
    -- started:   checking and computing; nothing applied (a retry starts over).
    -- planned:   snapshot and change stored; the change may or may not have been applied.
    -- applied:   the change was applied; verifying.
    -- restoring: verification failed; restoring the snapshot.
    -- finished:  the record is final (column record) but storage may not have it yet.
    -- recorded:  storage has the record; a retry returns it and does nothing else.
    state       text        NOT NULL DEFAULT 'started'
                            CHECK (state IN ('started', 'planned', 'applied', 'restoring',
                                             'finished', 'recorded')),
    -- The action's time: started_at of the record, and the restart annotation's value.
    started_at  timestamptz NOT NULL,
    -- {"resourceVersion", "generation", "spec", "labels", "podTemplateHashes"} of the
    -- Deployment as read right before the change.
    snapshot    jsonb,
    -- {"summary", "path", "before", "after"}: the one value the action changes.
    change      jsonb,
    -- The generation to verify (of the apply, then of the restore).
    generation  bigint,
    -- What happened so far, one stage a line (ExecuteActionResponse.stages).
    stages      text[]      NOT NULL DEFAULT '{}',
    -- The final kubernaut.storage.v1.ActionRecord (serialized), from state finished on.
    record      bytea,
    -- How many calls worked on this action (1 + retries that found it unfinished).
    attempts    integer     NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Unfinished actions, for operators (and a future sweeper).
CREATE INDEX actions_unfinished ON executor.actions (updated_at) WHERE state <> 'recorded';
CREATE INDEX actions_by_incident ON executor.actions (incident_id, started_at);
