-- 0001: workflows and their steps, in the workflow service's own schema.
--
-- States are the enum value names without their prefix (RUNNING, not WORKFLOW_STATE_RUNNING):
-- readable in SQL and stable across renumbering.

CREATE TABLE workflow.workflows (
    workflow_id      uuid        PRIMARY KEY,
    -- One workflow per incident: CreateWorkflow for the same incident returns this one.
    incident_id      uuid        NOT NULL UNIQUE,
    -- kubernaut.common.v1.Alert, Recommendation and kubernaut.workflow.v1.WorkflowPlan as
    -- proto JSON (field names as in the protos).
    alert            jsonb       NOT NULL,
    recommendation   jsonb       NOT NULL,
    plan             jsonb       NOT NULL,
    state            text        NOT NULL CHECK (state IN
                         ('RUNNING', 'WAITING_APPROVAL', 'SUCCEEDED', 'FAILED', 'ROLLED_BACK',
                          'REFUSED')),
    -- Chosen at creation; the executor's idempotency key, so a repeated ExecuteAction (after
    -- a restart mid-step) returns the first run's record and acts no more.
    action_id        uuid        NOT NULL UNIQUE,
    -- Why the workflow is in its state.
    message          text        NOT NULL DEFAULT '',
    -- The W3C trace context of the request that created the workflow: its steps continue
    -- that trace, so one incident is one trace across every service.
    trace_context    jsonb       NOT NULL DEFAULT '{}',
    -- What the executor answered (an ActionOutcome name), once it answered.
    outcome          text        CHECK (outcome IN
                         ('SUCCEEDED', 'FAILED', 'ROLLED_BACK', 'DRY_RUN', 'REFUSED')),
    -- The executor's message and stage lines, and when it acted.
    outcome_message  text        NOT NULL DEFAULT '',
    stages           jsonb       NOT NULL DEFAULT '[]',
    acted_at         timestamptz,
    -- The final state once decided; `state` takes it when the last step (NOTIFY) is done.
    result           text        CHECK (result IN ('SUCCEEDED', 'FAILED', 'ROLLED_BACK', 'REFUSED')),
    -- The runner that holds the workflow and until when; a runner renews its lease while it
    -- runs, and a runner that died leaves a lease that expires and is taken over.
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL))
);

-- What the runners look for: running workflows, oldest first.
CREATE INDEX workflows_runnable ON workflow.workflows (created_at) WHERE state = 'RUNNING';

CREATE TABLE workflow.steps (
    workflow_id uuid        NOT NULL REFERENCES workflow.workflows ON DELETE CASCADE,
    -- The step's position in the plan, from 0.
    index       integer     NOT NULL CHECK (index >= 0),
    -- A StepKind name without its prefix, e.g. APPLY.
    kind        text        NOT NULL,
    state       text        NOT NULL DEFAULT 'PENDING' CHECK (state IN
                    ('PENDING', 'RUNNING', 'DONE', 'FAILED', 'SKIPPED')),
    -- How many times the step was started; more than one after a restart mid-step.
    attempts    integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    message     text        NOT NULL DEFAULT '',
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (workflow_id, index)
);
