-- no-transaction
-- A /usage page adds the pending deltas of the keys it covers; without an index on the key, each
-- page read every pending delta (60,000 after a burst: 45 ms a page on the year of data), and a
-- minute of heavy traffic leaves more than that between two folds.
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_usage_deltas_key_idx
    ON sms_usage_deltas (tenant_id, direction, status);
