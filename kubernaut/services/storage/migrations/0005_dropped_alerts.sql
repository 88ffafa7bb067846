-- 0005: every firing alert the alert processor was handed and did not turn into an
-- incident, with why: an alert the edge accepted is either an incident or one of these
-- (`kubernaut alerts list`). One row per alert life (the gateway's dedup key and the
-- alert's start), so a forwarder's retry records nothing twice.

CREATE TABLE dropped_alerts (
    drop_id      uuid        PRIMARY KEY,
    -- The gateway's key for the alert's life; '' when it sent none.
    dedup_key    text        NOT NULL DEFAULT '',
    alert_name   text        NOT NULL,
    -- The AlertDropReason value name, e.g. ALERT_DROP_REASON_NO_SUBJECT.
    reason_code  text        NOT NULL,
    reason       text        NOT NULL,
    -- The object the labels named, when they named one ('' otherwise).
    subject_cluster   text   NOT NULL DEFAULT '',
    subject_namespace text   NOT NULL DEFAULT '',
    subject_kind      text   NOT NULL DEFAULT '',
    subject_name      text   NOT NULL DEFAULT '',
    -- The alert as protobuf JSON.
    alert        jsonb       NOT NULL,
    starts_at    timestamptz,
    dropped_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per alert life: (dedup key, start); a retry of the same alert finds it.
CREATE UNIQUE INDEX dropped_alerts_once ON dropped_alerts
    (dedup_key, alert_name, coalesce(starts_at, 'epoch'::timestamptz));
CREATE INDEX dropped_alerts_by_time ON dropped_alerts (dropped_at DESC, drop_id DESC);
