-- Each lifecycle's states are spelled once, as Rust enums (`as_str`), and guarded here so no other
-- spelling can be stored: delivery statuses (shared/src/twilio/status.rs), routing decisions and
-- quarantine reasons (worker/src/route.rs). `route_status` and `sms_send_attempts.outcome` have
-- theirs since migrations 3 and 2.

ALTER TABLE sms_messages ADD CONSTRAINT sms_messages_delivery_status_check CHECK (delivery_status IN (
    'pending', 'submitting', 'accepted', 'scheduled', 'queued', 'sending', 'sent', 'delivered',
    'undelivered', 'failed', 'canceled', 'partially_delivered', 'read', 'receiving', 'received'));

ALTER TABLE sms_routing_decisions ADD CONSTRAINT sms_routing_decisions_outcome_check
    CHECK (outcome IN ('delivered', 'replied', 'retry', 'unroutable'));
-- Which rule chose the route, or, with no route, why the message was quarantined.
ALTER TABLE sms_routing_decisions ADD CONSTRAINT sms_routing_decisions_reason_check
    CHECK (reason IN ('tenant', 'workflow_type', 'default', 'unknown_number', 'no_route'));

ALTER TABLE sms_unroutable ADD CONSTRAINT sms_unroutable_reason_check
    CHECK (reason IN ('unknown_number', 'no_route', 'agent_rejected', 'agent_unavailable'));
