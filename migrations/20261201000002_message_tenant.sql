-- The tenant a message belonged to when it was received or sent. A number changes hands (a tenant
-- moves out, a number is recycled, a directory typo is fixed): the conversation (one per number)
-- follows its current owner for routing, while each message keeps the tenant it belonged to, so a
-- tenant-scoped key sees exactly its own part of a number's history and usage is billed to the
-- tenant of the time. Set once; a message stored with no tenant is attached when its tenant
-- becomes known (PRD Story 2.4), never moved from one tenant to another.
ALTER TABLE sms_messages ADD COLUMN tenant_id TEXT;

UPDATE sms_messages m SET tenant_id = c.tenant_id
FROM sms_conversations c
WHERE c.id = m.conversation_id AND c.tenant_id IS NOT NULL AND m.tenant_id IS NULL;

-- Usage by tenant and time; a tenant's part of a conversation.
CREATE INDEX sms_messages_tenant_created_idx ON sms_messages (tenant_id, created_at)
    WHERE tenant_id IS NOT NULL;
