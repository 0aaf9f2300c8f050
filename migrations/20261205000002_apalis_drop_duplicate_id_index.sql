-- no-transaction
-- apalis-postgres's first migration made `unique_job_id` on apalis.jobs (id), which the primary
-- key already is: a second copy of the key, maintained on every write of every job (see
-- 20261205000001). Lookups by id use jobs_pkey.
-- squawk-ignore require-lock-timeout, require-statement-timeout
DROP INDEX CONCURRENTLY IF EXISTS apalis.unique_job_id;
