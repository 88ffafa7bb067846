-- 0004: the firing alerts of a batch decided in one statement. A call that ran its steps
-- one statement at a time waited for PostgreSQL about six times (BEGIN, count, storm
-- check, insert, enqueue, COMMIT); under load each wait is a trip through the scheduler.
-- What it decides is what the gateway's one-alert-at-a-time path decides
-- (kubernaut/services/gateway/intake.py), and that path still takes what this leaves undecided.
--
-- p_fingerprints holds each fingerprint once, in fingerprint order; p_counts how many of
-- the batch's alerts have it; p_names, p_clusters and p_alerts (proto3 JSON) those of its
-- first alert. Returns a row per fingerprint decided:
--   - started false: its life goes on; every alert of it was counted (occurrences is the
--     count after them all, incident_id the incident they are counted on, if known);
--   - started true: its life started (or restarted) with this alert, queued for the alert
--     processor after p_hold_seconds.
-- A fingerprint that would start a life but may start a storm (a storm of its alert name
-- and cluster is active, or its starts would reach p_storm_threshold within the window),
-- or that the batch holds more than once, is left undecided, as is every other starting
-- one of its alert name and cluster. With p_partial false a call that would leave any
-- fingerprint undecided decides none and changes nothing (no rows): the caller then
-- takes the batch in a transaction of its own.
-- Raises KG409 (and changes nothing) when another replica started the life of a
-- fingerprint between this call's look and its insert: the caller takes the batch again,
-- one alert at a time.
CREATE FUNCTION gateway.take_firing(
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
-- each call (PostgreSQL's choice for array parameters) cost as much as running them.
SET plan_cache_mode = force_generic_plan
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
