-- 0001: pgvector and the audit record of actions (kubernaut.storage.v1.ActionRecord).

-- IF NOT EXISTS returns before any permission check, so a non-superuser role works once an
-- administrator has created the extension.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE action_records (
    -- Chosen by the executor; the idempotency key of RecordAction.
    action_id        uuid        PRIMARY KEY,
    incident_id      text        NOT NULL DEFAULT '',
    alert_name       text        NOT NULL,
    action           text        NOT NULL,
    target_cluster   text        NOT NULL DEFAULT '',
    target_namespace text        NOT NULL DEFAULT '',
    target_kind      text        NOT NULL,
    target_name      text        NOT NULL,
    -- The ActionOutcome value name, e.g. ACTION_OUTCOME_SUCCEEDED: readable in SQL and stable
    -- across renumbering.
    outcome          text        NOT NULL,
    -- jsonb so other services can query specs; NULL when the action had no spec.
    spec_before      jsonb,
    spec_after       jsonb,
    message          text        NOT NULL DEFAULT '',
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);

-- ListActionRecords: newest first, one alert name or all, keyset on (started_at, action_id).
CREATE INDEX action_records_by_alert ON action_records (alert_name, started_at DESC, action_id DESC);
CREATE INDEX action_records_by_time ON action_records (started_at DESC, action_id DESC);
