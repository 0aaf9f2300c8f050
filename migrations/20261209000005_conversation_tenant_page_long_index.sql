-- no-transaction
-- The messages too long for sms_messages_conversation_tenant_page_idx, in the same order (few).
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_messages_conversation_tenant_page_long_idx
    ON sms_messages (conversation_id, tenant_id, created_at DESC, id DESC)
    WHERE conversation_id IS NOT NULL AND NOT sms_page_fits(message_content, twilio_sid, tenant_id);
