-- 0001: the assessment schedule, in the effectiveness service's own schema.
--
-- One row in scheduled_actions per action (ScheduleAssessment is idempotent by action_id),
-- one row in checkpoints per (action, delay). A checkpoint is claimed by one replica at a
-- time (a lease, taken with FOR UPDATE SKIP LOCKED); its verdict is stored before it is
-- recorded through storage, so that a replica that takes over after a crash records the
-- same content under the same assessment_id (a no-op for storage).

CREATE TABLE effectiveness.scheduled_actions (
    action_id         uuid        PRIMARY KEY,
    incident_id       text        NOT NULL DEFAULT '',
    -- kubernaut.common.v1.Alert and ResourceRef as proto JSON (field names as in the protos).
    alert             jsonb       NOT NULL,
    target            jsonb       NOT NULL,
    acted_at          timestamptz NOT NULL,
    -- Pod name -> restart count of the target's workload at schedule time; NULL when it
    -- could not be taken (baseline_note says why).
    baseline          jsonb,
    baseline_note     text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE effectiveness.checkpoints (
    action_id         uuid        NOT NULL REFERENCES effectiveness.scheduled_actions (action_id),
    -- How long after acted_at this checkpoint looks.
    delay             interval    NOT NULL CHECK (delay > interval '0'),
    -- uuid5 of the action and the delay: the idempotency key of RecordAssessment.
    assessment_id     uuid        NOT NULL UNIQUE,
    -- The last checkpoint of the action: an alert still firing here is INEFFECTIVE.
    final             boolean     NOT NULL,
    due_at            timestamptz NOT NULL,
    -- pending until recorded through storage; done once recorded; failed when storage
    -- refused the record for good (last_error says why).
    status            text        NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'done', 'failed')),
    -- When the next attempt may start: due_at, later after a failed attempt to record.
    next_attempt_at   timestamptz NOT NULL,
    attempts          integer     NOT NULL DEFAULT 0,
    last_error        text        NOT NULL DEFAULT '',
    lease_owner       text,
    lease_expires_at  timestamptz,
    -- The verdict, once assessed (a Verdict value name), its evidence and when it looked.
    verdict           text,
    evidence          text[],
    assessed_at       timestamptz,
    recorded_at       timestamptz,
    PRIMARY KEY (action_id, delay),
    CHECK ((verdict IS NULL) = (assessed_at IS NULL) AND (verdict IS NULL) = (evidence IS NULL)),
    CHECK (status <> 'done' OR verdict IS NOT NULL)
);

-- The scheduler's claim: pending checkpoints by when they may be attempted.
CREATE INDEX checkpoints_pending ON effectiveness.checkpoints (next_attempt_at)
    WHERE status = 'pending';
