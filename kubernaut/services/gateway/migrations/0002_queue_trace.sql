-- 0002: a queued alert keeps the W3C traceparent of the request that brought it, so that
-- forwarding it later continues that trace (one trace per incident, from the webhook on).

ALTER TABLE gateway.queue ADD COLUMN trace_context text NOT NULL DEFAULT '';
