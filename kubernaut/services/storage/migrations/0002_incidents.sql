-- 0002: incidents (kubernaut.storage.v1.Incident), their embeddings, and the effectiveness
-- assessments of actions (kubernaut.storage.v1.Assessment).

CREATE TABLE incidents (
    incident_id       uuid        PRIMARY KEY,
    fingerprint       text        NOT NULL,
    -- The IncidentStatus value name, e.g. INCIDENT_STATUS_OPEN.
    status            text        NOT NULL,
    status_reason     text        NOT NULL DEFAULT '',
    alert_name        text        NOT NULL,
    subject_cluster   text        NOT NULL DEFAULT '',
    subject_namespace text        NOT NULL DEFAULT '',
    subject_kind      text        NOT NULL,
    subject_name      text        NOT NULL,
    -- The alert that opened the incident, as proto3 JSON (field names as in the proto).
    alert             jsonb       NOT NULL,
    -- Alerts counted on this incident, the first included.
    occurrences       bigint      NOT NULL DEFAULT 1 CHECK (occurrences >= 1),
    opened_at         timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Set exactly when the status is final.
    closed_at         timestamptz,
    trace_id          text        NOT NULL DEFAULT '',
    -- The text the embedding was computed from (kept to re-embed with another model).
    description       text        NOT NULL DEFAULT '',
    -- The embedding and the model that made it; both NULL when embedding failed. The column
    -- has no fixed dimension so that models can change; each model gets its own partial
    -- index below, since an index needs one dimension.
    embedding_model   text,
    embedding         vector,
    CONSTRAINT incidents_closed_iff_final CHECK (
        (closed_at IS NULL) = (status IN ('INCIDENT_STATUS_OPEN', 'INCIDENT_STATUS_REMEDIATING'))
    ),
    CONSTRAINT incidents_embedding_has_model CHECK ((embedding IS NULL) = (embedding_model IS NULL))
);

-- At most one open incident per fingerprint: OpenIncident's INSERT ... ON CONFLICT relies on it.
CREATE UNIQUE INDEX incidents_open_fingerprint ON incidents (fingerprint) WHERE closed_at IS NULL;

-- ListIncidents: newest first, one status or all, keyset on (opened_at, incident_id).
CREATE INDEX incidents_by_time ON incidents (opened_at DESC, incident_id DESC);
CREATE INDEX incidents_by_status ON incidents (status, opened_at DESC, incident_id DESC);

-- SearchSimilarIncidents for the default model (all-MiniLM-L6-v2 int8, 384 dimensions): HNSW
-- over cosine distance. The query repeats the expression and the predicate to use it.
CREATE INDEX incidents_embedding_minilm ON incidents
    USING hnsw ((embedding::vector(384)) vector_cosine_ops)
    WHERE embedding_model = 'all-minilm-l6-v2-int8';

-- GetIncident: an incident's actions, oldest first.
CREATE INDEX action_records_by_incident ON action_records (incident_id, started_at, action_id);

CREATE TABLE assessments (
    -- Chosen by the effectiveness service; the idempotency key of RecordAssessment.
    assessment_id uuid        PRIMARY KEY,
    action_id     uuid        NOT NULL REFERENCES action_records (action_id),
    -- How long after the action the assessment looked.
    delay         interval    NOT NULL CHECK (delay >= interval '0'),
    -- The Verdict value name, e.g. VERDICT_EFFECTIVE.
    verdict       text        NOT NULL,
    evidence      text[]      NOT NULL DEFAULT '{}',
    assessed_at   timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX assessments_by_action ON assessments (action_id, assessed_at, assessment_id);
