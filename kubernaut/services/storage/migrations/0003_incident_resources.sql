-- 0003: the resources an incident is about (its subject, and every resource a storm's alerts
-- named), and when its source said the last of its alerts resolved.

ALTER TABLE incidents ADD COLUMN alert_resolved_at timestamptz;

CREATE TABLE incident_resources (
    incident_id uuid        NOT NULL REFERENCES incidents (incident_id),
    cluster     text        NOT NULL DEFAULT '',
    namespace   text        NOT NULL DEFAULT '',
    kind        text        NOT NULL,
    name        text        NOT NULL,
    -- The first alert that named it.
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (incident_id, cluster, namespace, kind, name)
);

CREATE INDEX incident_resources_in_order ON incident_resources (incident_id, added_at);

-- Incidents opened before this migration are about their subject.
INSERT INTO incident_resources (incident_id, cluster, namespace, kind, name, added_at)
SELECT incident_id, subject_cluster, subject_namespace, subject_kind, subject_name, opened_at
FROM incidents;
