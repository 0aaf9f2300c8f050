-- Core schema from the PRD: conversations per phone number, messages with the raw webhook, the
-- tenant directory, opt-outs, and API keys.

CREATE TABLE tenant_profiles (
    tenant_id              TEXT PRIMARY KEY,
    name                   TEXT,
    -- Every number the tenant may text from, in E.164, as a JSON array of strings.
    phone_numbers          JSONB NOT NULL DEFAULT '[]'::jsonb
                           CHECK (jsonb_typeof(phone_numbers) = 'array'),
    language_preference    TEXT CHECK (language_preference IN ('en', 'es', 'pt')),
    language_confidence    REAL,
    last_used_phone_number TEXT,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- "Which tenant has this number": `phone_numbers ?| $variants` is served by the default jsonb_ops GIN.
CREATE INDEX tenant_profiles_phone_numbers_idx ON tenant_profiles USING GIN (phone_numbers);

CREATE TABLE sms_conversations (
    id                    UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    phone_number          TEXT NOT NULL,
    phone_number_original TEXT NOT NULL,
    tenant_id             TEXT REFERENCES tenant_profiles (tenant_id) ON DELETE SET NULL,
    workflow_type         TEXT,
    workflow_id           TEXT,
    last_message_at       TIMESTAMPTZ,
    language_detected     TEXT CHECK (language_detected IN ('en', 'es', 'pt')),
    language_confidence   REAL,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT sms_conversations_phone_number_key UNIQUE (phone_number)
);
CREATE INDEX sms_conversations_tenant_id_idx ON sms_conversations (tenant_id) WHERE tenant_id IS NOT NULL;
-- The reconciler looks for conversations still without a tenant.
CREATE INDEX sms_conversations_unknown_idx ON sms_conversations (last_message_at) WHERE tenant_id IS NULL;

CREATE TABLE sms_messages (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL only between the ingress storing a webhook and the worker linking it.
    conversation_id     UUID REFERENCES sms_conversations (id),
    direction           TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    message_content     TEXT NOT NULL DEFAULT '',
    twilio_sid          TEXT,
    delivery_status     TEXT NOT NULL,
    raw_webhook_data    JSONB,
    from_number         TEXT,
    to_number           TEXT,
    num_segments        INTEGER,
    num_media           INTEGER,
    language_detected   TEXT CHECK (language_detected IN ('en', 'es', 'pt')),
    language_confidence REAL,
    error_code          TEXT,
    error_message       TEXT,
    processed_at        TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT sms_messages_twilio_sid_key UNIQUE (twilio_sid)
);
-- Conversation history, newest first, with (created_at, id) as the pagination cursor.
CREATE INDEX sms_messages_conversation_created_idx
    ON sms_messages (conversation_id, created_at DESC, id DESC);

-- Opt-out state per (our number, their number); the latest keyword wins.
CREATE TABLE sms_opt_outs (
    our_number       TEXT NOT NULL,
    their_number     TEXT NOT NULL,
    opted_out        BOOLEAN NOT NULL,
    keyword          TEXT,
    opt_out_type     TEXT,
    message_id       UUID REFERENCES sms_messages (id),
    changed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (our_number, their_number)
);

-- API keys: only a SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    scopes      TEXT[] NOT NULL DEFAULT ARRAY['read']::TEXT[],
    tenant_id   TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
