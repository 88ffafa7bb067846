-- 0010: similar-incident search moves to a vector store (kubernaut.services.storage.vectors).
-- With the default backend, pgvector, that is a table per dimension; this creates the one
-- for the default model (all-MiniLM-L6-v2 int8, 384 dimensions) as PgVectorStore would, with
-- its default HNSW tuning (m 16, ef_construction 64), and copies the embeddings already
-- stored, so that an upgrade searches the same incidents as before. The incidents keep
-- their embeddings: they are the record any backend is rebuilt from
-- (`kubernaut storage reindex`).

CREATE TABLE IF NOT EXISTS incident_vectors_384 (
    incident_id  uuid PRIMARY KEY,
    model        text NOT NULL,
    cluster      text NOT NULL DEFAULT '',
    namespace    text NOT NULL DEFAULT '',
    subject_kind text NOT NULL DEFAULT '',
    alert_name   text NOT NULL DEFAULT '',
    opened_at    timestamptz,
    embedding    vector(384) NOT NULL
);

INSERT INTO incident_vectors_384
SELECT incident_id, embedding_model, subject_cluster, subject_namespace, subject_kind,
       alert_name, opened_at, embedding::vector(384)
FROM incidents
WHERE embedding IS NOT NULL AND vector_dims(embedding) = 384
ON CONFLICT (incident_id) DO NOTHING;

CREATE INDEX IF NOT EXISTS incident_vectors_384_hnsw ON incident_vectors_384
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);

-- Searches no longer read the incidents' own embeddings; the index only slowed inserts.
DROP INDEX IF EXISTS incidents_embedding_minilm;
