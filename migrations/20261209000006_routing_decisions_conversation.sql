-- A conversation page shows each inbound message's routing decisions. Looked up by message id,
-- a page's two dozen decisions were two dozen index leaves and heap pages spread over the year
-- (issue 21: about 70 cold reads a page, more than the messages themselves once those came from
-- the page index). Each decision now carries its message's conversation, so that an index keyed
-- by conversation holds a page's decisions side by side (next migrations).
-- The trigger fills it on every insert, whoever writes the decision (the previous release's
-- workers included); a message's conversation is set before it is routed and never changes.
SET lock_timeout = '5s';
SET statement_timeout = '30s';

ALTER TABLE sms_routing_decisions ADD COLUMN IF NOT EXISTS conversation_id uuid;

CREATE OR REPLACE FUNCTION sms_routing_decision_conversation() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.conversation_id IS NULL THEN
        SELECT conversation_id INTO NEW.conversation_id FROM sms_messages WHERE id = NEW.message_id;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER sms_routing_decision_conversation BEFORE INSERT ON sms_routing_decisions
    FOR EACH ROW EXECUTE FUNCTION sms_routing_decision_conversation();

-- As sms_page_fits, for a decision's variable columns (an agent URL is at most 2,048 characters,
-- a detail is free text).
CREATE OR REPLACE FUNCTION sms_decision_fits(agent_url text, detail text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT octet_length(COALESCE(agent_url, '')) + octet_length(COALESCE(detail, '')) <= 2000
$$;
