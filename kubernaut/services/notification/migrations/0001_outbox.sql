-- 0001: the notification outbox. One row per idempotency key of NotifyIncidentEvent: the
-- message as rendered the first time, and what delivering it did. The schema `notification`
-- is created by the migration runner; nothing outside the notification service reads it.

CREATE TABLE notification.outbox (
    idempotency_key text        PRIMARY KEY,
    incident_id     text        NOT NULL,
    -- The IncidentEventKind value name, e.g. INCIDENT_EVENT_KIND_SUCCEEDED.
    event_kind      text        NOT NULL,
    subject         text        NOT NULL,
    body            text        NOT NULL,
    -- pending: not attempted yet, or an attempt was cut short (a crash); sent: delivered on
    -- at least one channel, never delivered again; failed: the last attempt delivered on no
    -- channel, the next call with the key tries again.
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sent', 'failed')),
    -- The last attempt's result per channel: [{"channel", "delivered", "error"}].
    results         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- Delivery attempts (calls that tried to deliver; each may retry SMTP itself).
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);

CREATE INDEX outbox_by_incident ON notification.outbox (incident_id, created_at);
-- Rows that still owe a delivery, for operators and a future redelivery sweep.
CREATE INDEX outbox_undelivered ON notification.outbox (updated_at) WHERE status <> 'sent';
