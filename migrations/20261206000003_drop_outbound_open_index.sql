-- no-transaction
-- Replaced by sms_messages_reconcilable_idx (the previous migration); the reconciler's queries
-- are its only readers. Without blocking writes (CONCURRENTLY, alone in its file).
-- squawk-ignore require-lock-timeout, require-statement-timeout
DROP INDEX CONCURRENTLY IF EXISTS sms_messages_outbound_open_idx;
