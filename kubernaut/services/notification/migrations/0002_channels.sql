-- 0002: routed channels. Each incident event is delivered once per channel its route
-- chose; each channel's outcome is its own row, committed as soon as that channel
-- answered, so that a crash after Slack took a message and before PagerDuty did redelivers
-- to PagerDuty only. What a channel keeps for an incident (the Slack message it threads
-- under, the Jira issue it comments on) is in `threads`.

-- The event as NotifyIncidentEvent got it (kubernaut.notification.v1.IncidentEvent as
-- proto JSON), so that a redelivery renders it for each channel again. NULL for rows
-- stored before this migration (they are delivered by email only, as then).
ALTER TABLE notification.outbox ADD COLUMN event jsonb;

CREATE TABLE notification.deliveries (
    idempotency_key text        NOT NULL REFERENCES notification.outbox ON DELETE CASCADE,
    channel         text        NOT NULL,
    -- The route that chose the channel ("0.1": the root's second child).
    route           text        NOT NULL DEFAULT '',
    -- pending: not attempted yet; sent: the vendor took it; failed: to be tried again;
    -- permanent: the vendor refused the configuration, not tried again; held: a rate
    -- limit held it back, never sent.
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sent', 'failed', 'permanent', 'held')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text        NOT NULL DEFAULT '',
    -- Not before this (a 429's Retry-After).
    retry_at        timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    PRIMARY KEY (idempotency_key, channel)
);

CREATE TABLE notification.threads (
    channel     text        NOT NULL,
    incident_id text        NOT NULL,
    -- What the channel keeps, e.g. {"ts": "1712345678.000100", "channel": "C0123"}.
    data        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, incident_id)
);
