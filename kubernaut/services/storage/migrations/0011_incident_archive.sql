-- 0011: retention. Incidents closed longer ago than KUBERNAUT_INCIDENT_RETENTION_DAYS move,
-- with their affected resources and analyses, to these archive tables (same columns), so
-- that the live tables and their indexes stay the size of the recent past however long
-- Kubernaut runs. GetIncident still finds an archived incident; listings, searches and
-- intelligence read only the live tables. Action records, their assessments and the audit
-- trail are not archived: they are the record of what Kubernaut did.
-- A migration that adds a column to one of the three live tables adds it to its archive
-- too, in the same place (the archiver copies rows with SELECT *).
-- (Declarative partitioning by time was the other way: it cannot keep the unique index
-- that allows one open incident per fingerprint, which would have to include the
-- partition key.)

CREATE TABLE incidents_archive (LIKE incidents INCLUDING DEFAULTS);
ALTER TABLE incidents_archive ADD PRIMARY KEY (incident_id);
ALTER TABLE incidents_archive ADD COLUMN archived_at timestamptz NOT NULL DEFAULT now();

CREATE TABLE incident_resources_archive (LIKE incident_resources INCLUDING DEFAULTS);
CREATE INDEX incident_resources_archive_by_incident ON incident_resources_archive (incident_id, added_at);

CREATE TABLE analyses_archive (LIKE analyses INCLUDING DEFAULTS);
CREATE INDEX analyses_archive_by_incident ON analyses_archive (incident_id, seq);

-- The archiver takes the oldest closed incidents first.
CREATE INDEX incidents_by_closed_at ON incidents (closed_at) WHERE closed_at IS NOT NULL;
