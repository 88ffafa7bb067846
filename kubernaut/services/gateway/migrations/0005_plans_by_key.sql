-- 0005: the gateway's statements read fingerprints by key, whatever the statistics say.
--
-- A connection plans a statement for the table as it was then, and keeps the plan: a
-- gateway that starts on an empty table planned take_firing's statements for an empty
-- table. Its live lookup then ANDed the primary key with a bitmap of every firing row
-- (the storm index, whose partial predicate `state = 'firing'` matched the lookup's), and
-- counting duplicates scanned the table: on every call, for as long as the connection
-- lived, at a cost that grew with the table (1.8 ms of PostgreSQL per one-alert call at
-- 5,000 fingerprints, against 0.3 ms now).
--
-- - The storm index is no longer partial: an index whose predicate a key lookup matches is
--   one the planner may choose for it. It holds resolved rows too; the storm count checks
--   the state on the rows it finds, as it did.
-- - Storm sizes (count of a storm's members, per member alert) scanned the table: they
--   have an index of their own.
-- - take_firing plans without sequential scans (see its comment); otherwise as in 0004.

DROP INDEX gateway.fingerprints_firing_by_name;
CREATE INDEX fingerprints_by_name ON gateway.fingerprints (alert_name, cluster, life_started_at);
CREATE INDEX fingerprints_by_storm ON gateway.fingerprints (storm_id) WHERE storm_id <> '';

CREATE OR REPLACE FUNCTION gateway.take_firing(
    p_fingerprints text[],
    p_counts bigint[],
    p_names text[],
    p_clusters text[],
    p_alerts text[],
    p_hold_seconds float8,
    p_trace_context text,
    p_storm_window_seconds float8,
    p_storm_threshold bigint,
    p_partial boolean)
RETURNS TABLE (fingerprint text, occurrences bigint, incident_id text, started boolean)
LANGUAGE plpgsql
-- Every statement here finds its rows by key; planning them afresh for the parameters of
-- each call (PostgreSQL's choice for array parameters) cost as much as running them. A
-- session plans them once, maybe while the table is still empty (a gateway's first
-- minute): sequential scans stay off so that such a plan still reads by key.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    live text[];
    undecided text[];
    starting bigint;
BEGIN
    -- Rows are locked in fingerprint order, as every batch locks them.
    SELECT coalesce(array_agg(l.fingerprint ORDER BY l.fingerprint), '{}') INTO live
    FROM (SELECT f.fingerprint FROM gateway.fingerprints f
          WHERE f.fingerprint = ANY (p_fingerprints) AND f.state = 'firing' AND NOT f.ended
          ORDER BY f.fingerprint
          FOR UPDATE) AS l;

    WITH new AS (
        SELECT n.fingerprint, n.count, n.alert_name, n.cluster
        FROM unnest(p_fingerprints, p_counts, p_names, p_clusters)
             AS n(fingerprint, count, alert_name, cluster)
        WHERE n.fingerprint <> ALL (live)),
    risky AS (
        SELECT g.alert_name, g.cluster
        FROM (SELECT alert_name, cluster, count(*) AS starts, bool_or(count > 1) AS twice
              FROM new GROUP BY alert_name, cluster) AS g
        WHERE g.twice
           OR EXISTS (SELECT 1 FROM gateway.storms s
                      WHERE s.alert_name = g.alert_name AND s.cluster = g.cluster
                        AND s.ended_at IS NULL)
           OR g.starts + (SELECT count(*) FROM (
                  SELECT 1 FROM gateway.fingerprints f
                  WHERE f.alert_name = g.alert_name AND f.cluster = g.cluster
                    AND f.state = 'firing' AND NOT f.ended
                    AND f.life_started_at > now() - make_interval(secs => p_storm_window_seconds)
                  LIMIT p_storm_threshold) AS recent) >= p_storm_threshold)
    SELECT coalesce(array_agg(new.fingerprint), '{}') INTO undecided
    FROM new JOIN risky USING (alert_name, cluster);

    IF cardinality(undecided) > 0 AND NOT p_partial THEN
        RETURN;
    END IF;

    -- The usual case: repeats within a life, counted. No indexed column changes, so
    -- PostgreSQL updates the rows in place (HOT).
    RETURN QUERY
    UPDATE gateway.fingerprints f
    SET occurrences = f.occurrences + c.count, uncounted = f.uncounted + c.count,
        last_seen_at = now()
    FROM unnest(p_fingerprints, p_counts) AS c(fingerprint, count)
    WHERE f.fingerprint = c.fingerprint AND f.fingerprint = ANY (live)
    RETURNING f.fingerprint, f.occurrences, f.incident_id, false;

    -- New lives; a finished row (resolved, or its incident closed) starts a new one.
    RETURN QUERY
    WITH started AS (
        INSERT INTO gateway.fingerprints AS f (fingerprint, alert_name, cluster, state, alert)
        SELECT n.fingerprint, n.alert_name, n.cluster, 'firing', n.alert::jsonb
        FROM unnest(p_fingerprints, p_names, p_clusters, p_alerts)
             AS n(fingerprint, alert_name, cluster, alert)
        WHERE n.fingerprint <> ALL (live) AND n.fingerprint <> ALL (undecided)
        ORDER BY n.fingerprint
        ON CONFLICT (fingerprint) DO UPDATE
        SET state = 'firing', alert = excluded.alert, incident_id = '', storm_id = '',
            occurrences = 1, uncounted = 0, ended = false, life_started_at = now(),
            last_seen_at = now(), resolved_at = NULL
        WHERE f.state <> 'firing' OR f.ended
        RETURNING f.fingerprint, f.alert),
    queued AS (
        INSERT INTO gateway.queue (fingerprint, kind, alert, not_before, trace_context)
        SELECT s.fingerprint, 'firing', s.alert,
               now() + make_interval(secs => p_hold_seconds), p_trace_context
        FROM started s
        ORDER BY s.fingerprint)
    SELECT s.fingerprint, 1::bigint, ''::text, true FROM started s;

    GET DIAGNOSTICS starting = ROW_COUNT;
    IF starting < cardinality(p_fingerprints) - cardinality(live) - cardinality(undecided) THEN
        RAISE EXCEPTION 'another replica started the life of a fingerprint of this batch'
            USING ERRCODE = 'KG409';
    END IF;
END
$$;
