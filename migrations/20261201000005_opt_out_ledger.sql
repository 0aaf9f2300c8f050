-- The opt-out ledger: every opt-out and opt-in as received (a message, Twilio's refusal, or one
-- recorded through the API after a phone call or a letter), with the rule that recognised it, for
-- an audit. `sms_opt_outs` stays the state in force per (our number, their number).
ALTER TABLE sms_opt_outs ADD COLUMN rule TEXT;

CREATE TABLE sms_opt_out_events (
    id           BIGSERIAL PRIMARY KEY,
    our_number   TEXT NOT NULL,
    their_number TEXT NOT NULL,
    change       TEXT NOT NULL CHECK (change IN ('opt_out', 'opt_in')),
    -- How it reached us: an inbound message, Twilio (error 21610 on a send), or the API.
    source       TEXT NOT NULL CHECK (source IN ('sms', 'twilio', 'api')),
    -- For the API: how the recipient told the operator.
    method       TEXT CHECK (method IN ('phone_call', 'letter', 'email', 'in_person', 'web_form', 'other')),
    keyword      TEXT,
    rule         TEXT,
    message_id   UUID REFERENCES sms_messages (id),
    tenant_id    TEXT,
    note         TEXT,
    occurred_at  TIMESTAMPTZ NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sms_opt_out_events_number_idx ON sms_opt_out_events (their_number, occurred_at DESC, id DESC);
CREATE INDEX sms_opt_out_events_time_idx ON sms_opt_out_events (occurred_at DESC, id DESC);
CREATE INDEX sms_opt_out_events_tenant_idx ON sms_opt_out_events (tenant_id, occurred_at DESC) WHERE tenant_id IS NOT NULL;

-- The state in force so far becomes the ledger's first entries.
INSERT INTO sms_opt_out_events (our_number, their_number, change, source, keyword, message_id, occurred_at)
SELECT o.our_number, o.their_number, CASE WHEN o.opted_out THEN 'opt_out' ELSE 'opt_in' END,
       CASE WHEN o.opt_out_type = 'twilio-21610' THEN 'twilio' ELSE 'sms' END, o.keyword, o.message_id, o.changed_at
FROM sms_opt_outs o;
