-- no-transaction
-- apalis-postgres's first migration made `lidx` on apalis.jobs (lock_by); its later
-- "streamline_indices" migration added the same index as idx_apalis_jobs_lock_by without
-- dropping the first. Every job row is written four times (push, fetch, lock, acknowledgement),
-- none of them a HOT update (status decides the partial indexes), so each duplicate costs an
-- index insertion per write. The other index keeps the lock_by foreign key's checks served.
-- Without blocking the queue (CONCURRENTLY, alone in its file: see 20261204000001).
-- squawk-ignore require-lock-timeout, require-statement-timeout
DROP INDEX CONCURRENTLY IF EXISTS apalis.lidx;
