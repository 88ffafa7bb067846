-- 0008: every analysis of an incident (kubernaut.common.v1.Analysis), with the model's
-- reasoning when one took part: provider and model, the redacted prompt, the tool calls
-- with digests of their results, the answer and its validation, tokens, cost and latency.
-- Append-only: an incident analysed again (a retry) keeps each analysis; the caller's
-- analysis_id makes a retried RecordAnalysis record nothing twice.

CREATE TABLE analyses (
    -- Chosen by ai_analysis; the idempotency key of RecordAnalysis.
    analysis_id   uuid        PRIMARY KEY,
    incident_id   uuid        NOT NULL REFERENCES incidents (incident_id),
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    -- Insertion order: "oldest first" even for two analyses recorded in one microsecond.
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    -- The Analysis as protobuf JSON (field names as in the proto); the columns below repeat
    -- parts of it to be queried without parsing it.
    analysis      jsonb       NOT NULL,
    -- The Decision value name, e.g. DECISION_REMEDIATE.
    decision      text        NOT NULL,
    -- "rules" or the provider that decided.
    analyzer      text        NOT NULL DEFAULT '',
    -- The model's provider and model; '' when no model was asked.
    provider      text        NOT NULL DEFAULT '',
    model         text        NOT NULL DEFAULT '',
    input_tokens  bigint      NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens bigint      NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cost_usd      double precision NOT NULL DEFAULT 0 CHECK (cost_usd >= 0)
);

-- GetIncident: an incident's analyses, oldest first.
CREATE INDEX analyses_by_incident ON analyses (incident_id, seq);
-- Spend per provider over time (budgets, reports).
CREATE INDEX analyses_by_provider ON analyses (provider, recorded_at) WHERE provider <> '';
