-- 0001: the gateway's intake. The schema `gateway` is created by the migration runner;
-- nothing outside the gateway service reads it. Every gateway replica shares these tables,
-- so a repeated alert is forwarded once whichever replica takes it.

-- One row per alert fingerprint (cluster, namespace, alert name, subject from the labels):
-- the current "life" of the problem, from its first firing alert until it resolves or
-- its incident closes. Duplicates within a life are counted here, not forwarded.
CREATE TABLE gateway.fingerprints (
    fingerprint     text        PRIMARY KEY,
    alert_name      text        NOT NULL,
    cluster         text        NOT NULL DEFAULT '',
    -- firing while its alert fires; resolved once its source said it resolved.
    state           text        NOT NULL CHECK (state IN ('firing', 'resolved')),
    -- The latest alert received, as proto3 JSON (for listing it on a storm declared later).
    alert           jsonb       NOT NULL,
    -- The incident its alerts are counted on; '' until the alert processor named one.
    incident_id     text        NOT NULL DEFAULT '',
    -- The storm it belongs to; '' when none.
    storm_id        text        NOT NULL DEFAULT '',
    -- Alerts received in this life, the first included.
    occurrences     bigint      NOT NULL DEFAULT 1 CHECK (occurrences >= 1),
    -- Duplicates not yet counted on the incident.
    uncounted       bigint      NOT NULL DEFAULT 0 CHECK (uncounted >= 0),
    -- True once its incident closed: the next alert starts a new life.
    ended           boolean     NOT NULL DEFAULT false,
    life_started_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz
);

-- Storm detection: the recent new fingerprints of one alert name on one cluster.
CREATE INDEX fingerprints_firing_by_name
    ON gateway.fingerprints (alert_name, cluster, life_started_at) WHERE state = 'firing';
-- Resolving an incident once all of its fingerprints resolved.
CREATE INDEX fingerprints_by_incident ON gateway.fingerprints (incident_id) WHERE incident_id <> '';
-- The flusher: duplicates still to count on their incident.
CREATE INDEX fingerprints_uncounted ON gateway.fingerprints (last_seen_at) WHERE uncounted > 0;
-- Clean-up of finished lives.
CREATE INDEX fingerprints_by_last_seen ON gateway.fingerprints (last_seen_at);

-- A storm: one alert name firing on many resources of one cluster at once. Its members are
-- listed on one incident instead of opening one each.
CREATE TABLE gateway.storms (
    storm_id   text        PRIMARY KEY,
    alert_name text        NOT NULL,
    cluster    text        NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now(),
    -- Set when its last member resolved.
    ended_at   timestamptz
);

CREATE UNIQUE INDEX storms_active ON gateway.storms (alert_name, cluster) WHERE ended_at IS NULL;

-- What the gateway owes the alert processor: accepted alerts, forwarded in order per
-- fingerprint by whichever replica claims them, deleted once the alert processor took them.
CREATE TABLE gateway.queue (
    id            bigserial   PRIMARY KEY,
    fingerprint   text        NOT NULL,
    -- firing: a new problem (or a storm member to list); resolved: its alerts resolved.
    kind          text        NOT NULL CHECK (kind IN ('firing', 'resolved')),
    alert         jsonb       NOT NULL,
    storm_id      text        NOT NULL DEFAULT '',
    -- For resolved: the incident it resolves, when known at intake.
    incident_id   text        NOT NULL DEFAULT '',
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    -- Not forwarded before this: the hold of a new alert, or a retry's backoff.
    not_before    timestamptz NOT NULL DEFAULT now(),
    -- A forwarder holds the row until then; after that another may take it (a crash).
    claimed_until timestamptz,
    -- Claims so far; 0 means nobody tried to forward it yet.
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text        NOT NULL DEFAULT '',
    -- Set when the alert processor refused it for good (kept for operators, never retried).
    failed_at     timestamptz
);

CREATE INDEX queue_by_fingerprint ON gateway.queue (fingerprint, id);
CREATE INDEX queue_due ON gateway.queue (not_before, id) WHERE failed_at IS NULL;
