-- no-transaction
-- A tenant-scoped conversation page (and the tenant's last activity in it) filters on the
-- conversation and the tenant and orders by time: an index that starts with all three serves a
-- page in the page's cost, whichever plan runs. Without it the generic plan a pooled connection
-- switches to after five executions ANDed the conversation and tenant indexes and read every
-- message of a busy conversation (issue 21: 54.6 s cold for 159,224 messages).
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_messages_conversation_tenant_created_idx
    ON sms_messages (conversation_id, tenant_id, created_at DESC, id DESC);
