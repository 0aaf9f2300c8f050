-- no-transaction
-- The console's health page counts each queue's jobs failed in the last hour. Without an index
-- that was a scan of every job kept (a day of them: 6,000 pages, 19 ms, on the benchmark's year
-- of data after one burst; a busy day holds millions). Partial: failed and killed jobs are few.
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS apalis_jobs_failed_done_idx
    ON apalis.jobs (done_at)
    WHERE status IN ('Failed', 'Killed');
