-- 0003: counting a duplicate (occurrences, uncounted, last_seen_at) changes no indexed
-- column, so PostgreSQL can update the row in place (a HOT update: no new index entries,
-- far less write work on the hot path). The two indexes on last_seen_at go; their readers
-- (the duplicate counter every few seconds, the clean-up every few minutes) scan the table.
-- The stored alert is the first of the fingerprint's life; duplicates do not rewrite it.

DROP INDEX gateway.fingerprints_uncounted;
DROP INDEX gateway.fingerprints_by_last_seen;

-- Room on each page for the in-place updates.
ALTER TABLE gateway.fingerprints SET (fillfactor = 70);
