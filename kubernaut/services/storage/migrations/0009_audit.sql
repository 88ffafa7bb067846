-- 0009: the tamper-evident audit trail, in a schema of its own: one row per audited call
-- (an action, a rollback, an approval, a workflow created, a notification delivered).
-- Each row holds the hash of the row before it (kubernaut.runtime.audit.entry_hash), so a
-- row edited, removed or slipped in breaks the chain there (`kubernaut audit verify`).
-- Storage appends as the role kubernaut_audit_writer (SET LOCAL ROLE in the appending
-- transaction), which may INSERT and SELECT and nothing else; a trigger refuses UPDATE,
-- DELETE and TRUNCATE to everyone else too, the owner and superusers included.

CREATE SCHEMA audit;

CREATE TABLE audit.entries (
    -- 1, 2, 3, ... without gaps: chosen under an advisory lock, never by a sequence (which
    -- leaves gaps when a transaction rolls back).
    seq             bigint      PRIMARY KEY CHECK (seq >= 1),
    -- Chosen by the recorder; the idempotency key of AppendAuditEntry.
    entry_id        uuid        NOT NULL UNIQUE,
    at              timestamptz NOT NULL,
    principal       text        NOT NULL,
    service         text        NOT NULL,
    method          text        NOT NULL,
    incident_id     text        NOT NULL DEFAULT '',
    target          text        NOT NULL DEFAULT '',
    request_digest  text        NOT NULL CHECK (request_digest ~ '^[0-9a-f]{64}$'),
    -- A gRPC status code's name (OK, PERMISSION_DENIED, ...) and a short message.
    outcome_code    text        NOT NULL,
    outcome_message text        NOT NULL DEFAULT '',
    -- One successor per entry: the chain cannot fork.
    prev_hash       text        NOT NULL UNIQUE CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash            text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$')
);

-- ListAuditEntries' filters, each in chain order.
CREATE INDEX entries_by_principal ON audit.entries (principal, seq);
CREATE INDEX entries_by_incident ON audit.entries (incident_id, seq) WHERE incident_id <> '';
CREATE INDEX entries_by_method ON audit.entries (method, seq);
CREATE INDEX entries_by_time ON audit.entries (at);

CREATE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.entries is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON audit.entries
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER entries_never_truncated BEFORE TRUNCATE ON audit.entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();

-- The writer role is the server's, shared by its databases: another database's migration
-- may have made it already (or an administrator, for a storage login without CREATEROLE).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kubernaut_audit_writer') THEN
        CREATE ROLE kubernaut_audit_writer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- made by another database's migration at the same moment
END
$$;

-- Storage's login must be able to SET ROLE to it (a superuser always can; an
-- administrator may have granted it beforehand).
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'kubernaut_audit_writer', 'MEMBER') THEN
        EXECUTE format('GRANT kubernaut_audit_writer TO %I', current_user);
    END IF;
END
$$;

REVOKE ALL ON SCHEMA audit FROM PUBLIC;
REVOKE ALL ON audit.entries FROM PUBLIC;
GRANT USAGE ON SCHEMA audit TO kubernaut_audit_writer;
GRANT SELECT, INSERT ON audit.entries TO kubernaut_audit_writer;
-- The owner (storage's login) gives up changing rows too: it reads; it appends only as
-- the writer.
REVOKE UPDATE, DELETE, TRUNCATE ON audit.entries FROM CURRENT_USER;
