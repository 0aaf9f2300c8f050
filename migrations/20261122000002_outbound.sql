-- Outbound sends and delivery tracking.

ALTER TABLE sms_messages
    ADD COLUMN media_urls            JSONB,
    ADD COLUMN encoding              TEXT CHECK (encoding IN ('GSM-7', 'UCS-2')),
    ADD COLUMN messaging_service_sid TEXT,
    ADD COLUMN send_attempts         INTEGER NOT NULL DEFAULT 0,
    -- Replies in a live conversation are sent ahead of bulk sends.
    ADD COLUMN priority              SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN status_updated_at     TIMESTAMPTZ;

-- The reconciler looks for outbound messages stuck in a non-final status.
CREATE INDEX sms_messages_outbound_open_idx ON sms_messages (status_updated_at)
    WHERE direction = 'outbound'
      AND delivery_status IN ('pending', 'sending', 'queued', 'accepted', 'scheduled', 'sent');

-- Every attempt to hand a message to Twilio, recorded BEFORE the call: an attempt left
-- 'in_flight' or 'unknown' has an unknown outcome and is resolved before any new attempt.
CREATE TABLE sms_send_attempts (
    message_id     UUID NOT NULL REFERENCES sms_messages (id),
    attempt        INTEGER NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ,
    outcome        TEXT NOT NULL
                   CHECK (outcome IN ('in_flight', 'accepted', 'retryable', 'permanent', 'unknown', 'resolved', 'abandoned')),
    http_status    INTEGER,
    error_code     TEXT,
    error_message  TEXT,
    next_attempt_at TIMESTAMPTZ,
    PRIMARY KEY (message_id, attempt)
);

-- Status callbacks as received, one per (MessageSid, MessageStatus): repeats are no-ops.
CREATE TABLE sms_status_callbacks (
    id              BIGSERIAL PRIMARY KEY,
    message_sid     TEXT NOT NULL,
    message_status  TEXT NOT NULL,
    our_message_id  UUID,
    error_code      TEXT,
    raw             JSONB NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_at      TIMESTAMPTZ,
    CONSTRAINT sms_status_callbacks_sid_status_key UNIQUE (message_sid, message_status)
);
CREATE INDEX sms_status_callbacks_pending_sid_idx ON sms_status_callbacks (message_sid) WHERE applied_at IS NULL;
CREATE INDEX sms_status_callbacks_our_id_idx ON sms_status_callbacks (our_message_id) WHERE our_message_id IS NOT NULL;

-- Idempotency-Key: the first answer to a key, per API key.
CREATE TABLE idempotency_keys (
    api_key_id    UUID NOT NULL REFERENCES api_keys (id),
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status_code   INTEGER,
    response      JSONB,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);

-- Pacing: the next free send slot per sending number (or messaging service).
CREATE TABLE sender_pacing (
    sender     TEXT PRIMARY KEY,
    next_slot  TIMESTAMPTZ NOT NULL
);
